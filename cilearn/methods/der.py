"""Dark Experience Replay, DER and DER++ (Buzzega et al., NeurIPS 2020).

A reservoir buffer keeps, with each stream sample, the logits the network produced for it at the step it
was seen (buffer extras, :class:`~cilearn.methods.parts.buffers.ReservoirBuffer`).  Every step:

- DER:   ``CE(stream) + α · MSE(f(x'), z')`` on a replayed minibatch ``(x', z')``;
- DER++: ``… + β · CE(f(x''), y'')`` on a second, independently drawn minibatch ``(x'', y'')``.

``MSE`` is the mean over the replayed samples and their stored outputs (``F.mse_loss``).  The logits
are those of the augmented stream inputs in the step's forward pass, before the update, as in the
paper's Algorithm 1.

The network has every class's output from the first task (``full_head``), as in the paper, so a stored
logit vector covers every class — also those not seen yet when it was stored.  The cross-entropies
cover every output too (``classification_outputs: all``, the paper's code): the classes not seen yet are
pushed down, the stored logits carry that, and the MSE keeps the old samples' scores of later classes
low (on Seq-MNIST this is worth about 4 points over a cross-entropy on the seen classes only,
``classification_outputs: seen``).  In task-incremental scenarios (one head per task, outputs added per
task) a stored vector is shorter than later outputs: the MSE then covers only the outputs that existed
when it was stored.

Departures: the stream batch and the first replayed minibatch go through the network in one forward
pass (the same for networks without BatchNorm).
"""

from __future__ import annotations

import dataclasses

import torch

from ..schema import option
from .base import Batch, Output
from .parts.components import BufferMethod, BufferOptions


@dataclasses.dataclass
class DEROptions(BufferOptions):
    alpha: float = option(0.2, min=0.0, help="α, weight of the MSE between replayed samples' logits and their "
                                             "stored logits (0.2: DER and DER++ on Seq-MNIST, buffer 200, "
                                             "Mammoth's utils/best_args.py; e.g. Seq-CIFAR-10, buffer 200: DER 0.3, "
                                             "DER++ 0.1)")


@dataclasses.dataclass
class DERppOptions(DEROptions):
    replay_batch_size: int | None = option(128, min=1, help="samples of each of the two replayed minibatches (128: "
                                                            "DER++ on Seq-MNIST, buffer 200, Mammoth's "
                                                            "utils/best_args.py; null: the stream batch size)")
    beta: float = option(1.0, min=0.0, help="β, weight of the cross-entropy on a second replayed minibatch (1: "
                                            "DER++ on Seq-MNIST, buffer 200, Mammoth's utils/best_args.py; "
                                            "Seq-CIFAR-10, buffer 200: 0.5)")


def stored_logit_mse(logits: torch.Tensor, stored: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each sample's first ``width`` outputs (all of them with a full head)."""
    columns = min(logits.shape[1], stored.shape[1])
    valid = torch.arange(columns, device=logits.device)[None, :] < width[:, None]
    error = (logits[:, :columns] - stored[:, :columns].to(logits.dtype)).square() * valid
    return error.sum() / valid.sum().clamp_min(1)


class DER(BufferMethod):
    name = "der"
    description = "Dark Experience Replay: replay stored logits (MSE) from a reservoir buffer"
    paper = "Buzzega et al., Dark Experience for General Continual Learning: a Strong, Simple Baseline, NeurIPS 2020"
    Options = DEROptions

    def __init__(self, options: DEROptions, model, context):
        super().__init__(options, model, context)
        self.full_head = not context.scenario.task_incremental  # a stored logit vector covers every class, always

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        n = len(batch)
        loss = self.classification_loss(self.ce_logits(out.logits[:n]), batch.labels)
        if batch.replay is not None:
            extras = batch.replay.extras
            loss = loss + self.options.alpha * stored_logit_mse(out.logits[n:], extras["logits"], extras["width"])
        return loss

    def after_step(self, batch: Batch, out: Output) -> None:
        logits = out.logits[: len(batch)].detach().float()
        width = torch.full((len(batch),), logits.shape[1], dtype=torch.long, device=logits.device)
        self.replay.add(batch.images, batch.labels, {"logits": logits, "width": width, "task_ids": batch.task_ids})


class DERpp(DER):
    name = "derpp"
    description = "DER++: DER plus cross-entropy on a second replayed minibatch"
    Options = DERppOptions

    def __init__(self, options: DERppOptions, model, context):
        super().__init__(options, model, context)
        self.replay_draws = 2 if options.beta > 0 else 1

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = super().loss(out, batch)
        second = batch.second_replay  # drawn by the loop after the first, independently (replay_draws = 2)
        if second is not None and self.options.beta > 0:
            logits = self.model(second.inputs)
            loss = loss + self.options.beta * self.classification_loss(self.ce_logits(logits), second.labels)
        return loss
