"""The optimizer and the learning-rate schedule of a task's training, built from a :class:`TrainConfig`.

- :func:`make_optimizer`: SGD (momentum, Nesterov), Adam or AdamW (betas), Adagrad, with the parameters that
  ``train.no_weight_decay`` names (biases, normalisation scales) in groups without weight decay, as
  :func:`eager_optimizer` classes (PyTorch's, without the import of its compiler stack);
- :func:`make_schedule`: the learning-rate factor of every step of a task's training — multistep,
  cosine or constant, after an optional linear warm-up — and :func:`make_scheduler`, the
  ``LambdaLR`` that applies it.

Positions are counted in epochs (in iterations when ``train.iterations`` sets a fixed number of
gradient steps per task).  ``make_scheduler(..., steps_per_epoch=1)`` is stepped once per epoch;
stepped once per gradient step with the real ``steps_per_epoch``, the same schedule moves smoothly
within epochs (warm-up, cosine) and multistep drops at the same epoch boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..runtime import eager_optimizer
from ..sections import TrainConfig

# BatchNorm*/InstanceNorm* derive from _NormBase; their weight is a scale (γ), their bias a shift (β).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
PARAMETER_KINDS = ("weight", "bias", "norm")


def parameter_kinds(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> kind`` for every parameter of ``model``: ``norm`` = the scale of a
    normalisation layer, ``bias`` = any bias (normalisation shifts included), ``weight`` = the rest."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                kinds[id(param)] = "bias"
            else:
                kinds[id(param)] = "norm" if norm else "weight"
    return kinds


def _as_groups(params: Iterable) -> list[dict]:
    """Parameters or optimizer groups (dicts with ``params``) as a list of groups."""
    items = list(params)
    if items and all(isinstance(item, dict) for item in items):
        return [dict(group, params=list(group["params"])) for group in items]
    return [{"params": items}]


def weight_decay_groups(params: Iterable, cfg: TrainConfig, model: nn.Module | None) -> list[dict]:
    """Split every group in two: the parameters whose kind is in ``cfg.no_weight_decay`` get
    ``weight_decay`` 0, the others keep the group's (or the config's).  Parameters that ``model`` does not
    hold (a method's own) count as weights."""
    groups = _as_groups(params)
    if not cfg.no_weight_decay:
        return groups
    if model is None:
        raise ValueError("train.no_weight_decay needs the model, to tell biases and norm scales from weights")
    kinds = parameter_kinds(model)
    split = []
    for group in groups:
        exempt = [p for p in group["params"] if kinds.get(id(p), "weight") in cfg.no_weight_decay]
        decayed = [p for p in group["params"] if kinds.get(id(p), "weight") not in cfg.no_weight_decay]
        if decayed:
            split.append(dict(group, params=decayed))
        if exempt:
            split.append(dict(group, params=exempt, weight_decay=0.0))
    return split


def make_optimizer(params: Iterable, cfg: TrainConfig, model: nn.Module | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (parameters, or groups of them); ``model`` tells which
    parameters ``train.no_weight_decay`` exempts.  Adam's ``weight_decay`` is the L2 term added to the
    gradient (PyTorch's Adam); AdamW's is decoupled (Loshchilov & Hutter).  Adagrad keeps PyTorch's defaults
    (no lr decay, sums of squares from 0, eps 1e-10), as Hsu et al.'s benchmark builds it."""
    groups = weight_decay_groups(params, cfg, model)
    stock = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam,
             "adamw": torch.optim.AdamW}[cfg.optimizer]
    optimizer = stock if cfg.compile else eager_optimizer(stock)
    if cfg.optimizer == "sgd":
        return optimizer(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adagrad":
        return optimizer(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def schedule_length(cfg: TrainConfig) -> int:
    """Length of a task's training in schedule positions: iterations if set, else epochs."""
    return cfg.iterations if cfg.iterations else cfg.epochs


def make_schedule(cfg: TrainConfig, steps_per_epoch: int = 1) -> Callable[[int], float]:
    """``step -> lr factor`` for a scheduler stepped ``steps_per_epoch`` times per schedule position
    (step 0 is the first; its position is ``step / steps_per_epoch``).

    Linear warm-up over the first ``cfg.warmup`` positions: step ``k`` gets ``(k + 1) / warmup_steps`` (the
    first step already trains), or ``cfg.warmup_factor`` throughout when it is set (a constant warm start), then
    the schedule: ``multistep`` multiplies by ``gamma`` at each
    milestone reached (as ``MultiStepLR``), ``cosine`` decays from 1 to ``min_lr / lr`` over the positions
    after the warm-up (the closed form of ``CosineAnnealingLR``), ``warm_restarts`` runs cosine cycles of 1,
    2, 4, ... positions, each from 1 down to ``min_lr / lr`` (SGDR, Loshchilov & Hutter 2017, with
    ``T_0 = 1, T_mult = 2``: ``CosineAnnealingWarmRestarts``' values at whole positions), ``constant``
    keeps 1."""
    total, kind = schedule_length(cfg), cfg.scheduler
    milestones, gamma = list(cfg.milestones), cfg.gamma
    warmup_steps = cfg.warmup * steps_per_epoch
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def cosine(done: float, span: float) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done / span))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return cfg.warmup_factor if cfg.warmup_factor is not None else min(1.0, (step + 1) / warmup_steps)
        position = step / steps_per_epoch
        if kind == "multistep":
            return gamma ** sum(1 for m in milestones if m <= position)
        if kind == "cosine":
            span = max(total - cfg.warmup, 1e-12)
            return cosine(min(position - cfg.warmup, span), span)
        if kind == "warm_restarts":
            done, length = position - cfg.warmup, 1.0
            while done >= length:  # cycles of 1, 2, 4, ... positions
                done, length = done - length, 2 * length
            return cosine(done, length)
        return 1.0

    return factor


class _Schedule(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` whose state is only its step count (the factor comes from the config), so that it
    also resumes from the state of the ``MultiStepLR``/``CosineAnnealingLR`` earlier versions saved."""

    def load_state_dict(self, state_dict: dict) -> None:
        state = {k: v for k, v in state_dict.items() if k in ("last_epoch", "base_lrs", "_last_lr", "_step_count",
                                                              "verbose", "_get_lr_called_within_step")}
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        super().load_state_dict(state)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of :func:`make_schedule` as a scheduler stepped ``steps_per_epoch`` times per epoch
    (1: once per epoch; the optimizer's lr is the factor of the position reached).  With
    ``train.iterations`` positions are iterations: step it once per gradient step with
    ``steps_per_epoch=1``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return _Schedule(optimizer, make_schedule(cfg, steps_per_epoch))
