"""Learning without Forgetting (Li & Hoiem, 2016): distil the previous model's outputs on the new data.

Before each task after the first, a frozen copy of the model (the teacher, :class:`~cilearn.methods.parts.distill.Teacher`)
is kept; it sees the same augmented batch, in eval mode and without gradients.  The batch loss is the
:class:`~cilearn.methods.parts.distill.DistillationObjective`:

    classification(new data) + λ · distillation(logits[:, :n_old], teacher(inputs))

Variants (``variant``):

- ``original``: softmax cross-entropy on the new classes' outputs + Li & Hoiem's L_old (cross-entropy
  between temperature-softened softmaxes, T = 2, λ = 1, no T² factor), outputs added per task;
- ``icarl`` (LwF-MC, iCaRL's loss): one binary cross-entropy over every output — one-hot targets for
  the new classes, the teacher's sigmoid outputs for the old ones — on a network that has every
  class's output from the first task (``head: full``), as in the iCaRL paper and the study.

``warmup_epochs``: LwF's warm-up step — train only the new classes' outputs (backbone and old outputs
frozen) for a few epochs before training everything.
"""

from __future__ import annotations

import dataclasses

import torch

from .parts.classifiers import check_classifiers
from .parts.distill import Teacher
from ..scenarios import Task
from ..schema import option
from .base import Batch, Classifier, Method, MethodContext, Output, Stage, head_classifier
from .parts.components import (DistillationOptions, distillation_loss, distillation_objective, forward_teacher_first,
                               resolve_losses, uses_full_head)


@dataclasses.dataclass
class LwFOptions(DistillationOptions):
    warmup_epochs: int = option(0, min=0, help="epochs training only the new outputs before each task "
                                               "after the first (LwF's warm-up step)")
    warmup_lr: float | None = option(None, min=0.0, help="learning rate of the warm-up (default: train.lr)")
    classifiers: list[str] = option(default_factory=lambda: ["head"], help="test-time classifiers (lwf: head)")

    def __post_init__(self) -> None:
        check_classifiers(self.classifiers, False, self.name)


class LwF(Method):
    name = "lwf"
    description = "Learning without Forgetting: distil the previous model's outputs (variants original, icarl)"
    paper = "Li & Hoiem, Learning without Forgetting, ECCV 2016 / TPAMI 2017"
    Options = LwFOptions

    def __init__(self, options: LwFOptions, model: torch.nn.Module, context: MethodContext):
        self.losses = resolve_losses(options, has_memory=False)
        super().__init__(dataclasses.replace(options, classification_loss=self.losses.classification),
                         model, context)
        scenario = context.scenario
        self.full_head = uses_full_head(options, self.losses, scenario)
        self.objective = distillation_objective(options, self.losses, scenario, self.full_head)
        self.teacher = Teacher()

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        n_old = len(task.seen_classes) - len(task.new_classes) if task.index > 0 else 0
        self.teacher.begin_task(self.model, n_old, self.full_head)

    def stages(self, task: Task) -> list[Stage]:
        if self.options.warmup_epochs and self.teacher:
            # only the new classes' outputs train; the backbone is fixed (its BatchNorm statistics too)
            warmup = Stage("warmup", epochs=self.options.warmup_epochs, lr=self.options.warmup_lr,
                           overrides={"milestones": [], "scheduler": "constant"},
                           trains=self.model.head.chunks[task.index])
            return [warmup, Stage()]
        return [Stage()]

    def forward(self, batch: Batch) -> Output:
        return forward_teacher_first(self, batch)

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        return distillation_loss(self, out, batch)

    def classifiers(self) -> dict[str, Classifier]:
        return {"head": head_classifier}

    def state_dict(self) -> dict:
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state, self.model)
