"""HTTPS download with md5 check, and safe, atomic extraction of tar archives.

Kept here rather than through pooch: pooch would add requests and six more packages, while the parts that are
cilearn's own stay either way (the member-path checks shared with image-folder archives, placing the dataset
folder atomically, one-line errors that say what to do); the download loop it would replace is 30 lines."""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from cilearn.errors import DataError
from cilearn.log import get_logger, progress_disabled

log = get_logger(__name__)

Opener = Callable[[str], IO[bytes]]


def _default_opener(url: str) -> IO[bytes]:
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the scheme is checked to be https first


def _content_length(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def download_file(url: str, md5: str, dest_dir: Path, *, opener: Opener | None = None,
                  chunk_size: int = 1 << 20, manual_hint: str = "") -> Path:
    """Download ``url`` over HTTPS into a temporary file in ``dest_dir`` and check its md5.

    Returns the temporary file's path; the caller owns it and must delete it.
    """
    if urllib.parse.urlsplit(url).scheme.lower() != "https":
        raise DataError(f"refusing to download {url}: only https:// URLs are allowed; use the https address.")

    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    except OSError as exc:
        raise DataError(
            f"cannot write to {dest_dir} ({exc.strerror or exc}); set CILEARN_DATA to a writable folder."
        ) from exc
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    name = posixpath.basename(urllib.parse.urlsplit(url).path) or url
    try:
        with os.fdopen(fd, "wb") as out:
            log.info(f"downloading {url} into {dest_dir}")
            response = (opener or _default_opener)(url)
            try:
                with tqdm(total=_content_length(response), unit="B", unit_scale=True, desc=name,
                          leave=False, disable=progress_disabled(log)) as bar:
                    while True:
                        chunk = response.read(chunk_size)
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()
    except (urllib.error.URLError, http.client.HTTPException, OSError, EOFError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"download of {url} failed ({reason}). {manual_hint}".strip()) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != md5.lower():
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"downloaded file {name} from {url} has md5 {actual}, expected {md5}; it was deleted. "
            f"Try again later. {manual_hint}".strip()
        )
    return tmp


def check_member_path(name: str, archive: str) -> None:
    """Refuse an archive member whose path leaves the archive's folder: absolute, a drive letter or '..'.

    Shared by the tar extractor below and the image-folder reader (which reads members in place)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing member {name!r} with an absolute path; the archive is unsafe. "
                        "Rebuild it with paths relative to its root.")
    if ".." in parts:
        raise DataError(f"{archive}: refusing member {name!r}: its path contains '..', which can lead outside the "
                        "archive's folder; the archive is unsafe. Rebuild it with paths relative to its root.")


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse members that could write outside the target folder or create special files."""
    name = member.name
    check_member_path(name, archive)
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DataError(f"{archive}: refusing to extract special file {name!r} (device, fifo or unknown type); "
                        "the archive is unsafe.")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or posixpath.isabs(target):
            raise DataError(f"{archive}: refusing link {name!r} -> {target!r} to an absolute path; "
                            "the archive is unsafe.")
        # Symlinks resolve relative to their own folder, hard links relative to the archive root.
        base = posixpath.dirname(name.replace("\\", "/")) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
        if resolved == ".." or resolved.startswith("../"):
            raise DataError(f"{archive}: refusing link {name!r} -> {target!r} pointing outside the folder; "
                            "the archive is unsafe.")


def safe_extract_tar(archive: Path, dest: Path, display: str | None = None) -> None:
    """Extract a tar archive into ``dest`` after checking every member (nothing is written if one is unsafe)."""
    label = display or str(archive)
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member, label)
            if hasattr(tarfile, "data_filter"):
                # Python >= 3.11.4 / 3.12: the standard library's own checks as a second line of defence.
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons
                tf.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, getattr(tarfile, "FilterError", ())):
            raise DataError(f"{label}: refusing to extract unsafe member ({exc}); the archive is unsafe.") from exc
        raise DataError(f"{label}: cannot extract the archive ({exc}); it is corrupt, download it again.") from exc


def download_and_extract(url: str, md5: str, root: Path, folder: str, *, opener: Opener | None = None,
                         manual_hint: str = "") -> Path:
    """Download a tar archive, verify it, and place its top-level ``folder`` at ``root/folder`` atomically.

    The archive is extracted into a temporary folder inside ``root`` and moved into place with
    :func:`os.replace`, so an interrupted run never leaves a half-written dataset folder behind.
    """
    root = Path(root)
    target = root / folder
    archive = download_file(url, md5, root, opener=opener, manual_hint=manual_hint)
    tmp_dir: Path | None = None
    try:
        tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
        safe_extract_tar(archive, tmp_dir, display=f"archive downloaded from {url}")
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise DataError(f"archive downloaded from {url} has no top-level folder {folder!r}; "
                            f"{manual_hint}".strip())
        try:
            os.replace(extracted, target)
        except OSError:
            # Another process may have placed the folder meanwhile; keep theirs if it is complete.
            if not target.is_dir():
                raise
    except OSError as exc:
        raise DataError(f"cannot place the extracted files at {target} ({exc.strerror or exc}); "
                        "check that the folder is writable.") from exc
    finally:
        archive.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return target
