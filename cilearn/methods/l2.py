"""L2: a quadratic penalty towards the weights after the previous task, every parameter equally important.

The baseline of Kirkpatrick et al. 2017 (EWC with the Fisher replaced by the identity) as Hsu, Liu, Ramasamy &
Kira's benchmark code computes it (GT-RIPL/Continual-Learning-Benchmark, ``agents/regularization.py``,
class ``L2``).  After each task the anchor ``θ*`` becomes the current weights (one anchor, the latest: their
``online_reg = True``) and training adds, without a ½::

    λ · Σ_k (θ_k − θ*_k)²

over every trained parameter (:class:`~cilearn.methods.parts.importance.ImportancePenalty` with Ω = 1).
``λ`` is their ``reg_coef`` (split MNIST, with Adam: 100).  The penalty's gradient ``2λ(θ − θ*)`` makes plain
SGD diverge unless ``lr < 1/λ``: the default λ = 1 trains with any usual learning rate.

Their network has all 10 outputs from the first task, so a new task's outputs, never trained before, are
held by the penalty to their initial values.  ``head: auto`` does the same in class-incremental scenarios
(``full``: every class's output from the start; the loss and the predictions still use the classes seen so
far); ``growing`` adds outputs per task, and the outputs a task adds are free of the penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..data import ImageData
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Batch, Method, MethodContext, MethodOptions, Output
from .parts.components import check_full_head
from .parts.importance import ImportancePenalty


@dataclasses.dataclass
class L2Options(MethodOptions):
    l2_lambda: float = option(1.0, min=0.0, help="λ of λ·Σ(θ − θ*)² (no ½; Hsu et al.'s reg_coef: 100 on split "
                                                 "MNIST with Adam, where plain SGD would need lr < 1/λ)")
    head: Literal["auto", "full", "growing"] = option(
        "auto", help="full: every class's output from the first task, so new outputs are held to their initial "
                     "values (Hsu et al.'s code); growing: outputs added per task, unpenalised; auto: full in "
                     "class-incremental scenarios, growing in task-incremental ones")


class L2(Method):
    name = "l2"
    description = "L2: quadratic penalty towards the previous task's weights, every parameter equally important"
    paper = ("Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017 (its L2 "
             "baseline); as in Hsu et al., Re-evaluating Continual Learning Scenarios, 2018")
    Options = L2Options

    def __init__(self, options: L2Options, model: torch.nn.Module, context: MethodContext):
        super().__init__(options, model, context)
        head = options.head
        self.full_head = head == "full" or (head == "auto" and not context.scenario.task_incremental)
        self.quadratic = ImportancePenalty()

    def check(self, scenario: Scenario) -> None:
        check_full_head(self.options, scenario)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.quadratic.forget_terms()  # the head may have grown: new parameter objects

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = super().loss(out, batch)
        if self.quadratic and self.options.l2_lambda > 0:
            loss = loss + self.options.l2_lambda * self.quadratic(self.model)
        return loss

    def end_task(self, task: Task, train_data: ImageData) -> None:
        unit = {n: torch.ones_like(p) for n, p in self.model.named_parameters() if p.requires_grad}
        self.quadratic.consolidate(self.model, unit, decay=0.0)  # Ω stays 1; only the anchor moves

    def state_dict(self) -> dict:
        return self.quadratic.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.quadratic.load_state_dict(state, self.context.device)
