"""Datasets as uint8 arrays: ``load_dataset(name)`` returns train/test :class:`ImageData` splits."""

from cilearn.data.base import DatasetSplits, ImageData, cache_dir, data_root
from cilearn.data.cifar import load_cifar10, load_cifar100
from cilearn.data.digits import load_digits_splits
from cilearn.data.download import download_and_extract, download_file, safe_extract_tar
from cilearn.data.idx import load_fashion_mnist, load_mnist, parse_idx, read_idx
from cilearn.data.imagefolder import load_cifar10_jpeg, load_image_folder
from cilearn.data.registry import list_datasets, load_dataset

__all__ = [
    "DatasetSplits",
    "ImageData",
    "cache_dir",
    "data_root",
    "download_and_extract",
    "download_file",
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
    "safe_extract_tar",
]
