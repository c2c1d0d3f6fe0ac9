"""A run's record: what it logged and measured, the files built from it, its console lines and loggers' events.

The task loop (:class:`~cilearn.engine.runner.Run`) calls the :class:`Recorder` and never the other way round: once
per training epoch (:meth:`Recorder.epoch_end`), twice per task (:meth:`Recorder.add_task` with the task's
evaluation, :meth:`Recorder.task_end` once its checkpoint is saved) and at the start and end of the run.  The
recorder writes ``metrics.json``, ``run.json`` and ``samples.npz`` through :class:`~cilearn.rundir.RunDir`,
prints the progress lines and hands each :class:`~cilearn.loggers.Logger` an event (:mod:`cilearn.engine.events`);
loggers never see the run.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import metrics
from ..log import get_logger
from ..loggers import Logger, event_logger
from ..rundir import RunDir, write_npz
from .events import EpochEnded, EpochRow, RunEnded, RunStarted, TaskEnded
from .meter import PhaseMeter

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import Config
    from ..scenarios import Scenario
    from .train import EpochResult

# The run's console lines keep the logger name they always had: a program's own logging may show or filter by it.
log = get_logger("cilearn.engine.runner")

SAMPLE_IMAGES = 32  # first-task test images saved for the report's Grad-CAM


class Recorder:
    """The epoch rows (``log.csv``), the evaluation of every finished task (``history``) and the time spent in
    each phase; ``metrics.json`` is built from them.  ``primary``: the method's primary classifier."""

    def __init__(self, files: RunDir, cfg: Config, scenario: Scenario, label: str, precision: str,
                 inference_precision: str, primary: str,
                 loggers: list[Logger], meter: PhaseMeter):
        self.files, self.cfg, self.scenario, self.label, self.precision = files, cfg, scenario, label, precision
        self.inference_precision = inference_precision
        # In task-incremental scenarios the headline is the head's accuracy with task ids (task-aware); the
        # task-agnostic one stays beside it under ``classifiers``.
        self.primary = "head_task_aware" if primary == "head" and scenario.task_incremental else primary
        self.loggers = [event_logger(logger) for logger in loggers]
        self.meter = meter  # peak resident memory per phase (this process's share of the run)
        self.rows: list[EpochRow] = []
        self.history: list[dict] = []
        self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "end_task_seconds": 0.0}
        self.train_samples = 0  # samples trained on in the current task, over its stages
        self._task_began = dict(self.timing)
        self._clock = (time.perf_counter(), 0)  # when and where (in tasks) this process began: the ETAs

    @contextmanager
    def timed(self, phase: str):
        """Count the time of ``phase`` (eval, checkpoint, end_task) and meter its peak memory."""
        started = time.perf_counter()
        with self.meter.phase(phase):
            yield
        self.timing[f"{phase}_seconds"] += time.perf_counter() - started

    # --- the loop's calls ---
    def resumed(self, source: str | Path, task: int, stage: int, epoch: int) -> None:
        """A run resumes from the checkpoint ``source`` at (task, stage, epoch), its record loaded from it."""
        # metrics.json as of the checkpoint: a kill may have come between writing the checkpoint and it, or a
        # newer, unreadable checkpoint was skipped
        self.write(complete=False)
        tasks = len(self.scenario)
        if task >= tasks:  # the last task's checkpoint: only the final files were missing
            say(f"[{self.label}] '{source}' holds all {tasks} tasks: writing the final results")
            return
        where = (f"task {task + 1}/{tasks}{f', stage {stage + 1}' if stage else ''}, epoch {epoch + 1}"
                 if stage or epoch else f"the start of task {task + 1}/{tasks}")
        say(f"[{self.label}] resuming from '{source}' at {where}")

    def start(self, first_task: int = 0) -> None:
        """The run folder is ready (a resumed run's record loaded): the loggers start.  A run resumed inside a
        task counts that task from its start, so its first ETAs are a little long."""
        self._clock = (time.perf_counter(), first_task)
        event = RunStarted(self.label, self.cfg.method.name, self.cfg, self.files, tuple(self.rows),
                           self.metrics(complete=False) if self.history else None)
        for logger in self.loggers:
            logger.on_run_start(event)

    def begin_task(self, train_samples: int = 0) -> None:
        """A task begins, or resumes inside after ``train_samples`` samples: its timings count from here."""
        self.train_samples = train_samples
        self._task_began = dict(self.timing)

    def epoch_end(self, task: int, stage: str, result: EpochResult, current: float, seen: float,
                  position: tuple[int, int, int]) -> None:
        """A training epoch ended; ``current``, ``seen``: its test accuracies, NaN when not evaluated;
        ``position``: (index of the stage, the task's number of stages, the stage's number of epochs)."""
        self.timing["train_seconds"] += result.seconds
        row = EpochRow(task, result.epoch + 1, float(result.lr), float(result.train_loss),
                       float(result.train_accuracy), float(current), float(seen), stage, float(result.seconds))
        self.rows.append(row)
        event = EpochEnded(row, tuple(self.rows))
        for logger in self.loggers:
            logger.on_epoch_end(event)
        self.epoch_line(row, result.samples, *position)

    def epoch_line(self, row: EpochRow, samples: int, stage: int, stages: int, epochs: int) -> None:
        """One line per epoch in place of the progress bar where none can be shown (stderr not a terminal:
        SLURM, nohup, CI, a notebook), and with ``--verbose`` also beside a bar or with ``train.progress: false``:
        the task and epoch, loss, lr, img/s, the test accuracy when it was evaluated, the time since this process
        began the run and the remaining time, extrapolated from the share of tasks done (stages and epochs as
        fractions of a task)."""
        level = logging.INFO if self.cfg.train.progress and not sys.stderr.isatty() else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        started, at_start = self._clock
        elapsed = time.perf_counter() - started
        tasks = len(self.scenario)
        done = row.task + (stage + row.epoch / max(epochs, 1)) / stages  # tasks done, as a float
        eta = elapsed * (tasks - done) / (done - at_start) if done > at_start else float("nan")
        seen, current = row.test_accuracy_seen, row.test_accuracy_current
        tested = (f", test accuracy {seen:.1%} seen / {current:.1%} this task" if seen == seen else "")
        name = f" {row.stage}" if stages > 1 else ""
        line = (f"[{self.label}] task {row.task + 1}/{tasks}{name}, epoch {row.epoch}/{epochs}: loss "
                f"{row.train_loss:.4f}, lr {row.lr:.4g}, {samples / max(row.seconds, 1e-9):.0f} img/s{tested}, "
                f"elapsed {clock(elapsed)}, ETA {clock(eta)}")
        log.log(level, line)

    def trained(self, task: int) -> bool:
        """Whether ``task`` logged an epoch (a method may train nothing in a task)."""
        return bool(self.rows) and self.rows[-1].task == task

    def add_task(self, task, scores: dict, last_epoch: tuple[float, float] | None) -> None:
        """``task``'s evaluation (``scores`` per classifier); ``last_epoch``: the test accuracies (current, seen)
        of its last epoch, which the loop does not evaluate on its own."""
        if last_epoch is not None:
            self.rows[-1] = self.rows[-1].with_test_accuracies(*last_epoch)
        self.history.append({"task": task.index, "new_classes": task.new_classes,
                             "seen_classes": task.seen_classes, "scores": scores,
                             "train_samples": self.train_samples,
                             "timing": {k: round(v - self._task_began[k], 4) for k, v in self.timing.items()}})

    def task_end(self, task) -> dict:
        """After the task's checkpoint: metrics.json, the loggers and the console line; returns the metrics."""
        result = self.write(complete=task.index + 1 == len(self.scenario))
        event = TaskEnded(task.index, result, tuple(self.rows))
        for logger in self.loggers:
            logger.on_task_end(event)
        primary = self.history[-1]["scores"][self.primary]
        say(f"[{self.label}] task {task.index + 1}/{len(self.scenario)} ({task.name}): "
            f"accuracy on seen classes {primary['seen_accuracy']:.1%}, on this task "
            f"{primary['current_accuracy']:.1%}")
        return result

    def end(self, result: dict | None) -> None:
        """The run finished (``result``: the final metrics) or stopped (None)."""
        event = RunEnded(result, tuple(self.rows))
        for logger in self.loggers:
            logger.on_run_end(event)

    # --- checkpoints ---
    def state_dict(self) -> dict:
        """What a checkpoint keeps of the record (plain values: rows as dicts of their fields)."""
        return {"history": self.history, "log_rows": [row.as_dict() for row in self.rows], "timing": self.timing}

    def load_state_dict(self, state: dict) -> None:
        """The record as a checkpoint kept it (rows of format 2 checkpoints are lists of log.csv's cells)."""
        self.history = list(state["history"])
        self.rows = [EpochRow.restore(row) for row in state["log_rows"]]
        self.timing.update(state["timing"])

    # --- files ---
    def metrics(self, complete: bool) -> dict:
        """metrics.json: the headline classifier's summary, every classifier's, timings and memory."""
        classifiers = list(self.history[0]["scores"]) if self.history else [self.primary]
        headline = self.cfg.output.headline_accuracy
        per_classifier = {name: metrics.summarize_history(self.history, len(self.scenario), name, headline)
                          for name in classifiers}
        if self.scenario.kind == "domain_incremental":  # every experience's test set is scored at every step
            for summary in per_classifier.values():
                matrix = summary["accuracy_matrix"]
                summary["average_accuracy_all_experiences"] = [float(np.mean(row)) for row in matrix]
        return {
            "complete": complete,
            "dataset": self.scenario.dataset_name,
            "method": self.cfg.method.name,
            "label": self.cfg.method.label or self.cfg.method.name,  # no /seed<k>: seeds group by it
            "seed": self.cfg.seed,
            "num_tasks": len(self.scenario),
            "tasks_done": len(self.history),
            "classes_per_step": [len(h["seen_classes"]) for h in self.history],
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            "classifier": self.primary,
            "headline_accuracy": headline,
            "spread": self.cfg.output.spread,
            **per_classifier.get(self.primary, {}),
            "classifiers": per_classifier,
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
            "task_timing": [{"train_samples": h.get("train_samples"), **h.get("timing", {})} for h in self.history],
            "memory": self.meter.summary(),
        }

    def write(self, complete: bool) -> dict:
        """metrics.json as of now (log.csv and accuracy_matrix.csv: the csv logger); returns its content."""
        result = self.metrics(complete)
        self.files.write_metrics(result)
        return result

    def write_info(self) -> None:
        """run.json, what reports need without reloading the dataset, and samples.npz (written when the run
        starts)."""
        scenario, cfg = self.scenario, self.cfg
        self.files.write_info({
            "dataset": scenario.dataset_name, "kind": scenario.kind, "task_incremental": scenario.task_incremental,
            "class_names": list(scenario.class_names), "class_order": [int(c) for c in scenario.class_order],
            "image_shape": list(scenario.image_shape), "mean": list(scenario.mean), "std": list(scenario.std),
            "augment": cfg.train.augment, "precision": self.precision, "inference_precision": self.inference_precision,
            # BatchNorm networks' numbers change with the CPU thread count (their batch statistics are reduced in
            # thread-sized pieces): what a rerun needs (train.num_threads) when the config left it to the machine
            "torch_threads": torch.get_num_threads(),
            "model": cfg.model.name, "method": cfg.method.name, "label": self.label,
            "seed": cfg.seed, "tasks": [{"name": t.name, "new_classes": [int(c) for c in t.new_classes]}
                                        for t in scenario]})
        images, labels = first_task_samples(scenario, SAMPLE_IMAGES)
        write_npz(self.files.samples, {"images": images, "labels": labels})

    def write_arrays(self, task: int, predictions: dict, exemplars: dict | None) -> None:
        """The task's test predictions (and sampled features) and the method's stored samples, when it has any."""
        write_npz(self.files.predictions(task), predictions)
        if exemplars:
            write_npz(self.files.exemplars(task), exemplars)


def first_task_samples(scenario: Scenario, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set of the first task's test images: one per class in turn, up to ``count``."""
    test = scenario[0].test
    per_class = [np.flatnonzero(test.labels == c) for c in scenario[0].new_classes]
    picks = []
    for k in range(max((len(p) for p in per_class), default=0)):
        for where in per_class:
            if k < len(where) and len(picks) < count:
                picks.append(where[k])
    picks = np.asarray(picks, dtype=np.int64)
    return test.images[picks], test.labels[picks]


def clock(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when not known yet)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def say(message: str) -> None:
    """Progress for the user (the console logger; rank 0 alone in a torchrun job)."""
    log.info(message)
