"""The one training loop every method shares.

Per stage of a task: the training images go to the device once as uint8; each epoch draws a
permutation, slices batches, augments them as tensors and hands the method a :class:`Batch`
(plus a replay minibatch when the method has a sampler).  The loop owns forward, backward and step;
the method's hooks (``forward``, ``loss``, ``before_step``, ``after_step``) are plain calls, and
metrics accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..augment import BatchAugment, nchw_view
from ..data import ImageData
from ..data.base import JoinedData
from ..distributed import Distributed
from ..errors import ConfigError, TrainingDiverged
from ..log import progress_disabled
from ..methods import Batch, Method, Output, Stage
from ..runtime import autocast
from ..sections import TrainConfig
from .optim import make_optimizer, make_scheduler


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    seconds: float
    samples: int = 0  # training samples this epoch went through (img/s = samples / seconds)


def full_precision(out: Output) -> Output:
    """``out`` with fp32 features and logits (a method's own Output subclass keeps its other fields)."""
    return dataclasses.replace(out, features=out.features.float(), logits=out.logits.float())


def stage_config(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """The train config of a stage: the run's, with the stage's overrides (a stage that gives its own
    ``epochs`` counts epochs, even when the run counts ``train.iterations``)."""
    if not overrides:
        return cfg
    if "epochs" in overrides and "iterations" not in overrides:
        overrides = {**overrides, "iterations": None}
    return dataclasses.replace(cfg, **overrides)


class StageImages:
    """A stage's uint8 images on the device, drawn by index: one array's channels_last view (no copy on the CPU),
    or, for a :class:`~cilearn.data.base.JoinedData` (a task's data and a memory), each part's view, so that the
    parts are never copied into one array; a batch holds the same images in the same order either way."""

    def __init__(self, data: ImageData, device: torch.device):
        parts = data.parts if isinstance(data, JoinedData) else [data]
        self.parts = [nchw_view(part.images, device) for part in parts]
        self.starts = [sum(len(part) for part in self.parts[:i]) for i in range(len(self.parts))]

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0][indices]
        batch = None
        for part, start in zip(self.parts, self.starts):
            inside = (indices >= start) & (indices < start + len(part))
            rows = part[indices[inside] - start]
            if batch is None:
                batch = rows.new_empty((len(indices), *rows.shape[1:]))
            batch[inside] = rows
        return batch


class Trainer:
    """Trains a model on one stage's data for ``cfg.epochs`` epochs, or for exactly ``cfg.iterations``
    gradient steps: then an "epoch" is one pass over a fresh permutation of the data (the last one cut
    short), log rows and checkpoints come once per pass, and the schedule is stepped after every
    gradient step, so that milestones and warm-up count iterations.

    ``class_task`` (a device tensor: the task that introduced each label) gives every batch its task
    ids; without it (domain streams) every sample carries the current task's index."""

    def __init__(self, cfg: TrainConfig, device: torch.device, augment: BatchAugment,
                 class_task: torch.Tensor | None = None, distributed: Distributed | None = None,
                 precision: str | None = None):
        # fp32, bf16 or fp16, resolved by the caller (a Run: runtime.resolve_precision); default: the config's own
        self.precision = precision or cfg.precision
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"Trainer: precision '{self.precision}' is not resolved; pass precision=fp32, bf16 or "
                              f"fp16 (runtime.resolve_precision turns 'auto' into one of them for a device).")
        self.base_cfg = self.cfg = cfg
        self.device, self.augment = device, augment
        self.class_task = class_task
        self.distributed = distributed  # torchrun: this process computes its share of every batch
        self.stage = Stage()  # the stage start() prepared
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler: torch.amp.GradScaler | None = None  # fp16's dynamic loss scale, one per stage like the optimizer
        self.carried: dict[str, dict] = {}  # optimizer_state keep: the state a resumed run starts its next task with

    def start(self, method: Method, stage: Stage | dict | None = None, first_task: bool = False) -> None:
        """Fresh optimizer and schedule for a new stage (restored afterwards when resuming): the stage's train
        settings, over what it trains (:meth:`Stage.parameter_groups`); a plain dict is the train overrides of
        a stage that trains what the method's ``parameter_groups()`` gives.  In the ``first_task``,
        ``train.first_task``'s settings come first, the stage's over them.  With ``optimizer_state: keep``
        the new optimizer takes over the previous one's per-parameter state (Adam's moments and step counts),
        matched by parameter name; parameters new to it (a grown head) start fresh."""
        self.stage = stage if isinstance(stage, Stage) else Stage(overrides=stage or {})
        run_cfg = stage_config(self.base_cfg, self.base_cfg.first_task) if first_task else self.base_cfg
        self.cfg = stage_config(run_cfg, self.stage.train_overrides())
        carried = self.kept_state(method.model) if self.cfg.optimizer_state == "keep" else {}
        self.optimizer = make_optimizer(self.stage.parameter_groups(method), self.cfg, model=method.model)
        trained = {p for group in self.optimizer.param_groups for p in group["params"]}
        for name, parameter in method.model.named_parameters():
            if name in carried and parameter in trained and _fits(carried[name], parameter):
                self.optimizer.state[parameter] = carried[name]
        self.scheduler = make_scheduler(self.optimizer, self.cfg)  # stepped once per epoch, or per iteration
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def kept_state(self, model: torch.nn.Module) -> dict[str, dict]:
        """The optimizer's per-parameter state by parameter name (what ``optimizer_state: keep`` carries over)."""
        if self.optimizer is None:
            return dict(self.carried)
        names = {parameter: name for name, parameter in model.named_parameters()}
        return {names[p]: state for p, state in self.optimizer.state.items() if p in names}

    def steps_per_pass(self, n: int, model: torch.nn.Module) -> int:
        """Batches in one pass over ``n`` samples.  A last batch of one sample breaks BatchNorm in training
        mode: it is dropped (and reshuffled next pass); under torchrun every process needs two samples of it."""
        dist, size = self.distributed, self.cfg.batch_size
        smallest = 2 * dist.world if dist is not None and _has_batchnorm(model) else (dist.world if dist else 2)
        return n // size + (1 if n % size >= smallest else 0)

    def plan(self, n: int, model: torch.nn.Module) -> list[int]:
        """Gradient steps of each epoch (pass) of this stage over ``n`` samples."""
        steps = self.steps_per_pass(n, model)
        if not self.cfg.iterations:
            return [steps] * self.cfg.epochs
        if steps == 0:
            return []
        full, rest = divmod(self.cfg.iterations, steps)
        return [steps] * full + ([rest] if rest else [])

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:  # a checkpoint inside a task resumes with the loss scale it had reached
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def _schedule(self) -> None:
        """One scheduler step.  In fp16 the first optimizer steps may be skipped (the loss scale starts high and
        halves on overflow); the schedule counts them anyway, as PyTorch's AMP recipe does, without its warning."""
        if self.scaler is None:
            self.scheduler.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _task_ids(self, labels: torch.Tensor, task_index: int) -> torch.Tensor:
        if self.class_task is None:
            return torch.full_like(labels, task_index)
        return self.class_task[labels]

    def _replay_batches(self, method: Method, size: int, task_index: int) -> tuple[Batch | None, Batch | None]:
        """The step's replayed minibatch and, where the method draws two (DER++), a second, independent one,
        drawn and augmented with the global RNG: under torchrun every process draws the same whole ones."""
        sampler = method.replay_source()
        if sampler is None or len(sampler) == 0:
            return None, None
        n = getattr(method, "replay_batch_size", None) or size
        first = self._draw(sampler, n, task_index)
        return first, (self._draw(sampler, n, task_index) if getattr(method, "replay_draws", 1) > 1 else None)

    def _draw(self, sampler, n: int, task_index: int) -> Batch:
        drawn = sampler.sample(n)
        images, labels, indices = drawn.pop("images"), drawn.pop("labels"), drawn.pop("indices")
        task_ids = drawn.pop("task_ids", None)
        return Batch(inputs=self.augment(images), images=images, labels=labels,
                     task_ids=task_ids if task_ids is not None else self._task_ids(labels, task_index),
                     indices=indices, extras=drawn)

    def fit(self, model: torch.nn.Module, method: Method, data: ImageData, start_epoch: int = 0,
            on_epoch_end: Callable[[EpochResult], None] | None = None, desc: str = "",
            task_index: int = 0) -> None:
        """Train the stage :meth:`start` prepared, from ``start_epoch``; a stage that trains only part of the
        model has the rest fixed while it runs (:class:`FixedPart`)."""
        with FixedPart(model, self.optimizer, self.stage) as fixed:
            self._epochs(model, method, data, start_epoch, on_epoch_end, desc, task_index, fixed)

    def _epochs(self, model: torch.nn.Module, method: Method, data: ImageData, start_epoch: int,
                on_epoch_end: Callable[[EpochResult], None] | None, desc: str, task_index: int,
                fixed: FixedPart) -> None:
        cfg, device = self.cfg, self.device
        images = StageImages(data, device)
        labels = torch.as_tensor(data.labels, device=device)
        n = len(labels)
        dist = self.distributed
        plan = self.plan(n, model)
        per_iteration = bool(cfg.iterations)  # the schedule's positions are iterations
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.cfg.clip_grad_value
        forward, objective = self.stage.forward or method.forward, self.stage.loss or method.loss
        reduced = self.precision != "fp32"
        scaler = self.scaler
        gathers = type(method).after_step is not Method.after_step  # under torchrun: after_step sees the whole batch
        num_seen = method.num_seen
        # progress_disabled: off with --quiet (and on torchrun's other ranks), else None: tqdm switches itself off
        # when stderr is not a terminal (CI logs stay readable; the run prints a line per epoch instead).  One bar
        # per stage of a task, kept on screen when done; its postfix (loss, lr, img/s) is the last epoch's.
        bar = tqdm(total=sum(plan[start_epoch:]), desc=desc, leave=True, unit="batch",
                   disable=progress_disabled() if cfg.progress else True, dynamic_ncols=True)
        for epoch in range(start_epoch, len(plan)):
            steps = plan[epoch]
            bar.set_description(f"{desc} epoch {epoch + 1}/{len(plan)}", refresh=False)
            started = time.perf_counter()
            model.train()
            fixed.hold_modes()
            method.begin_epoch(epoch)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            order = torch.randperm(n, device=device)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                raw, targets = images[idx], labels[idx]
                inputs, total = self.augment(raw), len(idx)
                inputs, mix = self.augment.cutmix(inputs, targets)
                replay, second_replay = self._replay_batches(method, total, task_index)
                whole = batch = Batch(inputs=inputs, images=raw, labels=targets,
                                      task_ids=self._task_ids(targets, task_index), indices=idx,
                                      replay=replay, second_replay=second_replay, mix=mix)
                if dist is not None:  # the whole batch is drawn and augmented alike everywhere; compute a share
                    batch = local_share(whole, dist)
                with autocast(self.precision, device):
                    out = forward(batch)
                    if reduced:  # the network ran in bf16 or fp16; the losses read fp32
                        out = full_precision(out)
                    loss = objective(out, batch)
                    if batch.mix is not None:  # cutmix: λ·L(y_a) + (1 - λ)·L(y_b) (methods with mixes_labels only)
                        mixed = batch.mix.labels  # this process's share under torchrun, like batch.labels
                        other = dataclasses.replace(batch, labels=mixed, task_ids=self._task_ids(mixed, task_index))
                        loss = batch.mix.lam * loss + (1 - batch.mix.lam) * objective(out, other)
                self.optimizer.zero_grad(set_to_none=True)
                (loss if scaler is None else scaler.scale(loss)).backward()
                if dist is not None:
                    dist.average_gradients(parameters, len(batch), total)
                if scaler is not None:  # clipping and the methods' gradient hooks see the true gradients
                    scaler.unscale_(self.optimizer)
                if clip is not None:
                    torch.nn.utils.clip_grad_value_(parameters, clip)
                method.before_step(self.optimizer)
                if scaler is None:
                    self.optimizer.step()
                else:  # skipped when a gradient is inf or NaN (the scale is then halved, doubled after 2000 good steps)
                    scaler.step(self.optimizer)
                    scaler.update()
                if dist is None or not gathers:
                    method.after_step(batch, out)
                else:  # per-step state (a reservoir, stored logits) is updated alike everywhere, from the whole batch
                    method.after_step(whole, gather_stream_rows(out, len(batch), dist.shard(total), total, dist))
                if per_iteration:
                    lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
                    self._schedule()
                loss_sum += loss.detach().float() * (len(batch) / total if dist is not None else 1.0)
                logits = out.logits.detach()[: len(batch), :num_seen]
                correct += (logits.argmax(1) == batch.labels).sum()
                bar.update()
            method.end_epoch(epoch)
            if dist is not None:  # every process logs (and stops on NaN) with the whole batch's figures
                loss_sum, correct = dist.sum(loss_sum), dist.sum(correct)
            if not per_iteration:
                lr = self.optimizer.param_groups[0]["lr"]
                self._schedule()
            mean_loss = loss_sum.item() / max(steps, 1)
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingDiverged(
                    f"the training loss became {mean_loss} in epoch {epoch + 1} ({desc}); the learning rate "
                    f"{lr:g} is probably too high for this setting. Lower train.lr (or check the data) and "
                    f"start a new run.")
            seen = min(n, steps * cfg.batch_size)
            result = EpochResult(epoch=epoch, lr=lr, train_loss=mean_loss,
                                 train_accuracy=correct.item() / max(seen, 1),
                                 seconds=time.perf_counter() - started, samples=seen)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{result.train_accuracy:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{seen / max(result.seconds, 1e-9):.0f}")
            if on_epoch_end is not None:
                on_epoch_end(result)
        bar.close()


class FixedPart:
    """What a stage that trains only some parameters (:attr:`Stage.trains`) does to the rest of the model
    while it runs (a ``with`` block): their ``requires_grad`` is off (no gradient, no graph through them), and
    with ``frozen_in_eval`` the largest submodules holding none of the trained parameters run in eval mode
    (:meth:`hold_modes`, every epoch after ``model.train()``).  Leaving the block undoes both: the parameters
    train again, the modules are back in training mode.  Parameters that were already frozen stay so; a stage
    that trains everything changes nothing."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: Stage) -> None:
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        partial = stage.trains_part
        self.fixed_parameters = [p for p in model.parameters() if p.requires_grad and id(p) not in trained] \
            if partial else []
        self.eval_modules = untrained_modules(model, trained) if partial and stage.frozen_in_eval else []

    def __enter__(self) -> FixedPart:
        for parameter in self.fixed_parameters:
            parameter.requires_grad_(False)
        return self

    def hold_modes(self) -> None:
        for module in self.eval_modules:
            module.eval()

    def __exit__(self, *exc) -> None:
        for parameter in self.fixed_parameters:
            parameter.requires_grad_(True)
        for module in self.eval_modules:
            module.train()


def untrained_modules(module: torch.nn.Module, trained: set[int]) -> list[torch.nn.Module]:
    """The largest submodules of ``module`` (itself included) that hold state (parameters or buffers) but
    none of the ``trained`` parameters (ids).  A module without state (an activation, dropout) goes with its
    parent."""
    parameter_ids = [id(p) for p in module.parameters()]
    if not any(i in trained for i in parameter_ids):
        has_state = parameter_ids or next(module.buffers(), None) is not None
        return [module] if has_state else []
    return [found for child in module.children() for found in untrained_modules(child, trained)]


def local_share(whole: Batch, dist: Distributed) -> Batch:
    """This process's share of a step's batch: its contiguous part of the stream rows and of each replayed
    minibatch (the whole batch is drawn and augmented identically on every process)."""
    def part(batch: Batch | None) -> Batch | None:
        if batch is None:
            return None
        rows = dist.shard(len(batch))
        return dataclasses.replace(
            batch, inputs=batch.inputs[rows], images=batch.images[rows], labels=batch.labels[rows],
            task_ids=batch.task_ids[rows], indices=batch.indices[rows],
            extras={key: value[rows] for key, value in batch.extras.items()},
            replay=part(batch.replay), second_replay=part(batch.second_replay),
            mix=dataclasses.replace(batch.mix, labels=batch.mix.labels[rows]) if batch.mix is not None else None)

    return part(whole)


def gather_stream_rows(out: Output, local: int, rows: slice, total: int, dist: Distributed) -> Output:
    """The whole batch's stream outputs (features and logits) on every process, from each process's share."""
    features, logits = out.features[:local].detach().float(), out.logits[:local].detach().float()
    both = dist.gather_rows(torch.cat([features, logits], dim=1), rows, total)
    width = features.shape[1]
    return Output(features=both[:, :width], logits=both[:, width:])
def _fits(state: dict, parameter: torch.Tensor) -> bool:
    """Whether an optimizer state belongs to a parameter of this shape (a rebuilt layer of another size: no)."""
    return all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == parameter.shape for v in state.values())


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
