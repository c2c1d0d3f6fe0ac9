"""What an experiment produced, read back from its run folders: metrics, accuracy matrices, one table.

:meth:`cilearn.Experiment.run` returns an :class:`ExperimentResult`; :func:`load_result` reads the same object
from any finished (or partly finished) run folder, experiment folder or sweep folder.  One run is a
:class:`~cilearn.run_result.RunResult` (numpy only).

Accuracies are fractions in [0, 1] everywhere data is returned (``metrics.json``, ``accuracy_matrix``,
``seen_accuracy``, ``records()``, ``summary()``); only the printed tables (``table()``, the CLI's) and the plots
show them in percent, and say so in their titles.

>>> result = load_result("runs/quickstart/20250101-120000")   # doctest: +SKIP
>>> print(result.table())                                     # the summary the CLI prints
>>> result["icarl"].accuracy_matrix                           # numpy, NaN where not evaluated
>>> result.records()                                          # one flat dict per run (pandas.DataFrame(...))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from . import metrics
from .config import expand_runs, load_yaml, run_label
from .errors import CheckpointError
from .report.build import ReportOptions, make_report
from .run_result import RunResult
from .rundir import RunDir
from .summary import group_by_label, markdown_table, summary_rows, text_table

__all__ = ["ExperimentResult", "RunResult", "load_result"]


@dataclass(frozen=True)
class ExperimentResult:
    """Every run of an experiment (methods × seeds) and the folder that holds them.

    ``result[label]`` is a run by its label (``"icarl"``, or ``"icarl/seed1"`` when there are several
    seeds) or position; with a single run, ``metrics``, ``accuracy_matrix`` and friends are that run's."""

    path: Path
    runs: list[RunResult]

    def __getitem__(self, key: str | int) -> RunResult:
        if isinstance(key, int):
            return self.runs[key]
        for run in self.runs:
            if key in (self._name(run), run.label):
                return run
        raise KeyError(f"no run {key!r} in '{self.path}'; runs: {', '.join(self.labels)}.")

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def _name(self, run: RunResult) -> str:
        return run.path.relative_to(self.path).as_posix() if run.path != self.path else run.label

    @property
    def labels(self) -> list[str]:
        """The runs' names: their folders under ``path`` (``icarl``, ``icarl/seed1``) or, alone, the label."""
        return [self._name(run) for run in self.runs]

    @property
    def run(self) -> RunResult:
        """The one run of a single-run experiment."""
        if len(self.runs) != 1:
            raise ValueError(f"this experiment has {len(self.runs)} runs ({', '.join(self.labels)}); pick one "
                             f"with result['<label>'] or iterate result.runs.")
        return self.runs[0]

    @property
    def metrics(self) -> dict:
        """The single run's ``metrics.json`` (see :attr:`run`)."""
        return self.run.metrics

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """The single run's accuracy matrix (see :attr:`RunResult.accuracy_matrix`)."""
        return self.run.accuracy_matrix

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs)

    def summary(self) -> dict:
        """Per label: mean and std over seeds of every metric (the ``aggregate`` of ``summary.json``)."""

        return {label: metrics.aggregate(runs)
                for label, runs in group_by_label([r.metrics for r in self.runs]).items()}

    def records(self) -> list[dict]:
        """One flat dict per run (:meth:`RunResult.record`): ``pandas.DataFrame(result.records())`` if you like."""
        return [run.record() for run in self.runs]

    def table(self, markdown: bool = False) -> str:
        """The comparison table the CLI prints: accuracy on all seen classes after each task, then average
        incremental accuracy, last accuracy, forgetting and old-class accuracy (mean ± std over seeds), in %."""

        header, rows = summary_rows([run.metrics for run in self.runs])
        return markdown_table(header, rows) if markdown else text_table(header, rows)

    def _repr_markdown_(self) -> str:  # Jupyter shows the table
        return self.table(markdown=True)

    def plot(self, ax=None):
        """A matplotlib Figure of the accuracy on all classes seen so far against the number of classes seen:
        one curve per label (method or grid point), the mean over its seeds with a ± std band where there are
        several, in %.  ``ax``: draw into this Axes instead (its figure is returned).  Needs no display."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if ax is None:
            figure = Figure(figsize=(7, 4.5), layout="constrained")
            FigureCanvasAgg(figure)
            ax = figure.add_subplot()
        figure = ax.figure
        by_label: dict[str, list[RunResult]] = {}
        for run in self.runs:
            by_label.setdefault(run.label, []).append(run)
        for label, runs in by_label.items():
            length = max(len(r.seen_accuracy) for r in runs)
            curves = np.full((len(runs), length), np.nan)
            for i, r in enumerate(runs):
                curves[i, :len(r.seen_accuracy)] = r.seen_accuracy
            steps = max(runs, key=lambda r: len(r.seen_accuracy)).metrics.get("classes_per_step") or []
            x = list(steps[:length]) if len(steps) >= length else list(range(1, length + 1))
            with np.errstate(invalid="ignore"):
                mean = 100 * np.nanmean(curves, axis=0)
                std = 100 * (np.nanstd(curves, axis=0, ddof=1) if len(runs) > 1 else np.zeros(length))
            classifier = runs[0].metrics.get("classifier", "")
            line, = ax.plot(x, mean, marker="o", markersize=4, label=f"{label} ({classifier}, n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        datasets = sorted({str(r.metrics.get("dataset", "")) for r in self.runs})
        ax.set(xlabel="classes seen", ylabel="accuracy on seen classes (%)", ylim=(0, 103),
               title=f"{', '.join(datasets)} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return figure

    def report(self, out: str | Path, tsne: bool = False, gradcam: bool = False) -> Path:
        """The HTML report of these runs into ``out`` (see :func:`cilearn.make_report`); returns report.html."""

        return make_report([run.path for run in self.runs], out, ReportOptions(tsne=tsne, gradcam=gradcam))

    def __repr__(self) -> str:
        return f"ExperimentResult('{self.path}', runs={self.labels})"


def experiment_labels(path: Path) -> list[str]:
    """The run folders of an experiment folder, in the order of its config (methods, then seeds)."""

    raws = expand_runs(load_yaml(RunDir(path).experiment))
    many = len({r["seed"] for r in raws}) > 1
    return [run_label(r, many) for r in raws]


def sweep_labels(path: Path) -> list[str]:
    """The run folders of a sweep folder, in the order its ``sweep.yaml`` lists them."""

    try:
        runs = (yaml.safe_load((path / "sweep.yaml").read_text(encoding="utf-8")) or {}).get("runs") or []
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"'{path / 'sweep.yaml'}' cannot be read ({exc}).") from None
    return [str(run["name"]) for run in runs if isinstance(run, dict) and "name" in run]


def load_result(path: str | Path) -> ExperimentResult:
    """Read a run folder (one run), an experiment folder (several runs and ``experiment.yaml``) or a sweep folder
    (``sweep.yaml``: every run that finished a task, named ``<grid point>/<seed>``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"'{path}' does not exist or is not a folder; give a folder that cilearn wrote.")
    if (path / "sweep.yaml").is_file():
        runs = [RunResult.load(path / name) for name in sweep_labels(path)
                if RunDir(path / name).read_metrics() is not None]
        if not runs:
            raise CheckpointError(f"sweep folder '{path}' holds no run that finished a task yet.")
        return ExperimentResult(path, runs)
    if RunDir(path).is_experiment():
        runs = [RunResult.load(path / label) for label in experiment_labels(path)
                if RunDir(path / label).read_metrics() is not None]
        if not runs:
            raise CheckpointError(f"'{path}' holds no finished task yet (no metrics.json in its run folders).")
        return ExperimentResult(path, runs)
    return ExperimentResult(path, [RunResult.load(path)])
