"""XdG: context-dependent gating (Masse, Grant & Freedman 2018), task-incremental scenarios only.

For every task a fixed random subset of ``gating_prop`` of the units of each hidden fully connected layer is
gated; the network trains and is evaluated on a task with that task's gate, so each task uses (and changes) a
mostly different sub-network.  The gate needs the task's identity, at test time too: XdG works only where the
task is given (task-incremental scenarios), and the evaluation scores each task's test images under its gate.

As van de Ven & Tolias's code (GMvandeVen/continual-learning, branch ``preprints``: ``main.py`` draws the masks,
``excitability_modules.py`` applies them): a gated unit's ``x·wᵀ`` is multiplied by 0 and its bias is still
added, so it outputs ReLU(b) rather than exactly 0 (their papers say "set to zero"; the bias keeps learning).
Their split-MNIST Task-IL value is ``gating_prop`` 0.95 (``param_values.py``).  The masks are drawn from the
run's seed (``int(gating_prop · units)`` units per layer and task, without replacement), not from their global
numpy stream, so they are other masks of the same kind.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from ..errors import ConfigError
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Method, MethodContext
from .parts.components import OutputLayerOptions


@dataclasses.dataclass
class XdGOptions(OutputLayerOptions):
    gating_prop: float = option(0.8, min=0.0, max=1.0,
                                help="share of each hidden layer's units gated for a task (van de Ven & Tolias "
                                     "split MNIST: 0.95; Masse et al.: 0.8)")


class XdG(Method):
    name = "xdg"
    description = "XdG: a random gate per task over the hidden units (task-incremental scenarios)"
    paper = ("Masse, Grant & Freedman, Alleviating catastrophic forgetting using context-dependent gating and "
             "synaptic stabilization, PNAS 2018; as in van de Ven & Tolias's code")
    Options = XdGOptions

    def __init__(self, options: XdGOptions, model: torch.nn.Module, context: MethodContext):
        super().__init__(options, model, context)
        self.full_head = options.head == "full"  # their one 10-output layer (each task's loss on its own outputs)
        self.layers = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
        self.active: int | None = None  # the task whose gate the hidden layers apply (None: no gate)
        self._masks: dict[int, list[torch.Tensor]] = {}
        self._hooks = [layer.register_forward_hook(self._gate_hook(i)) for i, layer in enumerate(self.layers)]

    def check(self, scenario: Scenario) -> None:
        if not scenario.task_incremental:
            raise ConfigError(f"method 'xdg' gates the network by the task's identity, which only a "
                              f"task-incremental scenario gives at test time; this scenario is {scenario.kind}. "
                              f"Use scenario.type: task_incremental.")
        if not self.layers:
            raise ConfigError("method 'xdg' gates the units of fully connected hidden layers; this model has none. "
                              "Use model.name: mlp.")

    def _gate_hook(self, index: int):
        # A closure, not a bound method: the evaluation's folded copy of the network (a deep copy) then shares
        # it, and with it self.active, instead of copying this method.
        def gate(layer: torch.nn.Linear, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if self.active is None:
                return None
            keep = self.mask(self.active)[index].to(output.dtype)
            if layer.bias is None:
                return output * keep
            return output * keep + layer.bias.to(output.dtype) * (1 - keep)  # gated: x·wᵀ·0 + b (their code)
        return gate

    def mask(self, task_index: int) -> list[torch.Tensor]:
        """1 for the units task ``task_index`` uses, 0 for the gated ones, per hidden layer (drawn once from the
        run's seed and the task: the same on resume)."""
        if task_index not in self._masks:
            generator = torch.Generator().manual_seed(self.context.seed * 1_000_003 + task_index)
            masks = []
            for layer in self.layers:
                units = layer.out_features
                keep = torch.ones(units)
                keep[torch.randperm(units, generator=generator)[: int(self.options.gating_prop * units)]] = 0.0
                masks.append(keep.to(self.context.device))
            self._masks[task_index] = masks
        return self._masks[task_index]

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.active = task.index

    def task_context(self, task_index: int) -> contextlib.AbstractContextManager:
        return self._gated(task_index)

    @contextlib.contextmanager
    def _gated(self, task_index: int):
        before, self.active = self.active, task_index
        try:
            yield
        finally:
            self.active = before
