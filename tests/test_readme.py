"""The README's Python API and Loggers sections run as written (with fewer epochs where noted)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401 - autouse fixture
from test_loggers import wandb_records

from cilearn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_python_api_section_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    code = blocks(section("Python API"), "python")
    assert len(code) == 2
    for version in (0, 1):  # a script or a notebook runs again as it is
        namespace: dict = {}
        exec(compile(code[0], "README Python API 1", "exec"), namespace)  # noqa: S102 - the README's own code
        result = namespace["result"]
        assert result.path == Path("runs/api-demo") / f"version_{version}"
        assert result.labels == ["finetune", "icarl"] and result.complete
        assert namespace["icarl"].accuracy_matrix.shape == (5, 5)
        assert namespace["again"].records() == namespace["rows"]
        assert len(namespace["figure"].axes[0].lines) == 2
    exec(compile(code[1], "README Python API 2", "exec"), namespace)  # noqa: S102
    assert len(namespace["seen"]) == sum(len(t.test) for t in namespace["scenario"])  # after the last task: all


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("tensorboard", "wandb", "mlflow")),
                    reason="the tensorboard, wandb and mlflow extras are not installed")
def test_the_loggers_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    commands = [line.split("#")[0].strip() for line in blocks(section("Loggers"), "bash")[0].splitlines()
                if line.startswith("cilearn run")]
    assert len(commands) == 3
    faster = ["--set", "methods=[finetune]", "--set", "train.epochs=1"]  # the README runs the whole quickstart
    for command in commands:
        assert main(shlex.split(command)[1:] + faster) == 0
    assert list((tmp_path / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "runs" / "ml" / "mlflow-run-id").is_file() and (tmp_path / "runs" / "ml" / "mlflow").is_dir()
    [run] = list(tmp_path.glob("runs/quickstart/*"))  # W&B's service writes its file in the background: wait
    assert any(r.WhichOneof("record_type") == "history" for r in wandb_records(run))
