"""Memory Aware Synapses (Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, ECCV 2018).

A parameter is important when the network's output is sensitive to it.  After each task, on (up to
``importance_samples`` of) the task's training data, without labels, in evaluation mode::

    Ω_task = mean_k | ∂ ‖F(x_k; θ)‖²₂ / ∂θ |

with ``F`` the network's outputs (the logits of the classes seen so far) and exact **per-sample** gradients
(:func:`~cilearn.methods.parts.importance.per_sample_gradient_mean`).  The importance accumulates over tasks
(``Ω ← Ω + Ω_task``, as the authors' code) and the anchor ``θ*`` becomes the current weights; training
adds ``λ · Σ Ω (θ − θ*)²`` (:class:`~cilearn.methods.parts.importance.ImportancePenalty`, shared with EWC and SI).

``importance_gradients: batch`` is the estimate of Hsu et al.'s benchmark code (GT-RIPL/
Continual-Learning-Benchmark, ``agents/regularization.py``, class ``MAS``): the task's data in shuffled
minibatches of ``importance_batch_size`` (their training batch, 128), the absolute gradient of each
minibatch's **mean** squared output (over its samples and the seen classes' outputs), averaged over the
minibatches::

    Ω_task = mean_b | ∂ mean_{k ∈ b, c ≤ seen} F_c(x_k)² / ∂θ |

— smaller than the per-sample estimate: the absolute value comes after the average over a minibatch, and
the mean over outputs divides by the number of classes seen.

A parameter that does not affect the outputs on the task's data (say, the weight of an input pixel that
is always zero) gets no importance.

Departure: the authors' code (``MAS_utils/MAS_based_Training.py``, ``compute_importance_l2`` and
``MAS_Omega_update``) takes the absolute value of each batch's summed gradient, ``|Σ_k ∂‖F(x_k)‖² / ∂θ|``,
and averages it over the samples: never larger than the mean of the per-sample absolute values taken here,
so the same λ penalises at least as much here as theirs.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..data import ImageData
from ..scenarios import Task
from ..schema import option
from .base import Batch, Method, MethodOptions, Output
from .parts.importance import ImportancePenalty, batch_gradient_mean, per_sample_gradient_mean


@dataclasses.dataclass
class MASOptions(MethodOptions):
    mas_lambda: float = option(1.0, min=0.0, help="λ, penalty strength (1: the paper's object-recognition value, "
                                                  "the authors' MAS.py reg_lambda; with plain SGD on Seq-MNIST it "
                                                  "diverges: configs/methods_mnist/mas.yaml uses 0.1)")
    importance_samples: int | None = option(None, min=1, help="training samples of each task the importance is "
                                                              "estimated on (default: all of them)")
    importance_gradients: Literal["per_sample", "batch"] = option(
        "per_sample", help="per_sample: mean over samples of |∂‖F(x)‖²/∂θ| (the paper's); batch: mean over shuffled "
                           "minibatches of |∂ mean(F²)/∂θ|, the mean over the minibatch and the seen outputs (Hsu "
                           "et al.'s code)")
    importance_batch_size: int = option(64, min=1, help="per_sample: per-sample gradients computed this many at a "
                                                        "time; batch: the minibatch size (Hsu et al.: 128)")


class MAS(Method):
    name = "mas"
    description = "Memory Aware Synapses: quadratic penalty weighted by the output's sensitivity to each parameter"
    paper = "Aljundi et al., Memory Aware Synapses: Learning what (not) to forget, ECCV 2018"
    Options = MASOptions

    def __init__(self, options: MASOptions, model, context):
        super().__init__(options, model, context)
        self.quadratic = ImportancePenalty()

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.quadratic.forget_terms()  # the head may have grown: new parameter objects

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = super().loss(out, batch)
        if self.quadratic and self.options.mas_lambda > 0:
            loss = loss + self.options.mas_lambda * self.quadratic(self.model)
        return loss

    def estimate_importance(self, data: ImageData) -> dict[str, torch.Tensor]:
        """mean over samples of |∂‖F(x)‖² / ∂θ|, or over minibatches of |∂ mean(F²) / ∂θ| (labels are not
        used)."""
        wanted = self.options.importance_samples
        count = len(data) if wanted is None else min(wanted, len(data))
        generator = torch.Generator().manual_seed(self.context.seed * 1000 + (self.task.index if self.task else 0))
        shuffled = torch.randperm(len(data), generator=generator)[:count]
        seen = self.num_seen
        normalize = getattr(self.context.augment, "normalize", self.context.augment)
        if self.options.importance_gradients == "batch":
            def mean_squared_output(logits):
                return logits[:, :seen].float().square().mean()

            return batch_gradient_mean(self.model, data.images[shuffled.numpy()], mean_squared_output, normalize,
                                       self.options.importance_batch_size, self.context.device)
        pick = shuffled.sort().values.numpy()

        def squared_output_norm(logits, target):
            return logits[:, :seen].float().square().sum()

        dummy_targets = torch.zeros(count, dtype=torch.long, device=self.context.device)
        return per_sample_gradient_mean(self.model, data.images[pick], dummy_targets, squared_output_norm,
                                        normalize, "abs", self.options.importance_batch_size, self.context.device)

    def end_task(self, task: Task, train_data: ImageData) -> None:
        self.quadratic.consolidate(self.model, self.estimate_importance(task.train))  # the task's own data

    def state_dict(self) -> dict:
        return self.quadratic.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.quadratic.load_state_dict(state, self.context.device)
