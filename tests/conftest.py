"""Fixtures for the whole suite. Importable builders (digits_config, make_run, installed_plugin) are in helpers.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and much faster on a CPU shared with other jobs. Subprocesses that the
    tests start set their own threads (OMP_NUM_THREADS, train.num_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
