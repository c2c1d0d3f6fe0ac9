"""Run directories: atomic file writes, checkpoints read without running code, and a lock so that two runs
never share one folder."""

from __future__ import annotations

import csv
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
from filelock import FileLock, Timeout

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


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a zip archive holding a pickle)
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol 2 or newer (torch's legacy format, pickle.dump)
# What torch's restricted unpickler says when a pickle names a function or class it will not load.
_CODE_MARKERS = ("GLOBAL", "reduce", "new object", "Can only build", "persistent")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``: a checkpoint can hold tensors and plain values, never code.

    A file holding anything else (a pickle that names functions or classes) raises
    :class:`UnsafeCheckpoint`; a file that is not a checkpoint at all (random bytes, another format) or a
    truncated or corrupt one raises :class:`CheckpointError`, which ``--resume`` falls back past."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist.") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({exc.strerror or exc}).") from None
    if head and not head.startswith(_ZIP_MAGIC) and head[0] != _PICKLE_PROTO:
        raise _not_a_checkpoint(path, "neither a zip archive nor a pickle")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _unpickler_reason(str(exc))
        if any(marker in found for marker in _CODE_MARKERS):
            raise _unsafe(path, found) from None
        # torch's restricted reader stops at the first opcode it does not know: random bytes, or a pickle of a
        # newer protocol (plain pickle.dump).  pickletools parses the stream without running anything.
        names = _pickled_globals(path)
        if names:
            raise _unsafe(path, f"it names {names[0]}") from None
        raise _not_a_checkpoint(path, "a pickle that torch.save did not write" if names == [] else
                                found or "not a pickle torch can read") from None
    except Exception as exc:  # corrupt or truncated: zip/pickle errors of every kind
        raise _unreadable(path, exc) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, not a cilearn checkpoint.")
    return state


def _unpickler_reason(text: str) -> str:
    """The line of torch's long weights-only message that says what it refused (it adds pages of advice)."""
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()]
    return next((line for line in lines[1:] if not line.startswith(("Please", "Check", "WeightsUnpickler"))), "")


def _pickled_globals(path: Path) -> list[str] | None:
    """Functions and classes a plain pickle file names (``[]``: none), or None when it is not a pickle."""
    import pickletools

    names, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(path.read_bytes()):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) or "a global")
            elif opcode.name in ("INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX") and not names:
                names.append("an object constructor")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # pickletools raises ValueError and others on bytes that are not a pickle
        return None
    return names


def _unsafe(path: Path, found: str) -> UnsafeCheckpoint:
    detail = f" ({found[:160]})" if found else ""
    return UnsafeCheckpoint(f"checkpoint '{path}' holds more than tensors and plain values{detail}; refusing to load "
                            f"it, because loading it could run code. It is not a checkpoint cilearn wrote; delete or "
                            f"replace it.")


def _not_a_checkpoint(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"checkpoint '{path}' is not a checkpoint (corrupt or wrong file: {detail[:160]}); "
                           f"delete or replace it.")


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    first = " ".join(str(exc).split()).split(". ")[0].rstrip(".")[:160]  # torch appends long advice
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return CheckpointError(f"checkpoint '{path}' cannot be read ({detail}); it is truncated or corrupt.")


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
