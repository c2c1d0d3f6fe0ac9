"""Core containers (:class:`ImageData`, :class:`DatasetSplits`) and the data/cache folder lookup."""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


def joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``arrays`` one after the other (along the first axis): :func:`consecutive_view` when they lie one after the
    other in one buffer, else a copy (``np.concatenate``).  A view shares memory with ``arrays``."""
    view = consecutive_view(arrays)
    return view if view is not None else np.concatenate(arrays)


def consecutive_view(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """One view of ``arrays`` (along the first axis) when they already lie one after the other in one buffer, else
    None.  The tasks of a class-incremental scenario are consecutive blocks of one class-ordered copy of the
    dataset: the test data of tasks 0..t, or their training data together, is one block."""
    parts = [a for a in arrays if len(a)] or list(arrays[:1])
    if len(parts) == 1:
        return parts[0]
    first, owner = parts[0], _owner(parts[0])
    if not owner.flags.c_contiguous or not all(a.flags.writeable for a in parts):  # read-only: a copy (torch warns)
        return None
    for before, after in zip(parts, parts[1:]):
        if (after.dtype != first.dtype or after.shape[1:] != first.shape[1:] or _owner(after) is not owner
                or not before.flags.c_contiguous or not after.flags.c_contiguous
                or after.ctypes.data != before.ctypes.data + before.nbytes):
            return None
    shape = (sum(len(a) for a in parts), *first.shape[1:])
    return np.ndarray(shape, dtype=first.dtype, buffer=owner, offset=first.ctypes.data - owner.ctypes.data)


def file_backed_empty(shape: tuple[int, ...], dtype, folder: Path) -> np.ndarray:
    """An uninitialised writable array whose memory is a temporary file in ``folder`` (already deleted: it goes
    with the array) instead of the process's heap: the operating system can drop its pages from the process
    (:func:`release_pages`) and read them back when they are used again.  The file's blocks are reserved first, so
    that a full disk is an error here, not a crash when a page is written."""
    count = int(np.prod(shape))
    nbytes = max(count * np.dtype(dtype).itemsize, 1)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder, prefix="cilearn-images-") as file:
        if hasattr(os, "posix_fallocate"):  # Linux; elsewhere a sparse file
            os.posix_fallocate(file.fileno(), 0, nbytes)
        else:
            file.truncate(nbytes)
        mapped = mmap.mmap(file.fileno(), nbytes)  # shared: dropped pages are read back from the file
    return np.frombuffer(mapped, dtype=dtype, count=count).reshape(shape)


def release_pages(*arrays: np.ndarray) -> int:
    """Hand the resident pages of :func:`file_backed_empty` arrays (or views of them) back to the operating system,
    each mapping once however many views share it; the contents stay (in the file, and in the page cache while
    memory allows).  Returns the number of mappings released: arrays in ordinary memory, or a system without
    ``madvise``, are left as they are."""
    mappings = {}
    for array in arrays:
        buffer = _owner(array).base
        if isinstance(buffer, memoryview):  # np.frombuffer's arrays hold a memoryview of the mmap
            buffer = buffer.obj
        if isinstance(buffer, mmap.mmap) and hasattr(buffer, "madvise"):
            mappings[id(buffer)] = buffer
    for buffer in mappings.values():
        buffer.madvise(mmap.MADV_DONTNEED)
    return len(mappings)


def _owner(array: np.ndarray) -> np.ndarray:
    """The array at the root of ``array``'s chain of views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


@dataclass
class ImageData:
    """Images as a uint8 array ``(N, H, W, C)`` with int64 labels indexing ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        # Validate the contract once here so every consumer can rely on it without checking again.
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageData.images must be a uint8 array of shape (N, H, W, C), got "
                f"{getattr(self.images, 'dtype', type(self.images))} {getattr(self.images, 'shape', '')}"
            )
        self.images = np.ascontiguousarray(self.images)
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.images):
            raise ValueError(f"ImageData.labels must have shape ({len(self.images)},), got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"ImageData.labels must be integers, got {labels.dtype}")
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.class_names = [str(name) for name in self.class_names]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray | list[int] | slice) -> ImageData:
        """Return the selected images (integer indices, boolean mask or slice); class names are kept."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.dtype != bool:
                indices = indices.astype(np.int64, copy=False)
        return ImageData(self.images[indices], self.labels[indices], list(self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]


class JoinedData(ImageData):
    """Datasets of one label space (a task's training data and an exemplar memory) as one, without copying their
    images into one array: ``parts`` keeps them as they are and the training loop draws its batches from them
    (:class:`~cilearn.engine.train.StageImages`); ``images``, for code that wants one array, joins them on first
    use (a copy, kept)."""

    def __init__(self, parts: Sequence[ImageData]):  # not the dataclass's fields: no copy of the images
        self.parts = [inner for part in parts for inner in (part.parts if isinstance(part, JoinedData) else [part])]
        shapes = {(part.images.shape[1:], part.images.dtype) for part in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"JoinedData: the parts' images differ in shape or type: {sorted(map(str, shapes))}")
        self.labels = np.concatenate([part.labels for part in self.parts])
        self.class_names = list(self.parts[0].class_names)
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.concatenate([part.images for part in self.parts])
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape


@dataclass
class DatasetSplits:
    """A dataset's train and test splits; ``display_name`` is how results must be reported."""

    name: str
    display_name: str
    train: ImageData
    test: ImageData
    train_coarse_labels: np.ndarray | None = None
    test_coarse_labels: np.ndarray | None = None
    coarse_class_names: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def data_root(root: PathLike | None = None) -> Path:
    """The datasets folder: ``root`` if given, else env ``CILEARN_DATA``, else ``~/.cache/cilearn/data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("CILEARN_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cilearn" / "data"


def cache_dir() -> Path:
    """The cache folder: env ``CILEARN_CACHE``, else ``~/.cache/cilearn``."""
    env = os.environ.get("CILEARN_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cilearn"
