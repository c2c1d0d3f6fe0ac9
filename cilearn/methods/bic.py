"""BiC, bias correction (Wu et al., CVPR 2019): a two-parameter linear layer on the new classes' logits,
trained on a small balanced held-out set after each task.

Each task trains in two stages on the shared loop:

1. ``train``: the network on the new data + the exemplars with ``(1 - λ)·CE + λ·KD_T`` (λ = n / (n + m),
   n old and m new classes, T = 2; :func:`~cilearn.methods.parts.rehearsal.balanced_distillation`) against the
   frozen previous model;
2. ``bias`` (from the second task on): everything frozen (BatchNorm too) but this task's correction
   ``q_k = α·o_k + β`` on the new classes' logits, trained with cross-entropy on the held-out set; the old
   classes' logits are left as they are.

The held-out set (the paper's "validation set", split 9:1 from the exemplars): of the ``memory_size //
classes seen`` samples a class may keep, ``ceil(val_fraction · that)`` are held out and never trained on
by stage 1 — for a new class they are drawn at random from its training data before the task, for an old
class its held-out list is cut to the new share.  So the set is balanced across old and new classes and the
memory budget covers both parts.  Every task's (α, β) stays in the head (:class:`BiasCorrectedHead`): the
corrected logits are the network's output, for evaluation and for the next task's teacher.

Departures: the original code adds ``0.1 · β² / 2`` to the bias stage's loss; the paper does not (nor do
we).  The paper does not give the bias stage's schedule: ``bias_epochs: 200`` is the original code's
(2 × 100), its learning rate defaults to the run's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from ..data import ImageData
from ..errors import ConfigError
from ..models.net import IncrementalHead
from ..scenarios import Scenario, Task, concat
from ..schema import option
from .base import Batch, Output, Stage
from .parts.rehearsal import Rehearsal, RehearsalOptions, balanced_distillation


class BiasCorrectedHead(IncrementalHead):
    """A linear head whose task ``t`` logits are ``alpha[t] · o + beta[t]`` (identity until trained)."""

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features)
        self.alpha = nn.ParameterList()
        self.beta = nn.ParameterList()

    def grow(self, num_new_classes: int) -> None:
        super().grow(num_new_classes)
        like = dict(device=self._anchor.device, dtype=self._anchor.dtype)
        self.alpha.append(nn.Parameter(torch.ones((), **like)))
        self.beta.append(nn.Parameter(torch.zeros((), **like)))

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """The uncorrected logits."""
        return super().forward(features)

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        parts = [self.alpha[t] * logits[:, s] + self.beta[t] for t, s in enumerate(self.task_slices)]
        return torch.cat(parts, dim=1) if parts else logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.correct(self.raw(features))


class HeldOut:
    """The held-out samples per class (uint8 NHWC images, labels, rank = order of drawing)."""

    def __init__(self) -> None:
        self.images: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=np.int64)
        self.rank = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def reduce(self, per_class: int) -> None:
        keep = self.rank < per_class
        self.images = self.images[keep] if self.images is not None else None
        self.labels, self.rank = self.labels[keep], self.rank[keep]

    def add(self, images: np.ndarray, labels: np.ndarray, rank: np.ndarray) -> None:
        self.images = images if self.images is None else np.concatenate([self.images, images])
        self.labels = np.concatenate([self.labels, labels])
        self.rank = np.concatenate([self.rank, rank])

    def as_data(self, class_names: list[str]) -> ImageData:
        return ImageData(self.images, self.labels, class_names)

    def state_dict(self) -> dict:
        images = self.images if self.images is not None else np.zeros((0, 0, 0, 0), dtype=np.uint8)
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(self.labels.copy()), "rank": torch.from_numpy(self.rank.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.labels = state["labels"].cpu().numpy().astype(np.int64)
        self.rank = state["rank"].cpu().numpy().astype(np.int64)
        self.images = state["images"].cpu().numpy().astype(np.uint8) if len(self.labels) else None


@dataclasses.dataclass
class BiCOptions(RehearsalOptions):
    temperature: float = option(2.0, min=1e-3, help="T of the distillation loss (2: the authors' resnet.py, "
                                                    "PyCIL's bic.py)")
    val_fraction: float = option(0.1, min=0.0, max=1.0, help="share of each class's memory held out for the "
                                                             "bias stage (the 9:1 split: the authors' nb_val 0.1, "
                                                             "PyCIL's split_ratio 0.1)")
    bias_epochs: int = option(200, min=1, help="epochs of the bias-correction stage (the authors' code: "
                                               "_BIAS_EPOCHS 2 × 100)")
    bias_lr: float | None = option(None, min=0.0, help="learning rate of the bias stage (default: train.lr)")


class BiC(Rehearsal):
    name = "bic"
    description = "BiC: distillation + exemplars, then a bias-correction layer (α, β on the new classes' logits) " \
                  "trained on a held-out balanced set"
    paper = "Wu, Chen, Wang, Ye, Liu, Guo & Fu, Large Scale Incremental Learning, CVPR 2019"
    Options = BiCOptions
    primary_classifier = "head"

    def __init__(self, options: BiCOptions, model: torch.nn.Module, context):
        super().__init__(options, model, context)
        self.heldout = HeldOut()
        self.train_part: ImageData | None = None  # the task's data minus its held-out samples

    @classmethod
    def make_head(cls, options: BiCOptions, in_features: int) -> torch.nn.Module:
        return BiasCorrectedHead(in_features)

    def check(self, scenario: Scenario) -> None:
        super().check(scenario)
        classes = max(len(t.seen_classes) for t in scenario)
        per_class = self.memory.per_class(classes)
        if per_class - self.held_out_per_class(per_class) < 1:
            raise ConfigError(
                f"method.memory_size: {self.options.memory_size} exemplars leave {per_class} per class for "
                f"{classes} classes, too few to hold out {self.held_out_per_class(per_class)} for the bias "
                f"stage and still train on one. Raise memory_size to {2 * classes} or more, or lower val_fraction.")

    def held_out_per_class(self, per_class: int) -> int:
        return max(1, math.ceil(self.options.val_fraction * per_class)) if self.options.val_fraction > 0 else 0

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        held = self.held_out_per_class(self.memory.per_class(len(task.seen_classes)))
        self.heldout.reduce(held)
        data, keep = task.train, np.ones(len(task.train), dtype=bool)
        for label in task.new_classes:  # a fixed random draw per class, independent of the global RNGs
            where = np.flatnonzero(data.labels == label)
            picked = where[np.random.default_rng([self.context.seed, int(label)]).permutation(len(where))[:held]]
            keep[picked] = False
            self.heldout.add(data.images[picked], data.labels[picked], np.arange(len(picked), dtype=np.int64))
        self.train_part = ImageData(data.images[keep], data.labels[keep], data.class_names)

    def stages(self, task: Task) -> list[Stage]:
        if task.index == 0 or len(self.heldout) == 0:
            return [Stage()]
        # only this task's correction trains, on the held-out set; the network is fixed (BatchNorm statistics too)
        head = self.model.head
        bias = Stage("bias", epochs=self.options.bias_epochs, lr=self.options.bias_lr,
                     overrides={"milestones": [], "scheduler": "constant", "weight_decay": 0.0},
                     data=self.heldout.as_data(task.train.class_names),
                     trains=[head.alpha[task.index], head.beta[task.index]], loss=self.bias_loss)
        return [Stage(), bias]

    def training_data(self, task: Task) -> ImageData:
        if len(self.memory) == 0:
            return self.train_part
        return concat([self.train_part, self.memory.as_data(task.train.class_names)])

    def parameter_groups(self) -> list[dict]:
        head = self.model.head
        correction = {id(p) for p in [*head.alpha, *head.beta]}
        return [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in correction]}]

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        teacher = self.teacher.logits(batch.inputs) if self.teacher else None
        return balanced_distillation(out.logits, batch.labels, teacher, self.options.temperature)

    def bias_loss(self, out: Output, batch: Batch) -> torch.Tensor:
        """The bias stage's objective: cross-entropy of the corrected logits on the held-out set."""
        return torch.nn.functional.cross_entropy(out.logits, batch.labels)

    def update_memory(self, task: Task, data: ImageData) -> None:
        """The training exemplars get what the held-out part leaves of each class's share, chosen from
        the samples stage 1 trained on."""
        per_class = self.memory.per_class(len(task.seen_classes))
        per_class -= self.held_out_per_class(per_class)
        self.memory.reduce(per_class)
        self.memory.add(self.train_part, task.new_classes, per_class, self.features_of)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "heldout": self.heldout.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.heldout.load_state_dict(state["heldout"])
