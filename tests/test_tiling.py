import numpy as np
import pandas as pd
import pytest

from repro.tiling import axis_spans, boxes_from_tiles, tile_index, view_boxes


def test_grid_boxes_hand_computed():
    boxes = view_boxes(np.array([300]), np.array([90]), grid=3, overlap=0.0)[0]
    assert boxes.shape == (10, 4)
    assert boxes[0].tolist() == [0, 0, 300, 90]
    assert boxes[1].tolist() == [0, 0, 100, 30]
    assert boxes[2].tolist() == [100, 0, 200, 30]
    assert boxes[3].tolist() == [200, 0, 300, 30]
    assert boxes[4].tolist() == [0, 30, 100, 60]
    assert boxes[9].tolist() == [200, 60, 300, 90]


def test_snippets_cover_image_without_overlap():
    width, height = 500, 375  # VOC's usual size, not divisible by 3
    boxes = view_boxes(np.array([width]), np.array([height]), grid=3, overlap=0.0)[0, 1:]
    covered = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()


def test_overlap_shares_pixels_between_neighbours():
    start, end = axis_spans(np.array([100]), grid=2, overlap=0.5)
    assert start[0].tolist() == [0, 33]
    assert end[0].tolist() == [67, 100]


def test_every_snippet_nonempty_on_tiny_image():
    boxes = view_boxes(np.array([2]), np.array([1]), grid=4, overlap=0.0)[0]
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, [0, 2]].max() <= 2
    assert boxes[:, [1, 3]].max() <= 1


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_view_count(grid):
    boxes = view_boxes(np.array([64, 80]), np.array([48, 50]), grid=grid, overlap=0.25)
    assert boxes.shape == (2, 1 + grid * grid, 4)


def test_tile_table_round_trip():
    index = pd.DataFrame({"image_id": ["a", "b"], "width": [90, 60], "height": [30, 120]})
    tiles = tile_index(index, grid=3, overlap=0.0)
    assert len(tiles) == 20
    assert tiles["view"].tolist()[:10] == list(range(10))
    ids, boxes = boxes_from_tiles(tiles)
    assert ids.tolist() == ["a", "b"]
    assert boxes[1, 0].tolist() == [0, 0, 60, 120]
