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

A finished run as data (its metrics, label, seed, accuracy matrix) is :class:`cilearn.results.RunResult`, which
reads its files through :class:`RunDir`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from filelock import FileLock, Timeout

from .distributed import is_main
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
    refuses the write (full disk, read-only, no permission) is a CheckpointError naming the file.

    In a torchrun job only rank 0 writes: the other processes hold the same results and skip it."""
    if not is_main():
        return
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
    held while a run uses the folder; the operating system releases it if the process dies.  The file is removed
    when the lock is released (a finished run leaves none, a refused one leaves no pid of its own); only a
    killed process leaves one, which the next run takes over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._lock: FileLock | None = None

    def __enter__(self) -> RunLock:
        if not is_main():  # torchrun: rank 0 holds the lock for the whole job
            return self
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
            try:  # while still holding it: nobody else can be using the file (Windows refuses, and keeps it)
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release()
            self._lock = None


def check_fresh(out: Path) -> None:
    """A new run never writes into a folder that holds anything (a lone ``.lock`` left by a run that died
    before writing its config does not count).  Rank 0 of a torchrun job checks for all."""
    if not is_main():
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder '{out}' is a file, not a folder; choose another --out.")
    if out.is_dir() and any(not _leftover(p.name) for p in out.iterdir()):
        raise ConfigError(f"output folder '{out}' already exists and is not empty; it is never overwritten. "
                          f"Continue it with 'cilearn run --resume {out}', or choose another --out.")


def _leftover(name: str) -> bool:
    """What a run killed before it wrote its config leaves behind."""
    return name == ".lock" or (name.startswith(".config.yaml.") and name.endswith(".tmp"))


def _float_or_nan(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class RunDir:
    """The layout of one run folder, or of the parent folder of several runs (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run folder a task or epoch checkpoint lies in."""
        return cls(Path(checkpoint).resolve().parent.parent)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # --- paths ---
    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.json")
    info = property(lambda self: self.path / "run.json")
    log = property(lambda self: self.path / "log.csv")
    matrix = property(lambda self: self.path / "accuracy_matrix.csv")
    samples = property(lambda self: self.path / "samples.npz")
    checkpoints = property(lambda self: self.path / "checkpoints")
    epoch_checkpoint = property(lambda self: self.path / "checkpoints" / "epoch.pt")
    # the parent folder of several runs
    experiment = property(lambda self: self.path / "experiment.yaml")
    summary_json = property(lambda self: self.path / "summary.json")
    summary_md = property(lambda self: self.path / "summary.md")

    def task_checkpoint(self, task: int) -> Path:
        return self.checkpoints / f"task_{task:02d}.pt"

    def task_checkpoints(self) -> list[Path]:
        """Finished tasks' checkpoints, last task first."""
        return sorted((p for p in self.checkpoints.glob("task_*.pt") if p.stem[5:].isdigit()),
                      key=lambda p: int(p.stem[5:]), reverse=True)

    def predictions(self, task: int) -> Path:
        return self.path / "predictions" / f"task_{task:02d}.npz"

    def exemplars(self, task: int) -> Path:
        return self.path / "exemplars" / f"task_{task:02d}.npz"

    def is_run(self) -> bool:
        """A run that finished a task: it has metrics and a config."""
        return self.metrics.is_file() and self.config.is_file()

    def is_experiment(self) -> bool:
        """The parent folder of several runs."""
        return self.experiment.is_file()

    def is_resumable(self) -> bool:
        """A run or an experiment that wrote its config: ``cilearn run --resume`` continues it."""
        return self.config.is_file() or self.is_experiment()

    def runs_below(self) -> list[RunDir]:
        """The runs (see :meth:`is_run`) one and two levels down (``<label>``, ``<label>/seed<k>``), in that
        order, each level sorted."""
        found = [RunDir(p.parent) for pattern in ("*/metrics.json", "*/*/metrics.json")
                 for p in sorted(self.path.glob(pattern))]
        return [run for run in found if run.is_run()]

    def runs_with_checkpoints(self) -> list[str]:
        """The names of the child run folders that hold a finished task's checkpoint."""
        return sorted(child.name for child in self.path.iterdir()
                      if child.is_dir() and RunDir(child).task_checkpoints())

    # --- reading ---
    def load_metrics(self) -> Any:
        """``metrics.json`` as parsed; OSError when it cannot be read, ValueError when it is no JSON."""
        return json.loads(self.metrics.read_text())

    def read_metrics(self) -> dict | None:
        """``metrics.json``, or None when it is missing, unreadable or not an object."""
        try:
            metrics = self.load_metrics()
        except (OSError, ValueError):
            return None
        return metrics if isinstance(metrics, dict) else None

    def read_log(self) -> dict[str, np.ndarray] | None:
        """``log.csv`` as float columns (NaN where empty), or None when there is none or it has no rows."""
        if not self.log.is_file():
            return None
        with open(self.log, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None
        return {key: np.array([_float_or_nan(row.get(key)) for row in rows]) for key in rows[0]}

    def read_info(self) -> dict | None:
        try:
            info = json.loads(self.info.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def read_npz(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    # --- writing (atomic) ---
    def write_config(self, config: dict) -> None:
        write_yaml(self.config, config)

    def write_info(self, info: dict) -> None:
        write_json(self.info, info)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics, metrics)

    def write_log(self, header: list[str], rows: list[list[Any]]) -> None:
        write_csv(self.log, header, rows)

    def write_matrix(self, matrix: list[list[float | None]], num_tasks: int) -> None:
        write_csv(self.matrix, ["after_task"] + [f"task_{j}" for j in range(num_tasks)],
                  [[i] + ["" if v is None else f"{v:.6f}" for v in row] + [""] * (num_tasks - len(row))
                   for i, row in enumerate(matrix)])

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def remove_stale_temp_files(self) -> list[Path]:
        return remove_stale_temp_files(self.path)
