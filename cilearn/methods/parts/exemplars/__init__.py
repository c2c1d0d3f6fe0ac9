"""What a new class's exemplars are: the iCaRL study's proposals as exemplar-memory policies.

- ``selected``: the training images chosen by the memory's selection (herding or random) — iCaRL;
- ``collage``: collages of four training images of the class (:mod:`.collage`);
- ``deepinversion``: images synthesized from the network just trained (:mod:`.deepinversion`).

Each policy is an :class:`~cilearn.methods.parts.memory.ExemplarBuilder` that
:class:`~cilearn.methods.parts.memory.ExemplarMemory`
calls when a new class enters the memory; the training loop and the methods never see the difference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ....errors import ConfigError
from ..memory import ExemplarBuilder, SelectedExemplars
from .collage import COLLAGE_VARIANTS, CollageBuilder, check_collage_shape
from .deepinversion import DeepInversionBuilder, DeepInversionOptions

POLICIES = ("selected", "collage", "deepinversion")


def check_policy(policy: str, image_shape: tuple[int, int, int], model: torch.nn.Module,
                 deepinversion: DeepInversionOptions | None = None, where: str = "method") -> None:
    """Refuse a policy that cannot work on these images or this model (a ConfigError naming the option)."""
    if policy == "collage":
        problem = check_collage_shape(image_shape[0], image_shape[1])
        if problem:
            raise ConfigError(f"{where}.exemplars: collage: {problem}. Use exemplars: selected, or images of "
                              f"even size.")
    if policy == "deepinversion":
        options = deepinversion or DeepInversionOptions()
        has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if options.alpha_f > 0 and not has_batchnorm:
            raise ConfigError(f"{where}.exemplars: deepinversion matches the statistics of the model's BatchNorm "
                              f"layers, and this model has none. Use a ResNet (e.g. model.name: resnet32), or set "
                              f"{where}.deepinversion.alpha_f: 0 for inversion without that term.")


def make_builder(policy: str, *, seed: int, collage: str = "resized",
                 deepinversion: DeepInversionOptions | None = None, model: torch.nn.Module | None = None,
                 mean=(), std=(), device: torch.device | str = "cpu",
                 features: Callable[[np.ndarray], torch.Tensor] | None = None,
                 build_model: Callable[[], torch.nn.Module] | None = None) -> ExemplarBuilder:
    """The builder of ``policy`` (``model``, ``mean``/``std``, ``device``, ``features`` and ``build_model``
    serve DeepInversion)."""
    if policy == "selected":
        return SelectedExemplars()
    if policy == "collage":
        return CollageBuilder(collage, seed)
    if policy == "deepinversion":
        if model is None:
            raise ValueError("deepinversion exemplars need the model to invert")
        return DeepInversionBuilder(deepinversion or DeepInversionOptions(), model, mean, std, device, seed,
                                    features, build_model=build_model)
    raise ValueError(f"unknown exemplar policy {policy!r}; use one of {POLICIES}")


__all__ = ["COLLAGE_VARIANTS", "POLICIES", "CollageBuilder", "DeepInversionBuilder", "DeepInversionOptions",
           "check_policy", "make_builder"]
