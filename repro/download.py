"""Checksummed, resumable downloads and safe archive extraction."""

from __future__ import annotations

import hashlib
import http.client
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


def format_bytes(count: float) -> str:
    """Render a byte count with a decimal unit: '512 B', '3.4 MB', '1.25 GB'."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


def check_free_space(
    folder: str | Path,
    needed_bytes: int,
    what: str,
    fix: str = "Free some space or point the download or output folder elsewhere.",
) -> None:
    """Raise DiskSpaceError if `folder` has less than `needed_bytes` free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"{what} needs {format_bytes(needed_bytes)} in {folder}, but only "
            f"{format_bytes(free)} is free. {fix}"
        )


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"User-Agent": "cdul-repro"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=60)


def download(archive: Archive, folder: str | Path) -> Path:
    """Download `archive` into `folder`, resuming a partial `.part` file, and verify its MD5.

    The file gets its final name only after the checksum matches, so an interrupted or
    corrupt download never looks complete. A connection that drops mid-body keeps the
    `.part` file for the next call to resume; a checksum mismatch deletes it.

    Raises:
        DownloadError: the server cannot be reached, the connection dropped, or the bytes
            do not match `archive.md5`.
        DiskSpaceError: `folder` has less free space than the rest of the file needs.
    """
    folder = Path(folder)
    target = folder / archive.filename
    if target.is_file() and md5sum(target) == archive.md5:
        log.info("%s already downloaded and verified", target)
        return target

    part = target.with_name(target.name + ".part")
    # A run killed after the last byte but before the rename leaves a complete .part file,
    # which a Range request past its end would not fetch (HTTP 416).
    if part.is_file() and md5sum(part) == archive.md5:
        os.replace(part, target)
        return target
    start = part.stat().st_size if part.is_file() else 0
    if archive.size:
        check_free_space(folder, archive.size - start, f"downloading {archive.filename}")

    response = _request(archive, folder, start)
    if response.status == 416:  # a .part file longer than the served file: start over
        response.close()
        log.info("the partial %s does not fit the served file; restarting", part)
        start = 0
        response = _request(archive, folder, start)
    with response:
        received = _write_body(response, part, archive, start)

    actual = md5sum(part)
    if actual != archive.md5:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.filename} from {archive.url} has MD5 {actual}, expected {archive.md5}; the "
            "partial file was deleted. Run the stage again, or download the file by hand and "
            "check it."
        )
    log.info("downloaded %s (%s)", target, format_bytes(received))
    os.replace(part, target)
    return target


def _request(archive: Archive, folder: Path, start: int):
    """Open the URL of `archive` from byte `start`; an HTTP 416 reply is returned, not raised."""
    try:
        return _open(archive.url, start)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:
            return error
        raise _unreachable(archive, folder, error) from error
    except (urllib.error.URLError, OSError) as error:
        raise _unreachable(archive, folder, error) from error


def _unreachable(archive: Archive, folder: Path, error: Exception) -> DownloadError:
    return DownloadError(
        f"could not download {archive.url} ({error}). Download {archive.filename} by hand "
        f"into {folder}, or set dataset.root to a local copy of the dataset."
    )


def _write_body(response, part: Path, archive: Archive, start: int) -> int:
    """Append the response body to `part` (or overwrite it if the server ignored the range).

    Returns the size of `part` afterwards. Raises DownloadError, keeping `part`, when the
    connection fails or ends before the Content-Length the server announced.
    """
    resumed = start and response.status == 206
    if start and not resumed:
        log.info("server ignored the resume request; restarting %s", archive.filename)
        start = 0
    length = response.headers.get("Content-Length")
    expected = int(length) + start if length is not None else None
    written = start
    try:
        with (
            open(part, "ab" if start else "wb") as handle,
            tqdm(
                total=expected, initial=start, unit="B", unit_scale=True, desc=archive.filename
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                written += len(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as error:
        raise _interrupted(archive, part, written, expected, error) from error
    if expected is not None and written < expected:
        raise _interrupted(archive, part, written, expected, "connection closed early")
    return written


def _interrupted(archive: Archive, part: Path, written: int, expected, reason) -> DownloadError:
    total = format_bytes(expected) if expected is not None else "an unknown size"
    return DownloadError(
        f"download of {archive.url} failed after {format_bytes(written)} of {total} "
        f"({reason}). The partial file {part} was kept; run the stage again to resume it."
    )


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

    Links, devices and absolute or `..` paths are rejected, and the free space is checked,
    before anything is written.

    Raises:
        UnsafeArchiveError: a member would land outside `folder` or is a link.
        DiskSpaceError: the members need more space than `folder` has free.
        DownloadError: the file is not a readable tar or zip archive.
    """
    archive_path, folder = Path(archive_path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive_path):
            _extract_zip(archive_path, folder)
        else:
            _extract_tar(archive_path, folder)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise DownloadError(
            f"{archive_path} is not a readable tar or zip archive ({error}). Delete it and run "
            "the stage again to download it anew."
        ) from error


def _extract_zip(archive_path: Path, folder: Path) -> None:
    with zipfile.ZipFile(archive_path) as archive:
        members = archive.infolist()
        for member in members:
            _safe_member_path(folder, member.filename)
        check_free_space(
            folder, sum(m.file_size for m in members), f"extracting {archive_path.name}"
        )
        archive.extractall(folder)


def _extract_tar(archive_path: Path, folder: Path) -> None:
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
