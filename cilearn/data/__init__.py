"""Datasets as uint8 arrays: ``load_dataset(name)`` returns train/test :class:`ImageData` splits.

Your own data without a wrapper file: :func:`from_torch` (any ``torch.utils.data.Dataset`` or torchvision-style
dataset of ``(image, label)``), :func:`from_folder` (class sub-folders), :func:`register_dataset` (a name for
configs).  Back to PyTorch: :class:`ImageDataset` (what ``Task.dataset()`` returns).  Those that need torch are
imported on first use, so ``import cilearn.data`` stays light.
"""

from cilearn.data import adapters
from cilearn.data.base import DatasetSplits, ImageData, cache_dir, data_root
from cilearn.data.cifar import load_cifar10, load_cifar100
from cilearn.data.digits import load_digits_splits
from cilearn.data.download import download_and_extract, download_file, safe_extract_tar
from cilearn.data.idx import load_fashion_mnist, load_mnist, parse_idx, read_idx
from cilearn.data.imagefolder import load_cifar10_jpeg, load_image_folder
from cilearn.data.registry import list_datasets, load_dataset, register_dataset

_ADAPTERS = ("from_torch", "from_folder", "ImageDataset")


def __getattr__(name: str):
    if name in _ADAPTERS:

        return getattr(adapters, name)
    raise AttributeError(f"module 'cilearn.data' has no attribute {name!r}")


__all__ = [
    "DatasetSplits",
    "ImageData",
    "ImageDataset",
    "cache_dir",
    "data_root",
    "download_and_extract",
    "download_file",
    "from_folder",
    "from_torch",
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_cifar10_jpeg",
    "load_dataset",
    "load_digits_splits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "register_dataset",
    "safe_extract_tar",
]
