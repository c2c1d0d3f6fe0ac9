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

Departures from the authors' code: their network ends in a cosine classifier for ER-ACE (``distLinear``,
``model.py`` lines 17-35: ten times the cosine of the feature and each class's weight, no bias; chosen in
``main.py`` lines 112-117 for every method whose name contains ``ace`` or ``aml``), where cilearn keeps the
model's linear head; and they pass the stream batch and the replayed one through the network separately
(``process_inc``, ``process_re``), where cilearn makes one forward pass over both (the same numbers unless
the network has BatchNorm).
"""

from __future__ import annotations

import torch

from ..losses import classification_loss
from .base import Batch, Output
from .parts.components import BufferMethod


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

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.largest_seen = -1  # the largest label of the stream so far (the authors' seen_so_far.max())

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
