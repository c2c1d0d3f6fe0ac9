"""Tests for cilearn.data: loaders, validation, safe pickles, safe download/extraction, image folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cilearn.data import (
    DatasetSplits,
    ImageData,
    cache_dir,
    data_root,
    download_and_extract,
    imagefolder,
    list_datasets,
    load_dataset,
    parse_idx,
)
from cilearn.errors import ConfigError, DataError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CILEARN_CACHE so tests never touch the user's cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CILEARN_CACHE", str(folder))
    return folder


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (optionally gzip-compressed)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_mnist_layout(raw: Path, rng: np.random.Generator, gz_test: bool = True) -> dict[str, np.ndarray]:
    raw.mkdir(parents=True)
    arrays = {
        "train_x": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, 12).astype(np.uint8),
        "test_x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, 5).astype(np.uint8),
    }
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"], gz=gz_test)
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"], gz=gz_test)
    return arrays


def _dump(obj: object, path: Path) -> None:
    # Protocol 2 is what the official (Python 2) CIFAR files use.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar100(root: Path, rng: np.random.Generator, train_per_class: int = 2,
                   test_per_class: int = 1) -> dict[str, np.ndarray]:
    """Write a small dataset in the official ``cifar-100-python`` layout; return what was written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per_class)
        rng.shuffle(fine)
        coarse = fine % 20
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        _dump({b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))], b"batch_label": split.encode(),
               b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(), b"data": data}, folder / split)
        out[f"{split}_data"], out[f"{split}_fine"], out[f"{split}_coarse"] = data, fine, coarse
    _dump({b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}, folder / "meta")
    return out


def write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 4) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out: dict[str, list] = {"train_data": [], "train_labels": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _dump({b"data": data, b"labels": labels, b"batch_label": name.encode(),
               b"filenames": [b"x.png"] * per_batch}, folder / name)
        if name == "test_batch":
            out["test_data"], out["test_labels"] = [data], [labels]
        else:
            out["train_data"].append(data)
            out["train_labels"].append(labels)
    _dump({b"label_names": [f"class_{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch},
          folder / "batches.meta")
    return {k: np.concatenate(v) for k, v in out.items()}


def pixel(data: np.ndarray, i: int, row: int, col: int, channel: int) -> int:
    """A pixel of an official CIFAR row: 1024 red values, then green, then blue, each row-major."""
    return int(data[i, channel * 1024 + row * 32 + col])


def tar_gz_of(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


class FakeOpener:
    """Serves fixed bytes for any URL, like urllib's response object (read in chunks)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.urls: list[str] = []

    def __call__(self, url: str) -> io.BytesIO:
        self.urls.append(url)
        return io.BytesIO(self.payload)


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


def save_image(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def make_image_folder(root: Path, rng: np.random.Generator, grey: bool = False,
                      classes: tuple[str, ...] = ("cat", "dog", "emu")) -> dict[str, np.ndarray]:
    """PNG images (lossless, so pixels can be compared) in train/<class>/ and test/<class>/."""
    arrays = {}
    for split, count in (("train", 3), ("test", 2)):
        for c in classes:
            for i in range(count):
                shape = (6, 5) if grey else (6, 5, 3)
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                save_image(root / split / c / f"{i:02d}.png", img)
                arrays[f"{split}/{c}/{i:02d}.png"] = img
    return arrays


# ---------------------------------------------------------------------------------------------
# Containers, roots, registry
# ---------------------------------------------------------------------------------------------

def test_image_data_subset_and_properties() -> None:
    images = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    data = ImageData(images, np.array([0, 1, 1, 0]), ["a", "b"])
    assert len(data) == 4 and data.num_classes == 2 and data.image_shape == (2, 2, 1)
    sub = data.subset(np.array([3, 1]))
    assert sub.labels.tolist() == [0, 1] and sub.class_names == ["a", "b"]
    assert np.array_equal(sub.images[0], images[3]) and sub.images.flags.c_contiguous
    assert data.subset(data.labels == 1).labels.tolist() == [1, 1]
    assert data.labels.dtype == np.int64
    with pytest.raises(ValueError):
        ImageData(images.astype(np.float32), np.zeros(4), ["a"])


def test_data_root_and_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CILEARN_DATA", raising=False)
    monkeypatch.delenv("CILEARN_CACHE", raising=False)
    assert data_root() == Path.home() / ".cache" / "cilearn" / "data"
    assert cache_dir() == Path.home() / ".cache" / "cilearn"
    monkeypatch.setenv("CILEARN_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "c"))
    assert data_root() == tmp_path / "d" and cache_dir() == tmp_path / "c"
    assert data_root(tmp_path / "x") == tmp_path / "x"


def test_registry_names_and_errors() -> None:
    names = [name for name, _ in list_datasets()]
    for expected in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar10_jpeg", "image_folder"):
        assert expected in names
    with pytest.raises(DataError, match="Did you mean 'cifar100'") as err:
        load_dataset("cifar1000")
    assert "mnist" in str(err.value)
    with pytest.raises(ConfigError, match="data.options: unknown key 'bogus'. Valid keys: seed, test_fraction"):
        load_dataset("digits", bogus=1)
    with pytest.raises(ConfigError, match="data.options.path: required key is missing"):
        load_dataset("image_folder")


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------

def test_digits_shapes_and_deterministic_split() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, DatasetSplits) and ds.name == "digits"
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape[1:] == (8, 8, 1)
    assert ds.train.labels.dtype == np.int64
    assert len(ds.train) + len(ds.test) == 1797 and abs(len(ds.test) - 0.2 * 1797) <= 1
    assert ds.train.class_names == [str(d) for d in range(10)] and ds.test.num_classes == 10
    assert ds.train.images.max() == 255 and ds.train.images.min() == 0
    # Stratified: every class in both splits, proportions close to the whole set's.
    assert set(np.unique(ds.test.labels)) == set(range(10))
    again = load_dataset("digits")
    assert np.array_equal(ds.train.images, again.train.images)
    assert np.array_equal(ds.test.labels, again.test.labels)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

def test_mnist_idx_raw_and_gz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = write_mnist_layout(tmp_path / "mnist" / "MNIST" / "raw", rng, gz_test=True)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.display_name == "MNIST"
    assert ds.train.images.shape == (12, 28, 28, 1) and ds.test.images.shape == (5, 28, 28, 1)
    assert np.array_equal(ds.train.images[..., 0], arrays["train_x"])
    assert np.array_equal(ds.test.images[..., 0], arrays["test_x"])  # read from .gz
    assert ds.test.labels.tolist() == arrays["test_y"].tolist()


def test_fashion_mnist_class_names(tmp_path: Path) -> None:
    base = tmp_path / "fashion-mnist"
    write_mnist_layout(base / "FashionMNIST" / "raw", np.random.default_rng(1), gz_test=False)
    assert load_dataset("fashion-mnist", root=tmp_path).train.class_names[0] == "T-shirt/top"
    names = [f"c{i}" for i in range(10)]
    (base / "classes.json").write_text(json.dumps(names))
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.train.class_names == names and ds.display_name == "Fashion-MNIST"


def test_idx_truncated_and_mismatched(tmp_path: Path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_mnist_layout(raw, np.random.default_rng(2), gz_test=False)
    images = raw / "train-images-idx3-ubyte"
    full = images.read_bytes()
    images.write_bytes(full[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(images) in str(err.value)
    images.write_bytes(full)
    labels = raw / "train-labels-idx1-ubyte"
    good_labels = labels.read_bytes()
    write_idx(labels, np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match="11 labels but") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(labels) in str(err.value)
    labels.write_bytes(good_labels)
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x01\x02\x08\x01\x00\x00\x00\x00", "x")
    # A truncated .gz names the file too.
    gz = write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), gz=True)
    (raw / "t10k-images-idx3-ubyte").unlink()
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(gz) in str(err.value)


def test_mnist_missing_names_path_and_env(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mnist" / "MNIST" / "raw") in msg and "CILEARN_DATA" in msg


# ---------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------

def test_cifar100_fixture(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, np.random.default_rng(3))
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.display_name == "CIFAR-100" and ds.num_classes == 100
    assert ds.train.images.shape == (200, 32, 32, 3) and ds.test.images.shape == (100, 32, 32, 3)
    assert ds.train.images.flags.c_contiguous
    # Channel-major rows must land at [row, col, channel].
    for i, row, col, ch in ((0, 0, 0, 0), (5, 3, 17, 1), (199, 31, 31, 2), (42, 10, 0, 2)):
        assert ds.train.images[i, row, col, ch] == pixel(written["train_data"], i, row, col, ch)
    assert ds.test.images[7, 2, 30, 1] == pixel(written["test_data"], 7, 2, 30, 1)
    assert ds.train.labels.tolist() == written["train_fine"].tolist()
    assert ds.test.labels.tolist() == written["test_fine"].tolist()
    assert ds.train_coarse_labels.dtype == np.int64
    assert ds.train_coarse_labels.tolist() == written["train_coarse"].tolist()
    assert ds.test_coarse_labels.tolist() == written["test_coarse"].tolist()
    assert ds.train.class_names[5] == "fine_5" and ds.coarse_class_names[19] == "coarse_19"


def test_cifar10_fixture(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, np.random.default_rng(4))
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.display_name == "CIFAR-10" and ds.train_coarse_labels is None
    assert ds.train.images.shape == (20, 32, 32, 3) and ds.test.images.shape == (4, 32, 32, 3)
    assert ds.train.images[13, 4, 9, 2] == pixel(written["train_data"], 13, 4, 9, 2)
    assert ds.test.images[3, 31, 0, 0] == pixel(written["test_data"], 3, 31, 0, 0)
    assert ds.train.labels.tolist() == written["train_labels"].tolist()
    assert ds.train.class_names == [f"class_{i}" for i in range(10)]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_forbidden_global_is_refused(tmp_path: Path) -> None:
    write_cifar100(tmp_path, np.random.default_rng(5), train_per_class=1, test_per_class=1)
    marker = tmp_path / "pwned"
    _dump({b"data": _Evil(marker), b"fine_labels": []}, tmp_path / "cifar-100-python" / "train")
    with pytest.raises(DataError, match="refusing") as err:
        load_dataset("cifar100", root=tmp_path)
    assert "system" in str(err.value) and str(tmp_path / "cifar-100-python" / "train") in str(err.value)
    assert not marker.exists()


def test_cifar_bad_shape_and_truncated(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.random.default_rng(6))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    _dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, batch)
    with pytest.raises(DataError, match=r"\(N, 3072\)") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(batch) in str(err.value)
    write_cifar10(tmp_path / "t", np.random.default_rng(6))
    batch = tmp_path / "t" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path / "t")
    assert str(batch) in str(err.value)


def test_cifar100_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert CIFAR100_URL in msg and "CILEARN_DATA" in msg and "download" in msg


# ---------------------------------------------------------------------------------------------
# Download and safe extraction (no network: the opener is injected)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cifar100_archive(tmp_path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    src = tmp_path / "src"
    written = write_cifar100(src, np.random.default_rng(7), train_per_class=1, test_per_class=1)
    return tar_gz_of(src / "cifar-100-python", "cifar-100-python"), written


def test_download_correct_md5_loads(tmp_path: Path, cifar100_archive, monkeypatch: pytest.MonkeyPatch) -> None:
    payload, written = cifar100_archive
    from cilearn.data import cifar

    # The fixture archive is not the official one: point the source at its md5.
    monkeypatch.setattr(cifar, "CIFAR100", cifar.CifarSource(
        display_name="CIFAR-100", folder="cifar-100-python", url=CIFAR100_URL,
        md5=hashlib.md5(payload).hexdigest(), files=("train", "test", "meta")))
    root = tmp_path / "root"
    opener = FakeOpener(payload)
    ds = load_dataset("cifar100", root=root, download=True, opener=opener)
    assert opener.urls == [CIFAR100_URL]
    assert ds.train.labels.tolist() == written["train_fine"].tolist()
    # Only the dataset folder is left: no archive, no temporary folders.
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]
    # Already there: a second load does not download again.
    load_dataset("cifar100", root=root, download=True, opener=FakeOpener(b""))


def test_download_wrong_md5(tmp_path: Path, cifar100_archive) -> None:
    payload, _ = cifar100_archive
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5") as err:
        load_dataset("cifar100", root=root, download=True, opener=FakeOpener(payload))
    msg = str(err.value)
    assert "eb9058c3a382ffc7106e4002c42a8d85" in msg and hashlib.md5(payload).hexdigest() in msg
    assert "cifar-100-python.tar.gz" in msg
    assert listing(root) == set()


def test_download_refuses_http_and_reports_network_errors(tmp_path: Path) -> None:
    opener = FakeOpener(b"x")
    with pytest.raises(DataError, match="https"):
        download_and_extract("http://example.com/a.tar.gz", "0" * 32, tmp_path / "r", "a", opener=opener)
    assert opener.urls == [] and listing(tmp_path / "r") == set()

    def broken(url: str) -> io.BytesIO:
        raise urllib.error.URLError("no route to host")

    with pytest.raises(DataError, match="download of https://example.com/a.tar.gz failed") as err:
        download_and_extract("https://example.com/a.tar.gz", "0" * 32, tmp_path / "r", "a", opener=broken,
                             manual_hint="Place the files by hand.")
    assert "by hand" in str(err.value)
    assert listing(tmp_path / "r") == set()


def _malicious_tar(kind: str) -> bytes:
    """A tar.gz with one harmless member and one that would escape the target folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("cifar-100-python/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("cifar-100-python/link")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../outside"
            tf.addfile(link)
        else:
            name = {"dotdot": "cifar-100-python/../../evil", "absolute": "/tmp/cilearn-evil-abs"}[kind]
            evil = tarfile.TarInfo(name)
            evil.size = 4
            tf.addfile(evil, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_download_refuses_malicious_archive(tmp_path: Path, kind: str) -> None:
    payload = _malicious_tar(kind)
    root = tmp_path / "a" / "root"
    before = listing(tmp_path)
    with pytest.raises(DataError, match="unsafe"):
        download_and_extract(CIFAR100_URL, hashlib.md5(payload).hexdigest(), root, "cifar-100-python",
                             opener=FakeOpener(payload))
    # Nothing written outside the target, and nothing left inside it.
    assert listing(tmp_path) - before == {"a", "a/root"}
    assert not Path("/tmp/cilearn-evil-abs").exists()


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

def test_image_folder_directory_grey_and_cache(tmp_path: Path, cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_image_folder(tmp_path / "imgs", np.random.default_rng(8), grey=True)
    ds = load_dataset("image_folder", path=str(tmp_path / "imgs"))
    assert ds.train.class_names == ["cat", "dog", "emu"]
    assert ds.train.images.shape == (9, 6, 5, 1) and ds.test.images.shape == (6, 6, 5, 1)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.array_equal(ds.test.images[3, ..., 0], arrays["test/dog/01.png"])
    files = list((cache / "image_folder").glob("*.npz"))
    assert len(files) == 1

    # The second load reads the cache: decoding would fail now.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder, "_read_image_folder", no_decode)
    again = load_dataset("image_folder", path=tmp_path / "imgs")
    assert np.array_equal(again.train.images, ds.train.images)
    assert again.test.labels.tolist() == ds.test.labels.tolist()
    # A relative path that is not under the current directory is looked up in the data root.
    assert len(load_dataset("image_folder", root=tmp_path, path="imgs").train) == 9
    # The same folder spelled through '..' or a symbolic link reads the same cache file (no second decode).
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    for spelling in (tmp_path / "sub" / ".." / "imgs", tmp_path / "link"):
        assert np.array_equal(load_dataset("image_folder", path=spelling).train.images, ds.train.images)
    assert len(list((cache / "image_folder").glob("*.npz"))) == 1


def test_image_folder_tar_gz_with_wrapper_and_mixed_modes(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src"
    arrays = make_image_folder(src / "wrap", np.random.default_rng(9))
    # One grey image among RGB ones: it is expanded to three equal channels.
    grey = np.full((6, 5), 77, np.uint8)
    save_image(src / "wrap" / "train" / "dog" / "99.png", grey)
    # A JPEG with an upper-case extension is picked up too.
    save_image(src / "wrap" / "test" / "emu" / "77.JPG", np.full((6, 5, 3), 128, np.uint8), fmt="JPEG")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "wrap", arcname="wrap")
    ds = load_dataset("image_folder", path=archive)
    assert ds.train.images.shape == (10, 6, 5, 3) and ds.test.images.shape == (7, 6, 5, 3)
    assert np.array_equal(ds.train.images[0], arrays["train/cat/00.png"])
    dog = ds.train.subset(ds.train.labels == 1)
    assert np.all(dog.images[-1] == 77)
    assert abs(int(ds.test.images[-1].mean()) - 128) <= 2
    assert len(list((cache / "image_folder").glob("*.npz"))) == 1


def test_image_folder_zip_sizes_and_image_size(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src"
    make_image_folder(src, np.random.default_rng(10))
    save_image(src / "train" / "emu" / "big.png", np.zeros((12, 10, 3), np.uint8))
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    with pytest.raises(DataError, match="image_size") as err:
        load_dataset("image_folder", path=archive)
    assert "train/emu/big.png" in str(err.value) and str(archive) in str(err.value)
    ds = load_dataset("image_folder", path=archive, image_size=[4, 3])
    assert ds.train.images.shape == (10, 4, 3, 3)


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("escape", ["../../x.png", "train/cat/../../../x.png", "/abs/x.png"])
def test_image_folder_archive_member_escaping_its_folder_is_refused(tmp_path: Path, cache: Path, kind: str,
                                                                    escape: str) -> None:
    src = tmp_path / "src"
    make_image_folder(src, np.random.default_rng(12))
    png = (src / "train" / "cat" / "00.png").read_bytes()
    archive = tmp_path / f"data.{kind}"
    members = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in sorted(src.rglob("*.png"))]
    members.append((escape, png))
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        with tarfile.open(archive, "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="unsafe") as err:
        load_dataset("image_folder", path=archive)
    assert f"refusing member {escape!r}" in str(err.value) and str(archive) in str(err.value)
    assert not (cache / "image_folder").exists()  # nothing cached


def test_image_folder_empty_class(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "imgs"
    make_image_folder(src, np.random.default_rng(11))
    (src / "train" / "yak").mkdir()
    (src / "train" / "yak" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no .png") as err:
        load_dataset("image_folder", path=src)
    assert str(src / "train" / "yak") in str(err.value)
    # The same inside a tar archive (the folder is only a directory entry).
    (src / "train" / "yak" / "notes.txt").unlink()
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname=".")
    with pytest.raises(DataError, match="train/yak"):
        load_dataset("image_folder", path=archive)


def test_image_folder_corrupt_image(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "imgs"
    make_image_folder(src, np.random.default_rng(12))
    bad = src / "test" / "dog" / "00.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot decode") as err:
        load_dataset("image_folder", path=src)
    assert str(bad) in str(err.value)
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="imgs")
    with pytest.raises(DataError, match="imgs/test/dog/00.png"):
        load_dataset("image_folder", path=archive)
    # Nothing was cached for the broken data.
    assert not list(cache.rglob("*.npz"))


def test_image_folder_test_class_not_in_train(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "imgs"
    make_image_folder(src, np.random.default_rng(13))
    save_image(src / "test" / "zebra" / "0.png", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DataError, match="zebra"):
        load_dataset("image_folder", path=src)


def test_image_folder_many_images_uses_workers(tmp_path: Path, cache: Path) -> None:
    """More images than one decode batch: the pool path must keep order and labels right."""
    src = tmp_path / "imgs"
    for split, n in (("train", 700), ("test", 10)):
        for i in range(n):
            c = f"c{i % 2}"
            save_image(src / split / c / f"{i:04d}.png", np.full((2, 2, 3), i % 251, np.uint8))
    ds = imagefolder.load_image_folder(src, workers=2, use_cache=False)
    serial = imagefolder.load_image_folder(src, workers=1, use_cache=False)
    assert np.array_equal(ds.train.images, serial.train.images)
    assert np.array_equal(ds.train.labels, serial.train.labels)
    assert ds.train.labels.tolist().count(0) == 350


def test_cifar10_jpeg_fixture_uses_classes_json(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src"
    make_image_folder(src, np.random.default_rng(15), classes=("bird", "ant"))
    folder = tmp_path / "root" / "cifar10-jpeg"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar10-jpeg.tar.gz", "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=split)
    (folder / "classes.json").write_text(json.dumps(["bird", "ant"]))
    ds = load_dataset("cifar10_jpeg", root=tmp_path / "root")
    assert ds.display_name == "CIFAR-10 (JPEG)" and ds.train.class_names == ["bird", "ant"]
    # Files are read in sorted order (ant first), so ant's images must carry label 1.
    assert ds.train.labels.tolist() == [1, 1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Real data (CILEARN_DATA=/work/shared/data); skipped when absent
# ---------------------------------------------------------------------------------------------

def _real_root(*parts: str) -> Path:
    env = os.environ.get("CILEARN_DATA", "").strip()
    if not env:
        pytest.skip("CILEARN_DATA not set: point it at a folder with the real datasets to run this test")
    root = Path(env)
    if not (root.joinpath(*parts)).exists():
        pytest.skip(f"CILEARN_DATA is set but {root.joinpath(*parts)} is absent")
    return root


def test_real_mnist() -> None:
    root = _real_root("mnist", "MNIST", "raw")
    ds = load_dataset("mnist", root=root)
    assert np.bincount(ds.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.train.images.shape == (60000, 28, 28, 1)
    assert ds.train.images.mean() / 255 == pytest.approx(0.1307, abs=1e-3)


def test_real_fashion_mnist() -> None:
    root = _real_root("fashion-mnist", "FashionMNIST", "raw")
    ds = load_dataset("fashion_mnist", root=root)
    assert np.bincount(ds.train.labels).tolist() == [6000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.train.class_names[0] == "T-shirt/top"


def test_real_cifar10_jpeg(capsys: pytest.CaptureFixture[str]) -> None:
    root = _real_root("cifar10-jpeg", "cifar10-jpeg.tar.gz")
    # Uses the real cache (CILEARN_CACHE or ~/.cache/cilearn): only the very first run decodes.
    start = time.perf_counter()
    ds = load_dataset("cifar10_jpeg", root=root)
    first = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_dataset("cifar10_jpeg", root=root)
    second = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ncifar10_jpeg: first load {first:.2f}s (decodes unless already cached), cached load {second:.2f}s")
    assert second < 5.0
    assert ds.display_name == "CIFAR-10 (JPEG)"
    assert ds.train.images.shape == (50000, 32, 32, 3) and ds.test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    means = ds.train.images.reshape(-1, 3).mean(axis=0) / 255
    assert means == pytest.approx([0.4913, 0.4821, 0.4465], abs=2e-3)
    assert np.array_equal(cached.train.labels, ds.train.labels)


def test_a_corrupt_image_in_an_archive_is_named_without_pils_buffer(tmp_path):
    import zipfile

    from PIL import Image

    from cilearn.data.imagefolder import load_image_folder
    from cilearn.errors import DataError

    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.write(good, "train/a/ok.png")
        archive.writestr("train/a/bad.png", b"not a png at all")
        archive.write(good, "test/a/ok.png")
    with pytest.raises(DataError) as error:
        load_image_folder(tmp_path / "data.zip", workers=1, use_cache=False)
    message = str(error.value)
    assert "(member train/a/bad.png): cannot decode the image (UnidentifiedImageError: cannot identify image file)" \
        in message and "BytesIO" not in message and "0x" not in message


def test_data_normalize_false_feeds_raw_pixels_in_0_1(tmp_path):
    """data.normalize: false gives the network x / 255 (Mammoth's MNIST: ToTensor only); true standardises."""
    from cilearn.config import parse_config
    from cilearn.engine.runner import Run

    def inputs(normalize: bool | str):
        raw = {"data": {"name": "digits", "normalize": normalize}, "model": {"name": "mlp", "options": {"hidden": [8]}},
               "method": {"name": "finetune"}, "scenario": {"classes_per_task": 2},
               "train": {"progress": False, "num_threads": 1}, "output": {"save_checkpoints": False}}
        run = Run(parse_config(raw), tmp_path / str(normalize))
        run.setup()
        images = torch.as_tensor(run.scenario[0].train.images[:4]).permute(0, 3, 1, 2).contiguous()
        return images, run.augment.normalize(images), run.scenario

    images, raw_inputs, scenario = inputs(False)
    assert scenario.mean == (0.0,) and scenario.std == (1.0,)
    assert torch.allclose(raw_inputs, images.float() / 255)
    _, standardised, scenario = inputs(True)
    mean, std = scenario.mean[0], scenario.std[0]
    assert torch.allclose(standardised, (images.float() / 255 - mean) / std, atol=1e-5)
    _, symmetric, scenario = inputs("symmetric")  # the ER-ACE authors' (x / 255 - 0.5) * 2
    assert scenario.mean == (0.5,) and scenario.std == (0.5,)
    assert torch.allclose(symmetric, (images.float() / 255 - 0.5) * 2, atol=1e-6)
    assert float(symmetric.min()) >= -1 and float(symmetric.max()) <= 1


def test_data_normalize_refuses_other_words(tmp_path):
    from cilearn.config import parse_config

    with pytest.raises(ConfigError, match="data.normalize") as error:
        parse_config({"data": {"name": "digits", "normalize": "minus_one"}, "model": {"name": "mlp"},
                      "method": {"name": "finetune"}, "scenario": {"classes_per_task": 2}})
    assert "symmetric" in str(error.value)


def test_image_folder_cache_keeps_one_file_per_source(tmp_path: Path, cache: Path) -> None:
    """Data that changed (new mtime: copied again, re-mounted) is decoded again into a new cache file and the old
    file goes; another source's cache file stays."""
    make_image_folder(tmp_path / "a", np.random.default_rng(1))
    make_image_folder(tmp_path / "b", np.random.default_rng(2))
    load_dataset("image_folder", path=tmp_path / "a")
    load_dataset("image_folder", path=tmp_path / "b")
    before = sorted(p.name for p in (cache / "image_folder").glob("*.npz"))
    assert len(before) == 2
    changed = tmp_path / "a" / "train" / "cat" / "00.png"
    save_image(changed, np.zeros((6, 5, 3), np.uint8))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    again = load_dataset("image_folder", path=tmp_path / "a")
    assert np.all(again.train.images[0] == 0)  # the new image, not the cached old one
    after = sorted(p.name for p in (cache / "image_folder").glob("*.npz"))
    assert len(after) == 2 and len(set(after) & set(before)) == 1
    source_of = {name.split("-")[0] for name in after}
    assert source_of == {name.split("-")[0] for name in before}  # one file per source, a new version of a's
