import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from repro.datasets import voc
from repro.download import (
    Archive,
    DiskSpaceError,
    DownloadError,
    UnsafeArchiveError,
    check_free_space,
    download,
    extract,
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def build_voc_archive(sample: Path, target: Path, ids: list[str]) -> bytes:
    """A tar laid out like VOC's official archive, holding a few sample images."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        base = "VOCdevkit/VOC2007"
        for image_id in ids:
            archive.add(
                sample / "JPEGImages" / f"{image_id}.jpg", f"{base}/JPEGImages/{image_id}.jpg"
            )
            archive.add(
                sample / "Annotations" / f"{image_id}.xml", f"{base}/Annotations/{image_id}.xml"
            )
        listing = ("\n".join(ids) + "\n").encode()
        for split in ("trainval", "test"):
            info = tarfile.TarInfo(f"{base}/ImageSets/Main/{split}.txt")
            info.size = len(listing)
            archive.addfile(info, io.BytesIO(listing))
    target.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_fetch_voc_from_local_server(server, tmp_path, voc_sample):
    root, url, _ = server
    ids = sorted(p.stem for p in (voc_sample / "JPEGImages").glob("*.jpg"))[:3]
    data = build_voc_archive(voc_sample, root / "VOC.tar", ids)
    archive = Archive(f"{url}/VOC.tar", "VOC.tar", md5(data), len(data))

    voc_root = voc.fetch("voc2007", tmp_path / "downloads", [archive])
    assert voc_root == tmp_path / "downloads" / "VOCdevkit" / "VOC2007"
    raw = voc.load("voc2007", voc_root, ["trainval"], "positive")
    assert raw.images["image_id"].tolist() == ids
    assert raw.labels.shape == (3, 20)


def test_checksum_mismatch_removes_partial_file(server, tmp_path):
    root, url, _ = server
    (root / "file.bin").write_bytes(b"x" * 1000)
    archive = Archive(f"{url}/file.bin", "file.bin", "0" * 32)
    with pytest.raises(DownloadError, match="has MD5 .*expected 0000"):
        download(archive, tmp_path)
    assert not (tmp_path / "file.bin").exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_download_resumes_partial_file(server, tmp_path):
    root, url, handler = server
    data = bytes(range(256)) * 100
    (root / "file.bin").write_bytes(data)
    (tmp_path / "file.bin.part").write_bytes(data[:5000])
    path = download(Archive(f"{url}/file.bin", "file.bin", md5(data)), tmp_path)
    assert path.read_bytes() == data
    assert handler.seen_ranges == [5000]
    assert not (tmp_path / "file.bin.part").exists()


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    root, url, handler = server
    handler.ranges = False
    data = b"abc" * 1000
    (root / "file.bin").write_bytes(data)
    (tmp_path / "file.bin.part").write_bytes(b"garbage")
    path = download(Archive(f"{url}/file.bin", "file.bin", md5(data)), tmp_path)
    assert path.read_bytes() == data


def test_dropped_connection_keeps_only_part(server, tmp_path):
    root, url, handler = server
    data = bytes(range(256)) * 400
    (root / "file.bin").write_bytes(data)
    handler.drop_after = 30_000
    archive = Archive(f"{url}/file.bin", "file.bin", md5(data))
    with pytest.raises(DownloadError, match="failed after 30.00 kB of 102.40 kB") as error:
        download(archive, tmp_path)
    assert "run the stage again to resume" in str(error.value)
    assert not (tmp_path / "file.bin").exists()
    assert (tmp_path / "file.bin.part").read_bytes() == data[:30_000]


def test_dropped_connection_then_resume(server, tmp_path):
    root, url, handler = server
    data = bytes(range(256)) * 400
    (root / "file.bin").write_bytes(data)
    archive = Archive(f"{url}/file.bin", "file.bin", md5(data))
    handler.drop_after = 30_000
    with pytest.raises(DownloadError):
        download(archive, tmp_path)
    handler.drop_after = None
    path = download(archive, tmp_path)
    assert path.read_bytes() == data
    assert handler.seen_ranges == [30_000]
    assert not (tmp_path / "file.bin.part").exists()


def test_complete_part_file_renamed_without_request(server, tmp_path):
    root, url, handler = server
    data = b"complete" * 100
    (tmp_path / "file.bin.part").write_bytes(data)
    path = download(Archive(f"{url}/file.bin", "file.bin", md5(data)), tmp_path)
    assert path.read_bytes() == data
    assert handler.requests == []


def test_part_longer_than_file_restarts(server, tmp_path):
    root, url, handler = server
    data = b"abc" * 100
    (root / "file.bin").write_bytes(data)
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)
    path = download(Archive(f"{url}/file.bin", "file.bin", md5(data)), tmp_path)
    assert path.read_bytes() == data
    assert handler.seen_ranges == [1000]


def test_download_checks_space_before_request(server, tmp_path):
    root, url, handler = server
    (root / "file.bin").write_bytes(b"x" * 10)
    needed = shutil.disk_usage(tmp_path).free * 10
    archive = Archive(f"{url}/file.bin", "file.bin", "0" * 32, needed)
    with pytest.raises(DiskSpaceError, match="downloading file.bin needs .* GB in .* free"):
        download(archive, tmp_path)
    assert handler.requests == []
    assert not (tmp_path / "file.bin.part").exists()


def test_unreachable_url_explains_ways_out(tmp_path):
    archive = Archive("http://127.0.0.1:9/none.tar", "none.tar", "0" * 32)
    with pytest.raises(DownloadError, match="set dataset.root"):
        download(archive, tmp_path)


def tar_with(tmp_path: Path, name: str, kind=tarfile.REGTYPE, link: str = "") -> Path:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = 0 if kind != tarfile.REGTYPE else 3
        archive.addfile(info, io.BytesIO(b"bad") if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("../escape.txt", tarfile.REGTYPE, ""),
        ("/tmp/absolute.txt", tarfile.REGTYPE, ""),
        ("a/../../escape.txt", tarfile.REGTYPE, ""),
        ("link", tarfile.SYMTYPE, "/etc/passwd"),
    ],
)
def test_unsafe_archive_rejected(tmp_path, name, kind, link):
    archive = tar_with(tmp_path, name, kind, link)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        extract(archive, target)
    assert not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []


def zip_with(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fine.txt", "fine")
        archive.writestr(zipfile.ZipInfo(name), "bad")
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/absolute.txt", "a/../../escape.txt"])
def test_unsafe_zip_rejected(tmp_path, name):
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract(zip_with(tmp_path, name), target)
    assert not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []


def test_extract_checks_space_first(tmp_path, monkeypatch):
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = 50_000
        tar.addfile(info, io.BytesIO(b"x" * 50_000))
    target = tmp_path / "out"
    target.mkdir()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=20_000))
    with pytest.raises(DiskSpaceError, match=r"extracting data.tar needs 50.00 kB in .*20.00 kB"):
        extract(archive, target)
    assert list(target.iterdir()) == []


def test_truncated_archive_reported(tmp_path, voc_sample):
    archive = tmp_path / "VOC.tar"
    data = build_voc_archive(voc_sample, archive, ["000006"])
    archive.write_bytes(data[: len(data) // 3])
    with pytest.raises(DownloadError, match="is not a readable tar or zip archive"):
        extract(archive, tmp_path / "out")


def test_free_space_message_gives_need(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DiskSpaceError, match="needs .* GB .* free"):
        check_free_space(tmp_path, free * 10, "test write")
