"""Learning without Forgetting (Li & Hoiem, 2016): distil the previous model's outputs on the new data.

Before each task after the first, a frozen copy of the model (the *teacher*) is kept.  The batch loss is

    w_cls · classification(new data) + λ · w_dist · distillation(logits[:, :n_old], teacher(inputs))

where the teacher sees the same augmented batch, in eval mode and without gradients.

Variants (``variant``):

- ``original``: softmax cross-entropy + knowledge distillation with temperature T (2), λ = 1;
- ``icarl`` (LwF-MC, iCaRL's loss): binary cross-entropy for both: one-hot targets over the new
  classes' outputs, the teacher's sigmoid outputs as targets for the old classes' outputs; the two
  terms are weighted by the share of outputs they cover, which is exactly iCaRL's single BCE averaged
  over all outputs.

``classification_loss`` ∈ {bce, ce, mse} and ``distillation_loss`` ∈ {bce, mse, kd} override the
variant's pair (the loss ablation).  The same machinery serves iCaRL, which subclasses this method.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

import torch

from ..classifiers import check_classifiers
from ..losses import classification_loss, distillation_loss
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Classifier, Method, MethodContext, MethodOptions, head_classifier

VARIANT_LOSSES = {"original": ("ce", "kd"), "icarl": ("bce", "bce")}


@dataclasses.dataclass
class LwFOptions(MethodOptions):
    variant: Literal["original", "icarl"] = option(
        "original", help="original: CE + KD (temperature); icarl: BCE + BCE on sigmoid targets (LwF-MC)")
    classification_loss: Literal["ce", "bce", "mse"] | None = option(
        None, help="loss on the current labels (default: the variant's)")
    distillation_loss: Literal["bce", "mse", "kd"] | None = option(
        None, help="loss keeping the old classes' outputs close to the previous model's (default: the variant's)")
    distillation_weight: float = option(1.0, min=0.0, help="λ, the weight of the distillation term")
    temperature: float = option(2.0, min=1e-3, help="temperature of the kd distillation loss")
    classification_outputs: Literal["auto", "new", "all"] = option(
        "auto", help="outputs the classification loss uses: the new classes' only, or all seen; auto: new, "
                     "except ce/mse with an exemplar memory (all, so exemplars keep their labels)")
    balance: Literal["auto", "sum", "outputs"] = option(
        "auto", help="sum: cls + λ·dist; outputs: each term weighted by the share of outputs it covers "
                     "(iCaRL's BCE over all outputs); auto: outputs for variant icarl, else sum")
    classifiers: list[str] = option(default_factory=lambda: ["head"],
                                    help="test-time classifiers, the first is the primary one (lwf: head)")

    has_memory: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_classifiers(self.classifiers, self.has_memory, self.name)


@dataclasses.dataclass(frozen=True)
class LossSetup:
    """The resolved objective (what ``auto`` and the variant turned into)."""

    classification: str
    distillation: str
    outputs: str   # "new" | "all"
    balance: str   # "sum" | "outputs"


def resolve_losses(options: LwFOptions, has_memory: bool) -> LossSetup:
    cls = options.classification_loss or VARIANT_LOSSES[options.variant][0]
    dist = options.distillation_loss or VARIANT_LOSSES[options.variant][1]
    outputs = options.classification_outputs
    if outputs == "auto":
        outputs = "all" if has_memory and cls != "bce" else "new"
    balance = options.balance
    if balance == "auto":
        balance = "outputs" if options.variant == "icarl" else "sum"
    return LossSetup(cls, dist, outputs, balance)


def frozen_copy(model: torch.nn.Module, num_chunks: int) -> torch.nn.Module:
    """A copy of ``model`` with its first ``num_chunks`` head chunks, in eval mode, without gradients."""
    teacher = copy.deepcopy(model)
    del teacher.head.chunks[num_chunks:]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


class LwF(Method):
    name = "lwf"
    description = "Learning without Forgetting: distil the previous model's outputs (variants original, icarl)"
    Options = LwFOptions
    primary_classifier = "head"

    def __init__(self, options: LwFOptions, model: torch.nn.Module, context: MethodContext):
        self.losses = resolve_losses(options, self.memory_size_of(options) > 0)
        # the base class's classification loss reads options.classification_loss: give it the resolved one
        super().__init__(dataclasses.replace(options, classification_loss=self.losses.classification),
                         model, context)
        self.primary_classifier = options.classifiers[0]
        self.teacher: torch.nn.Module | None = None
        self.teacher_chunks = 0

    @staticmethod
    def memory_size_of(options) -> int:
        return 0

    @property
    def memory_size(self) -> int:
        return self.memory_size_of(self.options)

    # --- hooks ---
    def check(self, scenario: Scenario) -> None:
        check_classifiers(self.options.classifiers, self.memory_size > 0, self.name)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher, self.teacher_chunks = None, 0
        n_old = len(task.seen_classes) - len(task.new_classes)
        if task.index > 0 and n_old > 0:
            chunks = sum(1 for s in self.model.head.task_slices if s.stop <= n_old)
            self._set_teacher(chunks)

    def _set_teacher(self, chunks: int) -> None:
        self.teacher, self.teacher_chunks = frozen_copy(self.model, chunks), chunks

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        n_old = self.teacher.num_classes if self.teacher is not None else 0
        total = logits.shape[1]
        start = n_old if self.losses.outputs == "new" and n_old < total else 0
        cls = self._classification(logits, targets, start)
        if self.teacher is None or n_old == 0:
            return cls
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        dist = self._distillation(logits[:, :n_old], teacher_logits)
        if self.losses.balance == "outputs":
            cls = cls * ((total - start) / total)
            dist = dist * (n_old / total)
        return cls + self.options.distillation_weight * dist

    def _classification(self, logits: torch.Tensor, targets: torch.Tensor, start: int) -> torch.Tensor:
        """Classification on outputs ``start:`` (start = 0: every seen output, the base class's loss)."""
        kind = self.losses.classification
        if start == 0:
            return self.classification_loss(logits, targets)
        if kind == "bce":  # one-hot over the new outputs: samples of old classes get all-zero targets
            mask = torch.zeros_like(logits, dtype=torch.bool)
            mask[:, start:] = True
            return classification_loss("bce", logits, targets, mask)
        keep = targets >= start  # softmax over the new outputs: only samples of new classes have a target
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return classification_loss(kind, logits[keep][:, start:], targets[keep] - start)

    def _distillation(self, old_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        kind, temperature = self.losses.distillation, self.options.temperature
        if kind == "kd" and self.context.scenario.task_incremental:  # one softmax per old task's head
            slices = self.teacher.head.task_slices
            return sum(distillation_loss(kind, old_logits[:, s], teacher_logits[:, s], temperature)
                       for s in slices) / len(slices)
        return distillation_loss(kind, old_logits, teacher_logits.to(old_logits.dtype), temperature)

    def classifiers(self) -> dict[str, Classifier]:
        return {"head": head_classifier}

    # --- resume: the teacher's weights travel with the checkpoint ---
    def state_dict(self) -> dict:
        if self.teacher is None:
            return {"teacher_chunks": 0}
        return {"teacher_chunks": self.teacher_chunks, "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        chunks = int(state.get("teacher_chunks", 0))
        if "teacher" not in state or chunks == 0:
            self.teacher, self.teacher_chunks = None, 0
            return
        self._set_teacher(chunks)
        self.teacher.load_state_dict(state["teacher"])
