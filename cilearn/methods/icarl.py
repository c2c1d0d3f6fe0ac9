"""iCaRL (Rebuffi et al., CVPR 2017): distillation + a fixed exemplar memory + nearest-mean-of-exemplars.

Composed of three components, held together by the base of every method on the exemplar memory
(:class:`~cilearn.methods.parts.rehearsal.Rehearsal`):

- a frozen teacher and iCaRL's objective (:mod:`cilearn.methods.parts.distill`): one binary cross-entropy over every
  output of a network that has all classes' outputs from the first task — one-hot targets for the
  current labels, the teacher's sigmoid outputs for the old classes (the loss pairs of the study's
  ablation are options);
- the exemplar memory (:class:`~cilearn.methods.parts.memory.ExemplarMemory`): training data = the new classes' data +
  every exemplar; after each task the old classes' lists shrink to ``memory_size // classes seen``
  (dropping their last exemplars) and as many are selected for each new class (herding or random);
  ``exemplars`` decides what is stored for a new class: the selected images (iCaRL), or the study's
  proposals — collages of four images or DeepInversion images (:mod:`cilearn.methods.parts.exemplars`);
- classifiers fitted on the exemplars (:class:`~cilearn.methods.parts.components.ExemplarClassifiers`):
  ``nme`` (class means of L2-normalised features, averaged with the mirror image's for colour images),
  ``head`` (the network's outputs, "hybrid 1"), scikit-learn ``knn`` / ``svm`` / ``mlp``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from .parts.classifiers import check_classifiers
from .parts.exemplars import DeepInversionOptions, check_policy, make_builder
from .parts.memory import ExemplarMemory
from ..scenarios import Scenario
from ..schema import option
from .base import Batch, MethodContext, Output
from .parts.components import (DistillationOptions, MemoryOptions, check_full_head, distillation_loss,
                               distillation_objective, forward_teacher_first, resolve_losses, uses_full_head)
from .parts.rehearsal import Rehearsal


@dataclasses.dataclass
class ICaRLOptions(DistillationOptions, MemoryOptions):
    variant: Literal["original", "icarl"] = option(
        "icarl", help="loss pair: icarl = BCE classification + BCE distillation (default); original = CE + KD")
    classifiers: list[str] = option(default_factory=lambda: ["nme", "head"],
                                    help="any of nme, head, knn, svm, mlp; the first is the primary one")
    exemplars: Literal["selected", "collage", "deepinversion"] = option(
        "selected", help="what a new class's exemplars are: the selected images, collages of 4 random images "
                         "(the memory counts collages), or images synthesized by DeepInversion")
    collage: Literal["resized", "random_crop", "center_crop"] = option(
        "resized", help="exemplars: collage: each quadrant is a source image at half size, a random or the "
                        "central half-size patch")
    deepinversion: DeepInversionOptions = option(default_factory=DeepInversionOptions,
                                                 help="exemplars: deepinversion settings")

    def __post_init__(self) -> None:
        check_classifiers(self.classifiers, True, self.name)


class ICaRL(Rehearsal):
    name = "icarl"
    description = "iCaRL: exemplar memory (herding) + distillation + nearest-mean-of-exemplars classifier"
    paper = "Rebuffi, Kolesnikov, Sperl & Lampert, iCaRL: Incremental Classifier and Representation Learning, CVPR 2017"
    Options = ICaRLOptions
    primary_classifier = "nme"
    class_incremental_only = False  # task-incremental runs use a growing head with one softmax/BCE per task

    def __init__(self, options: ICaRLOptions, model: torch.nn.Module, context: MethodContext):
        self.losses = resolve_losses(options, has_memory=True)
        super().__init__(dataclasses.replace(options, classification_loss=self.losses.classification),
                         model, context)
        scenario = context.scenario
        self.full_head = uses_full_head(options, self.losses, scenario)
        self.objective = distillation_objective(options, self.losses, scenario, self.full_head)

    def make_memory(self, options: ICaRLOptions, context: MethodContext) -> ExemplarMemory:
        scenario = context.scenario
        builder = make_builder(options.exemplars, seed=context.seed, collage=options.collage,
                               deepinversion=options.deepinversion, model=self.model, mean=scenario.mean,
                               std=scenario.std, device=context.device, features=self.features_of,
                               build_model=context.build_model)
        return ExemplarMemory(options.memory_size, options.selection, context.seed, builder, options.per_class)

    def check(self, scenario: Scenario) -> None:
        check_full_head(self.options, scenario)
        super().check(scenario)
        check_policy(self.options.exemplars, scenario.image_shape, self.model, self.options.deepinversion)

    def forward(self, batch: Batch) -> Output:
        return forward_teacher_first(self, batch)

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        return distillation_loss(self, out, batch)
