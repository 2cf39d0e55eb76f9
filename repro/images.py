"""Image decoding shared by every stage, so all of them see the same pixels."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Decompression-bomb guard: an image with more pixels than this (10000 x 10000) is a bad
# file. The check reads only the header, before any pixel is decoded.
MAX_PIXELS = 10_000 * 10_000


class BadImageError(ValueError):
    """An image file is missing or cannot be decoded."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully, apply its EXIF orientation and convert it to RGB.

    Grayscale, palette, CMYK and RGBA files become 3-channel RGB. The file's content decides
    its format, so a PNG named `.jpg` decodes as a PNG.

    Raises:
        BadImageError: the file is missing, empty, truncated, too large or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that, but MAX_PIXELS decides here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise BadImageError(
                        f"{path}: {image.width}x{image.height} pixels is more than the "
                        f"{MAX_PIXELS / 1e6:.0f} MP limit"
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                return image.convert("RGB")
    except BadImageError:
        raise
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as error:
        raise BadImageError(f"{path}: {error}") from error


def load_rgb_tensor(path: str | Path) -> torch.Tensor:
    """Decode an image as a uint8 tensor of shape (3, height, width)."""
    array = np.asarray(load_rgb(path), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def probe_image(path: str | Path) -> tuple[int, int]:
    """Decode an image as `load_rgb` does and return its (width, height) after EXIF rotation."""
    image = load_rgb(path)
    return image.width, image.height
