"""Finding and reading run directories for reports (no plotting)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..run_result import RunResult
from ..rundir import RunDir
from . import ReportError


def read_predictions(run: RunResult, task: int) -> dict[str, np.ndarray]:
    """The test labels, predictions and feature sample the run saved after ``task``."""
    data = run.files.read_npz(run.files.predictions(task))
    if data is None:
        raise ReportError(f"'{run.files.predictions(task)}' is missing: the run was made with "
                          f"output.save_features: false, so there are no saved predictions to plot.")
    return data


def _read_run(files: RunDir) -> RunResult:
    try:
        metrics = files.load_metrics()
    except (OSError, ValueError) as exc:
        raise ReportError(f"'{files.metrics}' cannot be read ({exc}); is the run directory "
                          f"intact?") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"'{files.metrics}' is not a cilearn metrics file.")
    return RunResult(files.path, metrics)


def discover_runs(paths: list[str | Path]) -> list[RunResult]:
    """Every run below ``paths``: single run folders (``metrics.json`` + ``config.yaml``), experiment
    folders (``experiment.yaml``) and a method's folder of seeds, expanded to their child runs.  Raises :class:`ReportError` for a
    folder that is neither, or when no run has finished a task."""
    if not paths:
        raise ReportError("give at least one run directory.")
    found: dict[Path, RunResult] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"'{path}' does not exist; give a folder that 'cilearn run' wrote.")
        if not path.is_dir():
            raise ReportError(f"'{path}' is a file; give a run directory (the folder that holds metrics.json "
                              f"and config.yaml) or an experiment folder (with experiment.yaml).")
        folder = RunDir(path)
        children = folder.runs_below()
        if folder.is_run():
            candidates = [folder]
        elif children:  # an experiment folder, or one method's folder of seeds (<label>/seed<k>)
            candidates = children
        elif folder.is_experiment():
            raise ReportError(f"experiment folder '{path}' holds no finished task yet (no child folder "
                              f"with metrics.json); wait for the run or resume it.")
        else:
            raise ReportError(f"'{path}' is not a cilearn run directory: it has no metrics.json + config.yaml "
                              f"(a single run) and no experiment.yaml (several methods or seeds).")
        for candidate in candidates:
            key = candidate.path.resolve()
            if key not in found:
                found[key] = _read_run(candidate)
    runs = [r for r in found.values() if r.tasks_done > 0]
    if not runs:
        raise ReportError("none of the given runs has finished a task yet; there is nothing to report.")
    return runs


def group_runs(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by method label (seeds sorted); a label gets its dataset appended when runs on several
    datasets are compared, so that different datasets never share a mean."""
    datasets = {r.metrics.get("dataset") for r in runs}
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        key = run.label if len(datasets) == 1 else f"{run.label} [{run.metrics.get('dataset')}]"
        groups[key].append(run)
    return {key: sorted(group, key=lambda r: (r.seed or 0, str(r.path))) for key, group in groups.items()}


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
