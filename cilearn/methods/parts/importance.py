"""A quadratic penalty towards an anchor, weighted by a per-parameter importance — what EWC, SI and MAS share.

The three regularisers differ only in how the importance Ω of each parameter is estimated (EWC: the
diagonal Fisher; SI: the path integral of the loss decrease; MAS: the sensitivity of the output norm)
and in the factor in front; the penalty itself is the same::

    Σ_k Ω_k (θ_k − θ*_k)²

:class:`ImportancePenalty` holds Ω and the anchor θ* (both keyed by parameter name), evaluates the
penalty, merges a new task's importance into the running one and moves the anchor.  Parameters created
after an anchor (the chunks a growing head adds for new classes) get no penalty; a parameter whose
shape grew is penalised on the overlapping leading slice only.

:func:`per_sample_gradient_mean` is the estimator EWC and MAS need: the mean over samples of the
squared (EWC) or absolute (MAS) **per-sample** gradient of a scalar function of the network's output,
computed exactly: in closed form from each Linear layer's inputs and output gradients when Linear layers
hold every trained parameter (an MLP), else with ``torch.func`` (vmap over samples) in chunks.
:func:`batch_gradient_mean` is the cheaper one of Hsu et al.'s benchmark code for MAS: the absolute
gradient of a whole minibatch's objective, averaged over the minibatches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call, grad, vmap


def overlap(param: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """The leading slice of ``param`` with ``reference``'s shape (None if it does not fit)."""
    if param.shape == reference.shape:
        return param
    if param.dim() != reference.dim() or any(r > p for r, p in zip(reference.shape, param.shape)):
        return None
    return param[tuple(slice(0, r) for r in reference.shape)]


class ImportancePenalty:
    """``Σ Ω (θ − θ*)²`` over the parameters that have an importance; the methods put their factor in front."""

    def __init__(self) -> None:
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._terms: list | None = None  # (parameter, importance, anchor); rebuilt when any of them changes

    def __bool__(self) -> bool:
        return bool(self.importance)

    def forget_terms(self) -> None:
        """Match parameters again (after the head grew: new parameter objects)."""
        self._terms = None

    def terms(self, model: torch.nn.Module) -> list:
        """Which parameters the penalty covers, matched once per task rather than on every batch."""
        if self._terms is None:
            params = dict(model.named_parameters())
            self._terms = [(params[name], weight, self.anchor[name]) for name, weight in self.importance.items()
                           if name in params and params[name].requires_grad
                           and overlap(params[name], weight) is not None]
        return self._terms

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        total = None
        for param, weight, anchor in self.terms(model):
            term = (weight * (overlap(param, weight) - anchor).square()).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return total

    @torch.no_grad()
    def gradient(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The closed-form gradient ``2 Ω (θ − θ*)`` of the penalty, in each parameter's full shape."""
        names = {id(p): n for n, p in model.named_parameters()}
        grads = {}
        for param, weight, anchor in self.terms(model):
            grad = torch.zeros_like(param)
            region = overlap(grad, weight)
            region += 2 * weight * (overlap(param, weight) - anchor)
            grads[names[id(param)]] = grad
        return grads

    @torch.no_grad()
    def consolidate(self, model: torch.nn.Module, task_importance: dict[str, torch.Tensor],
                    decay: float = 1.0) -> None:
        """``Ω ← decay·Ω + Ω_task`` (on the overlap when a parameter grew) and ``θ* ← θ`` (the current weights)."""
        merged = {}
        for name, weight in task_importance.items():
            old = self.importance.get(name)
            if old is not None:
                weight = weight.clone()
                region = overlap(weight, old)
                if region is not None:
                    region += decay * old
            merged[name] = weight
        self.importance = merged
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in merged}
        self._terms = None

    def state_dict(self, importance_key: str = "importance") -> dict:
        return {importance_key: {n: t.cpu() for n, t in self.importance.items()},
                "anchor": {n: t.cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state: dict, device: torch.device, importance_key: str = "importance") -> None:
        self.importance = {n: t.to(device) for n, t in state.get(importance_key, {}).items()}
        self.anchor = {n: t.to(device) for n, t in state.get("anchor", {}).items()}
        self._terms = None


def per_sample_gradient_mean(model: torch.nn.Module, images: np.ndarray, targets: torch.Tensor,
                             objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                             normalize: Callable[[torch.Tensor], torch.Tensor], reduce: str,
                             chunk_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``mean_k reduce(∂ objective(f(x_k), y_k) / ∂θ)`` for every trained parameter θ, with exact per-sample
    gradients; ``reduce`` is ``square`` (EWC's Fisher) or ``abs`` (MAS).

    ``images`` uint8 NHWC; ``objective(logits (1, C), target (1,)) -> scalar``.  The model runs in
    evaluation mode (no dropout, BatchNorm statistics fixed)."""

    linears = _trained_linear_layers(model)
    if linears is not None:
        closed = _linear_gradient_sums(model, linears, images, targets, objective, normalize, reduce, device)
        if closed is not None:
            return closed
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def sample_objective(p, x, y):
        logits = functional_call(model, ({**p, **frozen}, buffers), (x[None],))
        return objective(logits, y[None])

    per_sample = vmap(grad(sample_objective), in_dims=(None, 0, 0))
    # The per-sample gradients of a chunk hold chunk × parameters floats: cap them near 512 MB.
    chunk = max(1, min(chunk_size, int(1.3e8 // max(1, sum(p.numel() for p in params.values())))))
    tensors = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = len(tensors)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, count, chunk):
            x = normalize(tensors[start:start + chunk].to(device))
            grads = per_sample(params, x, targets[start:start + len(x)])
            for n in total:
                g = grads[n]
                total[n] += (g.square() if reduce == "square" else g.abs()).sum(0)
    finally:
        model.train(was_training)
    return {n: t / max(count, 1) for n, t in total.items()}


def _trained_linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear] | None:
    """The trained ``nn.Linear`` layers (by name) when they hold every trained parameter, else None."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and any(p.requires_grad for p in m.parameters(recurse=False))}
    owned = {f"{name}.{p}" for name, m in linears.items() for p, _ in m.named_parameters(recurse=False)}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    return linears if trained <= owned else None


def _linear_gradient_sums(model, linears, images, targets, objective, normalize, reduce, device,
                          chunk: int = 1024) -> dict[str, torch.Tensor] | None:
    """:func:`per_sample_gradient_mean` for networks whose trained parameters are all in ``nn.Linear`` layers,
    without forming one gradient per sample.

    A sample's gradient of a Linear's weight is the outer product ``g aᵀ`` of the gradient ``g`` at the layer's
    output and the layer's input ``a``, so ``Σ_k (g_k a_kᵀ)² = (g²)ᵀ(a²)`` and ``Σ_k |g_k a_kᵀ| = |g|ᵀ|a|``: one
    backward pass of the summed per-sample objectives (samples are independent in evaluation mode) and one matrix
    product per layer.  Exact up to float summation order; ~70× faster than the vmap path on the MNIST MLP
    (``benchmarks/fisher_estimators.py``).
    Returns None (the caller uses vmap) when a layer runs more or less than once per forward or sees inputs
    that are not one vector per sample."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    per_sample_objective = vmap(objective)
    magnitude = torch.square if reduce == "square" else torch.abs
    tensors = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    seen: dict[str, list] = {}

    def remember(name):
        def hook(module, inputs, output):
            seen.setdefault(name, []).append((inputs[0].detach(), output))
            return output.clone()  # an in-place activation next must not overwrite the output we differentiate
        return hook

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(remember(name)) for name, m in linears.items()]
    try:
        for start in range(0, len(tensors), chunk):
            seen.clear()
            x = normalize(tensors[start:start + chunk].to(device))
            logits = model(x)
            calls = [(name, pairs[0]) for name, pairs in seen.items()]
            if any(len(pairs) != 1 or pairs[0][0].dim() != 2 for pairs in seen.values()):
                return None
            values = per_sample_objective(logits[:, None], targets[start:start + len(x)][:, None])
            outputs = [output for _, (_, output) in calls]
            grads = torch.autograd.grad(values.sum(), outputs, allow_unused=True)
            for (name, (inputs, _)), g in zip(calls, grads):
                if g is None:
                    continue
                g = magnitude(g.float())
                weight, bias = f"{name}.weight", f"{name}.bias"
                if weight in total:
                    total[weight] += g.T @ magnitude(inputs.float())
                if bias in total:
                    total[bias] += g.sum(0)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {n: t.to(params[n].dtype) / max(len(tensors), 1) for n, t in total.items()}


def batch_gradient_mean(model: torch.nn.Module, images: np.ndarray,
                        objective: Callable[[torch.Tensor], torch.Tensor],
                        normalize: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                        device: torch.device) -> dict[str, torch.Tensor]:
    """``mean_b |∂ objective(f(x_b)) / ∂θ|`` over the minibatches ``x_b`` of ``batch_size`` consecutive
    ``images`` (the last one may be smaller and counts as one), for every trained parameter θ.

    ``images`` uint8 NHWC, in the order to batch them; ``objective(logits (B, C)) -> scalar``.  The model runs in
    evaluation mode.  Hsu et al.'s MAS (``agents/regularization.py``) with ``reduce`` abs."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    tensors = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    total = [torch.zeros_like(p) for p in params]
    batches = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(tensors), batch_size):
            logits = model(normalize(tensors[start:start + batch_size].to(device)))
            grads = torch.autograd.grad(objective(logits), params, allow_unused=True)
            for running, g in zip(total, grads):
                if g is not None:  # a parameter the objective does not reach: no importance
                    running += g.abs()
            batches += 1
    finally:
        model.train(was_training)
    return {n: t / max(batches, 1) for n, t in zip(names, total)}
