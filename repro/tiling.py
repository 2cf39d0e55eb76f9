"""Views of an image: view 0 is the whole image, views 1.. are the snippets of a grid."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from repro import io, paths, stage
from repro.config import Config

log = logging.getLogger(__name__)

BOX_COLUMNS = ["x0", "y0", "x1", "y1"]


def axis_spans(length: np.ndarray, grid: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Split each length into `grid` spans that overlap by `overlap` of a span and cover it all.

    Returns integer (start, end) arrays of shape (images, grid). Every span is at least one
    pixel long, so an image smaller than the grid still gets `grid` spans (some repeated).
    """
    length = np.asarray(length, dtype=np.float64)[:, None]
    span = length / (grid - (grid - 1) * overlap)
    starts = np.arange(grid)[None, :] * span * (1.0 - overlap)
    start = np.floor(starts + 0.5).astype(np.int64)
    end = np.floor(starts + span + 0.5).astype(np.int64)
    end[:, -1] = length[:, 0].astype(np.int64)

    limit = length.astype(np.int64)
    start = np.minimum(start, limit - 1)
    end = np.clip(end, start + 1, limit)
    return start, end


def view_boxes(width: np.ndarray, height: np.ndarray, grid: int, overlap: float) -> np.ndarray:
    """Return boxes (x0, y0, x1, y1) of shape (images, 1 + grid * grid, 4).

    Box 0 is the whole image; the snippets follow in row-major order (top row first).
    """
    width = np.asarray(width, dtype=np.int64)
    height = np.asarray(height, dtype=np.int64)
    n = len(width)
    x0, x1 = axis_spans(width, grid, overlap)
    y0, y1 = axis_spans(height, grid, overlap)

    boxes = np.empty((n, 1 + grid * grid, 4), dtype=np.int64)
    boxes[:, 0] = np.stack([np.zeros(n), np.zeros(n), width, height], axis=1)
    rows = np.repeat(np.arange(grid), grid)
    cols = np.tile(np.arange(grid), grid)
    boxes[:, 1:, 0] = x0[:, cols]
    boxes[:, 1:, 1] = y0[:, rows]
    boxes[:, 1:, 2] = x1[:, cols]
    boxes[:, 1:, 3] = y1[:, rows]
    return boxes


def tile_index(index: pd.DataFrame, grid: int, overlap: float) -> pd.DataFrame:
    """Return one row per (image, view) with its box, in index order."""
    boxes = view_boxes(index["width"].to_numpy(), index["height"].to_numpy(), grid, overlap)
    n, views, _ = boxes.shape
    frame = pd.DataFrame(boxes.reshape(-1, 4), columns=BOX_COLUMNS)
    frame.insert(0, "view", np.tile(np.arange(views), n))
    frame.insert(0, "image_id", np.repeat(index["image_id"].to_numpy(), views))
    return frame


def boxes_from_tiles(tiles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return the image ids and the (images, views, 4) box array of a tiles table."""
    views = int(tiles["view"].max()) + 1
    boxes = tiles[BOX_COLUMNS].to_numpy().reshape(-1, views, 4)
    image_ids = tiles["image_id"].to_numpy()[::views]
    return image_ids, boxes


def tile(config: Config) -> dict:
    index = pd.read_parquet(paths.INDEX)
    tiles = tile_index(index, config.tiling.grid, config.tiling.overlap)
    io.write_parquet(paths.TILES, tiles)
    log.info("%d images, %d views each", len(index), 1 + config.tiling.grid**2)
    return {"images": len(index), "views": len(tiles)}


def main() -> None:
    stage.run("tile", tile)


if __name__ == "__main__":
    main()
