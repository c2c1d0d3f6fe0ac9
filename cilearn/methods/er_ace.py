"""ER-ACE: experience replay with an asymmetric cross-entropy (Caccia et al., ICLR 2022).

The reservoir buffer and per-step replay of ER, but the two halves of the batch see different softmaxes:

- the incoming (stream) batch: cross-entropy over the outputs of **the classes present in that batch**
  only — the other classes' logits are masked out, so learning new classes does not push the old
  classes' outputs down (the paper's remedy for the abrupt representation change at task switches);
- the replayed minibatch: cross-entropy over every class seen so far.

The loss is their sum, as in the paper.  The mask applies from the first task on (the paper's code runs
ER-ACE task-free).  In task-incremental scenarios the stream batch's mask is also restricted to each
sample's own task head.

With ``classification_outputs: all`` (the default) the network has every class's output from the first task
and the losses follow the authors' code (pclucas14/AML, ``methods/er_ace.py``): the stream batch's softmax
also keeps the outputs from the largest label the stream has shown so far on (the classes not seen yet, so they
are pushed down), and the replayed minibatch's cross-entropy covers every output.  ``seen``: a growing head,
the stream over its present classes only and the replay over the classes seen so far (cilearn 0.1).

The head (``head: cosine``, the default) is the authors' (``distLinear``, pclucas14/AML ``model.py`` lines 17-35,
chosen in ``main.py`` lines 112-117 for every method whose name contains ``ace`` or ``aml``): logits
``10 · (f / (‖f‖ + 1e-5)) · (w_c / (‖w_c‖ + 1e-5))``, ten times the cosine of the feature and each class's weight,
no bias, the scale fixed; the weights drawn as ``nn.Linear``'s (U(±1/√in)).  ``head: linear``: the model's
linear head (cilearn 0.2; a run folder whose config.yaml does not name ``head`` was written then, and resumes
with it).  Seq-MNIST (README "Methods on Seq-MNIST", seeds 0-2): cosine 85.0 ± 0.6, linear 83.4 ± 1.6.

Forward passes (``forward_passes``): the authors pass the stream batch and the replayed one through the network
separately (``process_inc``, ``process_re``; one optimizer step on the sum of the two losses), which is the default
here (``separate``); ``joint`` makes one forward pass over both (cilearn 0.2, and what the other replay methods
do).  Only layers that mix the samples of a batch can tell the two apart: with BatchNorm in training mode each
pass normalises with its own batch's statistics and updates the running statistics once per pass, as theirs
does.  The Seq-MNIST MLP (Linear + ReLU) and the cosine head (each row normalised alone) have none, so there each
logit, and the gradient of the summed loss, is the same function of the parameters either way (up to
floating-point summation order).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch

from ..losses import classification_loss
from ..models.heads import CosineHead
from ..schema import option
from .base import Batch, Output
from .parts.components import BufferMethod, BufferOptions, forward_with_replay


@dataclasses.dataclass
class ERACEOptions(BufferOptions):
    head: Literal["cosine", "linear"] = option(
        "cosine", help="cosine: logits 10·cos(features, class weight), no bias, the scale fixed (the authors' "
                       "distLinear, pclucas14/AML model.py); linear: the model's linear head (cilearn 0.2)")
    forward_passes: Literal["separate", "joint"] = option(
        "separate", help="separate: the stream batch and the replayed one through the network one after the other "
                         "(the authors' process_inc / process_re; BatchNorm sees each batch alone); joint: one "
                         "forward pass over both (cilearn 0.2)")
    # 0.2's run folders (config.yaml without these keys): the linear head, one joint forward pass
    absent_from_old_runs: ClassVar[dict] = {"head": "linear", "forward_passes": "joint"}


def present_class_mask(labels: torch.Tensor, num_outputs: int, distributed=None) -> torch.Tensor:
    """(N, C) bool: the outputs of the classes that occur in ``labels``, for every sample (under torchrun:
    in the whole stream batch, of which ``labels`` is this process's share)."""
    present = torch.zeros(num_outputs, dtype=torch.bool, device=labels.device)
    present[labels] = True
    if distributed is not None:
        present = distributed.sum(present.float()) > 0
    return present.expand(len(labels), num_outputs)


class ERACE(BufferMethod):
    name = "er_ace"
    description = ("ER-ACE: replay with an asymmetric cross-entropy (stream: the present classes' outputs and those "
                   "of classes not seen yet; replay: every output)")
    paper = ("Caccia et al., New Insights on Reducing Abrupt Representation Change in Online Continual "
             "Learning, ICLR 2022")

    Options = ERACEOptions

    @classmethod
    def make_head(cls, options: ERACEOptions, in_features: int) -> torch.nn.Module | None:
        if options.head == "linear":
            return None
        return CosineHead(in_features, scale=10.0, learnable_scale=False, norm_eps=1e-5)

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.largest_seen = -1  # the largest label of the stream so far (the authors' seen_so_far.max())

    def forward(self, batch: Batch) -> Output:
        return forward_with_replay(self.model, batch, separate=self.options.forward_passes == "separate")

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        n = len(batch)
        logits = self.ce_logits(out.logits)
        mask = present_class_mask(batch.labels, logits.shape[1], self.context.distributed)
        if self.options.classification_outputs == "all":  # the largest label shown so far (of the whole batch)
            self.largest_seen = max(self.largest_seen, int(mask[0].nonzero().max()))
            mask = mask | (torch.arange(logits.shape[1], device=logits.device) >= self.largest_seen)
        head = self.head_mask(batch.labels)
        if head is not None:
            mask = mask & head[:, : logits.shape[1]]
        loss = classification_loss(self.options.classification_loss, logits[:n], batch.labels, mask)
        if batch.replay is not None:
            loss = loss + self.classification_loss(logits[n:], batch.replay.labels)
        return loss

    def after_step(self, batch: Batch, out: Output) -> None:
        self.replay.add(batch.images, batch.labels, {"task_ids": batch.task_ids})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "largest_seen": self.largest_seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.largest_seen = int(state.get("largest_seen", -1))
