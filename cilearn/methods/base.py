"""The method interface: a method adds its idea to the shared training loop through a few hooks.

Required: nothing — the base class is plain fine-tuning.  A method overrides what makes it different:

- ``loss(logits, targets, inputs)``: the training objective for one batch (the one hook almost every
  method changes, e.g. adding distillation or a penalty);
- ``begin_task(task)`` / ``end_task(task, train_data)``: before/after training a task (freeze a teacher,
  update the exemplar memory, estimate a Fisher matrix ...);
- ``training_data(task)``: what the loop trains on (the task's data plus a replay memory, say);
- ``classifiers()``: how to predict at test time (the network head, nearest-mean-of-exemplars, ...);
- ``state_dict()`` / ``load_state_dict()``: everything needed to resume (tensors and plain values only).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Literal

import torch

from ..data import ImageData
from ..losses import classification_loss
from ..scenarios import Scenario, Task
from ..schema import option

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features, logits) -> predicted labels


@dataclasses.dataclass
class MethodOptions:
    name: str = option(help="method name (cilearn list)")
    label: str | None = option(None, help="name of this run in tables and folders (default: the method name)")
    classification_loss: Literal["ce", "bce", "mse"] = option("ce", help="loss on the current labels")


@dataclasses.dataclass
class MethodContext:
    """What a method may use besides the model: shared, read-only for the method."""

    scenario: Scenario
    device: torch.device
    seed: int
    infer: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # infer(images uint8 NHWC, flip=False) -> features, logits
    augment: Callable[[torch.Tensor], torch.Tensor]          # uint8 NCHW batch -> augmented float batch


class Method:
    """Fine-tuning: train on each new task's data alone; the baseline every method improves on."""

    name: ClassVar[str] = "finetune"
    description: ClassVar[str] = "fine-tuning: train on each task in turn (lower bound)"
    Options: ClassVar[type] = MethodOptions
    primary_classifier: ClassVar[str] = "head"

    def __init__(self, options: MethodOptions, model: torch.nn.Module, context: MethodContext):
        self.options = options
        self.model = model
        self.context = context
        self.task: Task | None = None
        self._class_task: torch.Tensor | None = None

    # --- hooks -------------------------------------------------------------------------------------
    def check(self, scenario: Scenario) -> None:
        """Refuse option combinations that cannot work on this scenario (raise ConfigError) before
        any training starts."""

    def begin_task(self, task: Task) -> None:
        """Called after the head has grown for ``task`` and before its training starts."""
        self.task = task
        if task.task_incremental:
            owner = torch.as_tensor(self.context.scenario.task_of_class(), device=self.context.device)
            self._class_task = owner[: self.model.num_classes]

    def training_data(self, task: Task) -> ImageData:
        return task.train

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.classification_loss(logits, targets)

    def end_task(self, task: Task, train_data: ImageData) -> None:
        """Called after the last epoch of ``task``, before it is evaluated."""

    def classifiers(self) -> dict[str, Classifier]:
        return {"head": head_classifier}

    def parameters_to_train(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # --- helpers for subclasses ---------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        """Exemplars the method keeps (0: none); used to validate classifier choices."""
        return 0

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured classification loss; with task ids (multi-head), each sample only uses its
        own task's head."""
        mask = None
        if self._class_task is not None:
            sample_task = self._class_task[targets]
            mask = self._class_task[None, :] == sample_task[:, None]
        return classification_loss(self.options.classification_loss, logits, targets, mask)


def head_classifier(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1)
