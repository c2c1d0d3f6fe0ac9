"""A fixed-size exemplar memory and the ways of choosing what goes into it.

The memory keeps, for every seen class, an ordered list of training images: the first exemplar is the
most representative one.  Shrinking the memory for new classes drops each class's *last* exemplars, so
what remains is always a prefix of what was selected (iCaRL's "reduce exemplar set").

Selection strategies:

- :func:`herding` (iCaRL): greedily add the sample whose L2-normalised feature, averaged with the
  features already chosen, is closest to the class mean; no sample is chosen twice;
- :func:`random_selection`: a seeded random order (ablation).

What goes into the memory for a new class is decided by a *builder* (:class:`ExemplarBuilder`): by
default :class:`SelectedExemplars` stores the selected training images themselves; the study's
proposals build collages (:mod:`cilearn.methods.parts.exemplars.collage`) or synthesize images
(:mod:`cilearn.methods.parts.exemplars.deepinversion`) instead.  Whatever the builder makes is stored the same way
(uint8 images in the class's order, first = kept longest) with its ``kind`` (real, collage, synthetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...data import ImageData

SELECTIONS = ("herding", "random")
KINDS = ("real", "collage", "synthetic")  # what an exemplar is; stored per exemplar as its index here
KIND_CODES = {name: code for code, name in enumerate(KINDS)}


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


@dataclass
class ClassPool:
    """The training images of one new class, as a builder receives them."""

    label: int
    images: np.ndarray  # uint8 NHWC


Selector = Callable[[ClassPool, int], np.ndarray]  # (pool, m) -> indices into pool.images, best first


class ExemplarBuilder(Protocol):
    def build(self, pools: list[ClassPool], per_class: int, select: Selector,
              step: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each pool, at most ``per_class`` exemplars (uint8 NHWC, first = kept longest) and the
        ``KIND_CODES`` code of each.  ``select`` is the memory's own selection (herding or random);
        ``step`` is the task index, for builders that seed a generator per task."""
        ...


class SelectedExemplars:
    """The default builder: the exemplars are the selected training images themselves."""

    stores_selection = True  # exemplar k of a class is the k-th selected image: its selection features are its own

    def build(self, pools: list[ClassPool], per_class: int, select: Selector,
              step: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        built = []
        for pool in pools:
            images = pool.images[select(pool, per_class)]
            built.append((images, np.full(len(images), KIND_CODES["real"], dtype=np.int8)))
        return built


PER_CLASS = ("floor", "ceil")


@dataclass
class SelectionFeatures:
    """The features herding computed for a new class's exemplars (rows in selection order = the exemplars'
    ranks), and how many images the pass that computed them covered."""

    features: torch.Tensor
    pass_size: int


class ExemplarMemory:
    """``capacity`` (K) exemplars shared equally by the classes seen: ``K // classes`` each (``per_class``
    "floor", never more than K) or ``ceil(K / classes)`` ("ceil": iCaRL's Theano code, ``nb_protos_cl =
    ceil(K / classes)``, which can hold up to ``classes - 1`` more than K, e.g. 30 x 67 = 2010 of K = 2000).

    Stored as numpy arrays (uint8 NHWC images, int64 labels) plus ``rank``: the position of each
    exemplar in its class's order (0 = most representative, kept longest) and ``kind`` (a
    :data:`KINDS` index).  ``builder`` makes a new class's exemplars (default: the selected images).
    """

    def __init__(self, capacity: int, selection: str = "herding", seed: int = 0,
                 builder: ExemplarBuilder | None = None, per_class: str = "floor"):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown exemplar selection {selection!r}; use one of {SELECTIONS}")
        if per_class not in PER_CLASS:
            raise ValueError(f"unknown per-class rounding {per_class!r}; use one of {PER_CLASS}")
        self.capacity, self.selection, self.seed = int(capacity), selection, int(seed)
        self.builder = builder if builder is not None else SelectedExemplars()
        self.rounding = per_class
        self.images: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=np.int64)
        self.rank = np.zeros(0, dtype=np.int64)
        self.kind = np.zeros(0, dtype=np.int8)
        # label -> the features herding computed for the exemplars the last add() stored, under the model as it
        # was then: the class means fitted right after it reuse them instead of computing them again
        self.selection_features: dict[int, SelectionFeatures] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in np.unique(self.labels)]

    def per_class(self, num_classes: int) -> int:
        """Exemplars each of ``num_classes`` classes keeps."""
        classes = max(num_classes, 1)
        return -(-self.capacity // classes) if self.rounding == "ceil" else self.capacity // classes

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
        self.selection_features = {}  # they describe the stored exemplars only until the memory changes
        if self.images is not None:
            self.images = self.images[mask]
        self.labels, self.rank, self.kind = self.labels[mask], self.rank[mask], self.kind[mask]

    def select(self, pool: ClassPool, m: int,
               features: Callable[[np.ndarray], torch.Tensor] | None = None,
               record: dict[int, SelectionFeatures] | None = None) -> np.ndarray:
        """Indices of the ``m`` best images of ``pool`` by this memory's selection, best first; herding's
        features of them go into ``record`` under the pool's label."""
        if self.selection == "herding":
            if features is None:
                raise ValueError("herding selection needs a feature extractor")
            pool_features = features(pool.images)
            picks = herding(pool_features, m)
            if record is not None:
                record[int(pool.label)] = SelectionFeatures(pool_features[picks], len(pool.images))
            return picks.cpu().numpy()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(pool.label))
        return random_selection(len(pool.images), m, generator).numpy()

    def add(self, data: ImageData, classes: list[int], per_class: int,
            features: Callable[[np.ndarray], torch.Tensor] | None = None, step: int = 0) -> None:
        """Build ``per_class`` exemplars of each of ``classes`` from ``data`` (replacing any it held).

        ``features(images) -> (n, d) tensor`` is needed for herding.
        """
        self._keep(~np.isin(self.labels, classes))
        self.selection_features = {}
        pools = [ClassPool(int(label), data.images[data.labels == label]) for label in classes]
        pools = [pool for pool in pools if len(pool.images)]
        if not pools:
            return
        record: dict[int, SelectionFeatures] = {}
        built = self.builder.build(pools, per_class, lambda pool, m: self.select(pool, m, features, record), step)
        for pool, (images, kind) in zip(pools, built):
            if len(images) > per_class or len(kind) != len(images) or images.dtype != np.uint8:
                raise ValueError(f"exemplar builder returned {len(images)} {images.dtype} images with "
                                 f"{len(kind)} kinds for class {pool.label} (budget {per_class})")
            selected = record.get(pool.label)
            if getattr(self.builder, "stores_selection", False) and selected is not None \
                    and len(selected.features) == len(images):
                self.selection_features[pool.label] = selected
            self.images = images if self.images is None else np.concatenate([self.images, images])
            self.labels = np.concatenate([self.labels, np.full(len(images), pool.label, dtype=np.int64)])
            self.rank = np.concatenate([self.rank, np.arange(len(images), dtype=np.int64)])
            self.kind = np.concatenate([self.kind, np.asarray(kind, dtype=np.int8)])

    def update(self, data: ImageData, new_classes: list[int], num_seen: int,
               features: Callable[[np.ndarray], torch.Tensor] | None = None, step: int = 0) -> None:
        """iCaRL's memory step after a task: shrink the old classes to ``per_class(num_seen)`` each,
        then build as many for each new class."""
        per_class = self.per_class(num_seen)
        self.reduce(per_class)
        self.add(data, new_classes, per_class, features, step)

    def exemplars(self) -> dict | None:
        """What the report shows: the stored images (uint8 NHWC), labels, selection rank and kind (strings)."""
        if self.images is None or not len(self.labels):
            return None
        return {"images": self.images, "labels": self.labels, "rank": self.rank,
                "kind": np.asarray(KINDS)[self.kind]}

    # --- resume ---
    def state_dict(self) -> dict:
        images = self.images if self.images is not None else np.zeros((0, 0, 0, 0), dtype=np.uint8)
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(self.labels.copy()),
                "rank": torch.from_numpy(self.rank.copy()),
                "kind": torch.from_numpy(self.kind.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.selection_features = {}
        labels = state["labels"].cpu().numpy().astype(np.int64)
        self.images = state["images"].cpu().numpy().astype(np.uint8) if len(labels) else None
        self.labels = labels
        self.rank = state["rank"].cpu().numpy().astype(np.int64)
        kind = state.get("kind")  # absent in checkpoints written before builders existed: all real
        self.kind = (kind.cpu().numpy().astype(np.int8) if kind is not None
                     else np.full(len(labels), KIND_CODES["real"], dtype=np.int8))
