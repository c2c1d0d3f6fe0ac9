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
