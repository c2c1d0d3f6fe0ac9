"""Run-directory primitives: the folder lock and reading checkpoints without running code."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cilearn.checkpoints import UnsafeCheckpoint, load_checkpoint, save_checkpoint
from cilearn.errors import CheckpointError
from cilearn.rundir import RunLock

ROOT = Path(__file__).resolve().parents[1]


def test_run_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()}"
        with pytest.raises(CheckpointError, match=rf"is in use by another cilearn process \(pid {os.getpid()}\)"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # released on exit: the next run takes it
        pass
    assert list((tmp_path / "run").iterdir()) == []  # released: the lock file goes with it


def test_run_lock_on_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot use .* as a run directory"):
        with RunLock(tmp_path / "file" / "run"):
            pass


def test_cilearn_imports_without_posix_only_modules():
    """fcntl and resource exist only on POSIX; cilearn (locking through filelock) and every command must import
    without them (Windows)."""
    code = ("import sys; sys.modules['fcntl'] = sys.modules['resource'] = None\n"
            "import cilearn.cli, cilearn.rundir, cilearn.runner\n"
            "cilearn.cli.build_parser()\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("kind, error, message", [
    ("random bytes", CheckpointError,
     "is not a checkpoint (corrupt or wrong file: neither a zip archive nor a pickle)"),
    ("random bytes after a pickle header", CheckpointError, "is not a checkpoint (corrupt or wrong file: Unsupported"),
    ("text", CheckpointError, "is not a checkpoint (corrupt or wrong file"),
    ("plain pickle of plain values", CheckpointError, "a pickle that torch.save did not write"),
    ("empty", CheckpointError, "cannot be read (EOFError); it is truncated or corrupt"),
    ("truncated", CheckpointError, "cannot be read (RuntimeError"),
    ("torch.save of code", UnsafeCheckpoint, "unsupported GLOBAL posix.system"),
    ("plain pickle of code", UnsafeCheckpoint, "(it names posix.system)"),
])
def test_what_is_not_a_checkpoint_and_what_could_run_code(tmp_path, kind, error, message):
    path = tmp_path / "c.pt"
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "random bytes":
        path.write_bytes(b"\x13" + noise)
    elif kind == "random bytes after a pickle header":
        path.write_bytes(b"\x80\x02\xfe" + noise)
    elif kind == "text":
        path.write_text("data: {name: digits}\n")
    elif kind == "plain pickle of plain values":
        path.write_bytes(pickle.dumps({"task": 1, "model": [1.0, 2.0]}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_checkpoint(path, {"model": torch.zeros(100)})
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "torch.save of code":
        torch.save({"model": _RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _RunsCode()}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is error and message in str(info.value) and str(path) in str(info.value), info.value
    assert ("could run code" in str(info.value)) == (error is UnsafeCheckpoint)


def test_a_checkpoint_round_trips(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"task": 0, "model": {"w": torch.arange(3.0)}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["task"] == 0 and torch.equal(state["model"]["w"], torch.arange(3.0))
