"""iCaRL (Rebuffi et al., 2017): LwF-MC's loss + a fixed exemplar memory + nearest-mean-of-exemplars.

What this file adds to :mod:`~cilearn.methods.lwf` (whose teacher and losses it reuses):

- training data = the new classes' data + every exemplar in the memory;
- after each task: shrink the old classes' exemplar lists to ``memory_size // classes seen`` (dropping
  their last exemplars), select as many for each new class (``selection``: herding or random);
- test-time classifiers fitted on the exemplars: ``nme`` (class means of L2-normalised features,
  averaged with the mirror image's for colour images), ``head`` (the network's outputs, "hybrid 1"),
  and scikit-learn ``knn`` / ``svm`` / ``mlp`` on the L2-normalised exemplar features.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch

from ..classifiers import MEMORY_CLASSIFIERS, SKLEARN_CLASSIFIERS, NearestMean, SklearnClassifier, exemplar_means
from ..data import ImageData
from ..errors import ConfigError
from ..memory import ExemplarMemory
from ..scenarios import Scenario, Task, concat
from ..schema import option
from .base import Classifier, MethodContext, head_classifier
from .lwf import LwF, LwFOptions


@dataclasses.dataclass
class ICaRLOptions(LwFOptions):
    variant: Literal["original", "icarl"] = option(
        "icarl", help="loss pair: icarl = BCE classification + BCE distillation (default); original = CE + KD")
    memory_size: int = option(2000, min=1, help="K, total exemplars kept (K // classes seen per class)")
    selection: Literal["herding", "random"] = option("herding", help="how exemplars are chosen")
    classifiers: list[str] = option(default_factory=lambda: ["nme", "head"],
                                    help="any of nme, head, knn, svm, mlp; the first is the primary one")
    nme_flip: bool | None = option(None, help="average exemplar features with the mirrored image's for the "
                                              "class means (default: for colour images)")

    has_memory: ClassVar[bool] = True


class ICaRL(LwF):
    name = "icarl"
    description = "iCaRL: exemplar memory (herding) + distillation + nearest-mean-of-exemplars classifier"
    Options = ICaRLOptions
    primary_classifier = "nme"

    def __init__(self, options: ICaRLOptions, model: torch.nn.Module, context: MethodContext):
        super().__init__(options, model, context)
        self.memory = ExemplarMemory(options.memory_size, options.selection, context.seed)
        self.nme = NearestMean()
        self.fitted: dict[str, SklearnClassifier] = {}

    @staticmethod
    def memory_size_of(options) -> int:
        return options.memory_size

    def check(self, scenario: Scenario) -> None:
        super().check(scenario)
        classes = max((len(t.seen_classes) for t in scenario), default=0)
        if self.options.memory_size < classes:
            raise ConfigError(
                f"method.memory_size: {self.options.memory_size} exemplars is smaller than the number of "
                f"classes in this scenario ({classes}): the memory must hold at least one exemplar per "
                f"class. Raise memory_size to {classes} or more.")

    def training_data(self, task: Task) -> ImageData:
        if len(self.memory) == 0:
            return task.train
        return concat([task.train, self.memory.as_data(task.train.class_names)])

    def end_task(self, task: Task, train_data: ImageData) -> None:
        self.memory.update(task.train, task.new_classes, len(task.seen_classes), self._features)
        self.fit_classifiers()

    def _features(self, images) -> torch.Tensor:
        return self.context.infer(images)[0]

    @property
    def flip_means(self) -> bool:
        if self.options.nme_flip is not None:
            return self.options.nme_flip
        return self.context.scenario.image_shape[2] == 3  # mirrored digits are other symbols

    def fit_classifiers(self) -> None:
        """Class means and scikit-learn models from the current memory (after its update)."""
        wanted = [c for c in self.options.classifiers if c in MEMORY_CLASSIFIERS]
        if not wanted or len(self.memory) == 0:
            return
        features = self._features(self.memory.images)
        labels = torch.as_tensor(self.memory.labels)
        if "nme" in wanted:
            flipped = self.context.infer(self.memory.images, flip=True)[0] if self.flip_means else None
            classes = self.memory.classes
            self.nme.fit_means(exemplar_means(features, labels, classes, flipped), classes)
        self.fitted = {name: SklearnClassifier(name, self.context.seed).fit(features, labels)
                       for name in wanted if name in SKLEARN_CLASSIFIERS}

    def classifiers(self) -> dict[str, Classifier]:
        available = {"nme": self.nme, "head": head_classifier, **self.fitted}
        return {name: available[name] for name in self.options.classifiers}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": self.memory.state_dict(), "nme": self.nme.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.nme.load_state_dict(state.get("nme", {}))
        self.fitted = {}
