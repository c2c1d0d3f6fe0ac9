"""Bad input and odd states found by trying cilearn as a user: lock files, and messages that read right."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from helpers import digits_config

from cilearn.cli import main

TINY = digits_config(scenario={"num_tasks": 2}, model={"options": {"hidden": [16]}},
                     train={"epochs": 1, "scheduler": "constant"}, output={"save_features": False})


def write(tmp_path: Path, raw: dict, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_finished_runs_leave_no_lock_file(tmp_path):
    assert main(["run", write(tmp_path, TINY), "--out", str(tmp_path / "one")]) == 0
    several = {**{k: v for k, v in TINY.items() if k != "method"}, "methods": ["finetune", "joint"]}
    assert main(["run", write(tmp_path, several, "s.yaml"), "--out", str(tmp_path / "two")]) == 0
    assert not list(tmp_path.rglob(".lock"))


def test_a_refused_resume_leaves_no_lock_of_its_own(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, TINY), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    for path in (out / "checkpoints").glob("*.pt"):
        path.write_bytes(b"PK\x03\x04 not a checkpoint")
    (out / ".lock").write_text("pid 999999")  # left by a killed process
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    lock = out / ".lock"
    assert not lock.exists() or lock.read_text() != f"pid {os.getpid()}"


def test_one_finished_task_keeps_its_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, TINY), "--out", str(out)]) == 0
    (out / "checkpoints" / "task_01.pt").unlink()  # as if killed during task 2
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["train"]["lr"] = 1e6
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"The finished task keeps its results and checkpoint in '{out}'." in err, err


def test_a_run_whose_last_task_is_checkpointed_only_writes_its_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, TINY), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))  # e.g. rebuilt, not final
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "holds all 2 tasks: writing the final results" in text and "task 3/2" not in text
    assert json.loads((out / "metrics.json").read_text())["complete"]


def test_one_run_is_not_runs(tmp_path, capsys):
    sweep = {"name": "one", "base": TINY, "grid": {"seed": [0]}}
    path = write(tmp_path, sweep, "sweep.yaml")
    assert main(["sweep", path, "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    assert f"1 run in {tmp_path / 'sweep'} (dry run" in capsys.readouterr().out
