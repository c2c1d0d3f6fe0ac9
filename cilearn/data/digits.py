"""scikit-learn's bundled 8x8 handwritten digits: a tiny dataset that needs no download."""

from __future__ import annotations

import numpy as np

from cilearn.data.base import DatasetSplits, ImageData
from cilearn.errors import DataError


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Load the 1797 digits as uint8 ``(N, 8, 8, 1)`` with a deterministic stratified split."""
    # Imported here because scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"digits: test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}.")
    bunch = load_digits()
    # Pixel values are 0..16; rescale to the full uint8 range like every other dataset.
    images = np.rint(bunch.images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = images[..., None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=float(test_fraction), stratify=labels, random_state=int(seed)
    )
    # Keep the original file order inside each split so the split is easy to reason about.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    names = [str(d) for d in range(10)]
    return DatasetSplits(
        name="digits",
        display_name="Digits (8x8)",
        train=ImageData(images[train_idx], labels[train_idx], names),
        test=ImageData(images[test_idx], labels[test_idx], list(names)),
    )
