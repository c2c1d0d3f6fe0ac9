"""Elastic weight consolidation, online variant (Kirkpatrick et al. 2017; Schwarz et al. 2018).

After each task, the diagonal empirical Fisher information ``F_task`` is estimated on (up to
``fisher_samples`` of) the task's training data without augmentation, in evaluation mode: the mean over
samples of the **per-sample** squared gradient of the log-likelihood of the true label (exact per-sample
gradients with ``torch.func``, in chunks of ``fisher_batch_size``).  The running estimate is updated as
``F ← γ·F + F_task`` and the anchor ``θ*`` becomes the current weights; training adds
``λ/2 · Σ F·(θ − θ*)²`` to every batch's loss.

Only parameters that are trained (``requires_grad``) are estimated.  Parameters created after an anchor
(the chunks a growing head adds for new classes) get no penalty; a parameter whose shape grew is
penalised on the overlapping leading slice only.  In task-incremental scenarios each sample's
log-likelihood uses its own task's head.  Fisher and anchor are in the method state (resume).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..data import ImageData
from ..scenarios import Task
from ..schema import option
from .base import Batch, Method, MethodOptions, Output


@dataclasses.dataclass
class EWCOptions(MethodOptions):
    ewc_lambda: float = option(5000.0, min=0.0, help="penalty strength λ")
    gamma: float = option(1.0, min=0.0, max=1.0, help="decay of the running Fisher (online EWC); 1 = sum")
    fisher_samples: int = option(1000, min=1, help="training samples of each task used for the Fisher")
    fisher_batch_size: int = option(64, min=1, help="per-sample gradients computed this many at a time "
                                                  "(capped so that they take about 512 MB)")


def _overlap(param: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """The leading slice of ``param`` with ``reference``'s shape (None if it does not fit)."""
    if param.shape == reference.shape:
        return param
    if param.dim() != reference.dim() or any(r > p for r, p in zip(reference.shape, param.shape)):
        return None
    return param[tuple(slice(0, r) for r in reference.shape)]


class EWC(Method):
    name = "ewc"
    description = "online EWC: quadratic penalty weighted by a running diagonal Fisher (λ, γ)"
    Options = EWCOptions

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._terms: list | None = None  # (parameter, fisher, anchor) triples; rebuilt when any of them changes

    # --- penalty ---
    def penalty_terms(self) -> list:
        """Which parameters the penalty covers, matched once per task rather than on every batch."""
        if self._terms is None:
            params = dict(self.model.named_parameters())
            self._terms = [(params[name], fisher, self.anchor[name]) for name, fisher in self.fisher.items()
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
        """Diagonal empirical Fisher: mean over samples of (∂ log p(y|x) / ∂θ)², per-sample gradients."""
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

        def log_likelihood(p, x, y):
            logits = functional_call(self.model, ({**p, **frozen}, buffers), (x[None],))
            target = y[None]
            if owner is not None:  # multi-head: the sample's own task head only
                logits = logits.masked_fill((owner != owner.index_select(0, target))[None], float("-inf"))
            return -F.cross_entropy(logits.float(), target)

        per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
        # The per-sample gradients of a chunk hold chunk × parameters floats: cap them near 512 MB.
        chunk = max(1, min(self.options.fisher_batch_size, int(1.3e8 // max(1, sum(p.numel() for p in params.values())))))
        fisher = {n: torch.zeros_like(params[n]) for n in names}
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, count, chunk):
                x = normalize(images[start:start + chunk].to(device))
                grads = per_sample(params, x, labels[start:start + len(x)])
                for n in names:
                    fisher[n] += grads[n].square().sum(0)
        finally:
            self.model.train(was_training)
        return {n: f / max(count, 1) for n, f in fisher.items()}

    def end_task(self, task: Task, train_data: ImageData) -> None:
        current = self.estimate_fisher(task.train)  # the task's own data, not a replay mix
        gamma = self.options.gamma
        merged = {}
        for name, fisher in current.items():
            old = self.fisher.get(name)
            if old is not None:
                fisher = fisher.clone()
                region = _overlap(fisher, old)
                if region is not None:
                    region += gamma * old
            merged[name] = fisher
        self.fisher = merged
        self.anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in merged}
        self._terms = None

    def state_dict(self) -> dict:
        return {"fisher": {n: t.cpu() for n, t in self.fisher.items()},
                "anchor": {n: t.cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state: dict) -> None:
        device = self.context.device
        self.fisher = {n: t.to(device) for n, t in state.get("fisher", {}).items()}
        self.anchor = {n: t.to(device) for n, t in state.get("anchor", {}).items()}
        self._terms = None
