"""End to end: the CLI on the quickstart config, as a user runs it."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import make_run

from cilearn.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    code = main(["run", str(ROOT / "configs/quickstart.yaml"), "--out", str(out),
                 "--set", "methods=[{name: finetune}, {name: joint}]", "--set", "train.progress=false"])
    assert code == 0
    return out


def test_quickstart_writes_a_complete_run_directory(quickstart):
    for label in ("finetune", "joint"):
        run = quickstart / label
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"] and metrics["num_tasks"] == 5
        matrix = metrics["accuracy_matrix"]
        assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        for i, row in enumerate(matrix):  # class-incremental: only tasks seen so far are scored
            assert all(v is not None and 0 <= v <= 1 for v in row[: i + 1])
            assert all(v is None for v in row[i + 1:])
        seen = metrics["seen_accuracy"]
        assert metrics["average_incremental_accuracy"] == pytest.approx(np.mean(seen))
        assert metrics["last_accuracy"] == pytest.approx(seen[-1])
        assert metrics["classes_per_step"] == [2, 4, 6, 8, 10]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["method"]["name"] == label and config["train"]["epochs"] == 15
        with open(run / "log.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 5 * 15
        assert [(int(r["task"]), int(r["epoch"])) for r in rows[:2]] == [(0, 1), (0, 2)]
        assert all(0 <= float(r["test_accuracy_seen"]) <= 1 for r in rows)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"task_0{i}.pt" for i in range(5)]
        assert len(list((run / "predictions").glob("task_*.npz"))) == 5
        assert (run / "accuracy_matrix.csv").read_text().startswith("after_task,task_0")
    assert "| finetune |" in (quickstart / "summary.md").read_text()
    summary = json.loads((quickstart / "summary.json").read_text())
    assert set(summary["aggregate"]) == {"finetune", "joint"}


def test_quickstart_shows_forgetting_and_joint_keeps_old_classes(quickstart):
    finetune = json.loads((quickstart / "finetune/metrics.json").read_text())
    joint = json.loads((quickstart / "joint/metrics.json").read_text())
    # Fine-tuning: each task is learnt, and the earlier ones are lost.
    assert min(finetune["current_accuracy"]) > 0.8
    assert finetune["old_accuracy"][-1] < 0.2
    assert finetune["forgetting"] > 0.7
    # Joint training keeps the old classes.
    assert joint["old_accuracy"][-1] > 0.85
    assert joint["last_accuracy"] > finetune["last_accuracy"] + 0.5


def test_task_incremental_reports_task_aware_and_agnostic_from_one_run(tmp_path):
    config = {"data": {"name": "digits"}, "scenario": {"type": "task_incremental", "classes_per_task": 2},
              "model": {"name": "mlp", "options": {"hidden": [64]}}, "method": {"name": "finetune"},
              "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "progress": False}}
    path = tmp_path / "til.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    aware, agnostic = metrics["classifiers"]["head_task_aware"], metrics["classifiers"]["head"]
    assert aware["last_accuracy"] > agnostic["last_accuracy"]
    assert aware["last_accuracy"] > 0.8  # with the task id, two-way choices stay easy


def test_joint_at_end_trains_once_on_all_data_after_the_last_task(tmp_path):
    """Hsu et al.'s offline / Mammoth's joint: nothing trains before the last task, which trains on every task's
    data; the default (every_task) trains each task on all data seen so far."""
    run = make_run(tmp_path / "at_end", {"name": "joint", "when": "at_end"}, num_tasks=3, epochs=2)
    before = [p.detach().clone() for p in run.model.backbone.parameters()]
    run.run_task(run.scenario[0])
    run.run_task(run.scenario[1])
    assert all(torch.equal(a, p) for a, p in zip(before, run.model.backbone.parameters()))  # untouched so far
    run.run_task(run.scenario[2])
    samples = [h["train_samples"] for h in run.recorder.history]
    assert samples == [0, 0, 2 * sum(len(t.train) for t in run.scenario)]  # 2 epochs over all three tasks
    every = make_run(tmp_path / "every", {"name": "joint"}, num_tasks=2, epochs=1)
    for task in every.scenario:
        every.run_task(task)
    assert [h["train_samples"] for h in every.recorder.history] == [len(every.scenario[0].train),
                                                           sum(len(t.train) for t in every.scenario)]
