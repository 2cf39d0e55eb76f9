"""A small VOC-layout dataset with real sample images plus generated odd and broken files."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
# Size of the EXIF-rotated images as stored in the file: the left half red, the right half
# blue. Displayed (after the EXIF rotation), they are 40 wide and 60 high.
STORED_SIZE = (60, 40)
EXIF_ORIENTATION = 0x0112
LARGE_SIZE = (3000, 2000)


@dataclass(frozen=True)
class FaultyVoc:
    root: Path
    train_real: list[str]
    eval_real: list[str]
    odd: dict[str, str]  # image id -> split, for files that decode after conversion
    bad: dict[str, str]  # image id -> split, for files that are missing or undecodable

    @property
    def good_ids(self) -> list[str]:
        return self.train_real + self.eval_real + list(self.odd)


def _annotation(image_id: str, names: list[str]) -> str:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult></object>" for name in names
    )
    return f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"


def _halves(size: tuple[int, int], left: tuple, right: tuple) -> Image.Image:
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, subsampling=0, **options)
    return buffer.getvalue()


def _rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return _jpeg_bytes(_halves(STORED_SIZE, RED, BLUE), exif=exif)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels but which contains 1x1 of data."""
    data = bytearray(_png_bytes(Image.new("RGB", (1, 1))))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def odd_images() -> dict[str, tuple[bytes, list[str]]]:
    """Files that must decode: id -> (bytes, object names in the annotation)."""
    cmyk = Image.new("CMYK", (48, 32), (0, 255, 255, 0))  # red in CMYK terms
    return {
        "gray": (_jpeg_bytes(_gradient(48, 32).convert("L")), ["person"]),
        "cmyk": (_jpeg_bytes(cmyk), ["car"]),
        "pngjpg": (_png_bytes(_halves((48, 32), RED, BLUE).convert("RGBA")), ["chair"]),
        "exif6": (_rotated(6), ["person"]),
        "exif8": (_rotated(8), ["car"]),
        "tiny": (_jpeg_bytes(Image.new("RGB", (2, 1), RED)), []),  # no objects either
        "large": (_jpeg_bytes(_gradient(*LARGE_SIZE)), ["person"]),
    }


def copy_sample(root: Path, sample: Path, count: int) -> list[str]:
    """Copy the first `count` test images of the sample and their XML into a new VOC folder.

    Returns their ids. The split lists are left to the caller.
    """
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    ids = (sample / "ImageSets/Main/test.txt").read_text().split()[:count]
    for image_id in ids:
        shutil.copy(sample / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
        shutil.copy(sample / "Annotations" / f"{image_id}.xml", root / "Annotations")
    return ids


def build(root: Path, sample: Path, n_train: int = 10, n_eval: int = 10) -> FaultyVoc:
    """Write a VOC folder with real sample images, odd-but-valid files and broken files.

    Train split: `n_train` real images, the odd files, a truncated JPEG and a listed image
    whose JPEG is missing. Eval split: `n_eval` real images, a zero-byte file and a PNG whose
    header claims 144 MP.
    """
    real = copy_sample(root, sample, n_train + n_eval)
    images, annotations, lists = root / "JPEGImages", root / "Annotations", root / "ImageSets/Main"
    train_real, eval_real = real[:n_train], real[n_train:]

    odd = {}
    for image_id, (data, names) in odd_images().items():
        (images / f"{image_id}.jpg").write_bytes(data)
        (annotations / f"{image_id}.xml").write_text(_annotation(image_id, names))
        odd[image_id] = "trainval"

    source = (images / f"{train_real[0]}.jpg").read_bytes()
    broken = {
        "truncated": ("trainval", source[: len(source) // 2]),
        "missing": ("trainval", None),
        "empty": ("test", b""),
        "bomb": ("test", _png_claiming(12_000, 12_000)),
    }
    bad = {}
    for image_id, (split, data) in broken.items():
        if data is not None:
            (images / f"{image_id}.jpg").write_bytes(data)
        (annotations / f"{image_id}.xml").write_text(_annotation(image_id, ["person"]))
        bad[image_id] = split

    splits = {
        "trainval": train_real + list(odd) + [i for i, s in bad.items() if s == "trainval"],
        "test": eval_real + [i for i, s in bad.items() if s == "test"],
    }
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return FaultyVoc(root, train_real, eval_real, odd, bad)
