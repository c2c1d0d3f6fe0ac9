"""GDumb: a greedy class-balanced memory and a learner retrained from scratch on it (Prabhu et al., ECCV 2020).

The stream only fills the memory: each task's samples are offered one by one, in a random order, to a
:class:`~cilearn.methods.parts.buffers.ClassBalancedBuffer` of ``buffer_size`` samples (a sample is kept while its class
holds fewer than ``buffer_size // classes seen`` samples; when the memory is full it replaces a random
sample of the largest class).  The network never trains on the stream: at every task's end it is
re-initialised (``context.build_model``) and trained from scratch on the memory alone, as a training stage
of the shared loop with the authors' recipe (drimpossible/GDumb ``src/main.py`` and ``src/opts.py``) — SGD
with momentum 0.9, weight decay 1e-6, batch 16, gradients clipped to norm 10, 128 epochs on MNIST; the
first epoch at ``lr × warm_start`` = ``lr / 10`` (their warm start), then SGDR stepped once per epoch
(cosine cycles of 1, 2, 4, ... epochs from ``lr`` down towards ``min_lr``:
``CosineAnnealingWarmRestarts(T_0=1, T_mult=2)``).  So 128 epochs are the warm start and seven whole
cycles (1 + 2 + ... + 64 = 127): the last epoch runs at the bottom of a cycle.  Without the warm start
(``warm_start: null``, cilearn's version 0.1) the 128th epoch begins a new cycle at the largest lr.
Evaluation compares the classes seen so far (the paper's class mask at test time).

Departures: the paper (and the DER-paper protocol) retrains only when a prediction is needed;
here it is after every task, since every task is evaluated.  The paper's tables are the best test accuracy over
the epochs of a retraining (the authors' ``main.py`` keeps ``best_prec1``); cilearn reports the last epoch's.
The authors' MLP and augmentations are run options: ``model: {name: mlp, options: {batchnorm: true}}`` and
``train.augment`` (MNIST ``[crop]``, CIFAR ``[crop, flip, cutmix]``; see configs/methods_mnist/gdumb.yaml and
configs/gdumb_cifar10jpeg.yaml).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ..augment import to_tensor_images
from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Method, MethodOptions, Stage
from .parts.buffers import ClassBalancedBuffer


@dataclasses.dataclass
class GDumbOptions(MethodOptions):
    buffer_size: int = option(500, min=1, help="k, samples of the class-balanced memory (the authors' MNIST MLP "
                                               "runs, scripts/replicate.sh: 300, 500, 4400)")
    epochs: int = option(128, min=1, help="epochs of each retraining on the memory, the warm start included (the "
                                          "authors' MNIST num_passes: 128)")
    lr: float = option(0.05, min=0.0, help="largest learning rate of the SGDR cycles (the authors' maxlr)")
    min_lr: float = option(0.0005, min=0.0, help="smallest learning rate of the SGDR cycles (the authors' minlr)")
    batch_size: int = option(16, min=1, help="batch size of the retraining (the authors' 16)")
    momentum: float = option(0.9, min=0.0, max=1.0, help="SGD momentum of the retraining (the authors' 0.9)")
    weight_decay: float = option(1e-6, min=0.0, help="weight decay of the retraining (the authors' 1e-6)")
    clip: float = option(10.0, min=0.0, help="clip the gradient norm to this value (the authors' 10; 0: no "
                                             "clipping)")
    warm_start: float | None = option(
        0.1, min=0.0, max=1.0, help="lr factor of the first epoch, before the SGDR cycles begin (the authors' "
                                    "src/main.py: 0.1); null: the cycles from the first epoch (cilearn's version 0.1)")
    absent_from_old_runs: ClassVar[dict] = {"warm_start": None}  # 0.2's run folders: no warm-start epoch


class GDumb(Method):
    name = "gdumb"
    description = "GDumb: greedy class-balanced memory; the network is retrained from scratch on it after each task"
    paper = ("Prabhu, Torr & Dokania, GDumb: A Simple Approach that Questions Our Progress in Continual "
             "Learning, ECCV 2020")
    Options = GDumbOptions
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies

    def __init__(self, options: GDumbOptions, model, context):
        super().__init__(options, model, context)
        self.memory = ClassBalancedBuffer(options.buffer_size, context.device)

    def check(self, scenario: Scenario) -> None:
        if self.context.build_model is None:
            raise ConfigError("method 'gdumb' re-initialises the network after every task and needs the run's "
                              "model builder (MethodContext.build_model).")

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.fill_memory(task.train)
        self.reinitialise()

    def fill_memory(self, data: ImageData) -> None:
        """Offer the task's samples to the greedy sampler in a random (stream) order."""
        order = torch.randperm(len(data)).numpy()
        device = self.context.device
        self.memory.add(to_tensor_images(data.images[order], device),
                        torch.as_tensor(data.labels[order], device=device))

    @torch.no_grad()
    def reinitialise(self) -> None:
        """Fresh weights for the whole network (the head keeps its size: the classes seen so far)."""
        fresh = self.context.build_model()
        for chunk in self.model.head.task_slices:
            fresh.add_classes(chunk.stop - chunk.start)
        self.model.load_state_dict(fresh.state_dict())

    def stages(self, task: Task) -> list[Stage]:
        o = self.options
        recipe = {"epochs": o.epochs, "lr": o.lr, "min_lr": o.min_lr, "batch_size": o.batch_size,
                  "momentum": o.momentum, "weight_decay": o.weight_decay, "scheduler": "warm_restarts",
                  "milestones": []}
        if o.warm_start is not None:  # one epoch at lr × warm_start; the cycles start one epoch later
            recipe.update(warmup=1, warmup_factor=o.warm_start)
        return [Stage("memory", recipe, self.memory.as_data(task.train.class_names))]

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.options.clip > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.options.clip)

    def exemplars(self) -> dict | None:
        return self.memory.exemplars()

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
