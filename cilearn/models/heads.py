"""Classifier heads other than the linear one, for the methods that need them (LUCIR, PODNet).

:class:`CosineHead` is an :class:`~cilearn.models.net.IncrementalHead` (one chunk per task, grown the
same way, sliced by ``task_slices``) whose logits are a learnable scale times a similarity in [-1, 1]:

- one weight vector per class (``proxies=1``): the cosine between the features and the class's weight
  vector — LUCIR's cosine normalisation, ``p_c ∝ exp(η · cos(θ_c, f))``;
- ``proxies=K``: PODNet's local similarity classifier, each class has K vectors and its similarity is
  the softmax-weighted mean of the K similarities, ``ŷ_c = Σ_k softmax_k(s_c,k) · s_c,k``.

``distance="cosine"`` takes ``s = cos``; ``distance="neg_squared"`` takes the negative squared distance of the
normalised vectors, ``s = -‖f̂ - ŵ‖² = 2·cos - 2`` (PODNet's official ``neg_stable_cosine_distance``), in [-4, 0].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .net import IncrementalHead


class ProxyChunk(nn.Module):
    """``out_features`` classes × ``proxies`` weight vectors (rows ``c·proxies .. c·proxies + proxies - 1``
    belong to class ``c``); returns each class's similarity to the features: in [-1, 1] (``cosine``) or
    [-4, 0] (``neg_squared``, ``2·cos - 2``)."""

    def __init__(self, in_features: int, out_features: int, proxies: int = 1, distance: str = "cosine") -> None:
        super().__init__()
        if distance not in ("cosine", "neg_squared"):
            raise ValueError(f"distance must be 'cosine' or 'neg_squared', got {distance!r}")
        self.in_features, self.out_features, self.proxies = in_features, out_features, proxies
        self.distance = distance
        self.weight = nn.Parameter(torch.empty(out_features * proxies, in_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's range; only the direction matters here
        nn.init.uniform_(self.weight, -bound, bound)

    def cosines(self, features: Tensor) -> Tensor:
        """(N, classes × proxies) cosine similarities."""
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

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
    """Logits = ``scale · similarity``; ``scale`` (η, σ in the papers) is one learnable scalar shared by all
    classes, initialised to ``scale``.  :meth:`similarities` gives the unscaled values (LUCIR's margin
    ranking loss and PODNet's NCA loss use them)."""

    def __init__(self, in_features: int, proxies: int = 1, scale: float = 1.0, distance: str = "cosine") -> None:
        super().__init__(in_features, bias=False)
        if proxies < 1:
            raise ValueError(f"proxies must be at least 1, got {proxies}")
        self.proxies, self.distance = proxies, distance
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def new_chunk(self, num_new_classes: int) -> nn.Module:
        return ProxyChunk(self.in_features, num_new_classes, self.proxies, self.distance)

    def similarities(self, features: Tensor) -> Tensor:
        if len(self.chunks) == 0:
            return features.new_zeros((features.shape[0], 0))
        return torch.cat([chunk(features) for chunk in self.chunks], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.similarities(features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, proxies={self.proxies}, {self.distance}"
