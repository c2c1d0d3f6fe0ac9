"""Checkpoints: the file format, safe loading, and finding the one to resume from.

A checkpoint is a ``torch.save``d dict of tensors and plain values only — loaded with
``weights_only=True``, so a checkpoint can never run code.  Its keys (format 3):

``task`` (0-based), ``stage`` (index of the task's training stage) and ``next_epoch`` (None: the task
is finished), ``head_sizes``, ``model``, ``method`` (the method's ``state_dict()``), ``history`` (the
evaluation of every finished task), ``log_rows`` (one dict per epoch, the fields of
:class:`~cilearn.engine.events.EpochRow`), ``timing``, ``rng`` (every generator); inside a task also ``trainer``
(optimizer and schedule), ``task_rng`` (the random state as the task began) and ``train_samples``.
Format 2 differs only in ``log_rows``: lists of ``log.csv``'s cells; such checkpoints still resume.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..log import get_logger
from ..rundir import RunDir, atomic_write_bytes

log = get_logger(__name__)

CHECKPOINT_FORMAT = 3
READABLE_FORMATS = (2, 3)
KEYS = ("task", "next_epoch", "head_sizes", "model", "method", "history", "log_rows", "timing", "rng")


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resume_point(state: dict) -> tuple[int, int, int]:
    """Where a checkpoint resumes: (task, stage, epoch); the next task's start after a finished task."""
    if state["next_epoch"] is None:
        return state["task"] + 1, 0, 0
    return state["task"], int(state.get("stage", 0)), int(state["next_epoch"])


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


class CheckpointStore:
    """A run's checkpoints: one per finished task (``task_XX.pt``) and one inside the current task
    (``epoch.pt``)."""

    def __init__(self, run_dir: RunDir, num_tasks: int):
        self.dir, self.num_tasks = run_dir, num_tasks
        self.resumed_from: Path | None = None

    def save(self, state: dict) -> None:
        if state["next_epoch"] is None:
            save_checkpoint(self.dir.task_checkpoint(state["task"]), state)
            self.dir.epoch_checkpoint.unlink(missing_ok=True)
        else:
            save_checkpoint(self.dir.epoch_checkpoint, state)

    def latest(self) -> dict | None:
        """The most advanced readable checkpoint, or None when there is none yet.

        ``epoch.pt`` (inside a task) wins when it is newer than the last finished task: a process killed
        between writing ``task_XX.pt`` and deleting ``epoch.pt`` leaves a stale one behind.  A truncated or
        corrupt file is skipped for the previous checkpoint, with a warning naming it; a file that holds
        anything but tensors and plain values is refused."""
        skipped: list[CheckpointError] = []
        epoch_path = self.dir.epoch_checkpoint
        epoch_state = self._read(epoch_path, skipped) if epoch_path.exists() else None
        chosen = None
        for path in self.dir.task_checkpoints():
            if epoch_state is not None and epoch_state["task"] > int(path.stem[5:]):
                break
            state = self._read(path, skipped)
            if state is not None:
                chosen = (path, state)
                break
        if chosen is None and epoch_state is not None:
            chosen = (epoch_path, epoch_state)
        if chosen is None:
            if skipped:
                raise CheckpointError(f"{skipped[0]} No other checkpoint in '{self.dir.checkpoints}' can be read "
                                      f"either; delete the unreadable files to start the run over.")
            return None
        for error in skipped:
            log.warning(f"{error} Resuming from '{chosen[0]}' instead.")
        self.resumed_from = chosen[0]
        return chosen[1]

    def _read(self, path: Path, skipped: list) -> dict | None:
        try:
            state = load_checkpoint(path)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as exc:
            skipped.append(exc)
            return None
        if "format" in state and state["format"] not in READABLE_FORMATS:
            raise CheckpointError(f"checkpoint '{path}' has format {state['format']}; this cilearn reads formats "
                                  f"{' and '.join(map(str, READABLE_FORMATS))}. Resume it with the cilearn version "
                                  f"that wrote it.")
        missing = [key for key in ("format",) + KEYS if key not in state]
        if missing or (state["next_epoch"] is not None and "trainer" not in state):
            skipped.append(CheckpointError(f"checkpoint '{path}' is incomplete (no {', '.join(missing) or 'trainer'} "
                                           f"entry); it is not a cilearn checkpoint or it is damaged."))
            return None
        if not isinstance(state["task"], int) or not 0 <= state["task"] < self.num_tasks:
            task = state["task"] + 1 if isinstance(state["task"], int) else state["task"]
            raise CheckpointError(f"checkpoint '{path}' is for task {task}, "
                                  f"but this run's config has {self.num_tasks} tasks; was config.yaml edited after "
                                  f"the run started?")
        return state

    @contextmanager
    def must_fit(self):
        """Turn a checkpoint that does not fit this run's model or method into one clear error."""
        try:
            yield
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            text = " ".join(str(exc).split())
            detail = f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__
            raise CheckpointError(f"checkpoint '{self.resumed_from}' does not fit this run's model or method "
                                  f"({detail}); was config.yaml edited after the run started?") from None
