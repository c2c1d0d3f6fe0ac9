"""CIFAR-10 and CIFAR-100 in the official python pickle layout, read with a restricted unpickler."""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cilearn.data.base import DatasetSplits, ImageData
from cilearn.data.download import Opener, download_and_extract
from cilearn.errors import DataError


@dataclass(frozen=True)
class CifarSource:
    """Where an official CIFAR archive lives and what it unpacks to."""

    display_name: str
    folder: str
    url: str
    md5: str
    files: tuple[str, ...]


CIFAR10 = CifarSource(
    display_name="CIFAR-10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch", "batches.meta"),
)
CIFAR100 = CifarSource(
    display_name="CIFAR-100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    files=("train", "test", "meta"),
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may load: what numpy needs to rebuild arrays and dtypes."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    # Pickle protocol 5 (numpy >= 1.16 writing with protocol=5) rebuilds arrays from a buffer instead.
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    # Python 3 writes bytes as _codecs.encode(text, "latin1") under protocol 2 (the official files'
    # protocol); it only converts text, and codec lookup cannot import modules outside `encodings`.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstruction helpers.

    A pickle can call any importable function while loading; the official CIFAR files only need
    numpy's array/dtype constructors, so anything else means a tampered file and must not run.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to load the pickle because it references {module}.{name}, which an "
                "official CIFAR file never does; delete the file and download the official archive again."
            ) from None


def load_pickle(path: Path) -> Any:
    """Load a CIFAR pickle file safely (see :class:`_RestrictedUnpickler`)."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}); check that it is readable.") from exc
    except Exception as exc:  # pickle raises many types (UnpicklingError, EOFError, ValueError, ...)
        raise DataError(f"{path}: not a valid CIFAR pickle ({type(exc).__name__}: {exc}); "
                        "delete it and download the official archive again.") from exc


def _get(d: Any, key: bytes, path: Path) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise DataError(f"{path}: missing key {key.decode()!r}; this is not an official CIFAR file, "
                        "delete it and download the official archive again.")
    return d[key]


def _images(d: Any, path: Path) -> np.ndarray:
    data = _get(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}; "
                        "delete it and download the official archive again.")
    # Rows are channel-major (1024 red, then green, then blue values, each row-major 32x32).
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _labels(d: Any, key: bytes, path: Path, count: int, num_classes: int) -> np.ndarray:
    raw = _get(d, key, path)
    try:
        labels = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {key.decode()!r} is not a list of integers; "
                        "delete it and download the official archive again.") from exc
    if labels.shape != (count,):
        raise DataError(f"{path}: {key.decode()!r} has {labels.size} entries for {count} images; "
                        "delete it and download the official archive again.")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {key.decode()!r} has values outside 0..{num_classes - 1}; "
                        "delete it and download the official archive again.")
    return labels


def _names(d: Any, key: bytes, path: Path, count: int) -> list[str]:
    raw = _get(d, key, path)
    if not isinstance(raw, (list, tuple)) or len(raw) != count:
        raise DataError(f"{path}: {key.decode()!r} must list {count} class names; "
                        "delete it and download the official archive again.")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]


def _ensure_present(source: CifarSource, root: Path, download: bool, opener: Opener | None) -> Path:
    """Return the dataset folder, downloading it first if asked; otherwise explain how to get it."""
    folder = root / source.folder
    manual = (f"To place it by hand, download {source.url} (md5 {source.md5}) and unpack it so that "
              f"{folder} exists, or set CILEARN_DATA to a folder that holds {source.folder}/.")
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"{source.display_name} not found: expected the folder {folder} (official archive {source.url}, "
                f"md5 {source.md5}). Pass download: true (config data.download) to fetch it, or set CILEARN_DATA "
                f"to a folder that holds {source.folder}/."
            )
        download_and_extract(source.url, source.md5, root, source.folder, opener=opener, manual_hint=manual)
    missing = [name for name in source.files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{source.display_name} is incomplete: {folder / missing[0]} is missing. "
                        f"Delete {folder} and load again with download: true, or place the official files there.")
    return folder


def load_cifar10(root: Path, download: bool = False, opener: Opener | None = None) -> DatasetSplits:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/``."""
    folder = _ensure_present(CIFAR10, root, download, opener)
    meta_path = folder / "batches.meta"
    names = _names(load_pickle(meta_path), b"label_names", meta_path, 10)

    def read(batches: list[str]) -> ImageData:
        images, labels = [], []
        for batch in batches:
            path = folder / batch
            d = load_pickle(path)
            x = _images(d, path)
            images.append(x)
            labels.append(_labels(d, b"labels", path, len(x), 10))
        return ImageData(np.concatenate(images), np.concatenate(labels), list(names))

    return DatasetSplits(
        name="cifar10",
        display_name="CIFAR-10",
        train=read([f"data_batch_{i}" for i in range(1, 6)]),
        test=read(["test_batch"]),
    )


def load_cifar100(root: Path, download: bool = False, opener: Opener | None = None) -> DatasetSplits:
    """CIFAR-100 from ``<root>/cifar-100-python/`` with fine labels and coarse (superclass) labels."""
    folder = _ensure_present(CIFAR100, root, download, opener)
    meta_path = folder / "meta"
    meta = load_pickle(meta_path)
    fine_names = _names(meta, b"fine_label_names", meta_path, 100)
    coarse_names = _names(meta, b"coarse_label_names", meta_path, 20)

    def read(split: str) -> tuple[ImageData, np.ndarray]:
        path = folder / split
        d = load_pickle(path)
        x = _images(d, path)
        fine = _labels(d, b"fine_labels", path, len(x), 100)
        coarse = _labels(d, b"coarse_labels", path, len(x), 20)
        return ImageData(x, fine, list(fine_names)), coarse

    train, train_coarse = read("train")
    test, test_coarse = read("test")
    return DatasetSplits(
        name="cifar100",
        display_name="CIFAR-100",
        train=train,
        test=test,
        train_coarse_labels=train_coarse,
        test_coarse_labels=test_coarse,
        coarse_class_names=coarse_names,
    )
