"""GEM, gradient episodic memory (Lopez-Paz & Ranzato, NeurIPS 2017), with Hsu et al.'s (2018) set-up as options.

An episodic memory of ``memory_total`` random training samples is shared by the tasks seen, as ``replay``'s
``memory_total``: after task ``t`` each keeps ``memory_total // t``, a prefix of its own random order.  Every
step, with the weights of the step, the gradient ``g_k`` of the loss on *all* memory samples of each earlier
task ``k`` is computed (the same loss and outputs as the stream batch's: a cross-entropy over the classes seen
so far).  When the stream gradient ``g`` conflicts with one of them (``g·g_k < 0``), the update becomes

    g̃ = g + Gᵀv,   v = argmin_{v ≥ margin} ½ vᵀ(GGᵀ + εI)v + (Gg)ᵀv

(``G`` the matrix of the ``g_k``), the dual of GEM's quadratic programme ``min ½‖g̃ − g‖² s.t. G g̃ ≥ 0`` with
the authors' ``memory_strength`` as ``margin`` (a lower bound on the dual variables: every memory gradient is
added at least ``margin`` times, also where it does not conflict) and ``ε = 1e-3`` on the diagonal, as their code
and Hsu et al.'s.  The dual is solved exactly (active-set non-negative least squares on its Cholesky factor,
:func:`project_to_cone`) where both call quadprog; with one earlier task, ``margin 0`` and ``ε 0`` it is A-GEM's
projection.  Otherwise ``g`` is used unchanged.

Hsu et al.'s GEM (their ``agents/exp_replay.py``, ``GEM_1100``: SGD lr 0.01, margin 0.5) departs from the paper
in two ways, each an option here: it also trains on the memory as their naive rehearsal does
(``train_on_memory``: the memory repeated ``max(len(task) // memory_total, 1)`` times in the task's data), and
the code of their paper's table (Jan 2019, changed in Jul 2020, commit abe7fd4) stored every task twice — two
independent random draws, each a constraint of its own (``slots_per_task: 2``; the memory still holds
``memory_total`` samples: after task ``t`` each of the ``2t`` slots keeps ``memory_total // 2t``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..augment import to_tensor_images
from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Scenario, Task, concat
from ..schema import option
from .base import MethodOptions
from .parts.gradients import flat_gradient, loss_gradient, set_gradient, stepped_parameters
from .replay import Replay, balanced_copies

DIAGONAL = 1e-3  # added to GGᵀ, as the authors' code (keeps the dual strictly convex)


@dataclasses.dataclass
class GEMOptions(MethodOptions):
    memory_total: int = option(1100, min=1, help="episodic memory shared by the tasks seen: memory_total // t random "
                                                 "samples each after task t (1100: Hsu et al.'s GEM_1100)")
    margin: float = option(0.5, min=0.0, help="the authors' memory_strength: the dual variables' lower bound "
                                              "(0.5: GEM's and Hsu et al.'s MNIST scripts; 0: the plain projection)")
    train_on_memory: bool = option(False, help="also train on the memory, repeated max(task samples // "
                                               "memory_total, 1) times in each task's data (Hsu et al.'s GEM); "
                                               "false: the paper (the memory only constrains the update)")
    slots_per_task: int = option(1, min=1, help="independent random draws stored per task, each a constraint (2: "
                                                "the code of Hsu et al.'s table, which stored every task twice)")


def project_to_cone(grad: torch.Tensor, memories: torch.Tensor, margin: float = 0.5,
                    diagonal: float = DIAGONAL) -> torch.Tensor:
    """GEM's update ``g + Gᵀv`` with ``v`` the minimiser of ``½ vᵀ(GGᵀ + diagonal·I)v + (Gg)ᵀv`` over
    ``v ≥ margin`` (``grad``: g, a vector; ``memories``: G, one row per earlier task), computed in float64.

    With ``u = v − margin`` and ``P = GGᵀ + diagonal·I = LLᵀ`` the objective is ``½‖Lᵀu + L⁻¹(P·margin + Gg)‖²``
    plus a constant, a non-negative least-squares problem in ``u`` that scipy's active-set ``nnls`` solves
    exactly (a handful of variables: one per earlier task)."""
    from scipy.optimize import nnls

    g = grad.detach().double().cpu().numpy()
    G = memories.detach().double().cpu().numpy()
    P = G @ G.T
    P = 0.5 * (P + P.T) + diagonal * np.eye(len(G))
    linear = P @ np.full(len(G), margin) + G @ g
    lower = np.linalg.cholesky(P)
    u, _ = nnls(lower.T, -np.linalg.solve(lower, linear))
    v = u + margin
    return torch.as_tensor(g + G.T @ v, dtype=grad.dtype, device=grad.device)


class GEM(Replay):
    name = "gem"
    description = "GEM: keep the update from increasing the loss on each earlier task's episodic memory (a QP)"
    paper = "Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning, NeurIPS 2017"
    Options = GEMOptions

    def __init__(self, options: GEMOptions, model, context):
        super().__init__(options, model, context)
        self._constraints: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per slot: inputs, labels
        self.projected = 0  # steps whose update was changed (a diagnostic)

    def check(self, scenario: Scenario) -> None:
        if scenario.kind == "domain_incremental":
            raise ConfigError("method 'gem' keeps a memory per task of a class- or task-incremental scenario; "
                              "for a domain stream use 'replay' or 'er'.")

    def training_data(self, task: Task) -> ImageData:
        memory = self.buffer()
        if not self.options.train_on_memory or memory is None:
            return task.train
        return concat([task.train] + [memory] * balanced_copies(task.train, self.options.memory_total))

    def end_task(self, task: Task, train_data: ImageData) -> None:
        data = task.train
        rng = np.random.RandomState(self.context.seed * 1000 + task.index)
        slots = self.options.slots_per_task
        for slot in range(slots):
            made = slots * task.index + slot + 1  # memory slots made so far, this one included
            count = min(self.options.memory_total // made, len(data))
            if self.buffer_images is not None:
                self.shrink_shares(count)
            keep = rng.permutation(len(data))[:count]
            self.add_to_buffer(data.images[keep], data.labels[keep], made - 1)
        self._constraints = None

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._constraints = None

    def constraints(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each memory slot's samples as model inputs (normalised once, kept until the memory changes)."""
        if self._constraints is None:
            normalize = getattr(self.context.augment, "normalize", self.context.augment)
            device = self.context.device
            self._constraints = []
            for slot in np.unique(self.buffer_task):
                where = np.flatnonzero(self.buffer_task == slot)
                inputs = normalize(to_tensor_images(self.buffer_images[where], device))
                self._constraints.append((inputs, torch.as_tensor(self.buffer_labels[where], device=device)))
        return self._constraints

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.buffer_images is None:
            return
        params = stepped_parameters(optimizer)
        grad = flat_gradient(params)
        memories = torch.stack([loss_gradient(self.classification_loss(self.seen_logits(self.model(inputs)), labels),
                                              params) for inputs, labels in self.constraints()])
        if not bool((memories @ grad < 0).any()):
            return
        self.projected += 1
        set_gradient(params, project_to_cone(grad, memories, self.options.margin))
