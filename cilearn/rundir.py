"""Run directories: atomic file writes and a lock so that two runs never share one folder."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import CheckpointError

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
            os.fchmod(handle.fileno(), _FILE_MODE)  # mkstemp makes 0600; give the mode open() would
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
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "predictions"):
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


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint that holds Python objects other than tensors and plain values: never loaded."""


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``: a checkpoint can hold tensors and plain values, never code.

    A file holding anything else (a pickle that names functions or classes) raises
    :class:`UnsafeCheckpoint`; a truncated or corrupt file raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist.") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported" in text or "unsupported" in text or "Weights only load failed" in text:
            found = next((line.strip().rstrip(".") for line in text.splitlines()
                          if "nsupported" in line and "Weights only" not in line), "")
            detail = f" ({found[:160]})" if found else ""
            raise UnsafeCheckpoint(f"checkpoint '{path}' holds more than tensors and plain values{detail}; "
                                   f"refusing to load it, because loading it could run code. It is not a "
                                   f"checkpoint cilearn wrote; delete or replace it.") from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # corrupt or truncated: zip/pickle errors of every kind
        raise _unreadable(path, exc) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, not a cilearn checkpoint.")
    return state


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    first = " ".join(str(exc).split()).split(". ")[0].rstrip(".")[:160]  # torch appends long advice
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return CheckpointError(f"checkpoint '{path}' cannot be read ({detail}); it is truncated or corrupt.")


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``; the kernel releases it if the process dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as exc:
            raise CheckpointError(f"cannot use '{self.path.parent}' as a run directory "
                                  f"({exc.strerror or exc}); choose another --out.") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(f"run directory '{self.path.parent}' is in use by another cilearn process "
                                  f"({owner}); wait for it to finish or stop it, then try again.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
