"""Finding and reading run directories for reports (no plotting, no torch)."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..rundir import RunDir
from . import ReportError


@dataclass
class RunRecord:
    """One finished (or partly finished) run directory."""

    dir: Path
    metrics: dict
    label: str  # the method label: runs of one label are the seeds of one method
    seed: int

    @property
    def name(self) -> str:
        return f"{self.label} (seed {self.seed})"

    @property
    def tasks_done(self) -> int:
        return len(self.metrics.get("seen_accuracy") or [])

    @property
    def classes_per_step(self) -> list[int]:
        return list(self.metrics.get("classes_per_step") or [])

    @property
    def classifier(self) -> str:
        return str(self.metrics.get("classifier") or "head")

    def checkpoint_path(self, task: int) -> Path:
        return RunDir(self.dir).task_checkpoint(task)

    def predictions_path(self, task: int) -> Path:
        return RunDir(self.dir).predictions(task)

    def has_checkpoints(self) -> bool:
        return all(self.checkpoint_path(t).is_file() for t in range(self.tasks_done))

    def has_predictions(self) -> bool:
        return self.tasks_done > 0 and all(self.predictions_path(t).is_file() for t in range(self.tasks_done))

    def predictions(self, task: int) -> dict[str, np.ndarray]:
        path = self.predictions_path(task)
        if not path.is_file():
            raise ReportError(f"'{path}' is missing: the run was made with output.save_features: false, so "
                              f"there are no saved predictions to plot.")
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def log(self) -> dict[str, np.ndarray] | None:
        """``log.csv`` as float columns (NaN where empty), or None when there is none."""
        path = self.dir / "log.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None
        return {key: np.array([_float(row.get(key)) for row in rows]) for key in rows[0]}


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def method_label(metrics: dict) -> str:
    """The method's label; older runs wrote ``label/seed<k>`` into metrics.json, which is stripped."""
    label = str(metrics.get("label") or metrics.get("method") or "run")
    seed = metrics.get("seed")
    suffix = f"/seed{seed}"
    return label[: -len(suffix)] if seed is not None and label.endswith(suffix) else label


def _is_run(path: Path) -> bool:
    return RunDir(path).is_run()


def _read_run(path: Path) -> RunRecord:
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"'{path / 'metrics.json'}' cannot be read ({exc}); is the run directory "
                          f"intact?") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"'{path / 'metrics.json'}' is not a cilearn metrics file.")
    return RunRecord(dir=path, metrics=metrics, label=method_label(metrics), seed=int(metrics.get("seed") or 0))


def discover_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Every run below ``paths``: single run folders (``metrics.json`` + ``config.yaml``), experiment
    folders (``experiment.yaml``) and a method's folder of seeds, expanded to their child runs.  Raises :class:`ReportError` for a
    folder that is neither, or when no run has finished a task."""
    if not paths:
        raise ReportError("give at least one run directory.")
    found: dict[Path, RunRecord] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"'{path}' does not exist; give a folder that 'cilearn run' wrote.")
        if not path.is_dir():
            raise ReportError(f"'{path}' is a file; give a run directory (the folder that holds metrics.json "
                              f"and config.yaml) or an experiment folder (with experiment.yaml).")
        children = [c for c in sorted(p.parent for p in path.glob("*/metrics.json")) + sorted(
            p.parent for p in path.glob("*/*/metrics.json")) if _is_run(c)]
        if _is_run(path):
            candidates = [path]
        elif children:  # an experiment folder, or one method's folder of seeds (<label>/seed<k>)
            candidates = children
        elif (path / "experiment.yaml").is_file():
            raise ReportError(f"experiment folder '{path}' holds no finished task yet (no child folder "
                              f"with metrics.json); wait for the run or resume it.")
        else:
            raise ReportError(f"'{path}' is not a cilearn run directory: it has no metrics.json + config.yaml "
                              f"(a single run) and no experiment.yaml (several methods or seeds).")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in found:
                found[key] = _read_run(candidate)
    runs = [r for r in found.values() if r.tasks_done > 0]
    if not runs:
        raise ReportError("none of the given runs has finished a task yet; there is nothing to report.")
    return runs


def group_runs(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs by method label (seeds sorted); a label gets its dataset appended when runs on several
    datasets are compared, so that different datasets never share a mean."""
    datasets = {r.metrics.get("dataset") for r in runs}
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        key = run.label if len(datasets) == 1 else f"{run.label} [{run.metrics.get('dataset')}]"
        groups[key].append(run)
    return {key: sorted(group, key=lambda r: (r.seed, str(r.dir))) for key, group in groups.items()}


def choose_steps(requested: list[int] | None, tasks_done: int) -> list[int]:
    """0-based task indices from 1-based task numbers (negative counts from the end); default first,
    middle and last."""
    if not requested:
        return sorted({0, (tasks_done - 1) // 2, tasks_done - 1})
    steps = []
    for number in requested:
        index = number - 1 if number > 0 else tasks_done + number
        if number == 0 or not 0 <= index < tasks_done:
            raise ReportError(f"step {number} does not exist: the run has {tasks_done} finished tasks "
                              f"(give task numbers 1..{tasks_done}, or -1 for the last).")
        steps.append(index)
    return sorted(set(steps))


def safe_name(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"
