"""Bridges between cilearn's uint8 arrays and PyTorch's datasets, both ways.

- :func:`from_torch`: any ``torch.utils.data.Dataset`` (or torchvision-style dataset object) whose items are
  ``(image, label)`` — the image a PIL image, a tensor or a numpy array — becomes :class:`DatasetSplits`,
  ready for a scenario or ``Experiment.from_dict(..., data=splits)``;
- :func:`from_folder`: a folder of class sub-folders (``<class>/*.png``; a seeded split gives the test set)
  or a ``train/`` + ``test/`` pair of them;
- :class:`ImageDataset`: cilearn's :class:`ImageData` as a ``torch.utils.data.Dataset`` of ``(image, label,
  task id)``, for your own training loop (what ``Task.dataset()`` returns).

torch is imported here, so :mod:`cilearn.data` loads this module only when one of these names is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cilearn.data.base import DatasetSplits, ImageData
from cilearn.data.clear import read_buckets
from cilearn.data.imagefolder import load_image_folder
from cilearn.errors import DataError
from cilearn.log import get_logger, progress_disabled

log = get_logger(__name__)

IMAGE_FORMATS = ("float", "uint8", "pil")


# --------------------------------------------------------------------------------------------- torch → cilearn
def _item_image(image: Any, where: str) -> np.ndarray:
    """One dataset image as uint8 ``(H, W, C)``.

    PIL images keep their mode's channels (``L`` → 1, ``RGB`` → 3; others are converted to RGB); tensors
    are ``(C, H, W)`` or ``(H, W)`` as torchvision's ``ToTensor`` makes them; numpy arrays ``(H, W, C)`` or
    ``(H, W)`` as images are stored.  Floats must lie in [0, 1] (un-normalised: cilearn normalises itself)."""
    if hasattr(image, "getbands") and hasattr(image, "convert"):  # PIL.Image.Image
        if image.mode not in ("L", "RGB"):
            image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
        array = np.asarray(image)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3:
            array = array.permute(1, 2, 0)  # torch's (C, H, W) → (H, W, C)
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise DataError(f"{where}: the image is a {type(image).__name__}; expected a PIL image, a torch tensor or "
                        f"a numpy array (an item is (image, label)).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise DataError(f"{where}: image of shape {tuple(array.shape)}; expected (H, W) or (H, W, 1|3) "
                        f"(tensors: (C, H, W) with 1 or 3 channels).")
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise DataError(f"{where}: float image values in [{low:.3g}, {high:.3g}], expected [0, 1]; give the "
                            f"images without Normalize (cilearn normalises with the training set's statistics).")
        array = np.rint(array * 255.0)
    elif array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
        raise DataError(f"{where}: integer image values outside 0..255; give uint8 images.")
    return array.astype(np.uint8, copy=False)


def _item_label(label: Any, where: str) -> int:
    if isinstance(label, torch.Tensor):
        if label.numel() != 1:
            raise DataError(f"{where}: the label is a tensor of shape {tuple(label.shape)}; expected one class index.")
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{where}: the label {label!r} is not a class index (an int from 0 to classes - 1).")
    if label < 0:
        raise DataError(f"{where}: the label {label} is negative; labels are class indices 0..classes - 1.")
    return int(label)


def _read_items(dataset: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(image, label)`` of a map-style dataset, in index order."""

    try:
        count = len(dataset)
    except TypeError:
        raise DataError(f"{what}: {type(dataset).__name__} has no len(); give a map-style dataset (items by index, "
                        f"like torch.utils.data.Dataset or torchvision's datasets).") from None
    if count == 0:
        raise DataError(f"{what}: the dataset is empty.")
    images, labels, shape = None, np.empty(count, dtype=np.int64), None
    for i in tqdm(range(count), desc=f"reading {what}", unit="img", leave=False, disable=progress_disabled(log)):
        item = dataset[i]
        where = f"{what} item {i}"
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{where}: expected an (image, label) pair, got {type(item).__name__}.")
        image = _item_image(item[0], where)
        if images is None:
            shape = image.shape
            images = np.empty((count, *shape), dtype=np.uint8)
        elif image.shape != shape:
            raise DataError(f"{where}: image of shape {image.shape} (H, W, C), but item 0 is {shape}; give images of "
                            f"one size (e.g. a Resize transform on the dataset).")
        images[i] = image
        labels[i] = _item_label(item[1], where)
    return images, labels


def from_torch(train: Any, test: Any, class_names: Sequence[str] | None = None, name: str = "torch_dataset",
               display_name: str | None = None) -> DatasetSplits:
    """A pair of PyTorch datasets (train, test) as :class:`DatasetSplits`.

    Items are ``(image, label)`` (more elements are ignored): the image a PIL image, a tensor (``(C, H, W)``,
    e.g. from ``ToTensor``) or a numpy array (``(H, W[, C])``), float in [0, 1] or uint8, all of one size; the
    label a class index.  Every item is read once, through ``dataset[i]`` (its transform included), into uint8
    arrays.  ``class_names``: given, else the dataset's ``classes`` attribute (torchvision's), else
    ``"0"``, ``"1"``, ...  Works for torchvision's datasets; torchvision itself is not needed."""
    train_images, train_labels = _read_items(train, "train dataset")
    test_images, test_labels = _read_items(test, "test dataset")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"test dataset: images are {test_images.shape[1:]} (H, W, C) but the training images are "
                        f"{train_images.shape[1:]}; give both splits images of one size and channel count.")
    names = class_names if class_names is not None else getattr(train, "classes", None)
    top = int(max(train_labels.max(), test_labels.max()))
    if names is None:
        names = [str(c) for c in range(top + 1)]
    names = [str(n) for n in names]
    if top >= len(names):
        raise DataError(f"label {top} has no class name: {len(names)} names given (labels index class_names).")
    log.debug(f"{name}: {len(train_labels)} training and {len(test_labels)} test images, {len(names)} classes, "
              f"images {train_images.shape[1:]}")
    return DatasetSplits(name=name, display_name=display_name or name,
                         train=ImageData(train_images, train_labels, names),
                         test=ImageData(test_images, test_labels, list(names)))


def from_folder(path: str | os.PathLike, test_path: str | os.PathLike | None = None, test_fraction: float = 0.2,
                seed: int = 0, image_size: int | Sequence[int] | None = None, name: str | None = None,
                display_name: str | None = None) -> DatasetSplits:
    """Images in class sub-folders as :class:`DatasetSplits`.

    ``path`` holds ``train/<class>/*`` and ``test/<class>/*`` (the ``image_folder`` dataset; a .tar/.zip of
    them works too), or just ``<class>/*.png|jpg``: then the test images come from ``test_path/<class>/``
    when given, else from a seeded stratified split (``test_fraction`` of every class, ``seed``).
    ``image_size`` (int or [height, width]) resizes every image."""

    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"{source}: folder not found.")
    split_layout = not source.is_dir() or ((source / "train").is_dir() and (source / "test").is_dir())
    if split_layout:
        if test_path is not None:
            raise DataError(f"{source} has its own train/ and test/ folders; drop test_path.")
        return load_image_folder(source, image_size=image_size, name=name or "image_folder", display_name=display_name)
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"from_folder: test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}.")
    test_dir = Path(test_path).expanduser() if test_path is not None else source / "test"
    if test_path is not None and not test_dir.is_dir():
        raise DataError(f"{test_dir}: test_path is not a folder; it must hold <class>/ folders of images.")
    # A folder of class folders is one CLEAR-style bucket: the same reader, the same seeded split.
    splits = read_buckets(source, [(source, test_dir if test_dir.is_dir() else None)], test_fraction=test_fraction,
                          seed=seed, image_size=image_size, workers=None, name=name or "image_folder",
                          display_name=display_name or f"image folder {source.name}")
    return DatasetSplits(name=splits.name, display_name=splits.display_name, train=splits.train, test=splits.test)


# --------------------------------------------------------------------------------------------- cilearn → torch
class ImageDataset(Dataset):
    """:class:`ImageData` as a ``torch.utils.data.Dataset`` of ``(image, label, task_id)``.

    ``image_format``: ``"float"`` — a float32 ``(C, H, W)`` tensor in [0, 1] (as torchvision's ``ToTensor``),
    ``"uint8"`` — a uint8 ``(C, H, W)`` tensor, ``"pil"`` — a PIL image; ``transform`` (optional) is applied to
    that image (e.g. torchvision transforms).  ``task_ids``: the task of every sample (one int for all)."""

    def __init__(self, data: ImageData, task_ids: np.ndarray | int = 0, transform: Callable | None = None,
                 image_format: str = "float"):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}.")
        self.data, self.transform, self.image_format = data, transform, image_format
        self.task_ids = np.broadcast_to(np.asarray(task_ids, dtype=np.int64), (len(data),))
        self.class_names = data.class_names

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        array = self.data.images[index]
        if self.image_format == "pil":

            image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        else:
            image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
            if self.image_format == "float":
                image = image.float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.data.labels[index]), int(self.task_ids[index])

    def __repr__(self) -> str:
        return (f"ImageDataset({len(self)} images {self.data.image_shape}, {self.data.num_classes} classes, "
                f"tasks {sorted(set(self.task_ids.tolist()))}, image_format={self.image_format!r})")
