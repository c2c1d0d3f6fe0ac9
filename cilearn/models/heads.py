"""Classifier heads other than the linear one, for the methods that need them (LUCIR, PODNet, ER-ACE).

:class:`CosineHead` is an :class:`~cilearn.models.net.IncrementalHead` (one chunk per task, grown the
same way, sliced by ``task_slices``) whose logits are a learnable scale times a similarity in [-1, 1]:

- one weight vector per class (``proxies=1``): the cosine between the features and the class's weight
  vector — LUCIR's cosine normalisation, ``p_c ∝ exp(η · cos(θ_c, f))``;
- ``proxies=K``: PODNet's local similarity classifier, each class has K vectors and its similarity is
  the softmax-weighted mean of the K similarities, ``ŷ_c = Σ_k softmax_k(s_c,k) · s_c,k``.

``distance="cosine"`` takes ``s = cos``; ``distance="neg_squared"`` takes the negative squared distance of the
normalised vectors, ``s = -‖f̂ - ŵ‖² = 2·cos - 2`` (PODNet's official ``neg_stable_cosine_distance``), in [-4, 0].

``norm_eps``: None normalises as ``F.normalize`` (``v / max(‖v‖, 1e-12)``); a number ``ε`` divides by ``‖v‖ + ε``
instead (the ER-ACE authors' ``distLinear``, ε = 1e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .net import IncrementalHead


def unit_rows(x: Tensor, eps: float | None) -> Tensor:
    """Each row divided by its L2 norm: ``F.normalize``'s (eps None) or ``x / (‖x‖ + eps)``."""
    if eps is None:
        return F.normalize(x, dim=1)
    return x / (x.norm(dim=1, keepdim=True) + eps)


class ProxyChunk(nn.Module):
    """``out_features`` classes × ``proxies`` weight vectors (rows ``c·proxies .. c·proxies + proxies - 1``
    belong to class ``c``); returns each class's similarity to the features: in [-1, 1] (``cosine``) or
    [-4, 0] (``neg_squared``, ``2·cos - 2``)."""

    def __init__(self, in_features: int, out_features: int, proxies: int = 1, distance: str = "cosine",
                 norm_eps: float | None = None) -> None:
        super().__init__()
        if distance not in ("cosine", "neg_squared"):
            raise ValueError(f"distance must be 'cosine' or 'neg_squared', got {distance!r}")
        self.in_features, self.out_features, self.proxies = in_features, out_features, proxies
        self.distance, self.norm_eps = distance, norm_eps
        self.weight = nn.Parameter(torch.empty(out_features * proxies, in_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's range; only the direction matters here
        nn.init.uniform_(self.weight, -bound, bound)

    def cosines(self, features: Tensor) -> Tensor:
        """(N, classes × proxies) cosine similarities."""
        return unit_rows(features, self.norm_eps) @ unit_rows(self.weight, self.norm_eps).t()

    def forward(self, features: Tensor) -> Tensor:
        cos = self.cosines(features)
        if self.distance == "neg_squared":  # -‖f̂ - ŵ‖² of unit vectors
            cos = 2 * cos - 2
        if self.proxies == 1:
            return cos
        per_class = cos.view(len(cos), self.out_features, self.proxies)
        return (F.softmax(per_class, dim=2) * per_class).sum(2)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, proxies={self.proxies}, "
                f"distance={self.distance}")


class CosineHead(IncrementalHead):
    """Logits = ``scale · similarity``; ``scale`` (η, σ in the papers) is one scalar shared by all classes,
    initialised to ``scale`` and learnt (LUCIR, PODNet), or fixed with ``learnable_scale=False`` (ER-ACE's 10).
    :meth:`similarities` gives the unscaled values (LUCIR's margin ranking loss and PODNet's NCA loss use them)."""

    def __init__(self, in_features: int, proxies: int = 1, scale: float = 1.0, distance: str = "cosine",
                 learnable_scale: bool = True, norm_eps: float | None = None) -> None:
        super().__init__(in_features, bias=False)
        if proxies < 1:
            raise ValueError(f"proxies must be at least 1, got {proxies}")
        self.proxies, self.distance, self.norm_eps = proxies, distance, norm_eps
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:  # a buffer: in the state dict, moved with the head, never handed to the optimizer
            self.register_buffer("scale", torch.tensor(float(scale)))

    def new_chunk(self, num_new_classes: int) -> nn.Module:
        return ProxyChunk(self.in_features, num_new_classes, self.proxies, self.distance, self.norm_eps)

    def similarities(self, features: Tensor) -> Tensor:
        if len(self.chunks) == 0:
            return features.new_zeros((features.shape[0], 0))
        return torch.cat([chunk(features) for chunk in self.chunks], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.similarities(features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, proxies={self.proxies}, {self.distance}"
