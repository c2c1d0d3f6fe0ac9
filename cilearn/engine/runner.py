"""One run: data → scenario → model → method → training loop → evaluation, task after task.

:class:`Run` builds everything from a :class:`~cilearn.config.Config` (every check before anything is written),
then for each task: grow the head, ``method.begin_task``, the method's stages on the shared
:class:`~cilearn.engine.train.Trainer`, ``method.end_task``, evaluation and the task's checkpoint.  What the run logs
and writes, and its loggers: :class:`~cilearn.engine.recorder.Recorder`.  Several runs: :mod:`cilearn.experiment`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from .. import runtime
from ..augment import BatchAugment
from ..config import Config
from ..data import DatasetSplits
from ..distributed import Distributed, is_main
from ..distributed import check_config as check_distributed_config
from ..errors import TrainingDiverged
from ..loggers import make_loggers
from ..methods import MethodContext
from ..rundir import RunDir, check_fresh
from ..runtime import configure_torch, resolve_device, rng_state, run_precisions, seed_everything, set_rng_state
from .assembly import fresh_model, method_from, model_from, scenario_from
from .checkpoints import CHECKPOINT_FORMAT, CheckpointStore, resume_point
from .evaluate import Evaluator, Inference
from .meter import PhaseMeter
from .recorder import Recorder, say
from .train import EpochResult, Trainer


class Run:
    """One (method, seed) run in its own directory; resumable from its checkpoints."""

    def __init__(self, cfg: Config, run_dir: Path, label: str | None = None, data: DatasetSplits | None = None):
        self.cfg = cfg
        self.data = data  # the dataset given from Python (Experiment(data=...)); None: cfg.data names it
        self.dir = Path(run_dir)
        self.files = RunDir(self.dir)
        self.label = label or cfg.method.label or cfg.method.name
        self.task_rng: dict | None = None  # the random state as the current task began
        self.ready = False  # setup() done: the config, data, model and method passed every check
        self.meter = PhaseMeter()  # peak resident memory per phase (this process's share of the run)

    # The heavy objects are built in setup() so that validation errors surface before any work.
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.train.device)
        configure_torch(cfg.train, self.device)
        check_distributed_config(cfg.train, self.device)
        self.distributed = Distributed.from_environment(self.device, cfg.train.dist_timeout)
        self.precision, self.inference_precision = self.resolved_precision()
        with self.meter.phase("data"):
            self.scenario = scenario_from(cfg, self.data)
        self.model = model_from(cfg, self.scenario, self.device, self.distributed)
        self.augment = BatchAugment.from_mode(cfg.train.augment, self.scenario.mean, self.scenario.std,
                                              self.scenario.image_shape[2], cfg.train.channels_last)
        self.inference = Inference(self.model, self.augment, self.device, cfg.train.eval_batch_size,
                                   self.inference_precision, fold_batchnorm=cfg.train.fold_batchnorm,
                                   distributed=self.distributed)
        context = MethodContext(scenario=self.scenario, device=self.device, seed=cfg.seed,
                                infer=self.inference, augment=self.augment, build_model=self.build_model,
                                distributed=self.distributed)
        self.method = method_from(cfg, self.model, context, self.augment, cfg.train.batch_size)
        self.evaluator = Evaluator(self.scenario, self.inference,
                                   cfg.output.max_feature_samples if cfg.output.save_features else 0, cfg.seed,
                                   quick_limit=cfg.train.eval_subsample, task_context=self.method.task_context)
        class_task = None
        if self.scenario.kind != "domain_incremental":
            class_task = torch.as_tensor(self.scenario.task_of_class(), device=self.device)
        self.trainer = Trainer(cfg.train, self.device, self.augment, class_task, self.distributed,
                               precision=self.precision)
        self.checkpoints = CheckpointStore(self.files, len(self.scenario))
        self.loggers = make_loggers(cfg.output.loggers)  # csv, tensorboard, wandb: checked here, started in execute
        self.ready = True

    def resolved_precision(self) -> tuple[str, str]:
        """(training, inference) precision on this machine; a resumed run keeps the one it started in."""
        recorded = (self.files.read_info() or {}).get("precision") if self.files.info.is_file() else None
        return run_precisions(self.cfg.train, self.device, recorded)

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised network of this run's architecture, on its device (no classes yet)."""
        return fresh_model(self.cfg, self.scenario, self.device)

    @cached_property
    def recorder(self) -> Recorder:
        """The run's record (epoch rows, task history, timings), result files and loggers; after setup()."""
        return Recorder(self.files, self.cfg, self.scenario, self.label, self.precision, self.inference_precision,
                        self.method.primary_classifier, self.loggers, self.meter)

    # --- checkpoints ---
    def save(self, task_index: int, stage: int, next_epoch: int | None) -> None:
        """A checkpoint after the task (``next_epoch`` None) or inside it, to resume at (stage, next_epoch)."""
        if not self.cfg.output.save_checkpoints:
            return
        with self.recorder.timed("checkpoint"):
            state = {"format": CHECKPOINT_FORMAT, "task": task_index, "stage": stage, "next_epoch": next_epoch,
                     "head_sizes": [s.stop - s.start for s in self.model.head.task_slices],
                     "model": self.model.state_dict(), "method": self.method.state_dict(),
                     **self.recorder.state_dict(), "rng": rng_state()}
            if next_epoch is None and self.cfg.train.optimizer_state == "keep":  # what the next task starts from
                state["optimizer_state"] = self.trainer.kept_state(self.model)
            if next_epoch is not None:  # trainer None: the stage has not begun
                state.update(trainer=self.trainer.state_dict() if next_epoch else None, task_rng=self.task_rng,
                             train_samples=self.recorder.train_samples)
            self.checkpoints.save(state)

    def restore(self, state: dict) -> tuple[int, dict | None]:
        """Load a checkpoint: (the first task to run, the checkpoint again when it resumes inside that task)."""
        with self.checkpoints.must_fit():
            for size in state["head_sizes"]:
                self.model.add_classes(size)
            self.recorder.load_state_dict(state)
            if state["next_epoch"] is None:  # resume after a finished task
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
                self.trainer.carried = state.get("optimizer_state", {})
                set_rng_state(state["rng"])
        task, stage, epoch = resume_point(state)
        self.recorder.resumed(self.checkpoints.resumed_from or "the checkpoint rank 0 read", task, stage, epoch)
        return task, state if stage or epoch else None  # inside the task: loaded in run_task

    # --- the loop over tasks ---
    def execute(self, resume: bool = False) -> dict:
        if not self.ready:
            self.setup()  # every check passes before anything is written to the run directory
        started = self.files.read_info() if resume else None  # run.json: what a resumed run started with
        with runtime.resumed_thread_count(self.cfg.train, self.device, started, f"[{self.label}]", self.files.config):
            return self._execute(resume)

    def _execute(self, resume: bool) -> dict:
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
                self.recorder.write_info()
            first_task = 0
            if state is not None:
                first_task, state = self.restore(state)
            elif resume:
                say(f"[{self.label}] no checkpoint in '{self.dir}' yet: starting the run from the beginning")
            final = None
            try:
                self.recorder.start(first_task)
                for task in self.scenario[first_task:]:
                    self.run_task(task, state)
                    state = None
                final = self.recorder.write(complete=True)
            except TrainingDiverged as exc:
                done = len(self.recorder.history)
                kept = (f" The {done} finished tasks keep their results and checkpoints in '{self.dir}'." if done > 1
                        else f" The finished task keeps its results and checkpoint in '{self.dir}'." if done else "")
                raise TrainingDiverged(f"{exc}{kept}") from None
            finally:
                self.recorder.end(final)
            return final

    def run_task(self, task, state: dict | None = None) -> None:
        """Train, evaluate and save ``task``; ``state``: a checkpoint from inside this task to resume."""
        self.scenario.release_pages()  # data.keep_in_memory false: only what this task reads comes back
        if state is None:
            self.method.grow_head(task)
            self.task_rng = rng_state()  # saved with epoch checkpoints: see below
        else:
            # Inside a task, begin_task and training_data run again: give them the random state they had
            # the first time, so that a method drawing from the global RNGs there rebuilds the same data.
            self.task_rng = state["task_rng"]
            set_rng_state(self.task_rng)
        self.recorder.begin_task(int(state.get("train_samples") or 0) if state is not None else 0)
        self.method.begin_task(task)
        if state is not None:  # resume inside the task: the checkpoint overrides what begin_task built
            with self.checkpoints.must_fit():
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
        start_stage = int(state.get("stage", 0)) if state is not None else 0
        stages = self.method.stages(task)
        data = task.train
        for index in range(start_stage, len(stages)):
            data = self.run_stage(task, stages, index, state if index == start_stage else None)
            if index + 1 < len(stages):
                self.save(task.index, index + 1, 0)
        with self.recorder.timed("end_task"):
            self.method.end_task(task, data)
        if self.distributed is not None:
            self.distributed.check_identical(self.model, f"after task {task.index + 1}")
        self.evaluate_task(task)

    def run_stage(self, task, stages: list, index: int, state: dict | None):
        """One training stage of ``task`` on the shared loop; returns the data it trained on."""
        cfg, stage = self.cfg, stages[index]
        self.method.begin_stage(stage)
        data = stage.training_data(self.method, task)
        self.trainer.start(self.method, stage, first_task=task.index == 0)
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
            current = seen = float("nan")
            last = last_stage and result.epoch + 1 == epochs
            # The last epoch's test accuracies come from the full evaluation after the task (one pass less).
            if cfg.train.eval_every and (result.epoch + 1) % cfg.train.eval_every == 0 and not last:
                with self.recorder.timed("eval"):
                    current, seen = self.evaluator.quick(task.index)
            self.recorder.epoch_end(task.index, stage.name, result, current, seen, (index, len(stages), epochs))
            every = cfg.train.checkpoint_every
            if every and (result.epoch + 1) % every == 0 and result.epoch + 1 < epochs:
                self.save(task.index, index, result.epoch + 1)

        with self.meter.phase("train"):
            self.trainer.fit(self.model, self.method, data, start_epoch, epoch_end, desc, task.index)
        batch = self.trainer.cfg.batch_size
        self.recorder.train_samples += sum(min(len(data), steps * batch) for steps in plan[start_epoch:])
        return data

    def evaluate_task(self, task) -> None:
        with self.recorder.timed("eval"):
            scores, arrays = self.evaluator.evaluate(task.index, self.method.classifiers())
        last_epoch = None
        if self.recorder.trained(task.index):  # the task's last epoch: its test accuracies
            head = scores.get("head_task_aware" if self.scenario.task_incremental else "head")
            last_epoch = ((head["current_accuracy"], head["seen_accuracy"]) if head is not None
                          else self.evaluator.quick(task.index, sample=False))  # a method without a head classifier
        self.recorder.add_task(task, scores, last_epoch)
        if self.cfg.output.save_features:
            self.recorder.write_arrays(task.index, arrays, self.evaluator.exemplar_arrays(self.method.exemplars()))
        self.save(task.index, 0, None)
        self.recorder.task_end(task)

