"""Helpers shared by the method tests: tiny runs on the bundled digits."""

from __future__ import annotations

import pytest
import torch

from cilearn.config import parse_config
from cilearn.runner import Run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and much faster on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(tmp_path, method: dict, num_tasks: int = 5, epochs: int = 1) -> Run:
    """A set-up (not yet executed) run of ``method`` on digits, 2 classes per task, a 32-unit MLP."""
    raw = {"data": {"name": "digits"},
           "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": num_tasks},
           "model": {"name": "mlp", "options": {"hidden": [32]}},
           "method": method,
           "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "scheduler": "constant",
                     "progress": False, "eval_every": 0},
           "output": {"save_checkpoints": False, "save_features": False},
           "seed": 0}
    run = Run(parse_config(raw), tmp_path)
    run.setup()
    return run


def installed_plugin(tmp_path, package: str, source: str, entry_points: str) -> dict:
    """A package "installed" into ``tmp_path/site`` as pip would leave it (the module and a dist-info folder
    with ``entry_points.txt``); returns the environment of a subprocess that sees it beside cilearn."""
    import os
    import textwrap
    from pathlib import Path

    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    name = package.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{root}", "OMP_NUM_THREADS": "1"}
