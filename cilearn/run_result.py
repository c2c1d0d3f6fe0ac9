"""One finished (or partly finished) run, read back from its folder: :class:`RunResult`.

The Python API (:mod:`cilearn.results`), the report and the sweep all read runs through this class.  Only numpy
and the run folder's layout (:class:`~cilearn.rundir.RunDir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .rundir import RunDir

SCALAR_KEYS = ("average_incremental_accuracy", "last_accuracy", "forgetting", "backward_transfer")


@dataclass(frozen=True)
class RunResult:
    """One run (a method and a seed), finished or stopped after some task: its folder and its ``metrics.json``.
    The Python API, the report and the sweep all read runs through this class."""

    path: Path
    metrics: dict

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        metrics = RunDir(path).read_metrics()
        if metrics is None:
            raise CheckpointError(f"'{path}' holds no readable metrics.json; give a run folder that cilearn wrote "
                                  f"(it appears after the first task).")
        return cls(Path(path), metrics)

    @property
    def files(self) -> RunDir:
        """The run's folder: where each of its files lies."""
        return RunDir(self.path)

    @property
    def label(self) -> str:
        """The method's label: runs of one label are the seeds of one method.  Runs of cilearn before its
        reports wrote ``<label>/seed<k>`` into metrics.json; the suffix is left out."""
        label = str(self.metrics.get("label") or self.metrics.get("method") or "run")
        suffix = f"/seed{self.seed}"
        return label[: -len(suffix)] if self.seed is not None and label.endswith(suffix) else label

    @property
    def seed(self) -> int | None:
        return self.metrics.get("seed")

    @property
    def display_name(self) -> str:
        """``<label> (seed <k>)``, for titles and messages."""
        return f"{self.label} (seed {self.seed})"

    @property
    def complete(self) -> bool:
        return bool(self.metrics.get("complete"))

    @property
    def tasks_done(self) -> int:
        """How many tasks have been evaluated."""
        return len(self.metrics.get("seen_accuracy") or [])

    @property
    def classes_per_step(self) -> list[int]:
        """The number of classes seen after each task."""
        return list(self.metrics.get("classes_per_step") or [])

    @property
    def headline_classifier(self) -> str:
        """The classifier (``head``, ``nme``, ...) whose metrics are the run's headline ones."""
        return str(self.metrics.get("classifier") or "head")

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """Row i = after task i, column j = accuracy on task j's test data; NaN where not evaluated."""
        return matrix(self.metrics.get("accuracy_matrix", []), self.metrics.get("num_tasks"))

    @property
    def seen_accuracy(self) -> np.ndarray:
        """Accuracy on all classes seen so far, after each task."""
        return np.asarray(self.metrics.get("seen_accuracy", []), dtype=np.float64)

    @property
    def average_incremental_accuracy(self) -> float | None:
        return self.metrics.get("average_incremental_accuracy")

    @property
    def last_accuracy(self) -> float | None:
        return self.metrics.get("last_accuracy")

    @property
    def forgetting(self) -> float | None:
        return self.metrics.get("forgetting")

    def classifier(self, name: str) -> dict:
        """The metrics of one classifier (``head``, ``nme``, ...); the headline ones are the ``classifier``'s."""
        found = self.metrics.get("classifiers", {})
        if name not in found:
            raise KeyError(f"run '{self.label}' has no classifier {name!r}; it has {', '.join(found) or 'none'}.")
        return found[name]

    def has_checkpoints(self) -> bool:
        """Every evaluated task left its checkpoint (not so with ``output.save_checkpoints: false``)."""
        return all(self.files.task_checkpoint(t).is_file() for t in range(self.tasks_done))

    def has_predictions(self) -> bool:
        """Every evaluated task left its test predictions (not so with ``output.save_features: false``)."""
        return self.tasks_done > 0 and all(self.files.predictions(t).is_file() for t in range(self.tasks_done))

    def log(self) -> dict[str, np.ndarray] | None:
        """The per-epoch log as float columns (NaN where empty), or None when there is none."""
        return self.files.read_log()

    def record(self) -> dict:
        """One flat dict: label, seed, method, dataset, classifier, the scalar metrics and the per-step curve."""
        m = self.metrics
        return {"label": self.label, "seed": self.seed, "method": m.get("method"), "dataset": m.get("dataset"),
                "classifier": m.get("classifier"), "tasks_done": m.get("tasks_done"), "complete": self.complete,
                **{key: m.get(key) for key in SCALAR_KEYS}, "seen_accuracy": list(m.get("seen_accuracy", [])),
                "path": str(self.path)}

    def __repr__(self) -> str:
        last = self.last_accuracy
        shown = f"{last:.1%}" if isinstance(last, float) else "-"
        return (f"RunResult({self.label!r}, seed={self.seed}, tasks {self.metrics.get('tasks_done')}/"
                f"{self.metrics.get('num_tasks')}, last accuracy {shown}, path='{self.path}')")


def matrix(rows: list[list[float | None]], num_tasks: int | None = None) -> np.ndarray:
    """An accuracy matrix from ``metrics.json`` (rows of floats and nulls) as a float array, NaN for null."""
    width = max([len(row) for row in rows] + [num_tasks or 0])
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, :len(row)] = [np.nan if v is None else v for v in row]
    return out
