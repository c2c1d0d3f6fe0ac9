"""The dataset registry: ``load_dataset(name, ...)`` and ``list_datasets()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilearn.data.base import DatasetSplits, PathLike, data_root
from cilearn.data.cifar import load_cifar10, load_cifar100
from cilearn.data.clear import load_clear
from cilearn.data.digits import load_digits_splits
from cilearn.data.idx import load_fashion_mnist, load_mnist
from cilearn.data.imagefolder import load_cifar10_jpeg, load_image_folder
from cilearn.errors import DataError, did_you_mean, unknown_choice
from cilearn.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class _DatasetInfo:
    description: str
    # Called as loader(root=Path, download=bool, **options); only the options it lists are accepted.
    loader: Callable[..., DatasetSplits]
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    accepts_any: bool = False  # a plugin's options are its own business
    classes: int | None = None  # known without loading it (configs are checked early); None: not known


def _digits(root: Path, download: bool, **options: Any) -> DatasetSplits:
    return load_digits_splits(**options)


def _mnist(root: Path, download: bool) -> DatasetSplits:
    return load_mnist(root)


def _fashion(root: Path, download: bool) -> DatasetSplits:
    return load_fashion_mnist(root)


def _cifar10(root: Path, download: bool, **options: Any) -> DatasetSplits:
    return load_cifar10(root, download=download, **options)


def _cifar100(root: Path, download: bool, **options: Any) -> DatasetSplits:
    return load_cifar100(root, download=download, **options)


def _cifar10_jpeg(root: Path, download: bool, **options: Any) -> DatasetSplits:
    return load_cifar10_jpeg(root, **options)


def _image_folder(root: Path, download: bool, path: PathLike, **options: Any) -> DatasetSplits:
    source = Path(path).expanduser()
    # A relative path is taken from the current directory, or else from the data root, so configs
    # can name an archive that sits in CILEARN_DATA.
    if not source.is_absolute() and not source.exists() and (root / source).exists():
        source = root / source
    return load_image_folder(source, **options)


def _clear(root: Path, download: bool, path: PathLike, **options: Any) -> DatasetSplits:
    source = Path(path).expanduser()  # relative: from the current directory, else from the data root
    if not source.is_absolute() and not source.exists() and (root / source).exists():
        source = root / source
    return load_clear(source, **options)


_REGISTRY: dict[str, _DatasetInfo] = {
    "digits": _DatasetInfo("scikit-learn's bundled 8x8 handwritten digits, 10 classes (no download)",
                           _digits, ("test_fraction", "seed"), classes=10),
    "mnist": _DatasetInfo("MNIST handwritten digits, 28x28 grey, 10 classes (IDX files in mnist/MNIST/raw/)",
                          _mnist, classes=10),
    "fashion_mnist": _DatasetInfo("Fashion-MNIST clothing, 28x28 grey, 10 classes "
                                  "(IDX files in fashion-mnist/FashionMNIST/raw/)", _fashion, classes=10),
    # "opener" injects a URL opener for the download (tests; never needed in configs).
    "cifar10": _DatasetInfo("CIFAR-10, 32x32 RGB, 10 classes (official python pickles; downloadable)",
                            _cifar10, ("opener",), classes=10),
    "cifar100": _DatasetInfo("CIFAR-100, 32x32 RGB, 100 classes with 20 superclasses "
                             "(official python pickles; downloadable)", _cifar100, ("opener",), classes=100),
    "cifar10_jpeg": _DatasetInfo("CIFAR-10 published as JPEG (lossy; report as 'CIFAR-10 (JPEG)'), "
                                 "cifar10-jpeg/cifar10-jpeg.tar.gz", _cifar10_jpeg, ("image_size", "workers"),
                                 classes=10),
    "image_folder": _DatasetInfo("any train/<class>/*.png|jpg + test/<class>/... folder or .tar/.tar.gz/.zip "
                                 "archive (option path, optional image_size)", _image_folder,
                                 ("path", "image_size", "workers"), required=("path",)),
    "clear": _DatasetInfo("CLEAR-10-style time buckets <path>/<bucket>/<class>/*.jpg (+ <bucket>/test/ or "
                          "test_path, else a seeded test_fraction split); for scenario stream 'buckets'",
                          _clear, ("path", "test_path", "test_fraction", "seed", "image_size", "workers"),
                          required=("path",)),
}


_REGISTERED: dict[str, _DatasetInfo] = {}  # register_dataset(): this process only


def register_dataset(name: str, data: DatasetSplits | Callable[..., DatasetSplits],
                     description: str | None = None) -> None:
    """Make a dataset known by ``name`` in this process, so that configs can say ``data: {name: ...}``.

    ``data``: a :class:`DatasetSplits` (e.g. from :func:`cilearn.data.from_torch`), or a function that
    returns one, called with the config's ``data.options`` as keyword arguments each time the dataset is
    loaded.  Registering a name again replaces it; the built-in names cannot be replaced."""
    key = str(name).strip().lower().replace("-", "_")
    if not key or key in _REGISTRY:
        raise DataError(f"register_dataset: {name!r} is {'a built-in dataset' if key else 'empty'}; choose "
                        f"another name.")
    if isinstance(data, DatasetSplits):
        splits = data

        def loader(root: Path, download: bool) -> DatasetSplits:
            return splits
        text = description or f"{splits.display_name} (registered in this process)"
        _REGISTERED[key] = _DatasetInfo(text, loader)
    elif callable(data):
        function = data

        def loader(root: Path, download: bool, **options: Any) -> DatasetSplits:
            splits = function(**options)
            if not isinstance(splits, DatasetSplits):
                raise DataError(f"dataset {key!r}: its loader returned {type(splits).__name__}, not DatasetSplits.")
            return splits
        from cilearn.plugins import first_line
        _REGISTERED[key] = _DatasetInfo(description or first_line(function, f"registered dataset ({key})"), loader,
                                        accepts_any=True)
    else:
        raise DataError(f"register_dataset: expected DatasetSplits or a function returning them, got "
                        f"{type(data).__name__}.")


def _datasets() -> dict[str, _DatasetInfo]:
    """Built-in datasets, those of installed packages (``cilearn.datasets`` entry points: a loader
    ``load(root, download, **options) -> DatasetSplits``, options passed through unchecked) and those
    registered in this process (:func:`register_dataset`)."""
    from cilearn.plugins import first_line, plugins

    extra = {name: _DatasetInfo(first_line(load, f"dataset from a plugin ({name})"), load, accepts_any=True)
             for name, load in plugins("cilearn.datasets").items() if name not in _REGISTRY}
    return {**_REGISTRY, **extra, **_REGISTERED}


def is_registered(name: str) -> bool:
    """Whether ``load_dataset(name)`` knows the dataset."""
    registry = _datasets()
    return str(name).strip().lower().replace("-", "_") in registry or name in registry


def known_classes(name: str) -> int | None:
    """The number of classes of a built-in dataset with a fixed label set (None for folders, plugins and
    datasets registered from Python: known only once loaded)."""
    info = _REGISTRY.get(str(name).strip().lower().replace("-", "_"))
    return info.classes if info is not None else None


def dataset_options(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``data.options`` a registered dataset accepts and those it needs (a plugin's: none listed)."""
    info = _datasets()[name]
    return tuple(option for option in info.options if option != "opener"), info.required  # opener: tests only


def list_datasets() -> list[tuple[str, str]]:
    """Registered datasets as ``(name, one-line description)``."""
    return [(name, info.description) for name, info in _datasets().items()]


def load_dataset(name: str, root: PathLike | None = None, download: bool = False,
                 **options: Any) -> DatasetSplits:
    """Load a registered dataset; ``root`` defaults to :func:`data_root` (env ``CILEARN_DATA``)."""
    key = str(name).strip().lower().replace("-", "_")
    registry = _datasets()
    info = registry.get(key) or registry.get(name)
    if info is None:
        raise unknown_choice("dataset", name, registry, "data.name", error=DataError)
    unknown = sorted(set(options) - set(info.options))
    if unknown and not info.accepts_any:
        allowed = ", ".join(info.options) if info.options else "none"
        raise DataError(f"dataset {key!r} has no option {unknown[0]!r}.{did_you_mean(unknown[0], info.options)} "
                        f"Its options are: {allowed}.")
    missing = [opt for opt in info.required if options.get(opt) in (None, "")]
    if missing:
        raise DataError(f"dataset {key!r} needs the option {missing[0]!r} (e.g. a folder or .tar.gz/.zip archive).")
    folder = data_root(root)
    splits = info.loader(folder, bool(download), **options)
    log.debug(f"dataset {key} from {folder}: {len(splits.train)} training and {len(splits.test)} test images, "
              f"{splits.num_classes} classes, images {splits.train.image_shape}")
    return splits
