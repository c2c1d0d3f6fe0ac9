"""One run: data → scenario → model → method → training loop → evaluation, task after task.

:class:`Run` builds everything from a :class:`~cilearn.config.Config` (every check before anything is
written), then for each task: grow the head, ``method.begin_task``, the method's training stages on the
shared :class:`~cilearn.train.Trainer`, ``method.end_task``, evaluation with every classifier, and the
task's files (through :class:`~cilearn.rundir.RunDir`) and checkpoint (through
:class:`~cilearn.checkpoints.CheckpointStore`).  Experiments of several runs: :mod:`cilearn.experiment`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .assembly import fresh_model, method_from, model_from, scenario_from
from .augment import BatchAugment
from .checkpoints import CHECKPOINT_FORMAT, CheckpointStore
from .config import Config
from .data import DatasetSplits
from .distributed import Distributed, is_main
from .distributed import check_config as check_distributed_config
from .errors import TrainingDiverged
from .evaluate import Evaluator, Inference
from .log import get_logger
from .loggers import make_loggers
from .meter import PhaseMeter
from .methods import MethodContext
from .rundir import RunDir, check_fresh, write_npz
from .runtime import configure_torch, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state
from .train import EpochResult, Trainer

log = get_logger(__name__)

LOG_COLUMNS = ["task", "epoch", "lr", "train_loss", "train_accuracy", "test_accuracy_current",
               "test_accuracy_seen", "stage", "seconds"]
SAMPLE_IMAGES = 32  # first-task test images saved for the report's Grad-CAM


class Run:
    """One (method, seed) run in its own directory; resumable from its checkpoints."""

    def __init__(self, cfg: Config, run_dir: Path, label: str | None = None, data: DatasetSplits | None = None):
        self.cfg = cfg
        self.data = data  # the dataset given from Python (Experiment(data=...)); None: cfg.data names it
        self.dir = Path(run_dir)
        self.files = RunDir(self.dir)
        self.label = label or cfg.method.label or cfg.method.name
        self.history: list[dict] = []
        self.log_rows: list[list] = []
        self.task_rng: dict | None = None  # the random state as the current task began
        self._train_samples = 0  # samples trained on in the current task, over its stages
        self.ready = False  # setup() done: the config, data, model and method passed every check
        self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "end_task_seconds": 0.0}
        self.meter = PhaseMeter()  # peak resident memory per phase (this process's share of the run)

    # The heavy objects are built in setup() so that validation errors surface before any work.
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.train.device)
        configure_torch(cfg.train, self.device)
        check_distributed_config(cfg.train, self.device)
        self.distributed = Distributed.from_environment(self.device, cfg.train.dist_timeout)
        self.precision = self.resolved_precision()
        with self.meter.phase("data"):
            self.scenario = scenario_from(cfg, self.data)
        self.model = model_from(cfg, self.scenario, self.device, self.distributed)
        self.augment = BatchAugment.from_mode(cfg.train.augment, self.scenario.mean, self.scenario.std,
                                              self.scenario.image_shape[2], cfg.train.channels_last)
        self.inference = Inference(self.model, self.augment, self.device, cfg.train.eval_batch_size,
                                   self.precision, fold_batchnorm=cfg.train.fold_batchnorm,
                                   distributed=self.distributed)
        context = MethodContext(scenario=self.scenario, device=self.device, seed=cfg.seed,
                                infer=self.inference, augment=self.augment, build_model=self.build_model,
                                distributed=self.distributed)
        self.method = method_from(cfg, self.model, context, self.augment, cfg.train.batch_size)
        self.evaluator = Evaluator(self.scenario, self.inference,
                                   cfg.output.max_feature_samples if cfg.output.save_features else 0, cfg.seed,
                                   quick_limit=cfg.train.eval_subsample)
        class_task = None
        if self.scenario.kind != "domain_incremental":
            class_task = torch.as_tensor(self.scenario.task_of_class(), device=self.device)
        self.trainer = Trainer(cfg.train, self.device, self.augment, class_task, self.distributed,
                               precision=self.precision)
        self.checkpoints = CheckpointStore(self.files, len(self.scenario))
        self.loggers = make_loggers(cfg.output.loggers)  # csv, tensorboard, wandb: checked here, started in execute
        self.ready = True

    def resolved_precision(self) -> str:
        """fp32 or bf16: what train.precision means on this machine.  config.yaml keeps what the user wrote
        (auto stays auto); run.json and metrics.json record what ran.  A resumed run keeps the precision it
        started in, even on a machine where auto would decide otherwise."""
        recorded = (self.files.read_info() or {}).get("precision") if self.files.info.is_file() else None
        if self.cfg.train.precision == "auto" and recorded in ("fp32", "bf16"):
            return recorded
        return resolve_precision(self.cfg.train.precision, self.device)[0]

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised network of this run's architecture, on its device (no classes yet)."""
        return fresh_model(self.cfg, self.scenario, self.device)

    @property
    def primary_classifier(self) -> str:
        """The classifier the headline metrics report: in task-incremental scenarios the head's accuracy
        with task ids (task-aware), the task-agnostic one stays beside it under ``classifiers``."""
        primary = self.method.primary_classifier
        return "head_task_aware" if primary == "head" and self.scenario.task_incremental else primary

    # --- files ---
    def metrics_dict(self, complete: bool) -> dict:
        classifiers = list(self.history[0]["scores"]) if self.history else [self.primary_classifier]
        primary = self.primary_classifier
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
            "classifier": primary,
            "headline_accuracy": headline,
            "spread": self.cfg.output.spread,
            **per_classifier.get(primary, {}),
            "classifiers": per_classifier,
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
            "task_timing": [{"train_samples": h.get("train_samples"), **h.get("timing", {})} for h in self.history],
            "memory": self.meter.summary(),
        }

    def write_results(self, complete: bool) -> dict:
        result = self.metrics_dict(complete)
        self.files.write_metrics(result)  # log.csv and accuracy_matrix.csv: the csv logger
        return result

    def write_run_info(self) -> None:
        """What reports need without reloading the dataset (written once, when the run starts)."""
        scenario, cfg = self.scenario, self.cfg
        self.files.write_info({
            "dataset": scenario.dataset_name, "kind": scenario.kind, "task_incremental": scenario.task_incremental,
            "class_names": list(scenario.class_names), "class_order": [int(c) for c in scenario.class_order],
            "image_shape": list(scenario.image_shape), "mean": list(scenario.mean), "std": list(scenario.std),
            "augment": cfg.train.augment, "precision": self.precision,
            "model": cfg.model.name, "method": cfg.method.name, "label": self.label,
            "seed": cfg.seed, "tasks": [{"name": t.name, "new_classes": [int(c) for c in t.new_classes]}
                                        for t in scenario]})
        images, labels = first_task_samples(self.scenario, SAMPLE_IMAGES)
        write_npz(self.files.samples, {"images": images, "labels": labels})

    def checkpoint_state(self, task_index: int, stage: int, next_epoch: int | None) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "task": task_index,
            "stage": stage,
            "next_epoch": next_epoch,  # None: the task is finished
            "head_sizes": [s.stop - s.start for s in self.model.head.task_slices],
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            "log_rows": self.log_rows,
            "timing": self.timing,
            "rng": rng_state(),
        }
        if next_epoch is None and self.cfg.train.optimizer_state == "keep":  # what the next task starts from
            state["optimizer_state"] = self.trainer.kept_state(self.model)
        if next_epoch is not None:
            state["trainer"] = self.trainer.state_dict() if next_epoch else None  # None: the stage has not begun
            state["task_rng"] = self.task_rng
            state["train_samples"] = self._train_samples
        return state

    def save(self, task_index: int, stage: int, next_epoch: int | None) -> None:
        if not self.cfg.output.save_checkpoints:
            return
        started = time.perf_counter()
        with self.meter.phase("checkpoint"):
            self.checkpoints.save(self.checkpoint_state(task_index, stage, next_epoch))
        self.timing["checkpoint_seconds"] += time.perf_counter() - started

    def restore(self, state: dict) -> tuple[int, int, int]:
        """Load a checkpoint's progress: (first task to run, its first stage, first epoch of it)."""
        with self.checkpoints.must_fit():
            for size in state["head_sizes"]:
                self.model.add_classes(size)
            self.history, self.log_rows = list(state["history"]), list(state["log_rows"])
            self.timing.update(state["timing"])
            if state["next_epoch"] is None:  # resume after a finished task
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
                self.trainer.carried = state.get("optimizer_state", {})
                set_rng_state(state["rng"])
                return state["task"] + 1, 0, 0
        return state["task"], int(state.get("stage", 0)), state["next_epoch"]  # loaded in run_task

    # --- the loop over tasks ---
    def execute(self, resume: bool = False) -> dict:
        if not self.ready:
            self.setup()  # every check passes before anything is written to the run directory
        with self.files.lock():
            if not resume:
                check_fresh(self.dir)  # checked again under the lock: another run may have just finished here
            self.files.remove_stale_temp_files()  # left by a process killed while writing
            state = self.checkpoints.latest() if resume and is_main() else None
            if self.distributed is not None:  # rank 0 read it: every process resumes from the same point
                state = self.distributed.broadcast(state)
                say(self.distributed.describe(self.cfg.train.batch_size))
            if not resume or not self.files.info.is_file():
                if not resume:
                    self.files.write_config(self.cfg.to_dict())
                self.write_run_info()
            first_task, start_stage, start_epoch = 0, 0, 0
            tasks = len(self.scenario)
            if state is not None:
                first_task, start_stage, start_epoch = self.restore(state)
                self.write_results(complete=False)  # metrics.json etc. as of the checkpoint (a kill may have
                # come between writing it and them, or a newer, unreadable checkpoint was skipped)
                inside = start_stage or start_epoch
                stage = f", stage {start_stage + 1}" if start_stage else ""
                where = (f"task {first_task + 1}/{tasks}{stage}, epoch {start_epoch + 1}" if inside
                         else f"the start of task {first_task + 1}/{tasks}")
                source = self.checkpoints.resumed_from or "the checkpoint rank 0 read"
                if first_task >= tasks:  # the last task's checkpoint: only the final files were missing
                    say(f"[{self.label}] '{source}' holds all {tasks} tasks: writing the final results")
                else:
                    say(f"[{self.label}] resuming from '{source}' at {where}")
                if not inside:
                    state = None
            elif resume:
                say(f"[{self.label}] no checkpoint in '{self.dir}' yet: starting the run from the beginning")
            final = None
            # When and where (in tasks) this process began: the ETA of the epoch lines (a run resumed inside a
            # task counts that task from its start, so its first ETAs are a little long).
            self._clock = (time.perf_counter(), first_task)
            try:
                for logger in self.loggers:
                    logger.start(self)
                for task in self.scenario[first_task:]:
                    self.run_task(task, state)
                    state = None
                final = self.write_results(complete=True)
            except TrainingDiverged as exc:
                done = len(self.history)
                kept = (f" The {done} finished tasks keep their results and checkpoints in '{self.dir}'." if done > 1
                        else f" The finished task keeps its results and checkpoint in '{self.dir}'." if done else "")
                raise TrainingDiverged(f"{exc}{kept}") from None
            finally:
                for logger in self.loggers:
                    logger.run_end(self, final)
            return final

    def grow_head(self, task) -> None:
        if self.method.full_head:  # every class's output from the first task on (one chunk per task)
            if self.model.num_classes == 0:
                for t in self.scenario:
                    if t.new_classes:
                        self.model.add_classes(len(t.new_classes), self.scenario.num_classes)
        elif task.new_classes:  # domain streams add no classes after the first experience
            self.model.add_classes(len(task.new_classes))

    def run_task(self, task, state: dict | None = None) -> None:
        """Train, evaluate and save ``task``; ``state``: a checkpoint from inside this task to resume."""
        if state is None:
            self.grow_head(task)
            self.task_rng = rng_state()  # saved with epoch checkpoints: see below
            self._train_samples = 0
        else:
            # Inside a task, begin_task and training_data run again: give them the random state they had
            # the first time, so that a method drawing from the global RNGs there rebuilds the same data.
            self.task_rng = state["task_rng"]
            set_rng_state(self.task_rng)
            self._train_samples = int(state.get("train_samples") or 0)
        self.method.begin_task(task)
        if state is not None:  # resume inside the task: the checkpoint overrides what begin_task built
            with self.checkpoints.must_fit():
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
        start_stage = int(state.get("stage", 0)) if state is not None else 0
        before = dict(self.timing)
        stages = self.method.stages(task)
        data = task.train
        for index in range(start_stage, len(stages)):
            resume_here = state if index == start_stage else None
            data = self.run_stage(task, stages, index, resume_here)
            if index + 1 < len(stages):
                self.save(task.index, index + 1, 0)
        started = time.perf_counter()
        with self.meter.phase("end_task"):
            self.method.end_task(task, data)
        self.timing["end_task_seconds"] += time.perf_counter() - started
        if self.distributed is not None:
            self.distributed.check_identical(self.model, f"after task {task.index + 1}")
        self.evaluate_task(task, before)

    def run_stage(self, task, stages: list, index: int, state: dict | None):
        """One training stage of ``task`` on the shared loop; returns the data it trained on."""
        cfg, stage = self.cfg, stages[index]
        self.method.begin_stage(stage)
        data = stage.training_data(self.method, task)
        self.trainer.start(self.method, stage)
        start_epoch = 0
        if state is not None:
            with self.checkpoints.must_fit():
                if state.get("trainer") is not None:
                    self.trainer.load_state_dict(state["trainer"])
                set_rng_state(state["rng"])
            start_epoch = int(state["next_epoch"])
        plan = self.trainer.plan(len(data), self.model)  # gradient steps of each epoch (pass over the data)
        epochs = len(plan)
        last_stage = index + 1 == len(stages)
        name = f" {stage.name}" if len(stages) > 1 else ""
        desc = f"{self.label} task {task.index + 1}/{len(self.scenario)}{name}"

        def epoch_end(result: EpochResult) -> None:
            self.timing["train_seconds"] += result.seconds
            current = seen = float("nan")
            last = last_stage and result.epoch + 1 == epochs
            # The last epoch's test accuracies come from the full evaluation after the task (one pass less).
            if cfg.train.eval_every and (result.epoch + 1) % cfg.train.eval_every == 0 and not last:
                started = time.perf_counter()
                with self.meter.phase("eval"):
                    current, seen = self.evaluator.quick(task.index)
                self.timing["eval_seconds"] += time.perf_counter() - started
            self.log_rows.append([task.index, result.epoch + 1, f"{result.lr:.6g}", f"{result.train_loss:.6f}",
                                  f"{result.train_accuracy:.6f}", f"{current:.6f}", f"{seen:.6f}", stage.name,
                                  f"{result.seconds:.3f}"])
            row = dict(zip(LOG_COLUMNS, [task.index, result.epoch + 1, result.lr, result.train_loss,
                                         result.train_accuracy, current, seen, stage.name, result.seconds]))
            for logger in self.loggers:
                logger.epoch_end(self, row)
            done = task.index + (index + (result.epoch + 1) / max(epochs, 1)) / len(stages)  # tasks done, as a float
            self.epoch_line(task, f"{name}, epoch {result.epoch + 1}/{epochs}", result, current, seen, done)
            every = cfg.train.checkpoint_every
            if every and (result.epoch + 1) % every == 0 and result.epoch + 1 < epochs:
                self.save(task.index, index, result.epoch + 1)

        with self.meter.phase("train"):
            self.trainer.fit(self.model, self.method, data, start_epoch, epoch_end, desc, task.index)
        batch = self.trainer.cfg.batch_size
        self._train_samples += sum(min(len(data), steps * batch) for steps in plan[start_epoch:])
        return data

    def epoch_line(self, task, where: str, result: EpochResult, current: float, seen: float, done: float) -> None:
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
        eta = elapsed * (tasks - done) / (done - at_start) if done > at_start else float("nan")
        tested = (f", test accuracy {seen:.1%} seen / {current:.1%} this task" if seen == seen else "")
        line = (f"[{self.label}] task {task.index + 1}/{tasks}{where}: loss {result.train_loss:.4f}, "
                f"lr {result.lr:.4g}, {result.samples / max(result.seconds, 1e-9):.0f} img/s{tested}, "
                f"elapsed {clock(elapsed)}, ETA {clock(eta)}")
        log.log(level, line)

    def evaluate_task(self, task, before: dict) -> None:
        started = time.perf_counter()
        with self.meter.phase("eval"):
            scores, arrays = self.evaluator.evaluate(task.index, self.method.classifiers())
        self.timing["eval_seconds"] += time.perf_counter() - started
        primary = scores[self.primary_classifier]
        if self.log_rows and self.log_rows[-1][0] == task.index:  # the task's last epoch: its test accuracies
            head = scores.get("head_task_aware" if self.scenario.task_incremental else "head")
            current, seen = ((head["current_accuracy"], head["seen_accuracy"]) if head is not None
                             else self.evaluator.quick(task.index, sample=False))  # a method without a head classifier
            self.log_rows[-1][5:7] = [f"{current:.6f}", f"{seen:.6f}"]
        self.history.append({"task": task.index, "new_classes": task.new_classes,
                             "seen_classes": task.seen_classes, "scores": scores,
                             "train_samples": self._train_samples,
                             "timing": {k: round(v - before[k], 4) for k, v in self.timing.items()}})
        if self.cfg.output.save_features:
            write_npz(self.files.predictions(task.index), arrays)
            self.write_exemplars(task.index)
        self.save(task.index, 0, None)
        result = self.write_results(complete=task.index + 1 == len(self.scenario))
        for logger in self.loggers:
            logger.task_end(self, result)
        say(f"[{self.label}] task {task.index + 1}/{len(self.scenario)} ({task.name}): "
            f"accuracy on seen classes {primary['seen_accuracy']:.1%}, on this task "
            f"{primary['current_accuracy']:.1%}")

    def write_exemplars(self, task_index: int) -> None:
        """The method's stored samples after the task, with their features under the current model (the
        report's exemplar grids and t-SNE read them; nothing is recomputed there)."""
        stored = self.method.exemplars()
        if not stored or not len(stored["labels"]):
            return
        features = stored.get("features")  # a method may give them, computed under the current model
        arrays = {key: np.asarray(value) for key, value in stored.items() if key != "features"}
        if features is None:
            features = self.inference(arrays["images"])[0]
        arrays["features"] = torch.as_tensor(features).cpu().numpy().astype(np.float32)
        write_npz(self.files.exemplars(task_index), arrays)


def clock(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when not known yet)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def say(message: str) -> None:
    """Progress for the user (the console logger; rank 0 alone in a torchrun job)."""
    log.info(message)


def first_task_samples(scenario, count: int) -> tuple[np.ndarray, np.ndarray]:
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
