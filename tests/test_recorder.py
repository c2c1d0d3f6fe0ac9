"""The recorder: epoch rows with named fields, the events loggers receive (never the run), and checkpoints of
both row formats (format 2 kept log.csv's cells as positional lists)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import make_run

from cilearn.config import parse_config
from cilearn.engine.checkpoints import load_checkpoint, save_checkpoint
from cilearn.engine.events import LOG_COLUMNS, EpochEnded, EpochRow, RunEnded, RunStarted, TaskEnded
from cilearn.engine.runner import Run
from cilearn.loggers import Logger, event_logger


def test_rows_have_named_fields_and_the_last_epoch_gets_the_tasks_test_accuracies(tmp_path):
    run = make_run(tmp_path, {"name": "finetune"}, num_tasks=2, epochs=2)  # eval_every 0: no per-epoch tests
    run.run_task(run.scenario[0])
    rows = run.recorder.rows
    assert [field.name for field in dataclasses.fields(EpochRow)] == LOG_COLUMNS
    assert [(row.task, row.epoch, row.stage) for row in rows] == [(0, 1, "train"), (0, 2, "train")]
    assert math.isnan(rows[0].test_accuracy_seen) and math.isnan(rows[0].test_accuracy_current)
    head = run.recorder.history[-1]["scores"]["head"]
    assert (rows[-1].test_accuracy_current, rows[-1].test_accuracy_seen) == (head["current_accuracy"],
                                                                           head["seen_accuracy"])
    assert rows[0].train_loss > 0 and rows[0].lr == pytest.approx(0.05)


def test_a_row_read_back_from_log_csvs_cells_gives_the_same_cells():
    row = EpochRow(3, 7, 0.000123456789, 1.23456789, 0.5, float("nan"), 0.25, "bias", 12.3456)
    cells = row.cells()
    assert cells == [3, 7, "0.000123457", "1.234568", "0.500000", "nan", "0.250000", "bias", "12.346"]
    assert EpochRow.restore(cells).cells() == cells
    assert EpochRow.restore(row.as_dict()) == row


class Recording(Logger):
    def __init__(self) -> None:
        self.events = []

    def on_run_start(self, event):
        self.events.append(event)

    def on_epoch_end(self, event):
        self.events.append(event)

    def on_task_end(self, event):
        self.events.append(event)

    def on_run_end(self, event):
        self.events.append(event)


class OldStyle(Logger):
    """A logger written for cilearn 0.2's hooks, which received the run."""

    def __init__(self) -> None:
        self.calls = []

    def start(self, run):
        super().start(run)  # the base class keeps the old hooks, so such calls still work
        self.calls.append(("start", run.label, len(run.log_rows)))

    def epoch_end(self, run, row):
        self.calls.append(("epoch_end", row["epoch"], run.log_rows[-1][:2]))

    def task_end(self, run, metrics):
        self.calls.append(("task_end", metrics["tasks_done"], (run.files / "metrics.json").is_file()))

    def run_end(self, run, metrics):
        self.calls.append(("run_end", metrics["complete"]))


def test_loggers_receive_the_events_in_order_and_never_the_run(tmp_path):
    run = make_run(tmp_path / "run", {"name": "finetune"}, num_tasks=2, epochs=2)
    recording, old = Recording(), OldStyle()
    run.recorder.loggers += [recording, event_logger(old)]
    result = run.execute()
    kinds = [type(event) for event in recording.events]
    assert kinds == [RunStarted, EpochEnded, EpochEnded, TaskEnded, EpochEnded, EpochEnded, TaskEnded, RunEnded]
    for event in recording.events:
        assert not any(isinstance(getattr(event, field.name), Run) for field in dataclasses.fields(event))
    started, ended = recording.events[0], recording.events[-1]
    assert (started.label, started.method, started.rows, started.metrics) == ("finetune", "finetune", (), None)
    assert started.files.path == tmp_path / "run" and started.config.train.epochs == 2
    assert ended.metrics == result and len(ended.rows) == 4
    epoch, task_end = recording.events[2], recording.events[3]
    assert math.isnan(epoch.row.test_accuracy_seen)  # seen before the task's evaluation
    assert task_end.last_epoch.test_accuracy_seen == result["accuracy_matrix"][0][0]  # filled from it
    assert [event.row.epoch for event in recording.events if isinstance(event, EpochEnded)] == [1, 2, 1, 2]
    assert old.calls == [("start", "finetune", 0), ("epoch_end", 1, [0, 1]), ("epoch_end", 2, [0, 2]),
                         ("task_end", 1, True), ("epoch_end", 1, [1, 1]), ("epoch_end", 2, [1, 2]),
                         ("task_end", 2, True), ("run_end", True)]
    assert event_logger(recording) is recording


def config() -> dict:
    return {"data": {"name": "digits"},
            "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 3},
            "model": {"name": "mlp", "options": {"hidden": [32]}},
            "method": {"name": "finetune"},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False,
                      "eval_every": 1},
            "output": {"save_features": False},
            "seed": 0}


def test_a_format_2_checkpoint_with_positional_rows_resumes(tmp_path):
    Run(parse_config(config()), tmp_path / "whole").execute()
    Run(parse_config(config()), tmp_path / "resumed").execute()
    folder = tmp_path / "resumed"
    (folder / "checkpoints" / "task_02.pt").unlink()  # as if killed during the last task
    (folder / "checkpoints" / "task_01.pt").unlink()
    before = (folder / "log.csv").read_text().splitlines()
    path = folder / "checkpoints" / "task_00.pt"
    state = load_checkpoint(path)
    assert state["format"] == 3 and isinstance(state["log_rows"][0], dict)
    state["format"] = 2  # as cilearn 0.2 wrote it: log.csv's cells
    state["log_rows"] = [EpochRow(**row).cells() for row in state["log_rows"]]
    save_checkpoint(path, state)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    torch.manual_seed(123)  # resuming restores the random state: what it is now does not matter
    Run(parse_config(config()), folder).execute(resume=True)
    whole = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    resumed = (folder / "log.csv").read_text().splitlines()
    assert resumed[:3] == before[:3]  # the header and task 1's rows, from the checkpoint, to the byte
    strip = [line.rsplit(",", 1)[0] for line in whole]  # the rest minus seconds
    assert [line.rsplit(",", 1)[0] for line in resumed] == strip
    assert (folder / "accuracy_matrix.csv").read_bytes() == (tmp_path / "whole" / "accuracy_matrix.csv").read_bytes()
    assert isinstance(load_checkpoint(folder / "checkpoints" / "task_02.pt")["log_rows"][0], dict)
