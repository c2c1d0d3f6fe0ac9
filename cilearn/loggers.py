"""Where a run reports besides the console: ``output.loggers: [csv, tensorboard, wandb]`` (default ``[csv]``).

A logger is a small object the :class:`~cilearn.runner.Run` calls at four points, never inside the per-step
loop: :meth:`Logger.start` (the run folder is ready; also after a resume), :meth:`Logger.epoch_end` (every
training epoch), :meth:`Logger.task_end` (after each task's evaluation) and :meth:`Logger.run_end` (at the
end, or when the run stops on an error or Ctrl-C).  Each hook receives the run and reads what it needs.

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

In a torchrun job only rank 0 logs.
"""

from __future__ import annotations

import importlib.util
import math
import netrc
import os
import secrets
import time
from typing import TYPE_CHECKING

from .distributed import is_main
from .errors import ConfigError, unknown_choice
from .log import get_logger
from .plugins import first_line
from .registry import Component, Registry

if TYPE_CHECKING:
    from .runner import Run

log = get_logger(__name__)

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_SUMMARY_KEYS = ("last_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer")


class Logger:
    """The hooks a run calls; every one is optional (the base class does nothing)."""

    def start(self, run: Run) -> None:
        """The run folder holds its config; ``run.log_rows`` already has the epochs of a resumed run."""

    def epoch_end(self, run: Run, row: dict) -> None:
        """One epoch ended; ``row``: the ``log.csv`` columns (test accuracies NaN when not evaluated)."""

    def task_end(self, run: Run, metrics: dict) -> None:
        """A task was evaluated; ``metrics``: the run's ``metrics.json`` as of now."""

    def run_end(self, run: Run, metrics: dict | None) -> None:
        """The run finished (``metrics``: the final ones) or stopped (``None``)."""


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


def last_epoch_accuracies(run: Run, metrics: dict) -> dict[str, float]:
    """The test accuracies of the task's last epoch: its log row gets them from the evaluation after the task,
    after :meth:`Logger.epoch_end` saw the row (NaN then), so task_end logs them at that epoch's step."""
    if not run.log_rows or int(run.log_rows[-1][0]) != int(metrics["tasks_done"]) - 1:
        return {}
    from .runner import LOG_COLUMNS

    row = dict(zip(LOG_COLUMNS, run.log_rows[-1]))
    values = {f"epoch/{key}": finite(row[key]) for key in ("test_accuracy_current", "test_accuracy_seen")}
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

    def _write_log(self, run: Run) -> None:
        from .runner import LOG_COLUMNS

        run.files.write_log(LOG_COLUMNS, run.log_rows)
        self._written = time.monotonic()

    def start(self, run: Run) -> None:  # a resumed run: the files as of its checkpoint (a new one has none yet)
        if run.log_rows:
            self._write_log(run)
        if run.history:
            run.files.write_matrix(run.metrics_dict(False).get("accuracy_matrix", []), len(run.scenario))

    def epoch_end(self, run: Run, row: dict) -> None:
        if time.monotonic() - self._written >= self.every:
            self._write_log(run)

    def task_end(self, run: Run, metrics: dict) -> None:
        self._write_log(run)
        run.files.write_matrix(metrics.get("accuracy_matrix", []), len(run.scenario))


# --------------------------------------------------------------------------------------------- tensorboard
class TensorBoardLogger(Logger):
    """Event files in ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self) -> None:
        self.writer = None

    def start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run repeats the epochs after its checkpoint: purge_step hides what the killed process logged
        # from there on, so every curve shows one value per step.  That is why every scalar, per-task ones
        # included, has one x axis: epochs since the run began.
        done = len(run.log_rows)
        self.writer = SummaryWriter(log_dir=str(run.files / "tensorboard"), purge_step=done + 1)
        if not done:
            import yaml

            text = yaml.safe_dump(run.cfg.to_dict(), sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)

    def epoch_end(self, run: Run, row: dict) -> None:
        step = len(run.log_rows)  # epochs since the run began, over tasks and stages
        for key in ("train_loss", "train_accuracy", "lr", "test_accuracy_current", "test_accuracy_seen"):
            value = finite(row.get(key))
            if value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.add_scalar("epoch/task", row["task"] + 1, step)

    def task_end(self, run: Run, metrics: dict) -> None:
        step = len(run.log_rows)  # the task's last epoch (see start)
        for tag, value in last_epoch_accuracies(run, metrics).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("task/tasks_done", int(metrics["tasks_done"]), step)
        for tag, value in task_scalars(metrics).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_text("accuracy_matrix", matrix_markdown(metrics.get("accuracy_matrix", [])), step)
        self.writer.flush()

    def run_end(self, run: Run, metrics: dict | None) -> None:
        if self.writer is None:
            return
        if metrics is not None and metrics.get("complete"):
            from torch.utils.tensorboard.summary import hparams

            final = {f"final/{key}": finite(metrics.get(key)) for key in _SUMMARY_KEYS}
            final = {key: value for key, value in final.items() if value is not None}
            for summary in hparams(flat_config(run.cfg.to_dict()), final):
                self.writer.file_writer.add_summary(summary)
            for key, value in final.items():
                self.writer.add_scalar(key, value, len(run.log_rows))
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

    def start(self, run: Run) -> None:
        import wandb

        folder = run.files / "wandb"
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
        output = run.cfg.output
        self.run = wandb.init(project=output.wandb_project, entity=output.wandb_entity,
                              group=output.wandb_group or run.cfg.name, tags=list(output.wandb_tags) or None,
                              name=output.wandb_name or run.label, id=run_id, resume="allow",
                              dir=str(run.files.path.resolve()), config=run.cfg.to_dict(), mode=mode, settings=settings)
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.run.define_metric("task")
        self.run.define_metric("task/*", step_metric="task")
        if offline and not run.log_rows:
            log.info(f"[{run.label}] W&B logs offline into '{folder}' (upload with: wandb sync {folder}/offline-run-*)")

    def epoch_end(self, run: Run, row: dict) -> None:
        values = {f"epoch/{key}": finite(row.get(key)) for key in
                  ("train_loss", "train_accuracy", "lr", "test_accuracy_current", "test_accuracy_seen")}
        self.run.log({"epoch": len(run.log_rows), "epoch/task": row["task"] + 1,
                      **{key: value for key, value in values.items() if value is not None}})

    def task_end(self, run: Run, metrics: dict) -> None:
        import wandb

        matrix = metrics.get("accuracy_matrix", [])
        width = len(run.scenario)
        table = wandb.Table(columns=["after task"] + [f"task {j + 1}" for j in range(width)],
                            data=[[i + 1] + list(row) + [None] * (width - len(row)) for i, row in enumerate(matrix)])
        last = last_epoch_accuracies(run, metrics)
        if last:
            self.run.log({"epoch": len(run.log_rows), **last})
        self.run.log({"task": int(metrics["tasks_done"]), **task_scalars(metrics), "accuracy_matrix": table})

    def run_end(self, run: Run, metrics: dict | None) -> None:
        if self.run is None:
            return
        if metrics is not None:
            self.run.summary.update({key: metrics.get(key) for key in _SUMMARY_KEYS if key in metrics})
        self.run.finish(exit_code=0 if metrics is not None else 1)
        self.run = None


# --------------------------------------------------------------------------------------------- mlflow
class MlflowLogger(Logger):
    """An MLflow run through ``MlflowClient`` (no global active run: several cilearn runs in one process each
    log to their own MLflow run)."""

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None

    def start(self, run: Run) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.files.path.resolve() / "mlflow").as_uri()
        if uri.startswith("file:"):  # MLflow 3 refuses file stores unless asked (they are in maintenance mode)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=uri)
        name = run.cfg.output.mlflow_experiment or run.cfg.name or "cilearn"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        id_file = run.files / "mlflow-run-id"
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = client.create_run(experiment_id, run_name=run.label,
                                        tags={"cilearn.method": run.cfg.method.name}).info.run_id
        id_file.write_text(self.run_id)
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in flat_config(run.cfg.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(self.run_id, params=params[start:start + 100])
        if not run.log_rows:
            log.info(f"[{run.label}] MLflow logs into {uri} (experiment '{name}')")

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items() if value is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def epoch_end(self, run: Run, row: dict) -> None:
        values = {f"epoch/{key}": finite(row.get(key)) for key in
                  ("train_loss", "train_accuracy", "lr", "test_accuracy_current", "test_accuracy_seen")}
        self._log({**values, "epoch/task": row["task"] + 1}, len(run.log_rows))

    def task_end(self, run: Run, metrics: dict) -> None:
        step = len(run.log_rows)
        self._log({**last_epoch_accuracies(run, metrics), "task/tasks_done": int(metrics["tasks_done"]),
                   **task_scalars(metrics)}, step)
        self.client.log_text(self.run_id, matrix_markdown(metrics.get("accuracy_matrix", [])), "accuracy_matrix.md")

    def run_end(self, run: Run, metrics: dict | None) -> None:
        if self.client is None or self.run_id is None:
            return
        if metrics is not None and metrics.get("complete"):
            self._log({f"final/{key}": finite(metrics.get(key)) for key in _SUMMARY_KEYS}, len(run.log_rows))
        self.client.set_terminated(self.run_id, "FINISHED" if metrics is not None else "FAILED")
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
