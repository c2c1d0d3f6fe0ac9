"""Where a run reports besides the console: ``output.loggers: [csv, tensorboard, wandb]`` (default ``[csv]``).

A logger is a small object that a run's :class:`~cilearn.engine.recorder.Recorder` calls at four points, never inside
the per-step loop, each time with an event (:mod:`cilearn.engine.events`): :meth:`Logger.on_run_start`
(:class:`RunStarted`: the run folder is ready; also after a resume), :meth:`Logger.on_epoch_end`
(:class:`EpochEnded`, every training epoch), :meth:`Logger.on_task_end` (:class:`TaskEnded`, after each task's
evaluation) and :meth:`Logger.on_run_end` (:class:`RunEnded`, at the end, or when the run stops on an error or
Ctrl-C).  Loggers see these events, never the run itself.

- ``csv``: ``log.csv`` (a row per epoch) and ``accuracy_matrix.csv`` in the run folder (``metrics.json`` is
  always written: resuming and the summaries need it);
- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs/``): per-epoch scalars
  (``epoch/...``) and per-task scalars (``task/...``, at the step of the task's last epoch; ``task/tasks_done``
  maps steps to tasks) on one x axis, epochs since the run began (so that a resumed run can hide what a killed
  process logged after its checkpoint); the accuracy matrix as a text table, the config as text and, at the end,
  as hyper-parameters with the final metrics.  Needs ``pip install 'cilearn[tensorboard]'``;
- ``wandb``: a Weights & Biases run in ``RUN_DIR/wandb`` with the config, the same scalars (``epoch/*``
  against ``epoch``, ``task/*`` against ``task``), the accuracy matrix as a table and the final metrics in
  its summary.  Online when ``WANDB_MODE`` says so or an API key is configured (``WANDB_API_KEY`` or
  ``wandb login``); otherwise offline, without touching the network (upload later with ``wandb sync``).
  Needs ``pip install 'cilearn[wandb]'``.  ``output.wandb_entity``, ``wandb_group`` (default: the config's
  name, which for a sweep's runs is the sweep's), ``wandb_tags`` and ``wandb_name`` (default: the run's label);
- ``mlflow``: an MLflow run with the config as parameters, the same ``epoch/*`` and ``task/*`` metrics (step:
  epochs since the run began), the accuracy matrix as ``accuracy_matrix.md`` and the final metrics; in the
  tracking server of ``MLFLOW_TRACKING_URI`` when set, else in a local file store ``RUN_DIR/mlflow`` (``mlflow
  ui --backend-store-uri RUN_DIR/mlflow``; MLflow 3 keeps file stores in maintenance mode, so cilearn sets
  ``MLFLOW_ALLOW_FILE_STORE=true`` for it).  The experiment is ``output.mlflow_experiment`` (default: the
  config's name); the run id is kept in ``RUN_DIR/mlflow-run-id``, so a resumed run continues it.  Needs
  ``pip install 'cilearn[mlflow]'`` (mlflow-skinny);
- a logger of an installed package: a :class:`Logger` subclass registered in the ``cilearn.loggers``
  entry-point group (see :mod:`cilearn.plugins`), made with no arguments and named in ``output.loggers``.
  A logger written for cilearn 0.2's hooks ``start(run)``, ``epoch_end(run, row)``, ``task_end(run, metrics)``
  and ``run_end(run, metrics)`` still runs (see :func:`event_logger`).

In a torchrun job only rank 0 logs.
"""

from __future__ import annotations

import importlib.util
import math
import netrc
import os
import secrets
import time
from collections.abc import Sequence

import yaml

from .distributed import is_main
from .engine.events import LOG_COLUMNS, EpochEnded, EpochRow, RunEnded, RunStarted, TaskEnded
from .errors import ConfigError, unknown_choice
from .log import get_logger
from .plugins import first_line
from .registry import Component, Registry

log = get_logger(__name__)

_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_SUMMARY_KEYS = ("last_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer")


class Logger:
    """The hooks a run calls, each with an event; every one is optional (the base class does nothing).

    A run calls :meth:`on_run_start` once per process (again when it resumes), :meth:`on_epoch_end` after
    every training epoch, :meth:`on_task_end` after each task's evaluation and :meth:`on_run_end` at the end
    (also when it stops on an error).  Every event has ``rows``: the :class:`~cilearn.engine.events.EpochRow` of every
    epoch since the run began (a resumed run's earlier ones included), so ``len(event.rows)`` is an x axis that
    a resumed run continues.  The events, field by field::

        RunStarted(label, method, config, files, rows, metrics)  # files: the run folder (RunDir)
        EpochEnded(row, rows)  # row: task, epoch, lr, train_loss, train_accuracy, test_accuracy_current,
                               #      test_accuracy_seen (NaN when not evaluated), stage, seconds
        TaskEnded(task, metrics, rows)  # metrics: metrics.json as of now; last_epoch: the task's last row,
                                        # its test accuracies from this evaluation
        RunEnded(metrics, rows)  # metrics: the final metrics.json, or None when the run stopped
    """

    def on_run_start(self, event: RunStarted) -> None:
        """The run folder holds its config; a resumed run's ``event.rows`` and ``event.metrics`` are those of
        its checkpoint."""

    def on_epoch_end(self, event: EpochEnded) -> None:
        """A training epoch ended (``event.row``)."""

    def on_task_end(self, event: TaskEnded) -> None:
        """A task was evaluated; ``event.metrics``: the run's ``metrics.json`` as of now."""

    def on_run_end(self, event: RunEnded) -> None:
        """The run finished (``event.metrics``: the final ones) or stopped (None)."""

    # cilearn 0.2's hooks, which received the run: still called for a logger that overrides them (and none of
    # the hooks above), through event_logger; here so that such a logger's super() calls keep working.
    def start(self, run) -> None:
        """Deprecated: use :meth:`on_run_start`."""

    def epoch_end(self, run, row: dict) -> None:
        """Deprecated: use :meth:`on_epoch_end`."""

    def task_end(self, run, metrics: dict) -> None:
        """Deprecated: use :meth:`on_task_end`."""

    def run_end(self, run, metrics: dict | None) -> None:
        """Deprecated: use :meth:`on_run_end`."""


_LEGACY_HOOKS = ("start", "epoch_end", "task_end", "run_end")
_EVENT_HOOKS = ("on_run_start", "on_epoch_end", "on_task_end", "on_run_end")


def event_logger(logger: Logger) -> Logger:
    """``logger`` itself, or, for a logger written for cilearn 0.2's hooks (``start(run)``, ``epoch_end(run,
    row)``, ``task_end(run, metrics)``, ``run_end(run, metrics)``, and none of the event hooks), an adapter
    that calls those with a stand-in for the run: :class:`LegacyRunView`."""
    kind = type(logger)
    legacy = any(getattr(kind, name) is not getattr(Logger, name) for name in _LEGACY_HOOKS)
    modern = any(getattr(kind, name) is not getattr(Logger, name) for name in _EVENT_HOOKS)
    return LegacyLogger(logger) if legacy and not modern else logger


class LegacyRunView:
    """What cilearn 0.2's logger hooks read from the run: ``files`` (the run folder), ``dir`` (its path),
    ``cfg``, ``label`` and ``log_rows`` (``log.csv``'s rows as lists of its cells)."""

    def __init__(self, started: RunStarted):
        self.files, self.dir, self.cfg, self.label = started.files, started.files.path, started.config, started.label
        self.rows: Sequence[EpochRow] = started.rows

    @property
    def log_rows(self) -> list[list]:
        return [row.cells() for row in self.rows]


class LegacyLogger(Logger):
    """A logger with cilearn 0.2's hooks, called from the events (see :func:`event_logger`)."""

    def __init__(self, logger: Logger):
        self.logger, self.run = logger, None

    def _call(self, hook: str, rows: Sequence[EpochRow], *args) -> None:
        if self.run is not None:
            self.run.rows = rows
            getattr(self.logger, hook)(self.run, *args)

    def on_run_start(self, event: RunStarted) -> None:
        self.run = LegacyRunView(event)
        self._call("start", event.rows)

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._call("epoch_end", event.rows, event.row.as_dict())

    def on_task_end(self, event: TaskEnded) -> None:
        self._call("task_end", event.rows, event.metrics)

    def on_run_end(self, event: RunEnded) -> None:
        self._call("run_end", event.rows, event.metrics)


def logger_kinds() -> dict[str, type[Logger]]:
    """Every logger by name: cilearn's own and those of installed packages (``cilearn.loggers`` entry points;
    cilearn's own names win)."""
    return {name: component.factory for name, component in LOGGERS.components().items()}


def check_logger_names(names: list[str]) -> None:
    """When the config is read: each logger known and listed once."""
    for index, name in enumerate(names):
        if name not in LOGGERS:
            raise unknown_choice("logger", name, LOGGERS.components(), f"output.loggers[{index}]")
        if names.count(name) > 1:
            raise ConfigError(f"output.loggers: '{name}' is listed twice.")


def check_loggers(names: list[str]) -> None:
    """Before anything is written: each logger known, listed once, and its package installed."""
    check_logger_names(names)
    for name in names:
        package = _PACKAGE.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"output.loggers: '{name}' needs the {package} package, which is not installed: "
                              f"pip install 'cilearn[{name}]' (or remove '{name}' from output.loggers).")


def make_loggers(names: list[str]) -> list[Logger]:
    """The loggers of ``output.loggers`` (none in a torchrun job's other processes)."""
    check_loggers(names)
    if not is_main():
        return []
    kinds = logger_kinds()
    return [kinds[name]() for name in names]


def finite(value) -> float | None:
    """A float for a scalar, None for what is not one (None, NaN, text)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def task_scalars(metrics: dict) -> dict[str, float]:
    """The per-task scalars of ``metrics.json`` after its last task: the headline classifier's accuracies and
    the running summaries, and every classifier's accuracy on the classes seen so far when there are several."""
    scalars = {}
    for key in ("seen_accuracy", "current_accuracy", "old_accuracy"):
        values = metrics.get(key) or []
        scalars[f"task/{key}"] = finite(values[-1]) if values else None
    for key in _SUMMARY_KEYS:
        scalars[f"task/{key}"] = finite(metrics.get(key))
    classifiers = metrics.get("classifiers", {})
    if len(classifiers) > 1:
        for name, values in classifiers.items():
            seen = values.get("seen_accuracy") or []
            scalars[f"task/{name}/seen_accuracy"] = finite(seen[-1]) if seen else None
    return {key: value for key, value in scalars.items() if value is not None}


def epoch_scalars(row: EpochRow) -> dict[str, float]:
    """An epoch's ``epoch/...`` scalars (the test accuracies when it was evaluated) and its task (1-based)."""
    values = {f"epoch/{key}": finite(getattr(row, key)) for key in
              ("train_loss", "train_accuracy", "lr", "test_accuracy_current", "test_accuracy_seen")}
    return {**{key: value for key, value in values.items() if value is not None}, "epoch/task": row.task + 1}


def last_epoch_accuracies(event: TaskEnded) -> dict[str, float]:
    """The test accuracies of the task's last epoch: its row gets them from the evaluation after the task,
    after :meth:`Logger.on_epoch_end` saw the row (NaN then), so on_task_end logs them at that epoch's step."""
    last = event.last_epoch
    if last is None:
        return {}
    values = {f"epoch/{key}": finite(getattr(last, key)) for key in ("test_accuracy_current", "test_accuracy_seen")}
    return {key: value for key, value in values.items() if value is not None}


def matrix_markdown(matrix: list[list[float | None]]) -> str:
    """The accuracy matrix as a Markdown table in % (rows: after task i; blank where not evaluated)."""
    width = max((len(row) for row in matrix), default=0)
    lines = ["| after task | " + " | ".join(f"task {j + 1}" for j in range(width)) + " |",
             "|---" * (width + 1) + "|"]
    for i, row in enumerate(matrix):
        cells = ["" if v is None else f"{100 * v:.1f}" for v in row] + [""] * (width - len(row))
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flat_config(config: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}``; lists and None as text (hyper-parameter values)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


# --------------------------------------------------------------------------------------------- csv
class CsvLogger(Logger):
    """``log.csv`` and ``accuracy_matrix.csv``: rewritten (atomically) after every task, and ``log.csv`` at most
    every ``every`` seconds during a task so that it can be watched."""

    every = 10.0

    def __init__(self) -> None:
        self._written = 0.0
        self.files = None

    def _write_log(self, rows: Sequence[EpochRow]) -> None:
        self.files.write_log(LOG_COLUMNS, [row.cells() for row in rows])
        self._written = time.monotonic()

    def on_run_start(self, event: RunStarted) -> None:  # a resumed run: the files as of its checkpoint
        self.files = event.files
        if event.rows:
            self._write_log(event.rows)
        if event.metrics is not None and event.metrics["tasks_done"]:
            self.files.write_matrix(event.metrics.get("accuracy_matrix", []), event.metrics["num_tasks"])

    def on_epoch_end(self, event: EpochEnded) -> None:
        if self.files is not None and time.monotonic() - self._written >= self.every:
            self._write_log(event.rows)

    def on_task_end(self, event: TaskEnded) -> None:
        if self.files is not None:
            self._write_log(event.rows)
            self.files.write_matrix(event.metrics.get("accuracy_matrix", []), event.metrics["num_tasks"])


# --------------------------------------------------------------------------------------------- tensorboard
class TensorBoardLogger(Logger):
    """Event files in ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self) -> None:
        self.writer = None
        self.config: dict = {}

    def on_run_start(self, event: RunStarted) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run repeats the epochs after its checkpoint: purge_step hides what the killed process logged
        # from there on, so every curve shows one value per step.  That is why every scalar, per-task ones
        # included, has one x axis: epochs since the run began.
        done = len(event.rows)
        self.config = event.config.to_dict()
        self.writer = SummaryWriter(log_dir=str(event.files / "tensorboard"), purge_step=done + 1)
        if not done:

            text = yaml.safe_dump(self.config, sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)

    def on_epoch_end(self, event: EpochEnded) -> None:
        step = len(event.rows)  # epochs since the run began, over tasks and stages
        for tag, value in epoch_scalars(event.row).items():
            self.writer.add_scalar(tag, value, step)

    def on_task_end(self, event: TaskEnded) -> None:
        step, metrics = len(event.rows), event.metrics  # the task's last epoch (see on_run_start)
        for tag, value in last_epoch_accuracies(event).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("task/tasks_done", int(metrics["tasks_done"]), step)
        for tag, value in task_scalars(metrics).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_text("accuracy_matrix", matrix_markdown(metrics.get("accuracy_matrix", [])), step)
        self.writer.flush()

    def on_run_end(self, event: RunEnded) -> None:
        if self.writer is None:
            return
        metrics = event.metrics
        if metrics is not None and metrics.get("complete"):
            from torch.utils.tensorboard.summary import hparams

            final = {f"final/{key}": finite(metrics.get(key)) for key in _SUMMARY_KEYS}
            final = {key: value for key, value in final.items() if value is not None}
            for summary in hparams(flat_config(self.config), final):
                self.writer.file_writer.add_summary(summary)
            for key, value in final.items():
                self.writer.add_scalar(key, value, len(event.rows))
        self.writer.close()
        self.writer = None


# --------------------------------------------------------------------------------------------- wandb
def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else online when an API key is configured, offline otherwise."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        hosts = netrc.netrc().hosts  # where `wandb login` keeps the key
    except (OSError, netrc.NetrcParseError):
        return "offline"
    return "online" if any("wandb" in host for host in hosts) else "offline"


class WandbLogger(Logger):
    """A W&B run in ``RUN_DIR/wandb``; its id is kept there, so a resumed cilearn run continues the same W&B run."""

    def __init__(self) -> None:
        self.run = None

    def on_run_start(self, event: RunStarted) -> None:
        import wandb

        folder = event.files / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "cilearn-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id)
        mode = wandb_mode()
        offline = mode in ("offline", "disabled")
        # Offline: no system metrics, machine probes or git calls — nothing that could reach for the network.
        settings = wandb.Settings(x_disable_stats=offline, x_disable_machine_info=offline, disable_git=offline,
                                  save_code=False, console="off", silent=True)
        # Absolute: W&B's service is a separate process started once per Python process; a relative folder
        # would be resolved against the working directory of the run that started it, not this one's.
        config, output = event.config, event.config.output
        self.run = wandb.init(project=output.wandb_project, entity=output.wandb_entity,
                              group=output.wandb_group or config.name, tags=list(output.wandb_tags) or None,
                              name=output.wandb_name or event.label, id=run_id, resume="allow",
                              dir=str(event.files.path.resolve()), config=config.to_dict(), mode=mode,
                              settings=settings)
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.run.define_metric("task")
        self.run.define_metric("task/*", step_metric="task")
        if offline and not event.rows:
            log.info(f"[{event.label}] W&B logs offline into '{folder}' (upload with: wandb sync "
                     f"{folder}/offline-run-*)")

    def on_epoch_end(self, event: EpochEnded) -> None:
        self.run.log({"epoch": len(event.rows), **epoch_scalars(event.row)})

    def on_task_end(self, event: TaskEnded) -> None:
        import wandb

        metrics = event.metrics
        matrix, width = metrics.get("accuracy_matrix", []), metrics["num_tasks"]
        table = wandb.Table(columns=["after task"] + [f"task {j + 1}" for j in range(width)],
                            data=[[i + 1] + list(row) + [None] * (width - len(row)) for i, row in enumerate(matrix)])
        last = last_epoch_accuracies(event)
        if last:
            self.run.log({"epoch": len(event.rows), **last})
        self.run.log({"task": int(metrics["tasks_done"]), **task_scalars(metrics), "accuracy_matrix": table})

    def on_run_end(self, event: RunEnded) -> None:
        if self.run is None:
            return
        if event.metrics is not None:
            self.run.summary.update({key: event.metrics.get(key) for key in _SUMMARY_KEYS if key in event.metrics})
        self.run.finish(exit_code=0 if event.metrics is not None else 1)
        self.run = None


# --------------------------------------------------------------------------------------------- mlflow
class MlflowLogger(Logger):
    """An MLflow run through ``MlflowClient`` (no global active run: several cilearn runs in one process each
    log to their own MLflow run)."""

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None

    def on_run_start(self, event: RunStarted) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (event.files.path.resolve() / "mlflow").as_uri()
        if uri.startswith("file:"):  # MLflow 3 refuses file stores unless asked (they are in maintenance mode)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=uri)
        name = event.config.output.mlflow_experiment or event.config.name or "cilearn"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        id_file = event.files / "mlflow-run-id"
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = client.create_run(experiment_id, run_name=event.label,
                                        tags={"cilearn.method": event.method}).info.run_id
        id_file.write_text(self.run_id)
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in flat_config(event.config.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(self.run_id, params=params[start:start + 100])
        if not event.rows:
            log.info(f"[{event.label}] MLflow logs into {uri} (experiment '{name}')")

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items() if value is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._log(epoch_scalars(event.row), len(event.rows))

    def on_task_end(self, event: TaskEnded) -> None:
        metrics = event.metrics
        self._log({**last_epoch_accuracies(event), "task/tasks_done": int(metrics["tasks_done"]),
                   **task_scalars(metrics)}, len(event.rows))
        self.client.log_text(self.run_id, matrix_markdown(metrics.get("accuracy_matrix", [])), "accuracy_matrix.md")

    def on_run_end(self, event: RunEnded) -> None:
        if self.client is None or self.run_id is None:
            return
        if event.metrics is not None and event.metrics.get("complete"):
            self._log({f"final/{key}": finite(event.metrics.get(key)) for key in _SUMMARY_KEYS}, len(event.rows))
        self.client.set_terminated(self.run_id, "FINISHED" if event.metrics is not None else "FAILED")
        self.client = self.run_id = None


def _plugin(name: str, kind: object) -> Component:
    if not (isinstance(kind, type) and issubclass(kind, Logger)):
        raise ConfigError(f"the cilearn.loggers plugin '{name}' is not a cilearn.loggers.Logger subclass "
                          f"({kind!r}); fix or uninstall the package that registers it.")
    return Component(name, kind, None, first_line(kind, f"logger from a plugin ({name})"))


# The in-tree loggers take their settings from these output.* keys (cilearn list --options shows them).
SETTINGS = {"wandb": ("wandb_project", "wandb_entity", "wandb_group", "wandb_tags", "wandb_name"),
            "mlflow": ("mlflow_experiment",)}
LOGGERS = Registry("logger", "output.loggers", "cilearn.loggers", adapt=_plugin)
LOGGERS.add("csv", CsvLogger, None, "log.csv and accuracy_matrix.csv in the run folder")
LOGGERS.add("tensorboard", TensorBoardLogger, None, "TensorBoard event files in RUN_DIR/tensorboard "
            "(pip install 'cilearn[tensorboard]')")
LOGGERS.add("wandb", WandbLogger, None, "Weights & Biases, offline files in RUN_DIR/wandb unless WANDB_MODE says "
            "otherwise (pip install 'cilearn[wandb]'); settings: output.wandb_*")
LOGGERS.add("mlflow", MlflowLogger, None, "MLflow: a local store in RUN_DIR/mlflow, or MLFLOW_TRACKING_URI (pip "
            "install 'cilearn[mlflow]'); settings: output.mlflow_experiment")
