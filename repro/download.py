"""Checksummed, resumable downloads and safe archive extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed, or its bytes do not match the expected checksum."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would be written outside the extraction folder."""


class DiskSpaceError(RuntimeError):
    """Not enough free disk space for a write."""


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    size: int | None = None  # approximate bytes, when known; used for the free-space check


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Raise DiskSpaceError if `folder` has less than `needed_bytes` free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"{what} needs {needed_bytes / 1e9:.2f} GB in {folder}, but only {free / 1e9:.2f} GB "
            "is free. Free some space or point the download or output folder elsewhere."
        )


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"User-Agent": "cdul-repro"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=60)


def download(archive: Archive, folder: str | Path) -> Path:
    """Download `archive` into `folder`, resuming a partial `.part` file, and verify its MD5.

    The file gets its final name only after the checksum matches, so an interrupted or
    corrupt download never looks complete. A checksum mismatch deletes the partial file.
    """
    folder = Path(folder)
    target = folder / archive.filename
    if target.is_file() and md5sum(target) == archive.md5:
        log.info("%s already downloaded and verified", target)
        return target

    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    if archive.size:
        check_free_space(folder, archive.size - start, f"downloading {archive.filename}")

    try:
        response = _open(archive.url, start)
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(
            f"could not download {archive.url} ({error}). Download {archive.filename} by hand "
            f"into {folder}, or set dataset.root to a local copy of the dataset."
        ) from error

    with response:
        resumed = start and getattr(response, "status", 200) == 206
        if start and not resumed:
            log.info("server ignored the resume request; restarting %s", archive.filename)
            start = 0
        total = response.headers.get("Content-Length")
        total = int(total) + start if total is not None else None
        mode = "ab" if start else "wb"
        with (
            open(part, mode) as handle,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=archive.filename
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                bar.update(len(block))

    actual = md5sum(part)
    if actual != archive.md5:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.filename} from {archive.url} has MD5 {actual}, expected {archive.md5}; the "
            "partial file was deleted. Run the stage again, or download the file by hand and "
            "check it."
        )
    os.replace(part, target)
    return target


def _safe_member_path(root: Path, name: str) -> Path:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(
            f"archive member {name!r} would be written outside {root}; the archive was rejected."
        )
    destination = (root / pure).resolve()
    if not destination.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(
            f"archive member {name!r} resolves outside {root}; the archive was rejected."
        )
    return destination


def extract(archive_path: str | Path, folder: str | Path) -> None:
    """Extract a tar or zip archive into `folder`, rejecting members that escape it.

    Links, devices and absolute or `..` paths are rejected before anything is written.
    """
    archive_path, folder = Path(archive_path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            for member in members:
                _safe_member_path(folder, member.filename)
            check_free_space(
                folder, sum(m.file_size for m in members), f"extracting {archive_path.name}"
            )
            archive.extractall(folder)
        return

    with tarfile.open(archive_path) as archive:
        members = archive.getmembers()
        for member in members:
            _safe_member_path(folder, member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is a link or special file; the archive was rejected."
                )
        check_free_space(folder, sum(m.size for m in members), f"extracting {archive_path.name}")
        archive.extractall(folder, filter="data")
