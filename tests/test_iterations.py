"""train.iterations: a fixed number of gradient steps per task instead of epochs (issue 10) — the exact
number of optimizer steps, the schedule counted in iterations, one log row per pass over the data,
stages with their own epochs, and a run stopped mid-task that resumes to the uninterrupted result."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from helpers import digits_config

from cilearn.cli import main
from cilearn.config import parse_config
from cilearn.engine.runner import Run
from cilearn.engine.train import stage_config
from cilearn.experiment import resume_experiment

ITERATIONS = 23  # not a multiple of the batches in a pass: the last pass is cut short


def config(**train) -> dict:
    return digits_config(scenario={"num_tasks": 2}, model={"options": {"hidden": [16]}},
                         train={"iterations": ITERATIONS, "optimizer": "adam", "lr": 0.01, "scheduler": "multistep",
                                "milestones": [10, 20], "gamma": 0.1, "eval_every": 1, **train},
                         output={"save_features": False}, seed=3)


def rows(folder) -> list[dict]:
    with open(folder / "log.csv") as handle:
        return list(csv.DictReader(handle))


def test_exact_steps_and_a_schedule_in_iterations(tmp_path):
    run = Run(parse_config(config()), tmp_path / "run")
    run.execute()
    # Adam counts its own steps: the last task's fresh optimizer took exactly train.iterations of them
    steps = {int(state["step"]) for state in run.trainer.optimizer.state.values()}
    assert steps == {ITERATIONS}
    n = len(run.scenario[1].train)
    per_pass = n // 32 + (1 if n % 32 >= 2 else 0)
    plan = run.trainer.plan(n, run.model)
    assert plan == [per_pass] * (ITERATIONS // per_pass) + [ITERATIONS % per_pass] and sum(plan) == ITERATIONS
    task2 = [r for r in rows(tmp_path / "run") if r["task"] == "1"]
    assert len(task2) == len(plan)  # one log row per pass over the data
    # each row's lr is the lr of the pass's last step: ×0.1 from iteration 10 on, ×0.01 from iteration 20 on
    last_steps = [sum(plan[: i + 1]) - 1 for i in range(len(plan))]
    want = [0.01 * 0.1 ** sum(1 for m in (10, 20) if m <= step) for step in last_steps]
    assert [float(r["lr"]) for r in task2] == pytest.approx(want)
    assert run.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_warmup_counts_iterations(tmp_path, monkeypatch):
    from cilearn.engine.train import Trainer

    used = []  # the lr of every optimizer step, in order
    original = Trainer.start

    def start(self, method, overrides=None):
        original(self, method, overrides)
        step = self.optimizer.step

        def recorded_step(*args, **kwargs):
            used.append(self.optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        self.optimizer.step = recorded_step

    monkeypatch.setattr(Trainer, "start", start)
    Run(parse_config(config(warmup=4, milestones=[], scheduler="constant")), tmp_path / "run").execute()
    assert len(used) == 2 * ITERATIONS
    assert used[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])  # (k + 1)/4 of lr, then lr
    assert used[ITERATIONS:ITERATIONS + 5] == pytest.approx(used[:5])  # every task warms up again


def test_a_stage_with_its_own_epochs_counts_epochs():
    cfg = parse_config(config()).train
    assert stage_config(cfg, {"epochs": 2}).iterations is None
    assert stage_config(cfg, {"lr": 0.5}).iterations == ITERATIONS


def test_stopped_mid_task_and_resumed_like_uninterrupted(tmp_path, monkeypatch):
    raw = config(checkpoint_every=1)
    Run(parse_config(raw), tmp_path / "reference").execute()
    original = Run.save

    def save_then_stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, next_epoch) == (1, 1):  # inside task 2, after its first pass
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(raw), tmp_path / "stopped").execute()
    monkeypatch.setattr(Run, "save", original)
    resume_experiment(tmp_path / "stopped")

    def outcome(folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        for key in ("timing", "task_timing", "memory"):  # measurements of this process, not results
            metrics.pop(key, None)
        return metrics, [{k: v for k, v in r.items() if k != "seconds"} for r in rows(folder)]

    assert outcome(tmp_path / "stopped") == outcome(tmp_path / "reference")


def test_cli_run_with_iterations(tmp_path, capsys):
    config_file = tmp_path / "iterations.yaml"
    config_file.write_text(yaml.safe_dump(config(eval_every=0)))
    assert main(["run", str(config_file), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["tasks_done"] == 2
    assert math.isfinite(metrics["last_accuracy"]) and metrics["last_accuracy"] > 0.4
    train_samples = [t["train_samples"] for t in metrics["task_timing"]]
    assert all(s <= ITERATIONS * 32 for s in train_samples)  # the samples of 23 steps of 32 (a pass's tail fewer)
    resolved = (tmp_path / "cli" / "config.yaml").read_text()
    assert f"iterations: {ITERATIONS}" in resolved
