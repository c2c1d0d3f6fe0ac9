"""Run directories: one owner of their layout, atomic file writes, and a lock so that two runs never
share one folder.

:class:`RunDir` alone knows where a run keeps what; the runner, the checkpoint store, the report and
transfer learning all go through it.  One run's folder::

    config.yaml              the resolved config (every default filled in)
    run.json                 what reports need without reloading the dataset: class names and order,
                             normalisation, image shape, tasks
    metrics.json             rewritten after every task (``complete`` at the end)
    log.csv                  one row per epoch
    accuracy_matrix.csv
    samples.npz              a fixed set of first-task test images (Grad-CAM)
    predictions/task_XX.npz  test labels, every classifier's predictions, a feature sample
    exemplars/task_XX.npz    the method's stored samples after the task (+ their features)
    checkpoints/task_XX.pt   everything needed to continue; epoch.pt inside a task
    .lock

Several methods or seeds: a parent folder with ``experiment.yaml``, one child run folder per run
(``<label>`` or ``<label>/seed<k>``), ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from filelock import FileLock, Timeout

from .errors import CheckpointError, ConfigError

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: once, at import, before any threads
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see the old file or
    the new one, never half of one, even if the process is killed mid-write.  A file system that
    refuses the write (full disk, read-only, no permission) is a CheckpointError naming the file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # POSIX: mkstemp makes 0600; give the mode open() would
                os.fchmod(handle.fileno(), _FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        raise CheckpointError(f"cannot write '{path}' ({exc.strerror or exc}); check the free space and "
                              f"permissions of that folder.") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed process left behind (``.NAME.XXXX.tmp``); call it only while
    holding the run's lock, when no writer of this run can be active."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "predictions", run_dir / "exemplars"):
        if folder.is_dir():
            for stale in folder.glob(f".*{TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


class RunLock:
    """An exclusive lock on ``RUN_DIR/.lock`` (``flock`` on POSIX, ``LockFileEx`` on Windows, through filelock),
    held while a run uses the folder; the operating system releases it if the process dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._lock: FileLock | None = None

    def __enter__(self) -> RunLock:
        lock = FileLock(self.path, timeout=0)  # one attempt: a folder in use is an error, never a wait
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise CheckpointError(f"run directory '{self.path.parent}' is in use by another cilearn process "
                                  f"({self._owner()}); wait for it to finish or stop it, then try again.") from None
        except OSError as exc:
            raise CheckpointError(f"cannot use '{self.path.parent}' as a run directory "
                                  f"({exc.strerror or exc}); choose another --out.") from None
        self._lock = lock
        try:  # who holds it, for the message above; best effort (Windows refuses reads of a locked range)
            with open(self.path, "r+") as handle:
                handle.truncate()
                handle.write(f"pid {os.getpid()}")
        except OSError:
            pass
        return self

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
