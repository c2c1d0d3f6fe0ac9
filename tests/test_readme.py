"""The README's Python API and Loggers sections run as written (with fewer epochs where noted)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
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


def quickstart_rows(text: str) -> dict[str, list[str]]:
    """The quickstart's table rows (method → its cells) in a README block or a run's output."""
    names = ("finetune", "joint", "lwf", "icarl")
    return {cells[0]: cells[1:] for cells in (line.split() for line in text.splitlines())
            if cells and cells[0] in names}


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["native", "avx2"])
def test_the_quickstart_prints_the_readme_table_to_the_digit(tmp_path, isa):
    """`cilearn run configs/quickstart.yaml` as the README shows it, on this CPU's own kernels and on the
    AVX2 ones (ATen and oneDNN capped at AVX2: the kernels of a CPU without AVX-512 or bf16 instructions).
    fp32 gives the same table on both, digit for digit; the default precision must not depend on the CPU."""
    import os
    import subprocess
    import sys

    import torch

    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() == "AVX2":
        pytest.skip("this CPU's own kernels are the AVX2 ones: the 'native' case ran them")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [block] = re.findall(r"```\n(\$ cilearn run configs/quickstart\.yaml.*?)```", readme, flags=re.S)
    expected = quickstart_rows(block)
    assert set(expected) == {"finetune", "joint", "lwf", "icarl"}
    env = {**os.environ, "CILEARN_DATA": str(tmp_path / "no-data")}
    if isa == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    done = subprocess.run([sys.executable, "-m", "cilearn", "run", str(ROOT / "configs/quickstart.yaml"),
                           "--out", str(tmp_path / "qs")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert quickstart_rows(done.stdout) == expected
