"""The dataset registry: ``load_dataset(name, ...)`` and ``list_datasets()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from cilearn.data.base import DatasetSplits, PathLike, data_root
from cilearn.data.cifar import load_cifar10, load_cifar100
from cilearn.data.clear import load_clear
from cilearn.data.digits import load_digits_splits
from cilearn.data.idx import load_fashion_mnist, load_mnist
from cilearn.data.imagefolder import load_cifar10_jpeg, load_image_folder
from cilearn.errors import DataError
from cilearn.log import get_logger
from cilearn.plugins import first_line
from cilearn.registry import Component, NoOptions, Registry
from cilearn.schema import option

log = get_logger(__name__)


# --- options of the built-in datasets (the loaders' keyword arguments, typed for configs)

@dataclass
class DigitsOptions:
    test_fraction: float = option(0.2, min=0.0, max=1.0, help="share of the images held out for testing")
    seed: int = option(0, min=0, help="seed of the train/test split")


@dataclass
class DownloadOptions:
    opener: Any = option(None, help="a URL opener for the download (tests only; never needed in configs)")


@dataclass
class JpegOptions:
    image_size: int | list[int] | None = option(None, min=1, help="resize to this size (default: as stored)")
    workers: int | None = option(None, min=1, help="processes decoding the images (default: the CPU count)")


@dataclass
class FolderOptions:
    path: str = option(help="a train/<class>/ + test/<class>/ folder or a .tar/.tar.gz/.zip archive; relative: "
                            "from the current folder, else from the data root")
    image_size: int | list[int] | None = option(None, min=1, help="resize to this size (default: as stored)")
    workers: int | None = option(None, min=1, help="processes decoding the images (default: the CPU count)")


@dataclass
class ClearOptions:
    path: str = option(help="<path>/<bucket>/<class>/*.jpg; relative: from the current folder, else the data root")
    test_path: str | None = option(None, help="test images in the same layout (default: <bucket>/test/ or a split)")
    test_fraction: float = option(0.3, min=0.0, max=1.0, help="held-out share per bucket without test images")
    seed: int = option(0, min=0, help="seed of that split")
    image_size: int | list[int] | None = option(None, min=1, help="resize to this size (default: as stored)")
    workers: int | None = option(None, min=1, help="processes decoding the images (default: the CPU count)")


def _from_root(root: Path, path: PathLike) -> Path:
    """A relative path is taken from the current directory, or else from the data root, so configs can name an
    archive that sits in CILEARN_DATA."""
    source = Path(path).expanduser()
    if not source.is_absolute() and not source.exists() and (root / source).exists():
        source = root / source
    return source


# Each loader: (root, download, options) -> DatasetSplits
DATASETS = Registry("dataset", "data.name", "cilearn.datasets", error=DataError,
                    adapt=lambda name, load: Component(name, _keywords(load), getattr(load, "Options", None),
                                                       first_line(load, f"dataset from a plugin ({name})")))
CLASSES: dict[str, int] = {}  # known without loading (configs are checked early); built-in datasets only


def _keywords(load: Callable[..., DatasetSplits]):
    """A plugin's ``load(root, download, **options)`` as a registry loader."""
    def loader(root: Path, download: bool, opts: Any) -> DatasetSplits:
        return load(root, download, **(asdict(opts) if is_dataclass(opts) else dict(opts)))
    return loader


def _add(name: str, loader, options: type, description: str, classes: int | None = None) -> None:
    DATASETS.add(name, loader, options, description)
    if classes is not None:
        CLASSES[name] = classes


_add("digits", lambda root, download, o: load_digits_splits(o.test_fraction, o.seed), DigitsOptions,
     "scikit-learn's bundled 8x8 handwritten digits, 10 classes (no download)", 10)
_add("mnist", lambda root, download, o: load_mnist(root), NoOptions,
     "MNIST handwritten digits, 28x28 grey, 10 classes (IDX files in mnist/MNIST/raw/)", 10)
_add("fashion_mnist", lambda root, download, o: load_fashion_mnist(root), NoOptions,
     "Fashion-MNIST clothing, 28x28 grey, 10 classes (IDX files in fashion-mnist/FashionMNIST/raw/)", 10)
_add("cifar10", lambda root, download, o: load_cifar10(root, download=download, opener=o.opener), DownloadOptions,
     "CIFAR-10, 32x32 RGB, 10 classes (official python pickles; downloadable)", 10)
_add("cifar100", lambda root, download, o: load_cifar100(root, download=download, opener=o.opener),
     DownloadOptions, "CIFAR-100, 32x32 RGB, 100 classes with 20 superclasses (official python pickles; "
     "downloadable)", 100)
_add("cifar10_jpeg", lambda root, download, o: load_cifar10_jpeg(root, o.image_size, o.workers), JpegOptions,
     "CIFAR-10 published as JPEG (lossy; report as 'CIFAR-10 (JPEG)'), cifar10-jpeg/cifar10-jpeg.tar.gz", 10)
_add("image_folder", lambda root, download, o: load_image_folder(_from_root(root, o.path), image_size=o.image_size,
                                                                 workers=o.workers), FolderOptions,
     "any train/<class>/*.png|jpg + test/<class>/... folder or .tar/.tar.gz/.zip archive (option path, optional "
     "image_size)")
_add("clear", lambda root, download, o: load_clear(_from_root(root, o.path), test_path=o.test_path,
                                                   test_fraction=o.test_fraction, seed=o.seed,
                                                   image_size=o.image_size, workers=o.workers), ClearOptions,
     "CLEAR-10-style time buckets <path>/<bucket>/<class>/*.jpg (+ <bucket>/test/ or test_path, else a seeded "
     "test_fraction split); for scenario stream 'buckets'")
BUILTIN = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar10_jpeg", "image_folder", "clear")


def _key(name: Any) -> str:
    return str(name).strip().lower().replace("-", "_")


def register_dataset(name: str, data: DatasetSplits | Callable[..., DatasetSplits],
                     description: str | None = None) -> None:
    """Make a dataset known by ``name`` in this process, so that configs can say ``data: {name: ...}``.

    ``data``: a :class:`DatasetSplits` (e.g. from :func:`cilearn.data.from_torch`), or a function that
    returns one, called with the config's ``data.options`` as keyword arguments each time the dataset is
    loaded (give the function an ``Options`` dataclass attribute to have them checked).  Registering a name
    again replaces it; the built-in names cannot be replaced."""
    key = _key(name)
    if not key or key in BUILTIN:
        raise DataError(f"register_dataset: {name!r} is {'a built-in dataset' if key else 'empty'}; choose "
                        f"another name.")
    if isinstance(data, DatasetSplits):
        splits = data
        DATASETS.add(key, lambda root, download, opts: splits, NoOptions,
                     description or f"{splits.display_name} (registered in this process)")
    elif callable(data):
        function = data

        def loader(root: Path, download: bool, opts: Any) -> DatasetSplits:
            splits = function(**(asdict(opts) if is_dataclass(opts) else dict(opts)))
            if not isinstance(splits, DatasetSplits):
                raise DataError(f"dataset {key!r}: its loader returned {type(splits).__name__}, not DatasetSplits.")
            return splits
        DATASETS.add(key, loader, getattr(function, "Options", None),
                     description or first_line(function, f"registered dataset ({key})"))
    else:
        raise DataError(f"register_dataset: expected DatasetSplits or a function returning them, got "
                        f"{type(data).__name__}.")


def is_registered(name: str) -> bool:
    """Whether ``load_dataset(name)`` knows the dataset."""
    return _key(name) in DATASETS or name in DATASETS


def known_classes(name: str) -> int | None:
    """The number of classes of a built-in dataset with a fixed label set (None for folders, plugins and
    datasets registered from Python: known only once loaded)."""
    return CLASSES.get(_key(name))


def dataset_options(name: str, values: dict | None = None, path: str = "data.options") -> Any:
    """The options of dataset ``name`` parsed from ``values`` (defaults filled in)."""
    return DATASETS.parse_options(_resolve(name), values or {}, path)


def _resolve(name: Any) -> str:
    key = _key(name)
    return key if key in DATASETS else str(name)


def list_datasets() -> list[tuple[str, str]]:
    """Registered datasets as ``(name, one-line description)``."""
    return [(name, component.description) for name, component in DATASETS.components().items()]


def load_dataset(name: str, root: PathLike | None = None, download: bool = False, options: Any = None,
                 **keywords: Any) -> DatasetSplits:
    """Load a registered dataset; ``root`` defaults to :func:`data_root` (env ``CILEARN_DATA``).  ``options``:
    the dataset's parsed options (``cfg.data.options``), or give them as keywords, checked the same way."""
    key = _resolve(name)
    component = DATASETS.get(key)
    if options is None or isinstance(options, dict):
        options = dataset_options(key, {**(options or {}), **keywords})
    folder = data_root(root)
    splits = component.factory(folder, bool(download), options)
    log.debug(f"dataset {key} from {folder}: {len(splits.train)} training and {len(splits.test)} test images, "
              f"{splits.num_classes} classes, images {splits.train.image_shape}")
    return splits
