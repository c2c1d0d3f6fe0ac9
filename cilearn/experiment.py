"""Experiments: one config expanded into runs (methods × seeds), validated together, run one after the
other, resumed as a whole, and summarised in one table.

:class:`Experiment` is the Python API (also ``cilearn.Experiment``); ``cilearn run`` is a thin layer over it::

    import cilearn

    experiment = cilearn.Experiment.from_yaml("configs/quickstart.yaml", overrides=["train.epochs=2"])
    result = experiment.run(out="runs/qs")     # an ExperimentResult (cilearn.results)
    print(result.table())
    result = cilearn.Experiment.resume("runs/qs")   # after a crash or Ctrl-C

A config can also be a dict (:meth:`Experiment.from_dict`), and the data any
:class:`~cilearn.data.DatasetSplits` (``data=``: e.g. :func:`cilearn.data.from_torch` of your own
``torch.utils.data.Dataset``).
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import (
    Config,
    apply_overrides,
    as_they_ran,
    expand_runs,
    load_yaml,
    parse_config,
    parse_stored_config,
    run_label,
)
from .data import DatasetSplits
from .data.memo import release_shared_datasets, shared_datasets
from .data.registry import is_registered, known_classes, list_datasets
from .engine.runner import Run, say
from .errors import CheckpointError, ConfigError, DataError, unknown_choice
from .log import count, library_default_logging
from .results import ExperimentResult, RunResult, experiment_labels
from .rundir import RunDir, RunLock, check_fresh, write_yaml
from .scenarios import check_class_split
from .summary import write_summary


def default_out_dir(name: str) -> Path:
    return Path("runs") / name / datetime.now().strftime("%Y%m%d-%H%M%S")


class Experiment:
    """One experiment: a config (one or several methods and seeds), checked when it is made, run with
    :meth:`run`.  Make it with :meth:`from_yaml` or :meth:`from_dict`.

    ``data``: a :class:`~cilearn.data.DatasetSplits` to train on instead of the config's ``data`` section
    (which it replaces; the saved config names it ``data.name: <its name>``).  A run on such data is
    resumed with the same data: ``Experiment.resume(run_dir, data=...)``."""

    def __init__(self, config: dict, data: DatasetSplits | None = None):
        config = copy.deepcopy(config)
        if data is not None:
            if not isinstance(data, DatasetSplits):
                raise ConfigError(f"data=: expected a cilearn.data.DatasetSplits (from cilearn.data.from_torch, "
                                  f"from_folder or load_dataset), got {type(data).__name__}.")
            config["data"] = {"name": data.name}
        config.setdefault("name", "experiment")
        self.config = config  #: the config as given (overrides applied, before expansion into runs)
        self.data = data
        raws = expand_runs(config)
        many_seeds = len({r["seed"] for r in raws}) > 1
        #: ``(label, Config)`` of every run: ``label`` is its folder under the output folder
        self.runs: list[tuple[str, Config]] = [(run_label(r, many_seeds), parse_config(r)) for r in raws]
        if data is None:
            for _, cfg in self.runs:
                check_data_early(cfg)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None,
                  data: DatasetSplits | None = None) -> Experiment:
        """A YAML config file with ``--set``-style overrides (``["train.epochs=2", "seeds=[0, 1]"]``)."""
        return cls(apply_overrides(load_yaml(path), list(overrides or [])), data=data)

    @classmethod
    def from_dict(cls, config: dict[str, Any], overrides: list[str] | None = None,
                  data: DatasetSplits | None = None) -> Experiment:
        """A config as a dict, with the sections of a YAML config (``data`` may be left out when ``data=``
        is given)."""
        if not isinstance(config, dict):
            raise ConfigError(f"config: expected a dict of sections (data, model, method, train), got "
                              f"{type(config).__name__}.")
        return cls(apply_overrides(config, list(overrides or [])), data=data)

    @property
    def name(self) -> str:
        return str(self.config["name"])

    def default_out(self) -> Path:
        """``runs/<name>/<timestamp>``: where :meth:`run` writes when given no ``out``."""
        return default_out_dir(self.name)

    def run(self, out: str | Path | None = None, *, root: str | Path | None = None) -> ExperimentResult:
        """Check every run (data, scenario, model, method) before writing anything, then run them one after
        the other into ``out`` (never an existing non-empty folder).  Several runs: one sub-folder each,
        ``experiment.yaml``, ``summary.json`` and ``summary.md``.

        ``root`` instead of ``out``: a new folder ``version_N`` under ``root`` each time (N one more than the
        highest there, from 0), so that a notebook or a script can be run again as it is; ``result.path``
        says which.  Neither: ``runs/<name>/<timestamp>``."""
        library_default_logging()
        if out is not None and root is not None:
            raise ConfigError("run(): give out= (one folder, never overwritten) or root= (a new version_N folder "
                              "under it each time), not both.")
        if root is None:
            return self.run_into(Path(out) if out else self.default_out(), python=True)
        claimed = new_version(Path(root))
        try:
            return self.run_into(claimed)
        finally:
            if claimed.is_dir() and not any(claimed.iterdir()):
                claimed.rmdir()  # a mistake found before the run wrote anything leaves no empty version folder

    def run_into(self, out: Path, python: bool = False) -> ExperimentResult:
        """:meth:`run` into the folder ``out`` (``cilearn run`` calls this; ``python``: an error names the
        Python API's choices)."""
        with shared_datasets():
            try:
                check_fresh(out)
            except ConfigError as exc:
                if not python:
                    raise
                raise ConfigError(f"{exc} From Python: Experiment.resume('{out}') continues it; run(root='{out}') "
                                  f"writes a new version_N folder under it each time.") from None
            checked = validate_runs(out, self.runs, self.data)  # nothing is written before this passes
            if len(self.runs) == 1:
                release_shared_datasets()  # the run has built its scenario: no other run needs the loaded splits
                write_summary(out, [checked[0].execute()], files=False)
            else:
                del checked  # each run builds its own again (the dataset is cached)
                with RunLock(out):
                    check_fresh(out)  # another process may have started in the same folder meanwhile
                    write_yaml(RunDir(out).experiment, self.config)
                    run_children(out, self.runs, resume=False, data=self.data)
        return collect(out, [label for label, _ in self.runs])

    @classmethod
    def resume(cls, run_dir: str | Path, data: DatasetSplits | None = None) -> ExperimentResult:
        """Continue a run folder (one run, or the parent folder of several) from its checkpoints; a finished
        one is only read.  ``data``: the same dataset again, for runs made with ``data=``."""
        library_default_logging()
        return _resume(Path(run_dir), data)


def new_version(root: Path) -> Path:
    """Create and return ``root/version_N``, N one more than the highest ``version_*`` there (0 for the first);
    creating the folder claims it, so two processes never get the same one."""

    if root.exists() and not root.is_dir():
        raise ConfigError(f"run(root=...): '{root}' is a file; give a folder to keep the versions in.")
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m[1]) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    number = max(numbers, default=-1) + 1
    while True:
        try:
            (root / f"version_{number}").mkdir()
            return root / f"version_{number}"
        except FileExistsError:
            number += 1


def check_data_early(cfg: Config) -> None:
    """What can be known about the data before loading it: the dataset's name, and for a built-in dataset of a
    known number of classes whether the tasks use them up exactly."""

    if not is_registered(cfg.data.name):
        raise unknown_choice("dataset", cfg.data.name, [name for name, _ in list_datasets()], "data.name",
                             error=DataError)
    classes = known_classes(cfg.data.name)
    if classes is not None and cfg.scenario.type != "domain_incremental" and cfg.scenario.classes_per_task:
        check_class_split(classes, cfg.scenario.classes_per_task, cfg.scenario.initial_classes, cfg.data.name)


def validate_runs(out: Path, runs: list[tuple[str, Config]], data: DatasetSplits | None = None) -> list[Run]:
    """Build every run's data, scenario, model and method (all checks) before anything is written: a
    mistake in the last method of a config must not surface after the first one has trained.  Seeds only
    change the class order and the initialisation, so one seed per method is checked."""
    checked, seen = [], set()
    for label, cfg in runs:
        key = label.split("/seed")[0]
        if key in seen:
            continue
        seen.add(key)
        run = Run(cfg, out / label if len(runs) > 1 else out, label, data=data)
        run.setup()
        checked.append(run)
    return checked


def read_metrics(run_dir: Path) -> dict | None:
    return RunDir(run_dir).read_metrics()


def collect(out: Path, labels: list[str]) -> ExperimentResult:
    """The result of a finished experiment: its runs in config order."""
    if len(labels) == 1 and not RunDir(out).is_experiment():
        return ExperimentResult(out, [RunResult.load(out)])
    return ExperimentResult(out, [RunResult.load(out / label) for label in labels])


def run_experiment(config_path: str | Path, overrides: list[str] | None = None,
                   out: str | Path | None = None) -> Path:
    """``Experiment.from_yaml(config_path, overrides).run(out)``; returns the output folder."""
    return Experiment.from_yaml(config_path, overrides).run(out).path


def resume_experiment(out: str | Path) -> Path:
    """``Experiment.resume(out)``; returns the folder."""
    return Experiment.resume(out).path


def _check_data(config_file: Path, data: DatasetSplits | None) -> None:
    """A run made with ``data=`` names a dataset no registry knows: say how to give it again."""
    if data is not None:
        return

    name = (load_yaml(config_file).get("data") or {}).get("name")
    if name and not is_registered(str(name)):
        raise DataError(f"'{config_file.parent}' trained on the dataset '{name}', which is not registered: it came "
                        f"from Python. Resume with Experiment.resume(run_dir, data=<the same DatasetSplits>), or "
                        f"register it first with cilearn.data.register_dataset('{name}', ...).")


def _resume(out: Path, data: DatasetSplits | None) -> ExperimentResult:
    if not out.is_dir():
        raise CheckpointError(f"--resume: '{out}' does not exist or is not a folder; give a run directory that "
                              f"a previous 'cilearn run' wrote.")
    files = RunDir(out)
    if files.is_experiment():
        with RunLock(out):
            raw = load_yaml(files.experiment)
            raws = expand_runs(raw)
            many = len({r["seed"] for r in raws}) > 1
            stored = [RunDir(out / run_label(r, many)).config for r in raws]  # the started runs' config.yaml
            raws = as_they_ran(raws, [load_yaml(path) if path.is_file() else None for path in stored])
            runs = [(run_label(r, many), parse_config(r)) for r in raws]
            if files.summary_json.is_file() and all(
                    (read_metrics(out / label) or {}).get("complete") for label, _ in runs):
                say(f"'{out}' is already complete ({count(len(runs), 'run')}); nothing to resume.")
            else:
                _check_data(files.experiment, data)
                with shared_datasets():  # the runs read the dataset once (a single run keeps no second copy)
                    run_children(out, runs, resume=True, data=data)
        return collect(out, experiment_labels(out))
    if files.config.is_file():
        metrics = read_metrics(out)
        if metrics and metrics.get("complete"):
            say(f"'{out}' is already complete ({metrics.get('tasks_done')}/{metrics.get('num_tasks')} tasks); "
                f"nothing to resume.")
            return collect(out, [metrics.get("label", "")])
        try:
            cfg = parse_stored_config(load_yaml(files.config))
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if str(out) in message else f"{files.config}: {message}") from None
        _check_data(files.config, data)
        write_summary(out, [Run(cfg, out, data=data).execute(resume=True)], files=False)
        return collect(out, [cfg.method.label or cfg.method.name])
    raise CheckpointError(f"--resume: '{out}' is not a cilearn run directory (no config.yaml or "
                          f"experiment.yaml); give a folder that a previous 'cilearn run' wrote.")


def run_children(out: Path, runs: list[tuple[str, Config]], resume: bool,
                 data: DatasetSplits | None = None) -> list[dict]:
    results = []
    for label, cfg in runs:
        child = out / label
        done = read_metrics(child) if resume else None
        if done and done.get("complete"):
            results.append(done)
            continue
        results.append(Run(cfg, child, label, data=data).execute(resume=resume and RunDir(child).config.exists()))
    write_summary(out, results)
    return results
