"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

Each parameter's contribution to the decrease of the loss is integrated along the training trajectory:
at every step, ``ω_k += −g_k · Δθ_k`` where ``g`` is the gradient of the task loss **without** the
penalty and ``Δθ`` the update the optimizer actually made.  At a task's end the importance grows by
``ω_k / (Δ_k² + ξ)``, ``Δ_k`` being how far the parameter moved over the whole task, and is kept
non-negative (``Ω ← max(0, Ω + ω/(Δ² + ξ))``, as the authors' code); ``ω`` restarts at zero and the
anchor ``θ*`` becomes the current weights.  Training adds ``c · Σ Ω (θ − θ*)²``
(:class:`~cilearn.methods.parts.importance.ImportancePenalty`, shared with EWC and MAS).

A parameter that never moved, or moved without changing the loss, gets no importance.  ``g`` is read in
``before_step`` as the full gradient minus the penalty's closed-form gradient ``2cΩ(θ − θ*)``.

Two options reproduce the DER paper's code (Mammoth's ``models/si.py``, 2020), which departs from the authors':
``path_gradient: total`` integrates the gradient of the whole objective, penalty included (Mammoth adds
``lr · g²`` of the total, clipped gradient: the same as ``−g·Δθ`` under plain SGD), and ``classification_outputs:
all`` gives the network every class's output from the first task with the cross-entropy over all of them
(Mammoth's 10-output MLP; the penalty then also covers the outputs of classes not seen yet).  ``head: full`` alone
gives the network those outputs from the first task but keeps the loss on the classes seen so far (in
task-incremental scenarios each sample's own task's outputs), as van de Ven & Tolias's 10-output layer.
Mammoth also clips every gradient to [−1, 1]: ``train.clip_grad_value: 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..data import ImageData
from ..scenarios import Task
from ..schema import option
from .base import Batch, Method, Output
from .parts.components import OutputLayerOptions
from .parts.importance import ImportancePenalty


@dataclasses.dataclass
class SIOptions(OutputLayerOptions):
    si_c: float = option(1.0, min=0.0, help="c, strength of the surrogate loss (1: the authors' split MNIST, "
                                            "Adam lr 1e-3, ganguli-lab/pathint; also the DER paper's Seq-MNIST value)")
    xi: float = option(1e-3, min=1e-12, help="ξ, damping of the importance's denominator (1e-3: the authors' split "
                                             "MNIST and split CIFAR; permuted MNIST 0.1; the DER paper's "
                                             "Seq-MNIST, SGD: 0.9)")
    path_gradient: Literal["task_loss", "total"] = option(
        "task_loss", help="the gradient the path integral ω takes: task_loss (without the penalty, as the authors' "
                          "code) or total (the whole objective's, as the DER paper's code, Mammoth 2020)")
    classification_outputs: Literal["seen", "all"] = option(
        "seen", help="outputs the cross-entropy covers: seen (outputs added per task) or all (every class's output "
                     "from the first task, the classes not seen yet included, as Mammoth's 10-output MLP; "
                     "class-incremental scenarios)")


class SI(Method):
    name = "si"
    description = "Synaptic Intelligence: quadratic penalty weighted by each parameter's path integral of the loss"
    paper = "Zenke, Poole & Ganguli, Continual Learning Through Synaptic Intelligence, ICML 2017"
    Options = SIOptions

    def __init__(self, options: SIOptions, model, context):
        super().__init__(options, model, context)
        self.all_outputs = options.classification_outputs == "all" and not context.scenario.task_incremental
        self.full_head = self.all_outputs or options.head == "full"
        self.quadratic = ImportancePenalty()
        self.path: dict[str, torch.Tensor] = {}   # ω: the running path integral of this task
        self.start: dict[str, torch.Tensor] = {}  # the weights as the task began
        self._step: list | None = None            # (name, parameter, task-loss gradient, weights before the step)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.quadratic.forget_terms()  # the head may have grown: new parameter objects
        self.path = {n: torch.zeros_like(p) for n, p in self.model.named_parameters() if p.requires_grad}
        self.start = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        if self.all_outputs:
            loss = self.classification_loss(out.logits, batch.labels)
        else:
            loss = super().loss(out, batch)
        if self.quadratic and self.options.si_c > 0:
            loss = loss + self.options.si_c * self.quadratic(self.model)
        return loss

    @torch.no_grad()
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        without_penalty = self.options.path_gradient == "task_loss" and self.quadratic and self.options.si_c > 0
        penalty = self.quadratic.gradient(self.model) if without_penalty else {}
        self._step = []
        for name, param in self.model.named_parameters():
            if name in self.path and param.grad is not None:
                grad = param.grad.clone()
                if name in penalty:
                    grad -= self.options.si_c * penalty[name]
                self._step.append((name, param, grad, param.detach().clone()))

    @torch.no_grad()
    def after_step(self, batch: Batch, out: Output) -> None:
        for name, param, grad, before in self._step or []:
            self.path[name] -= grad * (param - before)
        self._step = None

    @torch.no_grad()
    def end_task(self, task: Task, train_data: ImageData) -> None:
        params = dict(self.model.named_parameters())
        task_importance = {n: omega / ((params[n] - self.start[n]).square() + self.options.xi)
                           for n, omega in self.path.items()}
        self.quadratic.consolidate(self.model, task_importance)
        self.quadratic.importance = {n: w.clamp_min(0) for n, w in self.quadratic.importance.items()}
        self.quadratic.forget_terms()
        self.path = {n: torch.zeros_like(w) for n, w in self.path.items()}
        self.start = {n: params[n].detach().clone() for n in self.start}

    def state_dict(self) -> dict:
        return {**self.quadratic.state_dict(), "path": {n: t.cpu() for n, t in self.path.items()},
                "start": {n: t.cpu() for n, t in self.start.items()}}

    def load_state_dict(self, state: dict) -> None:
        device = self.context.device
        self.quadratic.load_state_dict(state, device)
        self.path = {n: t.to(device) for n, t in state.get("path", {}).items()}
        self.start = {n: t.to(device) for n, t in state.get("start", {}).items()}
