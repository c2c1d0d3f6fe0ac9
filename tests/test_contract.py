"""The contract every registered method keeps (built-in or from a plugin), checked on tiny digits runs:

- stopped inside a task (right after an epoch checkpoint) or between tasks and resumed, a run ends with
  exactly the results of an uninterrupted one (metrics, per-epoch log, predictions);
- its state survives a checkpoint round trip (``weights_only`` load) unchanged;
- its options are validated: an unknown option and a value below an option's minimum are refused with a
  ConfigError before anything runs.

A new method gets these checks by being registered; ``OPTIONS`` only shrinks the defaults that would make a
digits run slow (e.g. a Fisher over 1000 samples).
"""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest
import torch

from cilearn.engine.checkpoints import load_checkpoint, save_checkpoint
from cilearn.config import parse_config
from cilearn.errors import ConfigError
from cilearn.experiment import resume_experiment
from cilearn.methods import all_methods, method_options
from cilearn.engine.runner import Run
from helpers import digits_config

OPTIONS = {  # small settings for a fast digits run; everything else stays at the method's defaults
    "icarl": {"memory_size": 30},
    "ewc": {"fisher_samples": 40, "ewc_lambda": 100.0},
    "replay": {"fraction": 0.1},
    "bic": {"memory_size": 30, "bias_epochs": 2},
    "wa": {"memory_size": 30},
    "lucir": {"memory_size": 30},
    "podnet": {"memory_size": 30, "proxies": 2, "finetune_epochs": 2},
    "gdumb": {"epochs": 3, "buffer_size": 60},
    "mas": {"importance_samples": 40},
}
DOMAIN_ONLY = {"iid"}  # methods for a fixed label space (domain streams)
TASK_ONLY = {"xdg"}  # methods that need the task's identity at test time


def config(name: str) -> dict:
    raw = digits_config(scenario={"num_tasks": 3}, model={"options": {"hidden": [24]}},
                        method={"name": name, **OPTIONS.get(name, {})},
                        train={"epochs": 3, "scheduler": "multistep", "milestones": [2], "eval_every": 1,
                               "checkpoint_every": 1},
                        output={"max_feature_samples": 30}, seed=1)
    if name in DOMAIN_ONLY:  # a fixed label space: the whole scenario section differs
        raw["scenario"] = {"type": "domain_incremental", "num_tasks": 3, "options": {"stream": "rotated"}}
    if name in TASK_ONLY:
        raw["scenario"]["type"] = "task_incremental"
    return raw


def outcome(folder) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("timing", "task_timing", "memory"):  # measurements of this process, not results
        metrics.pop(key)
    log = [line.rsplit(",", 1)[0] for line in (folder / "log.csv").read_text().splitlines()]  # minus seconds
    predictions = {}
    for path in sorted((folder / "predictions").glob("*.npz")):
        with np.load(path) as arrays:
            predictions[path.name] = {k: arrays[k].tolist() for k in arrays.files}
    return {"metrics": metrics, "log": log, "predictions": predictions}


METHOD_NAMES = sorted(all_methods())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_stopped_and_resumed_runs_end_like_uninterrupted_ones(name, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    Run(parse_config(config(name)), reference).execute()
    want = outcome(reference)
    assert want["metrics"]["complete"]

    original = Run.save
    for stop_at in [(1, 0, 2), (1, 0, None)]:  # inside task 2 after its 2nd epoch; after task 2
        out = tmp_path / f"stopped_{stop_at[2]}"

        def save_then_stop(self, task_index, stage, next_epoch, stop_at=stop_at):
            original(self, task_index, stage, next_epoch)
            if (task_index, stage, next_epoch) == stop_at:
                raise KeyboardInterrupt

        monkeypatch.setattr(Run, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            Run(parse_config(config(name)), out).execute()
        monkeypatch.setattr(Run, "save", original)
        resume_experiment(out)
        got = outcome(out)
        assert got["log"] == want["log"], (name, stop_at)
        assert got["metrics"] == want["metrics"], (name, stop_at)
        assert got["predictions"] == want["predictions"], (name, stop_at)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_state_survives_a_checkpoint_round_trip(name, tmp_path):
    cfg = parse_config({**config(name), "output": {"save_checkpoints": False, "save_features": False}})
    run = Run(cfg, tmp_path / "run")
    run.setup()
    for task in run.scenario[:2]:
        run.run_task(task)
    state = run.method.state_dict()
    save_checkpoint(tmp_path / "state.pt", {"method": state})
    loaded = load_checkpoint(tmp_path / "state.pt")["method"]  # tensors and plain values only
    fresh = Run(cfg, tmp_path / "fresh")
    fresh.setup()
    for size in [s.stop - s.start for s in run.model.head.task_slices]:
        fresh.model.add_classes(size)
    fresh.method.begin_task(run.scenario[1])
    fresh.method.load_state_dict(loaded)
    assert _equal(fresh.method.state_dict(), state), name


def _numeric_bounds(options_cls) -> list[tuple[str, float, type]]:
    hints = typing.get_type_hints(options_cls)
    found = []
    for f in dataclasses.fields(options_cls):
        low = f.metadata.get("min")
        kind = hints[f.name]
        base = next((t for t in (int, float) if t is kind or t in typing.get_args(kind)), None)
        if low is not None and base is not None:
            found.append((f.name, low, base))
    return found


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_options_are_validated(name):
    cls = all_methods()[name]
    with pytest.raises(ConfigError, match="unknown key 'no_such_option'"):
        method_options({"name": name, "no_such_option": 1})
    for option, low, base in _numeric_bounds(cls.Options):
        below = low - 1 if base is int else low - 0.5
        with pytest.raises(ConfigError, match=f"method.{option}"):
            method_options({"name": name, option: base(below)})
