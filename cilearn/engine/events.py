"""What a run tells its loggers: one row per training epoch and four events (see :class:`cilearn.loggers.Logger`).

The :class:`~cilearn.engine.recorder.Recorder` builds them; loggers read them and never see the run itself.  Every
event carries ``rows``, the epochs logged since the run began (``log.csv``'s rows, those of a resumed run's
earlier processes included), so ``len(event.rows)`` is the step of an x axis that a resumed run continues.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..rundir import RunDir

LOG_COLUMNS = ["task", "epoch", "lr", "train_loss", "train_accuracy", "test_accuracy_current",
               "test_accuracy_seen", "stage", "seconds"]


@dataclass(frozen=True)
class EpochRow:
    """One training epoch: a row of ``log.csv`` (the fields are its columns, in order)."""

    task: int  # 0-based
    epoch: int  # 1-based, within the stage
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy_current: float  # NaN when this epoch was not evaluated
    test_accuracy_seen: float
    stage: str
    seconds: float

    def cells(self) -> list:
        """The row as ``log.csv`` writes it."""
        return [self.task, self.epoch, f"{self.lr:.6g}", f"{self.train_loss:.6f}", f"{self.train_accuracy:.6f}",
                f"{self.test_accuracy_current:.6f}", f"{self.test_accuracy_seen:.6f}", self.stage,
                f"{self.seconds:.3f}"]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def restore(cls, saved: dict | Sequence) -> EpochRow:
        """A row from a checkpoint: a dict of the fields, or (format 2) ``log.csv``'s cells as a list, whose
        numbers were text; read back, they give the same cells again."""
        if isinstance(saved, dict):
            return cls(**saved)
        task, epoch, *numbers, stage, seconds = saved
        return cls(int(task), int(epoch), *(float(x) for x in numbers), str(stage), float(seconds))

    def with_test_accuracies(self, current: float, seen: float) -> EpochRow:
        return dataclasses.replace(self, test_accuracy_current=float(current), test_accuracy_seen=float(seen))


@dataclass(frozen=True)
class RunStarted:
    """The run folder holds its config and ``run.json``; a resumed run starts again from a checkpoint."""

    label: str  # the run's name in summaries and console lines (an experiment of several seeds adds /seed<k>)
    method: str  # the method's name
    config: Config  # as parsed; ``config.to_dict()`` is what config.yaml holds
    files: RunDir  # the run folder (``files.path``; ``files / "name"``: a path inside it)
    rows: Sequence[EpochRow]  # the epochs a resumed run logged before this process began; empty for a new run
    metrics: dict | None  # a resumed run's metrics.json as of its checkpoint; None when no task is done yet


@dataclass(frozen=True)
class EpochEnded:
    """A training epoch ended; ``row`` (also ``rows[-1]``) has NaN test accuracies when it was not evaluated.
    A task's last epoch gets its test accuracies from the evaluation after the task: see :class:`TaskEnded`."""

    row: EpochRow
    rows: Sequence[EpochRow]


@dataclass(frozen=True)
class TaskEnded:
    """A task was trained and evaluated; ``metrics``: the run's metrics.json as of now.  ``rows[-1]`` is the
    task's last epoch, with the test accuracies of this evaluation (when the task trained at all)."""

    task: int  # 0-based
    metrics: dict
    rows: Sequence[EpochRow]

    @property
    def last_epoch(self) -> EpochRow | None:
        """The task's last epoch, or None when the task trained no epoch."""
        return self.rows[-1] if self.rows and self.rows[-1].task == self.task else None


@dataclass(frozen=True)
class RunEnded:
    """The run finished (``metrics``: the final metrics.json) or stopped on an error or Ctrl-C (None)."""

    metrics: dict | None
    rows: Sequence[EpochRow]
