"""Generic image folders (``<split>/<class>/*.png|jpg``) from a directory, tar or zip archive.

Images are decoded once, straight from the archive (nothing is extracted to disk), and the uint8
arrays are cached as an uncompressed ``.npz`` under ``cache_dir()/image_folder/`` so later loads
only read one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cilearn.data.base import DatasetSplits, ImageData, cache_dir
from cilearn.data.download import check_member_path
from cilearn.errors import DataError
from cilearn.log import get_logger, progress_disabled

log = get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
# Bump when the cached arrays' meaning changes so stale caches are never read.
_CACHE_VERSION = 1

ImageSize = int | Sequence[int] | None


@dataclass
class _Entry:
    """One archive or folder entry, with a reader for its bytes (only called for images)."""

    name: str
    is_dir: bool
    read: Callable[[], bytes] = field(repr=False, default=lambda: b"")


# ---------------------------------------------------------------------------------------------
# Reading entries from a directory, tar or zip archive
# ---------------------------------------------------------------------------------------------

def _archive_kind(path: Path) -> str:
    if path.is_dir():
        return "dir"
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    raise DataError(f"{path}: not a folder or a .tar, .tar.gz, .tgz or .zip archive; "
                    "point image_folder's path at one of those.")


def _iter_entries(path: Path, kind: str) -> Iterator[_Entry]:
    """Yield entries with '/'-separated names relative to the folder or archive root."""
    if kind == "dir":
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(path).as_posix()
            prefix = "" if rel == "." else rel + "/"
            for d in dirnames:
                yield _Entry(prefix + d, True)
            for f in sorted(filenames):
                full = Path(dirpath) / f
                yield _Entry(prefix + f, False, full.read_bytes)
    elif kind == "tar":
        # Streaming mode ("r|*") reads the archive once, front to back, without seeking.
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if member.isdir():
                    yield _Entry(member.name, True)
                elif member.isfile():
                    def read(m: tarfile.TarInfo = member) -> bytes:
                        f = tf.extractfile(m)
                        return f.read() if f is not None else b""
                    yield _Entry(member.name, False, read)
    else:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    yield _Entry(info.filename, True)
                else:
                    yield _Entry(info.filename, False, lambda i=info: zf.read(i))


def _split_name(name: str) -> tuple[str, str, list[str]] | None:
    """Map an entry name to ``(wrapper folder or "", split, rest of the parts)``; None if irrelevant."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    # Hidden files and macOS resource forks are never part of the dataset.
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if parts[0] in SPLITS:
        return "", parts[0], parts[1:]
    if len(parts) >= 2 and parts[1] in SPLITS:
        return parts[0], parts[1], parts[2:]
    return None


# ---------------------------------------------------------------------------------------------
# Decoding (runs in worker processes when there are many images)
# ---------------------------------------------------------------------------------------------

def _target_size(image_size: ImageSize) -> tuple[int, int] | None:
    """``image_size`` as PIL's (width, height), or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size):
        size = (int(image_size[1]), int(image_size[0]))  # given as (height, width)
    else:
        raise DataError(f"image_folder: image_size must be an integer or [height, width], got {image_size!r}.")
    if min(size) <= 0:
        raise DataError(f"image_folder: image_size must be positive, got {image_size!r}.")
    return size


def _decode_batch(batch: list[tuple[str, bytes]], size: tuple[int, int] | None
                  ) -> list[tuple[str, np.ndarray | None, str]]:
    """Decode images to uint8 arrays: (H, W) for 'L' images, (H, W, 3) otherwise.

    Returns ``(name, array or None, error message)`` so the parent can name the bad file.
    """

    out: list[tuple[str, np.ndarray | None, str]] = []
    for name, data in batch:
        try:
            # Restricting formats skips PIL's probing of every plugin (faster) and refuses files whose
            # content is not what their .png/.jpg extension claims.
            with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
                im.load()
                if im.mode == "1":
                    img = im.convert("L")
                elif im.mode in ("L", "RGB"):
                    img = im
                else:
                    img = im.convert("RGB")
                if size is not None and img.size != size:
                    img = img.resize(size, Image.Resampling.BILINEAR)
                w, h = img.size
                # tobytes + frombuffer is markedly faster than np.asarray(img) for small images.
                shape = (h, w) if img.mode == "L" else (h, w, 3)
                out.append((name, np.frombuffer(img.tobytes(), np.uint8).reshape(shape), ""))
        except Exception as exc:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError...)
            # PIL names the stream it read, here an in-memory buffer ("<_io.BytesIO object at 0x...>"): the
            # message names the file instead (the caller prefixes it), so the buffer's repr goes.
            text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or "unreadable"
            out.append((name, None, f"{type(exc).__name__}: {text}"))
    return out


class _Decoder:
    """Decodes batches in order, in a small process pool when worth it, else in this process."""

    def __init__(self, size: tuple[int, int] | None, workers: int) -> None:
        self._size = size
        self._workers = workers
        self._pool = None
        self._submitted = 0
        self._pending: list = []
        self._max_pending = 4 * max(workers, 1)

    def submit(self, batch: list[tuple[str, bytes]]) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """Queue a batch; yield whatever results are ready (in submission order)."""
        self._submitted += 1
        # Start the pool only from the second batch on: small folders are not worth the start-up cost.
        # fork shares the already-imported modules (fast start, no re-import of the user's script);
        # where it is unavailable the work simply stays in this process.
        if (self._pool is None and self._workers > 1 and self._submitted > 1
                and "fork" in multiprocessing.get_all_start_methods()):
            self._pool = multiprocessing.get_context("fork").Pool(self._workers)
        if self._pool is None:
            yield from _decode_batch(batch, self._size)
            return
        self._pending.append(self._pool.apply_async(_decode_batch, (batch, self._size)))
        while len(self._pending) > self._max_pending:
            yield from self._pending.pop(0).get()

    def finish(self) -> Iterator[tuple[str, np.ndarray | None, str]]:
        while self._pending:
            yield from self._pending.pop(0).get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


# ---------------------------------------------------------------------------------------------
# Building the arrays
# ---------------------------------------------------------------------------------------------

def _read_image_folder(path: Path, image_size: ImageSize, workers: int, batch_size: int = 512
                       ) -> dict[str, np.ndarray]:
    """Decode every image of ``path`` into the arrays stored in the cache file."""

    kind = _archive_kind(path)
    size = _target_size(image_size)

    def where(name: str) -> str:
        return str(path / name) if kind == "dir" else f"{path} (member {name})"

    class_dirs: dict[tuple[str, str, str], str] = {}  # (wrapper, split, class) -> entry name
    decoded: dict[tuple[str, str, str, str], np.ndarray] = {}  # (wrapper, split, class, file) -> image
    keys: dict[str, tuple[str, str, str, str]] = {}
    decoder = _Decoder(size, workers)
    batch: list[tuple[str, bytes]] = []

    def collect(results: Iterator[tuple[str, np.ndarray | None, str]]) -> None:
        for name, array, error in results:
            if array is None:
                raise DataError(f"{where(name)}: cannot decode the image ({error}); "
                                "replace or delete the corrupt file.")
            decoded[keys[name]] = array
            bar.update(1)

    bar = tqdm(desc=f"decoding {path.name}", unit="img", mininterval=1.0, leave=False, disable=progress_disabled(log))
    try:
        for entry in _iter_entries(path, kind):
            if kind != "dir":  # a member named '../x' or '/x' is not part of this folder: refuse, never skip
                check_member_path(entry.name, str(path))
            mapped = _split_name(entry.name)
            if mapped is None:
                continue
            wrapper, split, rest = mapped
            if not rest:
                continue
            if len(rest) == 1 and not entry.is_dir:
                continue  # a stray file directly inside the split folder
            class_dirs.setdefault((wrapper, split, rest[0]), "/".join([wrapper, split, rest[0]]).lstrip("/"))
            if entry.is_dir or len(rest) != 2 or not rest[1].lower().endswith(IMAGE_EXTENSIONS):
                continue
            keys[entry.name] = (wrapper, split, rest[0], rest[1])
            batch.append((entry.name, entry.read()))
            if len(batch) >= batch_size:
                collect(decoder.submit(batch))
                batch = []
        if batch:
            collect(decoder.submit(batch))
        collect(decoder.finish())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read the archive or folder ({exc}); it is corrupt or unreadable, "
                        "replace it.") from exc
    finally:
        decoder.close()
        bar.close()

    wrappers = {k[0] for k in class_dirs}
    if len(wrappers) > 1:
        shown = ", ".join(repr(w or ".") for w in sorted(wrappers))
        raise DataError(f"{path}: train/test folders found at several places ({shown}); "
                        "keep a single train/ and test/ pair.")
    for split in SPLITS:
        if not any(k[1] == split for k in class_dirs):
            raise DataError(f"{path}: no {split}/<class>/ folders found; the expected layout is "
                            "train/<class>/*.png|jpg and test/<class>/*.png|jpg.")
    with_images = {k[:3] for k in decoded}
    for key, name in sorted(class_dirs.items()):
        if key not in with_images:
            raise DataError(f"{where(name)}: class folder has no .png/.jpg/.jpeg images; "
                            "add images or remove the folder.")

    class_names = sorted({k[2] for k in class_dirs if k[1] == "train"})
    extra = sorted({k[2] for k in class_dirs if k[1] == "test"} - set(class_names))
    if extra:
        raise DataError(f"{where('/'.join([next(iter(wrappers)), 'test', extra[0]]).lstrip('/'))}: test class "
                        f"{extra[0]!r} has no train folder; every test class must also exist in train/.")

    # Every image must have the same size unless image_size resized them.
    order = sorted(decoded)
    first = order[0]
    ref_shape = decoded[first].shape[:2]
    for key in order:
        if decoded[key].shape[:2] != ref_shape:
            raise DataError(
                f"{where('/'.join(key).lstrip('/'))}: image is {decoded[key].shape[1]}x{decoded[key].shape[0]} "
                f"but {'/'.join(first).lstrip('/')} is {ref_shape[1]}x{ref_shape[0]}; pass the image_size option "
                "to resize all images to one size."
            )
    grey = all(decoded[k].ndim == 2 for k in order)
    index = {name: i for i, name in enumerate(class_names)}
    arrays: dict[str, np.ndarray] = {"class_names": np.array(class_names, dtype=str)}
    for split in SPLITS:
        split_keys = [k for k in order if k[1] == split]
        images = np.empty((len(split_keys), *ref_shape, 1 if grey else 3), dtype=np.uint8)
        for i, key in enumerate(split_keys):
            img = decoded.pop(key)  # free memory as we go: the decoded dict holds the whole dataset
            # Grey images in an RGB dataset get the same value on all three channels (as PIL's convert).
            images[i] = img[..., None] if img.ndim == 2 else img
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.array([index[k[2]] for k in split_keys], dtype=np.int64)
    return arrays


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def _cache_file(path: Path, kind: str, size: tuple[int, int] | None) -> Path:
    """Cache file ``<source>-<version>.npz``: ``<source>`` is the sha1 of the source's resolved path and the image
    size (one name however the path is spelled: ``../shared/data`` or ``/work/shared/data``, a symbolic link or its
    target), ``<version>`` that of its size and mtime (every file's, for a folder).  A changed source gets a new
    file and :func:`_write_cache` removes the old one."""
    path = path.resolve()
    st = path.stat()
    source = {"version": _CACHE_VERSION, "path": str(path), "image_size": size}
    signature: dict = {**source, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if kind == "dir":
        # A folder's own mtime misses edits inside sub-folders, so fingerprint every file.
        files = hashlib.sha1()
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for f in sorted(filenames):
                fst = os.stat(os.path.join(dirpath, f))
                files.update(f"{os.path.join(dirpath, f)}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
        signature["files"] = files.hexdigest()
    digests = [hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest() for d in (source, signature)]
    return cache_dir() / "image_folder" / f"{digests[0][:20]}-{digests[1][:20]}.npz"


def _older_versions(file: Path) -> list[Path]:
    """The cache files of the same source as ``file`` (same ``<source>-`` prefix) but another version."""
    prefix = file.name.split("-")[0] + "-"
    return [other for other in file.parent.glob(prefix + "*.npz") if other.name != file.name]


_CACHE_KEYS = ("class_names", "train_images", "train_labels", "test_images", "test_labels")


def _read_cache(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _CACHE_KEYS}
    except Exception as exc:  # a damaged cache is not fatal: decode again and overwrite it
        log.warning(f"ignoring unreadable cache file {file} ({exc}); decoding the images again.")
        return None
    return arrays


def _write_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".npz")
    except OSError as exc:
        log.warning(f"cannot write the image cache in {file.parent} ({exc.strerror or exc}); images will be "
                    "decoded again next time. Set CILEARN_CACHE to a writable folder.")
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is as readable as any other file
        # Readers either see the complete old state (no file) or the complete new file, never a partial one.
        os.replace(tmp, file)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        log.warning(f"cannot write the image cache {file} ({exc.strerror or exc}); images will be decoded "
                    "again next time.")
        return
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in _older_versions(file):  # the same source decoded before it changed: never read again
        try:
            stale.unlink()
        except OSError as exc:
            log.warning(f"cannot remove the outdated image cache {stale} ({exc.strerror or exc}).")


# ---------------------------------------------------------------------------------------------
# Public loader
# ---------------------------------------------------------------------------------------------

def load_image_folder(path: str | os.PathLike, *, image_size: ImageSize = None,
                      class_names: Sequence[str] | None = None, workers: int | None = None,
                      name: str = "image_folder", display_name: str | None = None,
                      use_cache: bool = True) -> DatasetSplits:
    """Load ``<path>/{train,test}/<class>/*.{png,jpg,jpeg}`` (folder, .tar[.gz], .tgz or .zip).

    Class names are the sorted train folder names unless ``class_names`` gives their order (it must
    name exactly the train folders). ``image_size`` (int or [height, width]) resizes every image.
    """
    src = Path(path).expanduser().absolute()
    if not src.exists():
        raise DataError(f"{src}: image folder or archive not found; check the path option (a relative path "
                        "is looked up in the current directory, then in the data root CILEARN_DATA).")
    kind = _archive_kind(src)
    size = _target_size(image_size)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)

    cache = _cache_file(src, kind, size) if use_cache else None
    arrays = _read_cache(cache) if cache is not None else None
    if arrays is None:
        log.debug(f"decoding {src} (cache {cache or 'off'})")
        arrays = _read_image_folder(src, image_size, int(workers))
        if cache is not None:
            _write_cache(cache, arrays)
    else:
        log.debug(f"{src}: decoded images read from the cache {cache}")

    names = [str(n) for n in arrays["class_names"]]
    train_labels, test_labels = arrays["train_labels"], arrays["test_labels"]
    if class_names is not None:
        wanted = [str(n) for n in class_names]
        if sorted(wanted) != names:
            missing = sorted(set(names) - set(wanted)) or sorted(set(wanted) - set(names))
            raise DataError(f"{src}: the given class names do not match the train folders (differ in "
                            f"{missing[0]!r}); fix the class list (e.g. classes.json) or the folders.")
        # Relabel so that label i means wanted[i].
        remap = np.array([wanted.index(n) for n in names], dtype=np.int64)
        train_labels, test_labels, names = remap[train_labels], remap[test_labels], wanted

    return DatasetSplits(
        name=name,
        display_name=display_name or f"image folder {src.name}",
        train=ImageData(arrays["train_images"], train_labels, names),
        test=ImageData(arrays["test_images"], test_labels, list(names)),
    )


def load_cifar10_jpeg(root: Path, image_size: ImageSize = None, workers: int | None = None) -> DatasetSplits:
    """CIFAR-10 published as JPEG: ``<root>/cifar10-jpeg/cifar10-jpeg.tar.gz`` (+ ``classes.json``)."""
    folder = root / "cifar10-jpeg"
    archive = folder / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        raise DataError(f"CIFAR-10 (JPEG) not found: expected {archive} (an image-folder archive "
                        "train/<class>/*.jpg, test/<class>/*.jpg); it cannot be downloaded, so place it there "
                        "or set CILEARN_DATA to a folder that holds cifar10-jpeg/cifar10-jpeg.tar.gz.")
    class_names = None
    classes_file = folder / "classes.json"
    if classes_file.is_file():
        try:
            class_names = json.loads(classes_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{classes_file}: cannot read class names ({exc}); fix or delete the file.") from exc
        if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
            raise DataError(f"{classes_file}: expected a JSON list of class-name strings; fix or delete the file.")
    return load_image_folder(archive, image_size=image_size, class_names=class_names, workers=workers,
                             name="cifar10_jpeg", display_name="CIFAR-10 (JPEG)")
