"""Elastic weight consolidation (Kirkpatrick et al. 2017), separate or online (Schwarz et al. 2018).

After each task, the diagonal Fisher information ``F_task`` is estimated on (up to ``fisher_samples``
of) the task's training data without augmentation, in evaluation mode: the mean over samples of the
**per-sample** squared gradient of a log-likelihood ``log p(y|x)`` (exact per-sample gradients with
``torch.func``, in chunks of ``fisher_batch_size``), where ``y`` is

- ``fisher: empirical`` (default): the sample's true label (the "empirical Fisher");
- ``fisher: predicted``: the model's most likely label ``argmax p(·|x)`` (what van de Ven & Tolias' and
  Hsu et al.'s benchmark code use by default);
- ``fisher: sampled``: a label drawn from the model's own predictive distribution ``p(·|x)``, one draw
  per sample from a seeded generator: a Monte-Carlo estimate of the true Fisher, as Kirkpatrick et al.
  compute it.

The penalty added to every batch's loss is

- ``variant: online`` (default): one running estimate ``F ← γ·F + F_task`` and one anchor ``θ*`` = the
  weights after the last task: ``λ/2 · Σ F·(θ − θ*)²``;
- ``variant: separate`` (Kirkpatrick et al.): one penalty per past task ``t``, each with its own Fisher
  and its own anchor (the weights after task ``t``): ``Σ_t λ/2 · Σ F_t·(θ − θ*_t)²``.

Only parameters that are trained (``requires_grad``) are estimated.  Parameters created after an anchor
(the chunks a growing head adds for new classes) get no penalty; a parameter whose shape grew is
penalised on the overlapping leading slice only.  In task-incremental scenarios each sample's
log-likelihood (and a sampled label) uses its own task's head.  Fishers and anchors are in the method
state (resume).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from ..data import ImageData
from ..errors import ConfigError
from ..scenarios import Task
from ..schema import option
from .base import Batch, Method, MethodOptions, Output


@dataclasses.dataclass
class EWCOptions(MethodOptions):
    variant: Literal["online", "separate"] = option(
        "online", help="online: one running Fisher (decay gamma) and the latest anchor; separate: one penalty per "
                       "past task with its own Fisher and anchor (Kirkpatrick et al. 2017)")
    ewc_lambda: float = option(5000.0, min=0.0, help="penalty strength λ")
    gamma: float = option(1.0, min=0.0, max=1.0, help="decay of the running Fisher (online EWC); 1 = sum")
    fisher: Literal["empirical", "predicted", "sampled"] = option(
        "empirical", help="empirical: gradients of the true label's log-likelihood; predicted: of the model's most "
                          "likely label; sampled: of a label drawn from the model's predictive distribution (the "
                          "true Fisher, one draw per sample)")
    fisher_samples: int = option(1000, min=1, help="training samples of each task used for the Fisher")
    fisher_batch_size: int = option(64, min=1, help="per-sample gradients computed this many at a time "
                                                  "(capped so that they take about 512 MB)")

    def __post_init__(self) -> None:
        if self.variant == "separate" and self.gamma != 1.0:
            raise ConfigError(f"method.gamma: {self.gamma:g} decays the running Fisher of online EWC; variant separate "
                              f"keeps every task's own Fisher. Remove gamma or use variant: online.")


def _overlap(param: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """The leading slice of ``param`` with ``reference``'s shape (None if it does not fit)."""
    if param.shape == reference.shape:
        return param
    if param.dim() != reference.dim() or any(r > p for r, p in zip(reference.shape, param.shape)):
        return None
    return param[tuple(slice(0, r) for r in reference.shape)]


class EWC(Method):
    name = "ewc"
    description = "EWC: quadratic penalty weighted by the diagonal Fisher, online (λ, γ) or one per task (separate)"
    Options = EWCOptions

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        # One {"fisher": {name: F}, "anchor": {name: θ*}} per penalty: a single one for online EWC, one per
        # past task for separate EWC.
        self.penalties: list[dict[str, dict[str, torch.Tensor]]] = []
        self._terms: list | None = None  # (parameter, fisher, anchor) triples; rebuilt when any of them changes

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """The Fisher of the latest penalty (online EWC: the running estimate)."""
        return self.penalties[-1]["fisher"] if self.penalties else {}

    @property
    def anchor(self) -> dict[str, torch.Tensor]:
        return self.penalties[-1]["anchor"] if self.penalties else {}

    # --- penalty ---
    def penalty_terms(self) -> list:
        """Which parameters the penalty covers, matched once per task rather than on every batch."""
        if self._terms is None:
            params = dict(self.model.named_parameters())
            self._terms = [(params[name], fisher, penalty["anchor"][name])
                           for penalty in self.penalties for name, fisher in penalty["fisher"].items()
                           if name in params and params[name].requires_grad
                           and _overlap(params[name], fisher) is not None]
        return self._terms

    def penalty(self) -> torch.Tensor:
        total = None
        for param, fisher, anchor in self.penalty_terms():
            term = (fisher * (_overlap(param, fisher) - anchor).square()).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self.context.device)
        return 0.5 * self.options.ewc_lambda * total

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self._terms = None  # the head may have grown: new parameter objects

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = super().loss(out, batch)
        if self.fisher and self.options.ewc_lambda > 0:
            loss = loss + self.penalty()
        return loss

    # --- Fisher ---
    def estimate_fisher(self, data: ImageData) -> dict[str, torch.Tensor]:
        """Diagonal Fisher: mean over samples of (∂ log p(y|x) / ∂θ)², per-sample gradients; ``y`` is the
        true label (empirical), the most likely one (predicted) or drawn from ``p(·|x)`` (sampled)."""
        from torch.func import functional_call, grad, vmap

        device = self.context.device
        count = min(self.options.fisher_samples, len(data))
        generator = torch.Generator().manual_seed(self.context.seed * 1000 + (self.task.index if self.task else 0))
        pick = torch.randperm(len(data), generator=generator)[:count].sort().values.numpy()
        images = torch.from_numpy(data.images[pick]).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(data.labels[pick], device=device)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad}
        buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        owner = self.class_task
        normalize = getattr(self.context.augment, "normalize", self.context.augment)

        def own_head(logits, target):
            if owner is None:
                return logits
            # multi-head: the sample's own task head only
            return logits.masked_fill(owner[None, :] != owner.index_select(0, target)[:, None], float("-inf"))

        def log_likelihood(p, x, y):
            logits = functional_call(self.model, ({**p, **frozen}, buffers), (x[None],))
            target = y[None]
            return -F.cross_entropy(own_head(logits, target).float(), target)

        def model_labels(x, y):
            """The model's own label for each sample (its own head): the most likely, or one drawn from p(·|x)."""
            with torch.no_grad():
                logits = own_head(self.model(x), y).float()
            if self.options.fisher == "predicted":
                return logits.argmax(1)
            probs = F.softmax(logits, dim=1)
            return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(y.device)

        per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
        # The per-sample gradients of a chunk hold chunk × parameters floats: cap them near 512 MB.
        chunk = max(1, min(self.options.fisher_batch_size, int(1.3e8 // max(1, sum(p.numel() for p in params.values())))))
        fisher = {n: torch.zeros_like(params[n]) for n in names}
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, count, chunk):
                x = normalize(images[start:start + chunk].to(device))
                y = labels[start:start + len(x)]
                if self.options.fisher != "empirical":
                    y = model_labels(x, y)
                grads = per_sample(params, x, y)
                for n in names:
                    fisher[n] += grads[n].square().sum(0)
        finally:
            self.model.train(was_training)
        return {n: f / max(count, 1) for n, f in fisher.items()}

    def end_task(self, task: Task, train_data: ImageData) -> None:
        current = self.estimate_fisher(task.train)  # the task's own data, not a replay mix
        anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in current}
        if self.options.variant == "separate" or not self.penalties:
            self.penalties.append({"fisher": current, "anchor": anchor})
        else:  # online: F ← γ·F + F_task (on the slice the old estimate covers); the anchor moves here
            old, merged = self.fisher, {}
            for name, fisher in current.items():
                if name in old:
                    fisher = fisher.clone()
                    region = _overlap(fisher, old[name])
                    if region is not None:
                        region += self.options.gamma * old[name]
                merged[name] = fisher
            self.penalties = [{"fisher": merged, "anchor": anchor}]
        self._terms = None

    def state_dict(self) -> dict:
        return {"penalties": [{part: {n: t.cpu() for n, t in penalty[part].items()} for part in ("fisher", "anchor")}
                              for penalty in self.penalties]}

    def load_state_dict(self, state: dict) -> None:
        device = self.context.device
        penalties = state.get("penalties")
        if penalties is None:  # written before separate EWC existed: one online penalty (or none)
            penalties = [{"fisher": state["fisher"], "anchor": state["anchor"]}] if state.get("fisher") else []
        self.penalties = [{part: {n: t.to(device) for n, t in penalty[part].items()} for part in ("fisher", "anchor")}
                          for penalty in penalties]
        self._terms = None
