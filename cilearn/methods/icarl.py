"""iCaRL (Rebuffi et al., CVPR 2017): distillation + a fixed exemplar memory + nearest-mean-of-exemplars.

Composed of three components:

- a frozen teacher and iCaRL's objective (:mod:`cilearn.distill`): one binary cross-entropy over every
  output of a network that has all classes' outputs from the first task — one-hot targets for the
  current labels, the teacher's sigmoid outputs for the old classes (the loss pairs of the study's
  ablation are options);
- the exemplar memory (:class:`~cilearn.memory.ExemplarMemory`): training data = the new classes' data +
  every exemplar; after each task the old classes' lists shrink to ``memory_size // classes seen``
  (dropping their last exemplars) and as many are selected for each new class (herding or random);
  ``exemplars`` decides what is stored for a new class: the selected images (iCaRL), or the study's
  proposals — collages of four images or DeepInversion images (:mod:`cilearn.exemplars`);
- classifiers fitted on the exemplars (:class:`~cilearn.methods.components.ExemplarClassifiers`):
  ``nme`` (class means of L2-normalised features, averaged with the mirror image's for colour images),
  ``head`` (the network's outputs, "hybrid 1"), scikit-learn ``knn`` / ``svm`` / ``mlp``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..classifiers import check_classifiers
from ..data import ImageData
from ..distill import Teacher
from ..exemplars import DeepInversionOptions, check_policy, make_builder
from ..memory import ExemplarMemory
from ..scenarios import Scenario, Task, concat
from ..schema import option
from .base import Batch, Classifier, MethodContext, Method, Output, head_classifier
from .components import (DistillationOptions, ExemplarClassifiers, MemoryOptions, check_full_head, check_memory,
                         distillation_loss,
                         distillation_objective, resolve_losses, uses_full_head)


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


class ICaRL(Method):
    name = "icarl"
    description = "iCaRL: exemplar memory (herding) + distillation + nearest-mean-of-exemplars classifier"
    paper = "Rebuffi, Kolesnikov, Sperl & Lampert, iCaRL: Incremental Classifier and Representation Learning, CVPR 2017"
    Options = ICaRLOptions
    primary_classifier = "nme"

    def __init__(self, options: ICaRLOptions, model: torch.nn.Module, context: MethodContext):
        self.losses = resolve_losses(options, has_memory=True)
        super().__init__(dataclasses.replace(options, classification_loss=self.losses.classification),
                         model, context)
        self.primary_classifier = options.classifiers[0]
        scenario = context.scenario
        self.full_head = uses_full_head(options, self.losses, scenario)
        self.objective = distillation_objective(options, self.losses, scenario, self.full_head)
        self.teacher = Teacher()
        builder = make_builder(options.exemplars, seed=context.seed, collage=options.collage,
                               deepinversion=options.deepinversion, model=model, mean=scenario.mean,
                               std=scenario.std, device=context.device, features=self._features,
                               build_model=context.build_model)
        self.memory = ExemplarMemory(options.memory_size, options.selection, context.seed, builder,
                                     options.per_class)
        flip = options.nme_flip if options.nme_flip is not None else scenario.image_shape[2] == 3
        self.fitted = ExemplarClassifiers(options.classifiers, context.infer, flip, context.seed)

    @property
    def memory_size(self) -> int:
        return self.options.memory_size

    def check(self, scenario: Scenario) -> None:
        check_full_head(self.options, scenario)
        check_memory(self.options, scenario)
        check_policy(self.options.exemplars, scenario.image_shape, self.model, self.options.deepinversion)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        n_old = len(task.seen_classes) - len(task.new_classes) if task.index > 0 else 0
        self.teacher.begin_task(self.model, n_old, self.full_head)

    def training_data(self, task: Task) -> ImageData:
        if len(self.memory) == 0:
            return task.train
        return concat([task.train, self.memory.as_data(task.train.class_names)])

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        return distillation_loss(self, out, batch)

    def end_task(self, task: Task, train_data: ImageData) -> None:
        self.memory.update(task.train, task.new_classes, len(task.seen_classes), self._features, step=task.index)
        self.fitted.fit(self.memory)

    def _features(self, images) -> torch.Tensor:
        return self.context.infer(images)[0]

    def classifiers(self) -> dict[str, Classifier]:
        available = {"head": head_classifier, **self.fitted.available()}
        return {name: available[name] for name in self.options.classifiers}

    def exemplars(self) -> dict | None:
        return self.memory.exemplars()

    def state_dict(self) -> dict:
        return {**self.teacher.state_dict(), "memory": self.memory.state_dict(), "nme": self.fitted.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state, self.model)
        self.memory.load_state_dict(state["memory"])
        self.fitted.load_state_dict(state.get("nme", {}))
