"""Experience replay as the literature defines it (Chaudhry et al. 2019, "On Tiny Episodic Memories").

Every step trains on the stream batch **plus** a minibatch drawn uniformly from a fixed-size buffer
(same size as the stream batch unless ``replay_batch_size`` says otherwise): one cross-entropy over the
concatenated batch, one forward pass.  The cross-entropy covers every output of a head that has all classes
from the first task, as Mammoth's ER (``classification_outputs: seen``: a growing head, the seen classes).
After the step the stream batch (un-augmented, as stored) is offered to the buffer.

How the two halves are combined (the literature's ER comes in two forms):

- ``replay_loss: mean`` (default; Chaudhry et al.'s script, Mammoth's ER): one cross-entropy averaged over the
  stream and replayed rows together — with equal halves, half the stream mean plus half the replay mean;
- ``replay_loss: sum``: the stream batch's mean cross-entropy **plus** the replayed minibatch's, as Caccia et al.'s
  ER (pclucas14/AML ``methods/er.py``: ``self.update(inc_loss + re_loss)``) — with equal halves, twice the
  gradient of ``mean`` once the buffer replays, so the same lr takes twice the step.
- ``forward_passes``: ``joint`` (default) runs stream and replay through the network in one pass, ``separate`` one
  pass each (the AML ER's ``process_inc`` / ``process_re``); only BatchNorm in training mode tells them apart
  (see :mod:`cilearn.methods.er_ace`).
- ``replay_from``: ``all`` (default) draws from the whole buffer, ``earlier_tasks`` only from samples stored in
  earlier tasks (:class:`~cilearn.methods.parts.buffers.EarlierTasks`): the AML code runs ER either way, task-free
  (``--task_free 1``) or task-based (its default, ``exclude_task`` = the current task).

Which samples the buffer holds (``selection``):

- ``reservoir`` (default, the paper's): reservoir sampling over the whole stream
  (:class:`~cilearn.methods.parts.buffers.ReservoirBuffer`) — every sample seen so far is in the buffer with the same
  probability; the buffer already replays the current task's samples while it is learnt;
- ``error_l2`` / ``entropy`` / ``margin`` / ``random``: the seed study's selection metrics (see
  :mod:`cilearn.methods.replay`) at the end of each experience: the buffer is re-divided equally
  between the experiences seen so far (``buffer_size // experiences``, the first ones get the
  remainder); the new experience's share is its hardest samples (``keep: easiest`` reverses it) under
  the model just trained on it, and each older experience keeps the front of its own ranking.  Nothing
  is replayed during the first experience.

``replay`` is the other variant of the family: there, the stored samples join the training data instead
of being replayed as a minibatch every step.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from ..augment import to_tensor_images
from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Task
from ..schema import option
from .base import Batch, Output
from .parts.buffers import EarlierTasks, TensorStore
from .parts.components import BufferMethod, BufferOptions, forward_with_replay
from .replay import metric_values, rank


@dataclasses.dataclass
class EROptions(BufferOptions):
    selection: Literal["reservoir", "error_l2", "entropy", "margin", "random"] = option(
        "reservoir", help="which samples the buffer holds: reservoir sampling over the stream (every step), or "
                          "a metric choosing an equal share of each experience at its end")
    keep: Literal["hardest", "easiest"] = option("hardest", help="with a metric: keep the hardest or the easiest")
    replay_loss: Literal["mean", "sum"] = option(
        "mean", help="mean: one cross-entropy averaged over stream and replayed rows together (Chaudhry et al., "
                     "Mammoth); sum: the stream batch's mean cross-entropy plus the replayed one's (Caccia et al.'s "
                     "ER, pclucas14/AML)")
    forward_passes: Literal["joint", "separate"] = option(
        "joint", help="joint: stream and replayed batch through the network in one pass; separate: one pass each "
                      "(BatchNorm sees each alone, as pclucas14/AML's ER)")
    replay_from: Literal["all", "earlier_tasks"] = option(
        "all", help="all: draw from the whole buffer from the first step on, the current task's samples included "
                    "(Mammoth, pclucas14/AML's task-free ER); earlier_tasks: only samples stored in earlier tasks, "
                    "so nothing is replayed in the first task (pclucas14/AML's task-based ER, exclude_task)")

    def __post_init__(self) -> None:
        if self.selection != "reservoir" and self.reservoir_draws != "per_sample":
            raise ConfigError(f"method.reservoir_draws: {self.reservoir_draws} says how a reservoir buffer keeps "
                              f"stream samples; selection: {self.selection} fills the buffer by its metric at each "
                              f"experience's end. Remove reservoir_draws or use selection: reservoir.")


def experience_shares(capacity: int, experiences: int) -> np.ndarray:
    """Slots of each experience when ``capacity`` is divided equally (the first ones get the remainder)."""
    shares = np.full(experiences, capacity // experiences)
    shares[: capacity % experiences] += 1
    return shares


class ER(BufferMethod):
    name = "er"
    description = "experience replay: every step also trains on a minibatch from a fixed buffer (reservoir)"
    paper = "Chaudhry et al., On Tiny Episodic Memories in Continual Learning, arXiv:1902.10486, 2019"
    Options = EROptions

    def __init__(self, options: EROptions, model, context):
        super().__init__(options, model, context)  # a reservoir buffer
        if options.selection != "reservoir":  # filled by the metric at each experience's end
            self.replay = TensorStore(options.buffer_size, context.device, options.replacement)

    def replay_source(self) -> TensorStore | EarlierTasks:
        if self.options.replay_from == "earlier_tasks" and self.task is not None:
            return EarlierTasks(self.replay, self.task.index)
        return self.replay

    def forward(self, batch: Batch) -> Output:
        return forward_with_replay(self.model, batch, separate=self.options.forward_passes == "separate")

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        logits = self.ce_logits(out.logits)
        if batch.replay is None:
            return self.classification_loss(logits, batch.labels)
        if self.options.replay_loss == "sum":
            n = len(batch)
            return (self.classification_loss(logits[:n], batch.labels)
                    + self.classification_loss(logits[n:], batch.replay.labels))
        return self.classification_loss(logits, torch.cat([batch.labels, batch.replay.labels]))

    def after_step(self, batch: Batch, out: Output) -> None:
        if self.options.selection == "reservoir":
            self.replay.add(batch.images, batch.labels, {"task_ids": batch.task_ids})

    def end_task(self, task: Task, train_data: ImageData) -> None:
        if self.options.selection != "reservoir":
            self.select_by_metric(task)

    def select_by_metric(self, task: Task) -> None:
        """Re-divide the buffer: the new experience's share chosen by the metric, the older ones shortened."""
        options, store = self.options, self.replay
        shares = experience_shares(options.buffer_size, task.index + 1)
        n = store.size
        old_experience = store.extras["task_ids"][:n] if n else torch.zeros(0, dtype=torch.long)
        old_rank = store.extras["rank"][:n] if n else torch.zeros(0, dtype=torch.long)
        limit = torch.as_tensor(shares, device=store.device)[old_experience.clamp_max(task.index)]
        kept = torch.nonzero(old_rank < limit).flatten()
        data = task.train
        rng = np.random.RandomState(self.context.seed * 1000 + task.index)
        order = rank(metric_values(self, data, options.selection), options.selection, options.keep, rng)
        order = order[: shares[task.index]]
        device = store.device
        new = {"images": to_tensor_images(data.images[order], device),
               "labels": torch.as_tensor(data.labels[order], device=device),
               "task_ids": torch.full((len(order),), task.index, dtype=torch.long, device=device),
               "rank": torch.arange(len(order), device=device)}
        if len(kept):
            old = store.take(kept)
            new = {key: torch.cat([old[key], value]) for key, value in new.items()}
        store.assign(new["images"], new["labels"], {"task_ids": new["task_ids"], "rank": new["rank"]})
