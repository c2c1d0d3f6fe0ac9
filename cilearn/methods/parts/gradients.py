"""The update as one flat vector, for methods that edit it in ``before_step`` (A-GEM's and GEM's projections)."""

from __future__ import annotations

import torch


def stepped_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters this step updates: the optimizer's, those that received a gradient."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def flat_gradient(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Their ``.grad`` concatenated (a copy)."""
    return torch.cat([p.grad.reshape(-1) for p in params])


def loss_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """∂loss/∂params as one vector in the order of ``params`` (zeros where the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def set_gradient(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Write ``flat`` (laid out as :func:`flat_gradient`) into the parameters' ``.grad``."""
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
        offset += p.numel()
