"""Collage exemplars, the iCaRL study's first proposal (§5.1): four training images of one class tiled
into one exemplar of the original size, so that the memory holds four images' worth of content per slot.

A collage of ``H×W`` images is a 2×2 grid of ``(H/2)×(W/2)`` quadrants; source ``k`` of a group of four
fills quadrant ``k`` in reading order (top-left, top-right, bottom-left, bottom-right).  What a source
contributes depends on the variant:

- ``resized``: the whole image at half size, each output pixel the mean of a 2×2 block of input pixels,
  rounded half up (``(sum + 2) // 4``).  With an exact factor of 2 this is the box filter, i.e. PyTorch's
  ``interpolate(mode="area")`` and PIL's ``BOX`` resampling, up to their rounding;
- ``random_crop``: an ``(H/2)×(W/2)`` patch whose top-left corner is uniform over every position that
  keeps the patch inside the image (``0..H/2`` rows, ``0..W/2`` columns, both ends included);
- ``center_crop``: the central patch, top-left corner at ``((H - H/2) // 2, (W - W/2) // 2)``.

As in the study, the 4·m source images of a class are drawn at random and no image is used in two
collages; a class with fewer than 4·m images gives ``n // 4`` collages (the study: 125 instead of 200
per CIFAR-100 class in the first task).  Everything here is a pure function of its arguments and a
``torch.Generator``; :class:`CollageBuilder` adapts it to :class:`~cilearn.methods.parts.memory.ExemplarMemory`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ....log import get_logger
from ..memory import KIND_CODES

log = get_logger(__name__)

COLLAGE_VARIANTS = ("resized", "random_crop", "center_crop")


def check_collage_shape(height: int, width: int) -> str | None:
    """Why images of this size cannot be made into collages, or None when they can."""
    if height % 2 or width % 2:
        return (f"collage exemplars tile four half-size quadrants, so the image height and width must be "
                f"even; these images are {height}×{width}")
    return None


def half_size(images: np.ndarray) -> np.ndarray:
    """``(n, H, W, C)`` uint8 → ``(n, H/2, W/2, C)``: the mean of every 2×2 block, rounded half up."""
    n, h, w, c = images.shape
    blocks = images.reshape(n, h // 2, 2, w // 2, 2, c).astype(np.uint16).sum(axis=(2, 4))
    return ((blocks + 2) // 4).astype(np.uint8)


def crop_offsets(n: int, height: int, width: int, variant: str, generator: torch.Generator) -> np.ndarray:
    """``(n, 2)`` top-left corners (row, column) of the half-size patch of each source image."""
    h, w = height // 2, width // 2
    if variant == "center_crop":
        return np.tile(np.array([(height - h) // 2, (width - w) // 2], dtype=np.int64), (n, 1))
    if variant == "random_crop":
        rows = torch.randint(0, height - h + 1, (n,), generator=generator)
        cols = torch.randint(0, width - w + 1, (n,), generator=generator)
        return torch.stack([rows, cols], 1).numpy().astype(np.int64)
    raise ValueError(f"crop_offsets: variant {variant!r} does not crop; use one of {COLLAGE_VARIANTS}")


def quadrants(images: np.ndarray, variant: str, generator: torch.Generator | None = None) -> np.ndarray:
    """The half-size patch each source image contributes to its collage."""
    if variant not in COLLAGE_VARIANTS:
        raise ValueError(f"unknown collage variant {variant!r}; use one of {COLLAGE_VARIANTS}")
    if variant == "resized":
        return half_size(images)
    n, height, width, _ = images.shape
    offsets = crop_offsets(n, height, width, variant, generator or torch.Generator().manual_seed(0))
    h, w = height // 2, width // 2
    rows = offsets[:, 0, None] + np.arange(h)   # (n, h)
    cols = offsets[:, 1, None] + np.arange(w)   # (n, w)
    return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def tile(patches: np.ndarray) -> np.ndarray:
    """``(4k, h, w, C)`` patches → ``(k, 2h, 2w, C)`` collages; patches ``4i..4i+3`` fill collage ``i`` in
    reading order."""
    n, h, w, c = patches.shape
    if n % 4:
        raise ValueError(f"tile: {n} patches do not make whole collages of four")
    grid = patches.reshape(n // 4, 2, 2, h, w, c)          # (k, row, col, h, w, C)
    return np.ascontiguousarray(grid.transpose(0, 1, 3, 2, 4, 5).reshape(n // 4, 2 * h, 2 * w, c))


def collages(images: np.ndarray, variant: str, generator: torch.Generator | None = None) -> np.ndarray:
    """Collages of consecutive groups of four source images (``len(images)`` must be a multiple of 4)."""
    return tile(quadrants(images, variant, generator))


def draw_collages(images: np.ndarray, count: int, variant: str,
                  generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``min(count, n // 4)`` collages of distinct images drawn at random from ``images`` (one class).

    Returns the collages and ``sources`` ``(k, 4)``: the index in ``images`` of each quadrant's image."""
    k = min(int(count), len(images) // 4)
    sources = torch.randperm(len(images), generator=generator)[: 4 * k].numpy().reshape(k, 4)
    return collages(images[sources.reshape(-1)], variant, generator), sources


def collages_by_class(images: np.ndarray, labels: np.ndarray, variant: str,
                      generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Collages of already chosen samples (experience replay): each class's samples, in the given order,
    grouped four by four (a class's last 1–3 samples are left out).  Returns collages and their labels."""
    parts, part_labels = [], []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        where = where[: len(where) - len(where) % 4]
        if len(where):
            parts.append(collages(images[where], variant, generator))
            part_labels.append(np.full(len(where) // 4, label, dtype=np.int64))
    if not parts:
        return np.zeros((0, *images.shape[1:]), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(part_labels)


class CollageBuilder:
    """Builds each new class's exemplars as collages (an :class:`~cilearn.methods.parts.memory.ExemplarBuilder`).

    One generator per class, seeded from the run's seed and the class label, so the collages of a class do
    not depend on which other classes were built with it."""

    def __init__(self, variant: str, seed: int = 0, log: Callable[[str], None] = log.info):
        if variant not in COLLAGE_VARIANTS:
            raise ValueError(f"unknown collage variant {variant!r}; use one of {COLLAGE_VARIANTS}")
        self.variant, self.seed, self.log = variant, int(seed), log

    def build(self, pools, per_class: int, select, step: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        built = []
        for pool in pools:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * int(pool.label) + 17)
            images, _ = draw_collages(pool.images, per_class, self.variant, generator)
            if len(images) < per_class:
                self.log(f"collage exemplars: class {pool.label} has {len(pool.images)} training images, fewer "
                         f"than the 4 x {per_class} that {per_class} collages need; it keeps {len(images)} "
                         f"collage{'s' if len(images) != 1 else ''}.")
            built.append((images, np.full(len(images), KIND_CODES["collage"], dtype=np.int8)))
        return built
