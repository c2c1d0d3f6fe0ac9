"""WA, weight aligning (Zhao, Xiao, Gan, Zhang & Xia, CVPR 2020): after each task, rescale the new classes'
weight vectors so that their mean norm equals the old classes'.

- Training: the new data + the exemplars with ``(1 - λ)·CE + λ·KD_T`` (λ = n / (n + m), T = 2), as BiC
  (:func:`~cilearn.methods.parts.rehearsal.balanced_distillation`); after every optimizer step the classifier's
  weights are clipped at 0 (the paper's weight clipping: the features after a ReLU are non-negative, so
  are the weights; ``clip_weights``).
- After the task (from the second one on): ``γ = mean_i ||W_old,i|| / mean_j ||W_new,j||`` and
  ``W_new ← γ · W_new``.  The head has no bias (the paper writes the logits as ``W·x``), so every new
  class's logit is multiplied by γ exactly; the old ones are untouched.
"""

from __future__ import annotations

import dataclasses

import torch

from ..models.net import IncrementalHead
from ..scenarios import Task
from ..schema import option
from .base import Batch, Output
from .parts.rehearsal import Rehearsal, RehearsalOptions, balanced_distillation


@dataclasses.dataclass
class WAOptions(RehearsalOptions):
    temperature: float = option(2.0, min=1e-3, help="T of the distillation loss (2: PyCIL's wa.py)")
    clip_weights: bool = option(True, help="clip the classifier's weights at 0 after every step (the paper's "
                                           "weight clipping)")
    align: bool = option(True, help="align the new classes' weight norms after each task (false: KD only)")


def align_weights(head: IncrementalHead, new: int) -> float:
    """Scale the weight vectors of chunk ``new`` (the newest task) by ``γ = mean norm of the chunks
    before it / mean norm of its own``; returns γ."""
    with torch.no_grad():
        old = torch.cat([chunk.weight for chunk in head.chunks[:new]])
        weight = head.chunks[new].weight
        gamma = old.norm(dim=1).mean() / weight.norm(dim=1).mean()
        weight.mul_(gamma)
    return float(gamma)


class WA(Rehearsal):
    name = "wa"
    description = "WA: distillation + exemplars; after each task the new classes' weight norms are aligned " \
                  "to the old ones' (+ weight clipping)"
    paper = ("Zhao, Xiao, Gan, Zhang & Xia, Maintaining Discrimination and Fairness in Class Incremental "
             "Learning, CVPR 2020")
    Options = WAOptions
    primary_classifier = "head"

    @classmethod
    def make_head(cls, options: WAOptions, in_features: int) -> torch.nn.Module:
        return IncrementalHead(in_features, bias=False)

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        teacher = self.teacher.logits(batch.inputs) if self.teacher else None
        return balanced_distillation(out.logits, batch.labels, teacher, self.options.temperature)

    def after_step(self, batch: Batch, out: Output) -> None:
        if self.options.clip_weights:
            with torch.no_grad():
                for chunk in self.model.head.chunks:
                    chunk.weight.clamp_(min=0.0)

    def end_task(self, task: Task, train_data) -> None:
        if task.index > 0 and self.options.align:
            align_weights(self.model.head, task.index)
        super().end_task(task, train_data)
