"""Elastic weight consolidation (Kirkpatrick et al. 2017), separate or online (Schwarz et al. 2018).

After each task, the diagonal Fisher information ``F_task`` is estimated on (up to ``fisher_samples``
of) the task's training data without augmentation, in evaluation mode: the mean over samples of the
**per-sample** squared gradient of a log-likelihood ``log p(y|x)`` (exact: in closed form for Linear layers,
else per-sample gradients with ``torch.func`` in chunks of ``fisher_batch_size``), where ``y`` is

- ``fisher: empirical`` (default): the sample's true label (the "empirical Fisher");
- ``fisher: predicted``: the model's most likely label ``argmax p(·|x)`` (the default of Hsu et al.'s
  benchmark code and of van de Ven & Tolias' 2019 code, branch ``preprints``; their code today defaults to
  the expectation over every label, ``fisher_labels='all'``);
- ``fisher: sampled``: a label drawn from the model's own predictive distribution ``p(·|x)``, one draw
  per sample from a seeded generator: a Monte-Carlo estimate of the true Fisher (the expectation over
  ``y ~ p(·|x)``).  Which labels Kirkpatrick et al. used is not known: the paper does not say and no code
  was released (van de Ven 2025, "On the Computation of the Fisher Information in Continual Learning",
  arXiv:2502.11756), so none of the three is "their" Fisher.

The penalty added to every batch's loss is

- ``variant: online`` (default): one running estimate ``F ← γ·F + F_task`` and one anchor ``θ*`` = the
  weights after the last task: ``λ/2 · Σ F·(θ − θ*)²``;
- ``variant: separate`` (Kirkpatrick et al.): one penalty per past task ``t``, each with its own Fisher
  and its own anchor (the weights after task ``t``): ``Σ_t λ/2 · Σ F_t·(θ − θ*_t)²``.

Each penalty is an :class:`~cilearn.methods.parts.importance.ImportancePenalty` (shared with SI and MAS); the per-sample
gradients come from :func:`~cilearn.methods.parts.importance.per_sample_gradient_mean`.

Only parameters that are trained (``requires_grad``) are estimated.  Parameters created after an anchor
(the chunks a growing head adds for new classes) get no penalty; a parameter whose shape grew is
penalised on the overlapping leading slice only.  In task-incremental scenarios each sample's
log-likelihood (and a sampled label) uses its own task's head.  Fishers and anchors are in the method
state (resume).

``head: full`` gives the network every class's output from the first task, as van de Ven & Tolias's code (10
outputs, the loss over the "active" classes seen so far; in Task-IL over the sample's own task's outputs) and Hsu
et al.'s: the loss, the Fisher's log-likelihood and its predicted label use the classes seen so far (in Task-IL the
sample's own task's outputs), so the outputs of later classes get zero Fisher (no penalty) as with a growing head
or a head per task; what changes is the optimizer: one Adam over the whole layer, whose step count the outputs a
task adds continue.  ``growing`` (default) adds outputs per task (in Task-IL: a head per task).
"""

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Task
from ..schema import option
from .base import Batch, Method, Output
from .parts.components import OutputLayerOptions
from .parts.importance import ImportancePenalty, per_sample_gradient_mean


@dataclasses.dataclass
class EWCOptions(OutputLayerOptions):
    variant: Literal["online", "separate"] = option(
        "online", help="online: one running Fisher (decay gamma) and the latest anchor; separate: one penalty per "
                       "past task with its own Fisher and anchor (Kirkpatrick et al. 2017)")
    ewc_lambda: float = option(5000.0, min=0.0, help="penalty strength λ of λ/2 · Σ F (θ - θ*)² (no paper value: it "
                                                     "depends on the protocol and the Fisher's scale; the DER "
                                                     "paper's Seq-MNIST 90, on a penalty without 1/2, is 180 here)")
    gamma: float = option(1.0, min=0.0, max=1.0, help="decay of the running Fisher (online EWC); 1 = sum (the DER "
                                                      "paper's Seq-MNIST value, Mammoth's best_args)")
    fisher: Literal["empirical", "predicted", "sampled"] = option(
        "empirical", help="empirical: gradients of the true label's log-likelihood; predicted: of the model's most "
                          "likely label; sampled: of a label drawn from the model's predictive distribution (one draw "
                          "per sample: a Monte-Carlo estimate of the true Fisher)")
    fisher_samples: int = option(1000, min=1, help="training samples of each task used for the Fisher")
    fisher_batch_size: int = option(64, min=1, help="per-sample gradients computed this many at a time "
                                                  "(capped so that they take about 512 MB; networks of Linear "
                                                  "layers only use a closed form that needs none)")

    def __post_init__(self) -> None:
        if self.variant == "separate" and self.gamma != 1.0:
            raise ConfigError(f"method.gamma: {self.gamma:g} decays the running Fisher of online EWC; variant separate "
                              f"keeps every task's own Fisher. Remove gamma or use variant: online.")


class EWC(Method):
    name = "ewc"
    description = "EWC: quadratic penalty weighted by the diagonal Fisher, online (λ, γ) or one per task (separate)"
    paper = ("Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017; online: "
             "Schwarz et al., Progress & Compress, ICML 2018")
    Options = EWCOptions

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.full_head = options.head == "full"
        # A single penalty for online EWC, one per past task (own Fisher, own anchor) for separate EWC.
        self.penalties: list[ImportancePenalty] = []

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """The Fisher of the latest penalty (online EWC: the running estimate)."""
        return self.penalties[-1].importance if self.penalties else {}

    @property
    def anchor(self) -> dict[str, torch.Tensor]:
        return self.penalties[-1].anchor if self.penalties else {}

    def penalty(self) -> torch.Tensor:
        total = sum((penalty(self.model) for penalty in self.penalties),
                    torch.zeros((), device=self.context.device))
        return 0.5 * self.options.ewc_lambda * total

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        for penalty in self.penalties:
            penalty.forget_terms()  # the head may have grown: new parameter objects

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = super().loss(out, batch)
        if self.penalties and self.options.ewc_lambda > 0:
            loss = loss + self.penalty()
        return loss

    # --- Fisher ---
    def estimate_fisher(self, data: ImageData) -> dict[str, torch.Tensor]:
        """Diagonal Fisher: mean over samples of (∂ log p(y|x) / ∂θ)², per-sample gradients; ``y`` is the
        true label (empirical), the most likely one (predicted) or drawn from ``p(·|x)`` (sampled)."""
        device = self.context.device
        count = min(self.options.fisher_samples, len(data))
        generator = torch.Generator().manual_seed(self.context.seed * 1000 + (self.task.index if self.task else 0))
        pick = torch.randperm(len(data), generator=generator)[:count].sort().values.numpy()
        images = data.images[pick]
        labels = torch.as_tensor(data.labels[pick], device=device)
        owner = self.class_task
        normalize = getattr(self.context.augment, "normalize", self.context.augment)

        def own_head(logits, target):
            logits = self.seen_logits(logits)  # head: full: the outputs of later classes take no part
            if owner is None:
                return logits
            # multi-head: the sample's own task head only
            output_owner = owner[: logits.shape[1]]  # head: full: the outputs seen_logits kept
            return logits.masked_fill(output_owner[None, :] != owner.index_select(0, target)[:, None], float("-inf"))

        def log_likelihood(logits, target):
            return -F.cross_entropy(own_head(logits, target).float(), target)

        if self.options.fisher != "empirical":
            labels = self.model_labels(images, labels, own_head, normalize, generator)
        return per_sample_gradient_mean(self.model, images, labels, log_likelihood, normalize, "square",
                                        self.options.fisher_batch_size, device)

    @torch.no_grad()
    def model_labels(self, images, labels, own_head, normalize, generator) -> torch.Tensor:
        """The model's own label for each sample (its own head): the most likely, or one drawn from p(·|x)."""
        was_training = self.model.training
        self.model.eval()
        try:
            chosen = []
            for start in range(0, len(images), self.options.fisher_batch_size):
                x = torch.from_numpy(images[start:start + self.options.fisher_batch_size]).permute(0, 3, 1, 2)
                y = labels[start:start + len(x)]
                logits = own_head(self.model(normalize(x.contiguous().to(y.device))), y).float()
                if self.options.fisher == "predicted":
                    chosen.append(logits.argmax(1))
                else:
                    draw = torch.multinomial(F.softmax(logits, dim=1).cpu(), 1, generator=generator)
                    chosen.append(draw.squeeze(1).to(y.device))
        finally:
            self.model.train(was_training)
        return torch.cat(chosen) if chosen else labels

    def end_task(self, task: Task, train_data: ImageData) -> None:
        current = self.estimate_fisher(task.train)  # the task's own data, not a replay mix
        if self.options.variant == "separate" or not self.penalties:
            self.penalties.append(ImportancePenalty())
        # online: F ← γ·F + F_task (on the slice the old estimate covers); the anchor moves to the current weights
        self.penalties[-1].consolidate(self.model, current, self.options.gamma)

    def state_dict(self) -> dict:
        return {"penalties": [penalty.state_dict("fisher") for penalty in self.penalties]}

    def load_state_dict(self, state: dict) -> None:
        penalties = state.get("penalties")
        if penalties is None:  # written before separate EWC existed: one online penalty (or none)
            penalties = [{"fisher": state["fisher"], "anchor": state["anchor"]}] if state.get("fisher") else []
        self.penalties = []
        for saved in penalties:
            penalty = ImportancePenalty()
            penalty.load_state_dict(saved, self.context.device, "fisher")
            self.penalties.append(penalty)
