"""A fixed-size exemplar memory and the ways of choosing what goes into it.

The memory keeps, for every seen class, an ordered list of training images: the first exemplar is the
most representative one.  Shrinking the memory for new classes drops each class's *last* exemplars, so
what remains is always a prefix of what was selected (iCaRL's "reduce exemplar set").

Selection strategies:

- :func:`herding` (iCaRL): greedily add the sample whose L2-normalised feature, averaged with the
  features already chosen, is closest to the class mean; no sample is chosen twice;
- :func:`random_selection`: a seeded random order (ablation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageData

SELECTIONS = ("herding", "random")


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (int64, in selection order) of ``m`` rows of ``features`` (n, d) chosen by herding.

    Step k picks ``argmin_i || mu - (S + f_i) / k ||`` over the samples not chosen yet, where ``f`` are
    the L2-normalised features, ``mu`` their mean and ``S`` the sum of the features chosen so far.  Each
    step is one vectorised distance computation over all candidates.
    """
    n = features.shape[0]
    m = min(int(m), n)
    if m <= 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    f = F.normalize(features.double(), dim=1)
    mu = f.mean(0)
    chosen_sum = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    picks = torch.empty(m, dtype=torch.long, device=f.device)
    for k in range(1, m + 1):
        # ||mu - (S + f_i)/k||² = const - (2/k²)·f_i·(k·mu - S) + ||f_i||²/k², and ||f_i|| = 1: the
        # closest candidate maximises one matrix-vector product.
        score = f @ (k * mu - chosen_sum)
        score.masked_fill_(taken, float("-inf"))
        i = int(score.argmax())
        picks[k - 1] = i
        taken[i] = True
        chosen_sum += f[i]
    return picks


def random_selection(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """``min(m, n)`` distinct indices in a random (seeded) order."""
    return torch.randperm(n, generator=generator)[: min(int(m), n)]


class ExemplarMemory:
    """At most ``capacity`` exemplars, the same number for every class (``capacity // classes``).

    Stored as numpy arrays (uint8 NHWC images, int64 labels) plus ``rank``: the position of each
    exemplar in its class's selection order (0 = most representative).
    """

    def __init__(self, capacity: int, selection: str = "herding", seed: int = 0):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown exemplar selection {selection!r}; use one of {SELECTIONS}")
        self.capacity, self.selection, self.seed = int(capacity), selection, int(seed)
        self.images: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=np.int64)
        self.rank = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in np.unique(self.labels)]

    def per_class(self, num_classes: int) -> int:
        return self.capacity // max(num_classes, 1)

    def class_indices(self, label: int) -> np.ndarray:
        """Positions of ``label``'s exemplars, in selection order."""
        where = np.flatnonzero(self.labels == label)
        return where[np.argsort(self.rank[where], kind="stable")]

    def as_data(self, class_names: list[str]) -> ImageData:
        if self.images is None:
            raise ValueError("the memory is empty")
        return ImageData(self.images, self.labels, class_names)

    def reduce(self, per_class: int) -> None:
        """Keep the first ``per_class`` exemplars of every class."""
        self._keep(self.rank < per_class)

    def _keep(self, mask: np.ndarray) -> None:
        if self.images is not None:
            self.images = self.images[mask]
        self.labels, self.rank = self.labels[mask], self.rank[mask]

    def add(self, data: ImageData, classes: list[int], per_class: int,
            features: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        """Select ``per_class`` exemplars of each of ``classes`` from ``data`` (replacing any it held).

        ``features(images) -> (n, d) tensor`` is needed for herding.
        """
        self._keep(~np.isin(self.labels, classes))
        new_images, new_labels, new_rank = [], [], []
        for label in classes:
            where = np.flatnonzero(data.labels == label)
            if len(where) == 0:
                continue
            if self.selection == "herding":
                if features is None:
                    raise ValueError("herding selection needs a feature extractor")
                order = herding(features(data.images[where]), per_class).cpu().numpy()
            else:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(label))
                order = random_selection(len(where), per_class, generator).numpy()
            picked = where[order]
            new_images.append(data.images[picked])
            new_labels.append(np.full(len(picked), label, dtype=np.int64))
            new_rank.append(np.arange(len(picked), dtype=np.int64))
        if not new_labels:
            return
        parts = ([self.images] if self.images is not None else []) + new_images
        self.images = np.concatenate(parts)
        self.labels = np.concatenate([self.labels] + new_labels)
        self.rank = np.concatenate([self.rank] + new_rank)

    def update(self, data: ImageData, new_classes: list[int], num_seen: int,
               features: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        """iCaRL's memory step after a task: shrink the old classes to ``capacity // num_seen`` each,
        then select as many for each new class."""
        per_class = self.per_class(num_seen)
        self.reduce(per_class)
        self.add(data, new_classes, per_class, features)

    def exemplars(self) -> dict | None:
        """What the report shows: the stored images (uint8 NHWC), labels and selection rank."""
        if self.images is None or not len(self.labels):
            return None
        return {"images": self.images, "labels": self.labels, "rank": self.rank}

    # --- resume ---
    def state_dict(self) -> dict:
        images = self.images if self.images is not None else np.zeros((0, 0, 0, 0), dtype=np.uint8)
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(self.labels.copy()),
                "rank": torch.from_numpy(self.rank.copy())}

    def load_state_dict(self, state: dict) -> None:
        labels = state["labels"].cpu().numpy().astype(np.int64)
        self.images = state["images"].cpu().numpy().astype(np.uint8) if len(labels) else None
        self.labels = labels
        self.rank = state["rank"].cpu().numpy().astype(np.int64)
