"""Deep generative replay (Shin et al., NeurIPS 2017) as van de Ven & Tolias ran it, with their "+distill" variant.

A variational auto-encoder (:class:`~cilearn.models.vae.VAE`) learns the inputs alongside the classifier.  Before
each task after the first, frozen copies of both are kept (the previous generator and the previous classifier,
the teacher).  Every step of task ``t`` (1-based):

- a replayed minibatch, as large as the stream batch, is decoded from z ~ N(0, I) by the previous generator and
  labelled by the teacher over the classes seen before the task: ``replay_targets: hard`` (DGR) its most likely
  class, ``soft`` (DGR+distill) its softmax at ``temperature``;
- the classifier's loss is ``(1/t)·CE(stream) + (1 − 1/t)·L_replay``, both over the outputs of the classes seen
  so far (new ones included): ``L_replay`` the cross-entropy with the hard labels, or the distillation ``T²·KD``
  of van de Ven & Tolias's ``loss_fn_kd`` (the student's softmax over every seen class against the teacher's over
  the old ones, padded with zeros);
- after the classifier's step the generator takes one step of its own Adam (``generator_lr``, never reset) on
  ``(1/t)·VAE(stream images) + (1 − 1/t)·VAE(replayed images)``, the stream images un-augmented in [0, 1].

Their code, branch ``preprints`` (``train.py`` ``train_cl``, ``encoder.py`` and ``vae_models.py``
``train_a_batch``), is followed in each of these; the generator's loss is in :mod:`cilearn.models.vae`.  The
generator trains in the ``after_step`` hook, outside the loop's step (a second model with its own optimizer), in
fp32 also when the classifier runs in bf16.  Replayed images are drawn and noised from the method's own seeded
generator, which travels with the checkpoint (exact resume).

Task-incremental scenarios (a head per task, or with ``head: full`` their one layer of every output, each loss
masked to a task's outputs): as their ``scenario == "task"`` branch, the one replayed minibatch
is labelled by the teacher once per earlier task over that task's own outputs (argmax, or softmax at
``temperature``), and ``L_replay`` is the mean over the earlier tasks of the loss on each task's outputs; the
stream's loss uses its own task's outputs, and the generator's step is unchanged.  Not here: torchrun.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import distillation_loss
from ..models.vae import VAE
from ..runtime import eager_optimizer
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Batch, Method, Output
from .parts.components import OutputLayerOptions
from .parts.distill import Teacher, frozen_copy, padded_to


@dataclasses.dataclass
class DGROptions(OutputLayerOptions):
    replay_targets: Literal["hard", "soft"] = option(
        "hard", help="hard: the previous model's most likely class (DGR); soft: its softmax at temperature, "
                     "distilled (van de Ven & Tolias's DGR+distill)")
    temperature: float = option(2.0, min=1e-6, help="distillation temperature of soft targets (theirs: 2)")
    z_dim: int = option(100, min=1, help="latent units of the generator (theirs: 100)")
    generator_hidden: list[int] = option(default_factory=lambda: [400, 400],
                                         help="hidden layer sizes of the generator's encoder (the decoder mirrors "
                                              "them; theirs: as the classifier, 2 × 400)")
    generator_lr: float = option(0.001, min=0.0, help="Adam learning rate of the generator (theirs: the "
                                                      "classifier's, 0.001), one Adam for the whole sequence")

    def __post_init__(self) -> None:
        if any(size < 1 for size in self.generator_hidden) or not self.generator_hidden:
            raise ConfigError(f"method.generator_hidden: {self.generator_hidden} must list at least one layer size "
                              f"of 1 or more, e.g. [400, 400].")


class DGR(Method):
    name = "dgr"
    description = "deep generative replay: a VAE's samples, labelled by the previous model, replayed every step"
    paper = ("Shin et al., Continual Learning with Deep Generative Replay, NeurIPS 2017; +distill: van de Ven & "
             "Tolias, Three scenarios for continual learning, 2019")
    Options = DGROptions

    def __init__(self, options: DGROptions, model, context):
        super().__init__(options, model, context)
        self.full_head = options.head == "full"
        height, width, channels = context.scenario.image_shape
        self.generator = VAE((channels, height, width), options.generator_hidden, options.z_dim).to(context.device)
        self.generator_optimizer = eager_optimizer(torch.optim.Adam)(
            self.generator.parameters(), lr=options.generator_lr, betas=(0.9, 0.999))
        self.previous_generator: VAE | None = None
        self.teacher = Teacher()
        self.rng = torch.Generator().manual_seed(context.seed * 7919 + 17)  # replayed samples and VAE noise
        self._replayed: torch.Tensor | None = None  # this step's replayed images in [0, 1], for the generator
        self._teacher_logits: torch.Tensor | None = None  # the previous model's logits of them (old classes)
        self._old_task_outputs: list[torch.Tensor] = []  # Task-IL: each earlier task's output columns

    def check(self, scenario: Scenario) -> None:
        if self.context.distributed is not None:
            raise ConfigError("method 'dgr' trains its generator beside the classifier in one process; run it "
                              "without torchrun.")

    @property
    def relative_weight(self) -> float:
        """1/t: the stream's share of the loss in task t (1-based)."""
        return 1.0 / (self.task.index + 1)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        n_old = len(task.seen_classes) - len(task.new_classes) if task.index > 0 else 0
        self.teacher.begin_task(self.model, n_old, self.full_head)
        self.previous_generator = frozen_copy(self.generator) if task.index > 0 else None
        # Task-IL: the columns of each earlier task, the same in the teacher's old outputs and the student's seen ones
        self._old_task_outputs = []
        if self.class_task is not None and n_old > 0:
            owner = self.class_task[:n_old]
            self._old_task_outputs = [(owner == k).nonzero().flatten() for k in owner.unique()]

    def forward(self, batch: Batch) -> Output:
        self._replayed = None
        if self.previous_generator is None or not self.teacher:
            return super().forward(batch)
        with torch.autocast(batch.inputs.device.type, enabled=False):
            self._replayed = self.previous_generator.sample(len(batch), self.rng)
        replay_inputs = self.context.augment.normalize(self._replayed)
        self._teacher_logits = self.teacher.logits(replay_inputs)
        # one pass each, as their code (BatchNorm, if any, sees each batch alone); the stream rows first
        features = torch.cat([self.model.features(batch.inputs), self.model.features(replay_inputs)])
        return Output(features, self.model.head(features))

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        logits = self.seen_logits(out.logits)
        current = self.classification_loss(logits[: len(batch)], batch.labels)
        if self._replayed is None:
            return current
        replayed, teacher = logits[len(batch):], self._teacher_logits
        if self.class_task is None:
            replay = self.replay_loss(replayed, teacher)
        else:  # a head per task: each earlier task's outputs scored on their own, then averaged over those tasks
            per_task = [self.replay_loss(replayed[:, cols], teacher[:, cols]) for cols in self._old_task_outputs]
            replay = sum(per_task) / len(per_task)
        share = self.relative_weight
        return share * current + (1 - share) * replay

    def replay_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """CE with the teacher's argmax (hard), or T²·KD against its softmax padded with zeros to the student's
        outputs (soft)."""
        if self.options.replay_targets == "hard":
            return F.cross_entropy(student, teacher.argmax(1))
        return distillation_loss("kd", student, padded_to(teacher, student.shape[1]), self.options.temperature,
                                 t2_scaling=True)

    def after_step(self, batch: Batch, out: Output) -> None:
        """One step of the generator on the stream images (and the replayed ones), weighted as the classifier's."""
        images = batch.images.float().div_(255)
        self.generator.train()
        loss = self.generator.loss(images, self.rng)
        if self._replayed is not None:
            share = self.relative_weight
            loss = share * loss + (1 - share) * self.generator.loss(self._replayed, self.rng)
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.generator_optimizer.step()

    def state_dict(self) -> dict:
        state = {"generator": self.generator.state_dict(), "generator_optimizer": self.generator_optimizer.state_dict(),
                 "rng": self.rng.get_state(), **self.teacher.state_dict()}
        if self.previous_generator is not None:
            state["previous_generator"] = self.previous_generator.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.rng.set_state(state["rng"])
        self.teacher.load_state_dict(state, self.model)
        self.previous_generator = None
        if "previous_generator" in state:
            self.previous_generator = frozen_copy(self.generator)
            self.previous_generator.load_state_dict(state["previous_generator"])

