"""What the methods built on iCaRL's exemplar memory share (iCaRL, BiC, WA, LUCIR, PODNet).

- :class:`RehearsalOptions` / :class:`Rehearsal`: a frozen teacher (the model as it was before the
  task), training data = the task's data + every exemplar, the memory updated after each task by iCaRL's
  rule (``memory_size // classes seen`` per class, herding), the classifiers fitted on it (NME, ...) and all
  of it in checkpoints; a subclass adds its loss (and may build the memory its own way, :meth:`make_memory`);
- :func:`balanced_distillation`: the objective BiC and WA share, ``(1 - λ)·CE + λ·KD_T`` with
  ``λ = old classes / classes seen``;
- :class:`CosineRehearsal`: what LUCIR and PODNet share: a cosine head (:class:`~cilearn.models.heads.
  CosineHead`), the old classes' weights frozen while a task trains, the new classes' weights imprinted
  from their normalised features before it, and the feature distillation ``1 - cos(f, f_old)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from ...data import ImageData
from ...errors import ConfigError
from ...losses import distillation_loss
from ...scenarios import Scenario, Task, concat
from ...schema import option
from ..base import Classifier, Method, MethodContext, head_classifier
from .classifiers import check_classifiers
from .components import ExemplarClassifiers, MemoryOptions, check_memory
from .distill import Teacher
from .memory import ExemplarMemory


@dataclasses.dataclass
class RehearsalOptions(MemoryOptions):
    classification_loss: Literal["ce"] = option("ce", help="fixed: the method's objective is its paper's")
    classifiers: list[str] = option(default_factory=lambda: ["head", "nme"],
                                    help="any of head, nme, knn, svm, mlp; the first is the primary one")

    def __post_init__(self) -> None:
        check_classifiers(self.classifiers, True, self.name)


class Rehearsal(Method):
    """A frozen teacher + iCaRL's exemplar memory + classifiers fitted on it; subclasses add the loss."""

    Options = RehearsalOptions
    class_incremental_only: ClassVar[bool] = True  # one head over all classes, as the papers

    def __init__(self, options: RehearsalOptions, model: torch.nn.Module, context: MethodContext):
        super().__init__(options, model, context)
        self.primary_classifier = options.classifiers[0]
        self.teacher = Teacher()
        self.memory = self.make_memory(options, context)
        flip = options.nme_flip if options.nme_flip is not None else context.scenario.image_shape[2] == 3
        self.fitted = ExemplarClassifiers(options.classifiers, context.infer, flip, context.seed)

    def make_memory(self, options: RehearsalOptions, context: MethodContext) -> ExemplarMemory:
        """The exemplar memory (iCaRL's, storing the selected images)."""
        return ExemplarMemory(options.memory_size, options.selection, context.seed, per_class=options.per_class)

    @property
    def memory_size(self) -> int:
        return self.options.memory_size

    def check(self, scenario: Scenario) -> None:
        if self.class_incremental_only and scenario.kind != "class_incremental":
            raise ConfigError(f"method {self.name} is a class-incremental method (one head over all classes); "
                              f"this scenario is {scenario.kind}. Use scenario.type: class_incremental.")
        check_memory(self.options, scenario)

    @property
    def n_old(self) -> int:
        """Classes seen before the current task."""
        return len(self.task.seen_classes) - len(self.task.new_classes) if self.task.index > 0 else 0

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher.begin_task(self.model, self.n_old, self.full_head)

    def training_data(self, task: Task) -> ImageData:
        if len(self.memory) == 0:
            return task.train
        return concat([task.train, self.memory.as_data(task.train.class_names)])

    def end_task(self, task: Task, train_data: ImageData) -> None:
        self.update_memory(task, task.train)
        self.fitted.fit(self.memory, fresh=True)  # the model herding ran under: its features of the new exemplars

    def update_memory(self, task: Task, data: ImageData) -> None:
        """iCaRL's step: shrink the old classes' exemplars, select the new classes' from ``data``."""
        self.memory.update(data, task.new_classes, len(task.seen_classes), self.features_of, step=task.index)

    def features_of(self, images) -> torch.Tensor:
        """Features of uint8 images under the current model (eval mode, batched)."""
        return self.context.infer(images)[0]

    def classifiers(self) -> dict[str, Classifier]:
        available = {"head": head_classifier, **self.fitted.available()}
        return {name: available[name] for name in self.options.classifiers}

    def exemplars(self) -> dict | None:
        stored = self.memory.exemplars()
        features = self.fitted.memory_features  # computed for the classifiers after this task: not again
        if stored is not None and features is not None and len(features) == len(stored["labels"]):
            stored["features"] = features
        return stored

    def state_dict(self) -> dict:
        return {**self.teacher.state_dict(), "memory": self.memory.state_dict(), "nme": self.fitted.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state, self.model)
        self.memory.load_state_dict(state["memory"])
        self.fitted.load_state_dict(state.get("nme", {}))


def balanced_distillation(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                          temperature: float) -> torch.Tensor:
    """BiC's (and WA's) objective: ``(1 - λ)·CE(logits, labels) + λ·KD_T(logits[:, :n], teacher)`` with
    ``λ = n / (n + m)``, n old and m new classes (n + m = the logits' width); KD is the cross-entropy
    between the temperature-softened softmaxes (no T² factor).  Without a teacher: plain CE."""
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None or teacher_logits.shape[1] == 0:
        return ce
    n_old = teacher_logits.shape[1]
    lam = n_old / logits.shape[1]
    kd = distillation_loss("kd", logits[:, :n_old], teacher_logits.to(logits.dtype), temperature)
    return (1.0 - lam) * ce + lam * kd


def feature_distillation(features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(f, f_old))``: LUCIR's less-forget constraint and PODNet's POD-flat."""
    return (1.0 - F.cosine_similarity(features, teacher_features.to(features.dtype), dim=1)).mean()


class CosineRehearsal(Rehearsal):
    """Rehearsal with a cosine head: the old classes' weight vectors stay fixed while a task trains (both
    papers' code gives them learning rate 0), the new classes' are imprinted before it."""

    def parameter_groups(self) -> list[dict]:
        frozen = {id(p) for chunk in self.model.head.chunks[: self.task.index] for p in chunk.parameters()}
        return [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in frozen]}]

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index > 0 and self.imprint:
            self.imprint_new_classes(task)

    imprint = True  # subclasses read their option

    @torch.no_grad()
    def imprint_new_classes(self, task: Task) -> None:
        """Set the new classes' weight vectors from their training features (weight imprinting): each
        class's ``proxies`` vectors become unit directions of its normalised features (:meth:`directions`),
        scaled to the mean norm of the old classes' vectors."""
        head = self.model.head
        old = torch.cat([chunk.weight for chunk in head.chunks[: task.index]])
        norm = old.norm(dim=1).mean()
        chunk = head.chunks[task.index]
        data = task.train
        rows = []
        for label in task.new_classes:
            features = F.normalize(self.features_of(data.images[data.labels == label]).double(), dim=1)
            rows.append(self.directions(features, head.proxies, int(label)))
        chunk.weight.copy_((torch.cat(rows) * norm).to(chunk.weight))

    def directions(self, features: torch.Tensor, proxies: int, label: int) -> torch.Tensor:
        """(proxies, d) unit vectors for one class: the normalised mean of its normalised features."""
        return F.normalize(features.mean(0, keepdim=True), dim=1).expand(proxies, -1)
