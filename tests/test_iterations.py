"""train.iterations: a fixed number of gradient steps per task instead of epochs (issue 10) — the exact
number of optimizer steps, the schedule counted in iterations, one log row per pass over the data,
stages with their own epochs, and a run stopped mid-task that resumes to the uninterrupted result.
train.first_task: the first task's own schedule (issue 24), the others' unchanged."""

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

    def start(self, method, overrides=None, **kwargs):
        original(self, method, overrides, **kwargs)
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


def optimizer_steps(monkeypatch) -> list[tuple[int, float]]:
    """Records (stage started, lr) of every optimizer step of a run: each task's schedule as it ran."""
    from cilearn.engine.train import Trainer

    used, starts, original = [], [], Trainer.start

    def start(self, method, stage=None, first_task=False):
        original(self, method, stage, first_task=first_task)
        starts.append(first_task)
        step, index = self.optimizer.step, len(starts) - 1

        def recorded_step(*args, **kwargs):
            used.append((index, self.optimizer.param_groups[0]["lr"]))
            return step(*args, **kwargs)

        self.optimizer.step = recorded_step

    monkeypatch.setattr(Trainer, "start", start)
    return used


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_the_first_task_trains_on_its_own_schedule_and_the_others_on_the_runs(tmp_path, monkeypatch):
    used = optimizer_steps(monkeypatch)
    raw = config(first_task={"iterations": 30, "lr": 0.05, "milestones": [25]})  # the run: 23 steps, ×0.1 at 10, 20
    Run(parse_config(raw), tmp_path / "run").execute()
    first = [lr for task, lr in used if task == 0]
    second = [lr for task, lr in used if task == 1]
    assert first == pytest.approx([0.05] * 25 + [0.005] * 5)  # its milestones replace the run's, gamma stays 0.1
    assert second == pytest.approx([0.01] * 10 + [0.001] * 10 + [0.0001] * 3)  # the run's own schedule
    log = rows(tmp_path / "run")
    assert float(log[[r["task"] for r in log].index("1") - 1]["lr"]) == pytest.approx(0.005)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_a_first_task_in_epochs_counts_epochs_in_a_run_of_iterations(tmp_path, monkeypatch):
    used = optimizer_steps(monkeypatch)
    run = Run(parse_config(config(first_task={"epochs": 2, "milestones": []}, scheduler="constant")), tmp_path / "run")
    run.execute()
    n = len(run.scenario[0].train)
    per_pass = n // 32 + (1 if n % 32 >= 2 else 0)
    assert sum(1 for task, _ in used if task == 0) == 2 * per_pass
    assert sum(1 for task, _ in used if task == 1) == ITERATIONS


@pytest.mark.parametrize("first_task, message", [
    ({"device": "cpu"}, "train.first_task.device: a setting of the whole run"),
    ({"eval_every": 0}, "train.first_task.eval_every: a setting of the whole run"),
    ({"lrr": 0.1}, "train.first_task.lrr: not a train setting. Did you mean 'lr'?"),
    ({"iterations": 5, "milestones": [8]}, "train.milestones: [8] must be increasing and at most train.iterations (5)"),
    ({"epochs": 3}, "train.first_task: the first task's settings (train with first_task over it) are wrong: "
                    "train.milestones: [10, 20] must be increasing and at most train.epochs (3)"),
    ({"lr": -1}, "train.first_task.lr: -1.0 is below the minimum"),
    ([1, 2], "train.first_task: expected a mapping of train settings"),
    ({"optimizer": "sgd"}, "train.first_task.optimizer: sgd cannot hand its state"),  # the run: adam, keep (below)
])
def test_a_wrong_first_task_is_refused_before_anything_is_written(tmp_path, first_task, message, capsys):
    config_file = tmp_path / "bad.yaml"
    run = {"optimizer_state": "keep"} if isinstance(first_task, dict) and "optimizer" in first_task else {}
    config_file.write_text(yaml.safe_dump(config(first_task=first_task, **run)))
    assert main(["run", str(config_file), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_first_task_values_are_typed_as_the_train_sections(tmp_path):
    cfg = parse_config(config(first_task={"lr": "1e-3", "epochs": 3, "milestones": [2]})).train
    assert cfg.first_task == {"lr": 0.001, "epochs": 3, "milestones": [2]}
    assert stage_config(cfg, cfg.first_task).iterations is None  # epochs given: the first task counts epochs
