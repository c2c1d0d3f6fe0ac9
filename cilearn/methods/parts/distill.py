"""A frozen copy of the model as it was before a task — the teacher that distillation methods compose.

LwF, iCaRL, LUCIR, PODNet, BiC, WA and DER-style methods all keep "the previous model" and read its
outputs (or features) on the current batch; this component owns that copy: it is built in
``begin_task``, stays in eval mode without gradients, runs once per batch under ``no_grad``, and
travels with the method's checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from ...losses import classification_loss, distillation_loss


def frozen_copy(model: torch.nn.Module, num_chunks: int | None = None) -> torch.nn.Module:
    """A copy of ``model`` (with its first ``num_chunks`` head chunks), in eval mode, without gradients."""
    teacher = copy.deepcopy(model)
    if num_chunks is not None:
        del teacher.head.chunks[num_chunks:]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


def padded_to(teacher_logits: torch.Tensor, outputs: int) -> torch.Tensor:
    """The teacher's logits of the old classes with -inf for the rest of ``outputs``: its softmax padded with zeros
    (van de Ven & Tolias's ``loss_fn_kd`` against a student over every seen class)."""
    return F.pad(teacher_logits, (0, outputs - teacher_logits.shape[1]), value=float("-inf"))


class Teacher:
    """The previous model: ``Teacher.begin_task(model, n_old)`` freezes a copy when there are old classes.

    ``num_classes`` is the number of old classes whose outputs are distilled (``n_old``); with a full
    head (every output from the start) the copy keeps every chunk and callers slice ``[:, :n_old]``.
    """

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.chunks = 0
        self.num_classes = 0

    def __bool__(self) -> bool:
        return self.model is not None and self.num_classes > 0

    def begin_task(self, model: torch.nn.Module, n_old: int, full_head: bool = False) -> None:
        self.model, self.chunks, self.num_classes = None, 0, 0
        if n_old <= 0:
            return
        chunks = len(model.head.task_slices) if full_head else sum(
            1 for s in model.head.task_slices if s.stop <= n_old)
        self._freeze(model, chunks, n_old)

    def _freeze(self, model: torch.nn.Module, chunks: int, n_old: int) -> None:
        self.model, self.chunks, self.num_classes = frozen_copy(model, chunks), chunks, n_old

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of the old classes on ``inputs`` (N, n_old), fp32 (also under bf16 autocast)."""
        return self.model(inputs)[:, : self.num_classes].float()

    @torch.no_grad()
    def output(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits of the old classes)."""
        features = self.model.features(inputs)
        return features.float(), self.model.head(features)[:, : self.num_classes].float()

    def state_dict(self) -> dict:
        if self.model is None:
            return {"teacher_chunks": 0}
        return {"teacher_chunks": self.chunks, "teacher_classes": self.num_classes,
                "teacher": self.model.state_dict()}

    def load_state_dict(self, state: dict, model: torch.nn.Module) -> None:
        chunks = int(state.get("teacher_chunks", 0))
        if "teacher" not in state or chunks == 0:
            self.model, self.chunks, self.num_classes = None, 0, 0
            return
        sizes = [s.stop - s.start for s in model.head.task_slices[:chunks]]
        self._freeze(model, chunks, int(state.get("teacher_classes", sum(sizes))))
        self.model.load_state_dict(state["teacher"])


# --- the classification + distillation objective of LwF / iCaRL and their loss ablations ----------------
@dataclasses.dataclass(frozen=True)
class LossSetup:
    """The resolved objective (what ``auto`` and a variant turned into)."""

    classification: str   # ce | bce | mse
    distillation: str     # bce | mse | kd
    outputs: str          # "new": classification on the new classes' outputs only; "all": every seen output
    balance: str          # "sum": cls + λ·dist; "outputs": each term weighted by the share of outputs it covers;
    #                       "classes": (n_new/n_seen)·cls + (n_old/n_seen)·λ·dist; "tasks": (1/t)·cls + (1 - 1/t)·λ·dist


class DistillationObjective:
    """``classification(new data) + λ · distillation(old outputs, teacher)``, on a full or growing head.

    With ``balance: outputs`` and BCE for both terms this is iCaRL's single binary cross-entropy over
    every output of the network, averaged over ``N × normaliser`` entries, where the targets are the
    teacher's sigmoid outputs for the old classes, one-hot for the others (0 for classes not seen yet):

    - full head (every class's output exists from the first task, as in the original iCaRL): the
      normaliser is the number of outputs, the loss is exactly the original's;
    - growing head with ``bce_average: all_classes``: the outputs of classes not seen yet do not exist;
      the seen outputs' terms are divided by the scenario's total number of classes, so each output
      gets the original's gradient (only the absent outputs' own pull towards 0 is missing);
    - growing head with ``bce_average: seen_classes``: divided by the classes seen so far (cilearn ≤ 0.1,
      (total / seen)× the original's gradient per output).

    Other pairs (CE, MSE, KD) use the seen outputs only: a softmax never includes classes not seen yet.

    van de Ven & Tolias's iCaRL (GMvandeVen/continual-learning, branch ``preprints``, ``encoder.py``
    ``train_a_batch``) is the BCE pair on their 10-output layer with three differences, each an option:
    ``seen_outputs_only`` (their ``y_hat[:, active_classes]``: the outputs of classes not seen yet get no
    loss), ``bce_sum`` (``.sum(dim=1).mean()``: summed over the outputs, averaged over the batch; no
    balance weighting, the sum is one BCE over every covered entry) and ``bce_target_temperature``
    (the old classes' targets ``sigmoid(scores / KD_temp)``, their ``--temp`` 2).
    """

    def __init__(self, setup: LossSetup, weight: float, temperature: float, t2_scaling: bool,
                 normaliser: int | None, task_slices: list[slice] | None = None, seen_outputs_only: bool = False,
                 bce_sum: bool = False, bce_target_temperature: float = 1.0, distill_seen_outputs: bool = False):
        self.setup, self.weight, self.temperature, self.t2_scaling = setup, weight, temperature, t2_scaling
        self.normaliser = normaliser  # outputs a BCE averages over (None: the outputs it is given)
        self.task_slices = task_slices  # task-incremental: KD uses one softmax per old task's head
        self.seen_outputs_only, self.bce_sum = seen_outputs_only, bce_sum
        self.bce_target_temperature = bce_target_temperature
        self.distill_seen_outputs = distill_seen_outputs  # kd: the student's softmax over every seen output

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                 n_seen: int, mask: torch.Tensor | None = None, task_number: int = 1) -> torch.Tensor:
        """``logits`` (N, outputs ≥ n_seen); ``teacher_logits`` (N, n_old) or None on the first task;
        ``mask`` (N, n_seen): the multi-head mask of task-incremental training (each sample uses its own
        task's outputs), or None; ``task_number``: t, the current task counted from 1 (``balance: tasks``)."""
        setup = self.setup
        if self.seen_outputs_only:
            logits = logits[:, :n_seen]
        n_old = 0 if teacher_logits is None else teacher_logits.shape[1]
        outputs = logits.shape[1]
        start = n_old if setup.outputs == "new" and n_old < n_seen else 0
        if mask is not None and start == 0:
            cls = classification_loss(setup.classification, logits[:, :n_seen], labels, mask)
            cls_outputs = n_seen
        elif setup.classification == "bce":
            # BCE covers every output from ``start`` on: not-yet-seen outputs (full head) have target 0.
            cls = self._bce_new(logits, labels, start)
            cls_outputs = outputs - start
        else:
            cls = self._softmax_new(setup.classification, logits[:, :n_seen], labels, start)
            cls_outputs = n_seen - start
        # per-entry means → a sum over the outputs (bce_sum), or weighted by the share of outputs (balance)
        if self.bce_sum:
            cls = cls * cls_outputs
        elif setup.balance == "outputs":
            cls = cls * (cls_outputs / (self.normaliser or outputs))
        if teacher_logits is None or n_old == 0:
            return cls
        if self.distill_seen_outputs:
            # van de Ven & Tolias's loss_fn_kd: the teacher's distribution over the old classes padded with zeros
            # (a logit of -inf) for the new ones, against the student's softmax over every seen class
            dist = self._distillation(logits[:, :n_seen], padded_to(teacher_logits.to(logits.dtype), n_seen))
        else:
            dist = self._distillation(logits[:, :n_old], teacher_logits.to(logits.dtype))
        if self.bce_sum:
            dist = dist * n_old
        elif setup.balance == "outputs":
            dist = dist * (n_old / (self.normaliser or outputs))
        elif setup.balance == "classes":
            # van de Ven & Tolias's LwF (train.py: rnt = 1/task): the current data's loss weighted by the new
            # classes' share of those seen, its replay through the previous model by the old classes' share
            old_share = n_old / n_seen
            return (1.0 - old_share) * cls + old_share * self.weight * dist
        elif setup.balance == "tasks":  # their rnt = 1/task itself: the same weights where classes do not grow
            return cls / task_number + (1.0 - 1.0 / task_number) * self.weight * dist
        return cls + self.weight * dist

    @staticmethod
    def _bce_new(logits: torch.Tensor, labels: torch.Tensor, start: int) -> torch.Tensor:
        part = logits[:, start:]
        one_hot = torch.zeros_like(part)
        new = labels >= start  # samples of old classes (exemplars) have all-zero targets on these outputs
        one_hot[new.nonzero().flatten(), labels[new] - start] = 1.0
        return F.binary_cross_entropy_with_logits(part, one_hot)

    @staticmethod
    def _softmax_new(kind: str, logits: torch.Tensor, labels: torch.Tensor, start: int) -> torch.Tensor:
        if start == 0:
            return classification_loss(kind, logits, labels)
        keep = labels >= start  # a softmax over the new outputs: only samples of new classes have a target
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return classification_loss(kind, logits[keep][:, start:], labels[keep] - start)

    def _distillation(self, old_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        kind = self.setup.distillation
        if kind == "bce":
            teacher_logits = teacher_logits / self.bce_target_temperature
        if kind == "kd" and self.task_slices:  # one softmax per old task's head
            slices = [s for s in self.task_slices if s.stop <= old_logits.shape[1]]
            return sum(distillation_loss(kind, old_logits[:, s], teacher_logits[:, s], self.temperature,
                                         self.t2_scaling) for s in slices) / len(slices)
        return distillation_loss(kind, old_logits, teacher_logits, self.temperature, self.t2_scaling)
