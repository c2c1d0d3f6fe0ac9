"""A-GEM, averaged gradient episodic memory (Chaudhry et al., ICLR 2019).

An episodic memory keeps ``buffer_size // tasks`` samples of every finished task (drawn at random at the
task's end).  Every step, after the stream batch's gradient ``g`` is computed, the reference gradient
``g_ref`` of the loss on a minibatch of the memory (``replay_batch_size`` distinct samples drawn by the loop;
every memory sample while the memory holds fewer, as Mammoth's A-GEM) is computed with the same weights; if
the two disagree (``g·g_ref < 0``) the update is projected so that it no longer increases the memory's loss
to first order::

    g̃ = g − (g·g_ref / g_ref·g_ref) · g_ref

otherwise ``g`` is used unchanged.  Gradients are flattened over every parameter the optimizer trains.
Both losses cover every output of a head that has all classes from the first task, as Mammoth's A-GEM
(``classification_outputs: seen``: a growing head, losses over the classes seen so far).
"""

from __future__ import annotations

import dataclasses

import torch

from ..augment import to_tensor_images
from ..data import ImageData
from ..scenarios import Task
from ..schema import option
from .base import Batch, Output
from .parts.buffers import TensorStore
from .parts.components import StepReplayOptions, StoredReplay
from .parts.gradients import flat_gradient, loss_gradient, set_gradient, stepped_parameters


@dataclasses.dataclass
class AGEMOptions(StepReplayOptions):
    buffer_size: int = option(200, min=1, help="episodic memory: buffer_size // tasks random samples of each task "
                                               "(Mammoth's A-GEM; the A-GEM scripts keep a number per class)")
    replay_batch_size: int = option(256, min=1, help="memory samples of each reference gradient (256: the A-GEM "
                                                     "authors' MNIST and CIFAR scripts, EPS_MEM_BATCH_SIZE; CUB 128; "
                                                     "the DER paper's Seq-MNIST runs: 128, Mammoth's best_args)")


def project(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's rule: ``grad`` itself when ``grad·reference ≥ 0``, else its projection
    ``grad − (grad·reference / reference·reference) · reference`` (orthogonal to ``reference``)."""
    dot = torch.dot(grad, reference)
    if dot >= 0:
        return grad
    return grad - (dot / torch.dot(reference, reference)) * reference


class AGEM(StoredReplay):
    name = "agem"
    description = "A-GEM: project the gradient when it would increase the loss on an episodic memory"
    paper = "Chaudhry, Ranzato, Rohrbach & Elhoseiny, Efficient Lifelong Learning with A-GEM, ICLR 2019"
    Options = AGEMOptions

    def __init__(self, options: AGEMOptions, model, context):
        super().__init__(options, model, context)
        self.replay = TensorStore(options.buffer_size, context.device, options.replacement)
        self.replay_batch_size = options.replay_batch_size
        self.reference: Batch | None = None  # this step's memory minibatch, used in before_step
        self.projected = 0  # steps whose gradient was projected (a diagnostic)

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        self.reference = batch.replay
        return self.classification_loss(self.ce_logits(out.logits), batch.labels)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        reference, self.reference = self.reference, None
        if reference is None:
            return
        params = stepped_parameters(optimizer)
        reference_loss = self.classification_loss(self.ce_logits(self.model(reference.inputs)), reference.labels)
        ref = loss_gradient(reference_loss, params)
        grad = flat_gradient(params)
        if self.context.distributed is not None:  # torchrun: the whole minibatch's gradient, from each share's
            ref = self.context.distributed.weighted_mean(ref, len(reference))
        projected = project(grad, ref)
        if projected is not grad:
            self.projected += 1
            set_gradient(params, projected)

    def end_task(self, task: Task, train_data: ImageData) -> None:
        count = min(self.options.buffer_size // len(self.context.scenario), len(task.train))
        generator = torch.Generator().manual_seed(self.context.seed * 1000 + task.index)
        pick = torch.randperm(len(task.train), generator=generator)[:count].numpy()
        device = self.context.device
        self.replay.extend(to_tensor_images(task.train.images[pick], device),
                           torch.as_tensor(task.train.labels[pick], device=device))
