"""CLEAR-10-style time-bucketed image folders: ``<root>/<bucket>/<class>/*.jpg|png``.

Each bucket (a year, say) is a folder of class folders; buckets are ordered naturally (``2`` before
``10``).  A bucket's test images come from ``<root>/<bucket>/test/<class>/...`` when that folder
exists, else from ``<test_path>/<bucket>/<class>/...`` when a parallel test root is given, else from a
seeded stratified split of the bucket's images (``test_fraction`` of every class, ``seed``).

The result is an ordinary :class:`DatasetSplits` (all buckets pooled, so any scenario can use it)
that also carries the bucket index of every train and test sample; the ``buckets`` stream
(:mod:`cilearn.streams`) turns the buckets into experiences.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cilearn.data.base import DatasetSplits, ImageData
from cilearn.data.imagefolder import IMAGE_EXTENSIONS, ImageSize, _Decoder, _target_size
from cilearn.errors import DataError

TEST_FOLDER = "test"


@dataclass
class BucketedSplits(DatasetSplits):
    """Splits whose samples also carry the index of their bucket (``bucket_names[index]``)."""

    train_buckets: np.ndarray | None = None
    test_buckets: np.ndarray | None = None
    bucket_names: list[str] | None = None


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: ``2`` < ``10``, ``year_2009`` < ``year_2010``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS))


def _stratified_test_mask(labels: np.ndarray, fraction: float, rng: np.random.RandomState) -> np.ndarray:
    """``round(fraction · n)`` images of every class go to test (at least one, if the class has two)."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        test[rng.permutation(idx)[:k]] = True
    return test


def load_clear(path: str | os.PathLike, *, test_path: str | os.PathLike | None = None,
               test_fraction: float = 0.3, seed: int = 0, image_size: ImageSize = None,
               workers: int | None = None, name: str = "clear",
               display_name: str | None = None) -> BucketedSplits:
    """Read ``<path>/<bucket>/<class>/*`` (and the test images, see the module docstring)."""
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: CLEAR-style folder not found; the layout is <path>/<bucket>/<class>/*.jpg "
                        f"(optionally <path>/<bucket>/test/<class>/...). Check data.options.path.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"clear: test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}.")
    test_root = Path(test_path).expanduser().absolute() if test_path else None
    if test_root is not None and not test_root.is_dir():
        raise DataError(f"{test_root}: test_path is not a folder; it must hold <bucket>/<class>/ images.")
    buckets = _visible_dirs(root)
    if not buckets:
        raise DataError(f"{root}: no bucket folders found; the layout is <path>/<bucket>/<class>/*.jpg.")
    pairs = []
    for bucket in buckets:
        own_test = bucket / TEST_FOLDER
        test_dir = own_test if own_test.is_dir() else (test_root / bucket.name if test_root else None)
        if test_root is not None and not own_test.is_dir() and not test_dir.is_dir():
            raise DataError(f"{test_dir}: missing test bucket; test_path must have the same bucket folders "
                            f"as {root}.")
        pairs.append((bucket, test_dir))
    return read_buckets(root, pairs, test_fraction=test_fraction, seed=seed, image_size=image_size,
                        workers=workers, name=name, display_name=display_name or f"CLEAR-style {root.name}")


def read_buckets(root: Path, buckets: list[tuple[Path, Path | None]], *, test_fraction: float, seed: int,
                 image_size: ImageSize, workers: int | None, name: str, display_name: str) -> BucketedSplits:
    """Decode the images of ``(bucket folder, its test folder or None)`` pairs, each a folder of class folders;
    a bucket without a test folder is split (``test_fraction`` of every class, ``seed``)."""
    # (bucket index, split or None = to be split, class name, file)
    entries: list[tuple[int, str | None, str, Path]] = []
    for b, (bucket, test_dir) in enumerate(buckets):
        for class_dir in _visible_dirs(bucket):
            if class_dir.name == TEST_FOLDER:
                continue
            files = _images_in(class_dir)
            if not files:
                raise DataError(f"{class_dir}: class folder has no .png/.jpg/.jpeg images; add images or remove it.")
            entries += [(b, "train" if test_dir else None, class_dir.name, f) for f in files]
        if test_dir is not None:
            for class_dir in _visible_dirs(test_dir):
                files = _images_in(class_dir)
                if not files:
                    raise DataError(f"{class_dir}: class folder has no .png/.jpg/.jpeg images.")
                entries += [(b, "test", class_dir.name, f) for f in files]
    if not entries:
        raise DataError(f"{root}: no images found in <bucket>/<class>/ folders.")
    class_names = sorted({e[2] for e in entries if e[1] != "test"})
    stray = sorted({e[2] for e in entries if e[1] == "test"} - set(class_names))
    if stray:
        raise DataError(f"{root}: test class {stray[0]!r} has no training images in any bucket; every test class "
                        f"must also appear in a bucket's training folders.")

    size = _target_size(image_size)
    decoder = _Decoder(size, int(workers if workers is not None else min(2, os.cpu_count() or 1)))
    decoded: list[np.ndarray | None] = [None] * len(entries)
    where = {str(i): e[3] for i, e in enumerate(entries)}

    def collect(results) -> None:
        for key, array, error in results:
            if array is None:
                raise DataError(f"{where[key]}: cannot decode the image ({error}); replace or delete the file.")
            decoded[int(key)] = array

    try:
        for start in range(0, len(entries), 256):
            batch = [(str(i), entries[i][3].read_bytes()) for i in range(start, min(start + 256, len(entries)))]
            collect(decoder.submit(batch))
        collect(decoder.finish())
    finally:
        decoder.close()
    shape = decoded[0].shape[:2]
    for i, img in enumerate(decoded):
        if img.shape[:2] != shape:
            raise DataError(f"{entries[i][3]}: image is {img.shape[1]}x{img.shape[0]} but {entries[0][3]} is "
                            f"{shape[1]}x{shape[0]}; pass the image_size option to resize every image.")
    grey = all(img.ndim == 2 for img in decoded)
    images = np.stack([img[..., None] if grey else (np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img)
                       for img in decoded])
    index = {n: i for i, n in enumerate(class_names)}
    labels = np.array([index[e[2]] for e in entries], dtype=np.int64)
    bucket_of = np.array([e[0] for e in entries], dtype=np.int64)
    split = np.array([e[1] or "" for e in entries], dtype="<U5")
    rng = np.random.RandomState(seed)
    for b in range(len(buckets)):  # buckets without test images: seeded stratified split
        pending = np.flatnonzero((bucket_of == b) & (split == ""))
        if len(pending):
            mask = _stratified_test_mask(labels[pending], float(test_fraction), rng)
            split[pending] = np.where(mask, "test", "train")
    train, test = split == "train", split == "test"
    names = [b.name for b, _ in buckets]
    for b, (bucket, _) in enumerate(buckets):
        if not test[bucket_of == b].any():
            raise DataError(f"{bucket}: bucket has no test images (too few images to split); add "
                            f"images or a {TEST_FOLDER}/ folder.")
    return BucketedSplits(
        name=name, display_name=display_name,
        train=ImageData(images[train], labels[train], class_names),
        test=ImageData(images[test], labels[test], list(class_names)),
        train_buckets=bucket_of[train], test_buckets=bucket_of[test], bucket_names=names)
