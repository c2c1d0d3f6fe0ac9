"""Experience replay where the buffer joins the training data, with sample-selection metrics; the IID baseline.

``replay`` — the seed study's variant of experience replay (not the per-step minibatch replay of
Chaudhry et al., which is ``er``): after each experience, a share of its training samples (``fraction``
of them, or a fixed ``per_experience`` count) joins a replay buffer; every later experience trains on
its own data plus the whole buffer (``training_data`` = task.train + buffer), shuffled together.  The
buffer only grows: experience ``t`` keeps its samples for the rest of the stream.

``memory_total: M`` with ``repeat: balanced`` is Hsu et al.'s (2018) naive rehearsal instead, as their
``agents/exp_replay.py`` does it: a memory of ``M`` samples shared by the experiences seen — after
experience ``t`` each keeps ``min(M // t, its size)``, the first of its own ranking (so a share only shrinks
to a prefix of itself) — and the memory is repeated ``max(len(task.train) // M, 1)`` times in the next
experience's training data, so that old and new samples are about 1:1 in every epoch.  ``repeat: once``
(default) adds it once.

Which samples are kept is decided by a metric computed with the model just trained on the experience
(``context.infer``: evaluation mode, no augmentation), over the whole experience at once (no
per-class stratification, on purpose: the metric alone decides):

- ``error_l2``: ‖softmax(logits) − one_hot(label)‖₂ — large = hard;
- ``entropy``: Shannon entropy (nats) of softmax(logits) — large = uncertain = hard;
- ``margin``: logit of the true class minus the largest other logit (negative when misclassified) —
  small = hard;
- ``random``: a seeded uniform choice.

``keep: hardest`` (default) keeps the largest error / entropy and the smallest margin; ``keep: easiest``
the opposite.  In task-incremental scenarios the metric uses each sample's own task head.  ``er`` offers
the same metrics for its fixed-size buffer (``selection``).

``exemplars: collage`` stores collages instead (the iCaRL study's proposal,
:mod:`cilearn.methods.parts.exemplars.collage`):
the metric picks 4× as many samples and each class's picks, four by four, become one collage, so the
buffer still holds ``fraction``/``per_experience`` items per experience (fewer when a class's picks do
not divide by four).

Baselines of the same family: ``finetune`` (no replay) and ``iid`` (below).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Scenario, Task, concat
from ..schema import option
from .base import Method, MethodOptions
from .parts.exemplars import check_policy
from .parts.exemplars.collage import collages_by_class
from .parts.memory import KIND_CODES, KINDS

METRICS = ("error_l2", "entropy", "margin", "random")


def selection_metric(logits: torch.Tensor, labels: torch.Tensor, metric: str,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample value of ``metric`` (float64, on the logits' device).

    ``mask`` (N, C, bool) restricts each sample to the outputs it may use (its task's head)."""
    logits = logits.double()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if metric == "error_l2":
        one_hot = torch.nn.functional.one_hot(labels, logits.shape[1]).double()
        return (logits.softmax(1) - one_hot).norm(dim=1)
    if metric == "entropy":
        p = logits.softmax(1)
        return -torch.special.xlogy(p, p).sum(1)
    if metric == "margin":
        true = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return true - others.max(1).values
    if metric == "random":
        return torch.zeros(len(labels), dtype=torch.float64, device=logits.device)
    raise ValueError(f"unknown selection metric {metric!r}; choose one of {', '.join(METRICS)}")


def rank(values: np.ndarray, metric: str, keep: str = "hardest",
         rng: np.random.RandomState | None = None) -> np.ndarray:
    """Every sample's index, the one to keep first at the front: hardest first (large ``error_l2``/``entropy``,
    small ``margin``; ``keep: easiest`` reverses it), ties broken by index (stable sort).  ``random``
    ignores ``values`` and ``keep`` and returns a permutation drawn from ``rng``."""
    n = len(values)
    if metric == "random":
        rng = rng if rng is not None else np.random.RandomState(0)
        return rng.permutation(n)
    hardness = -np.asarray(values, dtype=np.float64) if metric == "margin" else np.asarray(values, dtype=np.float64)
    return np.argsort(-hardness if keep == "hardest" else hardness, kind="stable")


def select(values: np.ndarray, count: int, metric: str, keep: str = "hardest",
           rng: np.random.RandomState | None = None) -> np.ndarray:
    """Indices (sorted) of the ``count`` samples to keep: the first ``count`` of :func:`rank`."""
    count = max(0, min(int(count), len(values)))
    return np.sort(rank(values, metric, keep, rng)[:count])


def metric_values(method: Method, data: ImageData, metric: str) -> np.ndarray:
    """``metric`` of every sample of ``data`` under the method's current model (no augmentation)."""
    if metric == "random":
        return np.zeros(len(data))
    _, logits = method.context.infer(data.images)
    labels = torch.as_tensor(data.labels, device=logits.device)
    mask = method.head_mask(labels)  # task-incremental: each sample scored within its task head
    return selection_metric(logits, labels, metric, mask).cpu().numpy()


def buffer_size(n: int, fraction: float | None, per_experience: int | None) -> int:
    """Samples an experience of ``n`` training samples leaves in the buffer."""
    if per_experience is not None:
        return min(per_experience, n)
    share = 0.05 if fraction is None else fraction
    return min(n, max(1, int(round(share * n)))) if share > 0 and n else 0


@dataclasses.dataclass
class ReplayOptions(MethodOptions):
    fraction: float | None = option(None, min=0.0, max=1.0,
                                    help="share of each experience's training samples kept (default 0.05)")
    per_experience: int | None = option(None, min=0, help="keep this many samples per experience instead")
    metric: Literal["error_l2", "entropy", "margin", "random"] = option(
        "error_l2", help="which samples to keep: L2 error of the softmax, its entropy, the logit margin, or random")
    keep: Literal["hardest", "easiest"] = option("hardest", help="keep the hardest or the easiest by the metric")
    exemplars: Literal["selected", "collage"] = option(
        "selected", help="what the buffer keeps: the selected samples, or collages of 4 selected samples of a "
                         "class (the buffer counts collages)")
    collage: Literal["resized", "random_crop", "center_crop"] = option(
        "resized", help="exemplars: collage: each quadrant is a sample at half size, a random or the central patch")
    memory_total: int | None = option(
        None, min=1, help="a memory of this many samples shared equally by the experiences seen (M // t each after "
                          "experience t, each share a prefix of its ranking), instead of fraction/per_experience")
    repeat: Literal["once", "balanced"] = option(
        "once", help="the memory joins the training data once, or (balanced, needs memory_total) "
                     "max(task samples // memory_total, 1) times so that old and new data are about 1:1 "
                     "(Hsu et al.'s naive rehearsal)")


def balanced_copies(task_data: ImageData, memory_total: int) -> int:
    """How many times a memory of ``memory_total`` joins a task's data so that old and new samples are about 1:1
    in every epoch (Hsu et al.'s naive rehearsal and GEM)."""
    return max(len(task_data) // memory_total, 1)


class Replay(Method):
    name = "replay"
    description = ("experience replay, buffer joins the training data: keep a share of every experience "
                   "(selected by error/entropy/margin/random)")
    Options = ReplayOptions

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.buffer_images: np.ndarray | None = None  # uint8 NHWC
        self.buffer_labels = np.zeros(0, dtype=np.int64)
        self.buffer_task = np.zeros(0, dtype=np.int64)  # experience each buffered sample came from
        self.buffer_kind = np.zeros(0, dtype=np.int8)   # memory.KINDS index: real sample or collage

    def check(self, scenario: Scenario) -> None:
        sizes = [self.options.fraction, self.options.per_experience, self.options.memory_total]
        if sum(size is not None for size in sizes) > 1:
            raise ConfigError("method.fraction / method.per_experience / method.memory_total: give one of them, "
                              "not several.")
        if self.options.repeat == "balanced" and self.options.memory_total is None:
            raise ConfigError("method.repeat: balanced repeats the memory task samples // memory_total times: "
                              "give method.memory_total.")
        if self.options.memory_total is not None and self.options.exemplars == "collage":
            raise ConfigError("method.memory_total shares a memory of samples; exemplars: collage is not offered "
                              "with it.")
        check_policy(self.options.exemplars, scenario.image_shape, self.model)
        if self.options.exemplars == "collage":  # as iCaRL: fewer collages than a task's classes leave some out
            for task in scenario:
                count = buffer_size(len(task.train), self.options.fraction, self.options.per_experience)
                if len(task.new_classes) > count:
                    raise ConfigError(
                        f"method.exemplars: collage keeps {count} collage{'s' if count != 1 else ''} of task "
                        f"{task.index + 1}, which brings {len(task.new_classes)} classes: some classes would keep "
                        f"none. Raise per_experience (or fraction) so that each task keeps at least one collage "
                        f"per class.")

    @property
    def memory_size(self) -> int:
        return len(self.buffer_labels)

    def buffer(self) -> ImageData | None:
        if self.buffer_images is None or not len(self.buffer_labels):
            return None
        return ImageData(self.buffer_images, self.buffer_labels, self.context.scenario.class_names)

    def exemplars(self) -> dict | None:
        """The buffer for reports; rank = order of arrival within each class."""
        if self.buffer_images is None or not len(self.buffer_labels):
            return None
        rank = np.zeros(len(self.buffer_labels), dtype=np.int64)
        for label in np.unique(self.buffer_labels):
            where = np.flatnonzero(self.buffer_labels == label)
            rank[where] = np.arange(len(where))
        return {"images": self.buffer_images, "labels": self.buffer_labels, "rank": rank,
                "kind": np.asarray(KINDS)[self.buffer_kind]}

    def training_data(self, task: Task) -> ImageData:
        memory = self.buffer()
        if memory is None:
            return task.train
        copies = balanced_copies(task.train, self.options.memory_total) if self.options.repeat == "balanced" else 1
        return concat([task.train] + [memory] * copies)

    def selection_values(self, data: ImageData) -> np.ndarray:
        """The metric of every sample of ``data`` under the current model (no augmentation)."""
        return metric_values(self, data, self.options.metric)

    def shrink_shares(self, share: int) -> None:
        """Keep the first ``share`` samples of every experience in the buffer (memory_total)."""
        keep = np.concatenate([np.flatnonzero(self.buffer_task == t)[:share] for t in np.unique(self.buffer_task)])
        self.buffer_images, self.buffer_labels = self.buffer_images[keep], self.buffer_labels[keep]
        self.buffer_task, self.buffer_kind = self.buffer_task[keep], self.buffer_kind[keep]

    def end_task(self, task: Task, train_data: ImageData) -> None:
        data = task.train  # only this experience's own samples join the buffer
        rng = np.random.RandomState(self.context.seed * 1000 + task.index)
        collage = self.options.exemplars == "collage"
        values = self.selection_values(data)
        if self.options.memory_total is not None:
            # The shares are stored in ranking order (not sorted by index): shrinking keeps the first of each.
            count = min(self.options.memory_total // (task.index + 1), len(data))
            if self.buffer_images is not None:
                self.shrink_shares(count)
            keep = rank(values, self.options.metric, self.options.keep, rng)[:count]
        else:
            count = buffer_size(len(data), self.options.fraction, self.options.per_experience)
            keep = select(values, 4 * count if collage else count, self.options.metric, self.options.keep, rng)
        chosen, labels = data.images[keep], data.labels[keep]
        if collage:
            generator = torch.Generator().manual_seed(self.context.seed * 1000 + task.index)
            chosen, labels = collages_by_class(chosen, labels, self.options.collage, generator)
        self.add_to_buffer(chosen, labels, task.index, "collage" if collage else "real")

    def add_to_buffer(self, images: np.ndarray, labels: np.ndarray, group: int, kind: str = "real") -> None:
        """Append samples to the buffer as one share (``group``: the experience they came from)."""
        if not len(labels):
            return
        self.buffer_images = images if self.buffer_images is None else np.concatenate([self.buffer_images, images])
        self.buffer_labels = np.concatenate([self.buffer_labels, labels])
        self.buffer_task = np.concatenate([self.buffer_task, np.full(len(labels), group, dtype=np.int64)])
        self.buffer_kind = np.concatenate([self.buffer_kind, np.full(len(labels), KIND_CODES[kind], dtype=np.int8)])

    def state_dict(self) -> dict:
        images = self.buffer_images if self.buffer_images is not None else np.zeros((0, 1, 1, 1), np.uint8)
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(self.buffer_labels.copy()),
                "task": torch.from_numpy(self.buffer_task.copy()),
                "kind": torch.from_numpy(self.buffer_kind.copy())}

    def load_state_dict(self, state: dict) -> None:
        labels = state["labels"].cpu().numpy().astype(np.int64)
        self.buffer_labels, self.buffer_task = labels, state["task"].cpu().numpy().astype(np.int64)
        kind = state.get("kind")  # absent in checkpoints written before collage buffers: all real samples
        self.buffer_kind = (kind.cpu().numpy().astype(np.int8) if kind is not None
                            else np.full(len(labels), KIND_CODES["real"], dtype=np.int8))
        self.buffer_images = state["images"].cpu().numpy() if len(labels) else None


class IIDStream(Method):
    """The IID baseline of a stream: the same number of samples per step as the stream, drawn from the
    pooled training data of *all* experiences (one seeded permutation of the pool, cut into pieces of
    the experiences' sizes).  Every sample is used exactly once over the stream, like fine-tuning,
    so the per-step curve of average test accuracy is comparable; only the temporal order is gone.
    ``joint`` (cumulative training on all data seen so far) is the other, costlier upper bound."""

    name = "iid"
    description = "IID baseline for domain streams: each step trains on an i.i.d. draw of the whole stream"
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies

    def check(self, scenario: Scenario) -> None:
        if scenario.kind != "domain_incremental":
            raise ConfigError("method 'iid' shuffles the experiences of a domain_incremental stream (one label "
                              "space); for class-incremental scenarios use 'joint' as the upper bound.")

    def training_data(self, task: Task) -> ImageData:
        tasks = self.context.scenario.tasks
        pool = concat([t.train for t in tasks])
        bounds = np.cumsum([0] + [len(t.train) for t in tasks])
        order = np.random.RandomState(self.context.seed + 104729).permutation(len(pool))
        return pool.subset(np.sort(order[bounds[task.index]:bounds[task.index + 1]]))
