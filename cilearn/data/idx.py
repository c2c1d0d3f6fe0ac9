"""MNIST-style IDX files (raw or ``.gz``): the parser and the MNIST / Fashion-MNIST loaders."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np

from cilearn.data.base import DatasetSplits, ImageData
from cilearn.errors import DataError

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse the bytes of an IDX file; ``source`` names the file in error messages."""
    if len(data) < 4:
        raise DataError(f"{source}: file is too short to be an IDX file ({len(data)} bytes); "
                        "replace it with the official file.")
    zero1, zero2, code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (not an IDX file); replace it with the official file."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{source}: truncated IDX header; the file is incomplete, download it again.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise DataError(
            f"{source}: truncated IDX file ({len(data)} bytes, header says {expected}); the file is incomplete, "
            "download it again."
        )
    if len(data) > expected:
        raise DataError(
            f"{source}: {len(data) - expected} unexpected bytes after the IDX data (header says {expected} bytes); "
            "replace it with the official file."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file; a ``.gz`` suffix means gzip-compressed."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip file ({exc}); download it again.") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}); "
                        "check that it exists and is readable.") from exc
    return parse_idx(data, str(path))


def _find_idx(raw_dir: Path, stem: str, dataset: str) -> Path:
    """Return ``raw_dir/stem`` or ``raw_dir/stem.gz``, whichever exists."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{dataset} file not found: expected {raw_dir / stem} (or {stem}.gz) with the four official IDX files; "
        "cilearn does not download it, so place the files there or set CILEARN_DATA to a folder that holds "
        f"{raw_dir.parent.parent.name}/{raw_dir.parent.name}/{raw_dir.name}/."
    )


def _load_idx_split(raw_dir: Path, prefix: str, dataset: str, class_names: list[str]) -> ImageData:
    images_path = _find_idx(raw_dir, f"{prefix}-images-idx3-ubyte", dataset)
    labels_path = _find_idx(raw_dir, f"{prefix}-labels-idx1-ubyte", dataset)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}; "
            "this is not an image IDX file."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}; "
            "this is not a label IDX file."
        )
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images; "
            "the files do not belong together, replace them with the official ones."
        )
    if len(labels) and int(labels.max()) >= len(class_names):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is out of range for {len(class_names)} classes; "
            "replace it with the official file."
        )
    return ImageData(images[..., None], labels.astype(np.int64), list(class_names))


def _fashion_class_names(path: Path) -> list[str]:
    """Class names from ``classes.json`` when present, else the standard Fashion-MNIST names."""
    if not path.is_file():
        return list(FASHION_CLASSES)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc}); fix or delete the file.") from exc
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of 10 class-name strings; fix or delete the file.")
    return names


def load_mnist(root: Path) -> DatasetSplits:
    """MNIST from ``<root>/mnist/MNIST/raw/``."""
    raw = root / "mnist" / "MNIST" / "raw"
    names = [str(d) for d in range(10)]
    return DatasetSplits(
        name="mnist",
        display_name="MNIST",
        train=_load_idx_split(raw, "train", "MNIST", names),
        test=_load_idx_split(raw, "t10k", "MNIST", names),
    )


def load_fashion_mnist(root: Path) -> DatasetSplits:
    """Fashion-MNIST from ``<root>/fashion-mnist/FashionMNIST/raw/``."""
    base = root / "fashion-mnist"
    raw = base / "FashionMNIST" / "raw"
    names = _fashion_class_names(base / "classes.json")
    return DatasetSplits(
        name="fashion_mnist",
        display_name="Fashion-MNIST",
        train=_load_idx_split(raw, "train", "Fashion-MNIST", names),
        test=_load_idx_split(raw, "t10k", "Fashion-MNIST", names),
    )
