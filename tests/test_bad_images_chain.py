"""Odd and broken images through every stage, from prepare to report.

The `faulty_chain` fixture runs the whole pipeline once on a VOC-layout folder whose train
split contains odd but valid files (grayscale, CMYK, PNG named .jpg, EXIF-rotated, 2x1 px,
3000x2000 px) and whose splits list broken ones, with `dataset.on_bad_image: skip`.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from repro import paths
from repro.clip_cache import EmbeddingCache
from repro.clip_model import load_clip
from repro.config import config_from_dict
from repro.embed import ImageEncoder
from repro.images import load_rgb_tensor
from repro.tiling import boxes_from_tiles
from tests.conftest import project_params
from tests.test_images import DISPLAYED_SIZES, ROTATED_COLOURS

pytestmark = pytest.mark.slow

NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def read(chain, relative) -> pd.DataFrame | dict | str:
    path = chain.folder / relative
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_text()


def index_row(chain, image_id: str) -> pd.Series:
    return read(chain, paths.INDEX).set_index("image_id").loc[image_id]


def view_boxes_of(chain) -> dict[str, np.ndarray]:
    image_ids, boxes = boxes_from_tiles(read(chain, paths.TILES))
    return dict(zip(image_ids, boxes))


def test_index_sizes_after_rotation(faulty_chain):
    for image_id, (width, height) in DISPLAYED_SIZES.items():
        row = index_row(faulty_chain, image_id)
        assert (row["width"], row["height"]) == (width, height), image_id


def test_index_sizes_match_decoded_pixels(faulty_chain):
    for image_id in DISPLAYED_SIZES:
        row = index_row(faulty_chain, image_id)
        pixels = load_rgb_tensor(row["path"])
        assert tuple(pixels.shape) == (3, row["height"], row["width"]), image_id


def test_whole_view_box_is_image(faulty_chain):
    boxes = view_boxes_of(faulty_chain)
    for image_id, (width, height) in DISPLAYED_SIZES.items():
        assert boxes[image_id][0].tolist() == [0, 0, width, height], image_id


def test_tiny_image_snippets_not_empty(faulty_chain):
    tiny = view_boxes_of(faulty_chain)["tiny"]
    assert (tiny[:, 2] > tiny[:, 0]).all()
    assert (tiny[:, 3] > tiny[:, 1]).all()
    assert (tiny[:, 2] <= 2).all()
    assert (tiny[:, 3] <= 1).all()


def colour_embeddings() -> dict[str, np.ndarray]:
    """Embeddings of plain red and plain blue views under the chain's random tiny CLIP."""
    config = config_from_dict({"clip": project_params()["clip"]})
    clip = load_clip(config.clip, torch.device("cpu"))
    encoder = ImageEncoder(clip, torch.device("cpu"), config.clip.precision)
    views = torch.zeros(2, 3, clip.image_size, clip.image_size, dtype=torch.uint8)
    views[0, 0] = 255
    views[1, 2] = 255
    embedded = encoder(views).float().numpy()
    return {"red": embedded[0], "blue": embedded[1]}


def nearest_colour(embedding: np.ndarray, colours: dict[str, np.ndarray]) -> str:
    embedding = embedding.astype(np.float32)
    return max(colours, key=lambda name: float(embedding @ colours[name]))


def test_rotated_snippets_embedded_rotated(faulty_chain):
    cache = EmbeddingCache(faulty_chain.folder / paths.EMBEDDINGS)
    embeddings = cache.load_all()
    colours = colour_embeddings()
    for image_id, (top, bottom) in ROTATED_COLOURS.items():
        views = embeddings[cache.image_ids.index(image_id)]
        # Views 1-3 are the top row of the 3x3 grid, views 7-9 the bottom row.
        for view in (1, 2, 3):
            assert nearest_colour(views[view], colours) == top, (image_id, view)
        for view in (7, 8, 9):
            assert nearest_colour(views[view], colours) == bottom, (image_id, view)


def test_odd_images_embedded(faulty_chain):
    cache = EmbeddingCache(faulty_chain.folder / paths.EMBEDDINGS)
    embeddings = cache.load_all().astype(np.float32)
    for image_id in DISPLAYED_SIZES:
        norms = np.linalg.norm(embeddings[cache.image_ids.index(image_id)], axis=-1)
        assert np.allclose(norms, 1.0, atol=5e-3), image_id


def test_skipped_images_listed_and_counted(faulty_chain):
    info = read(faulty_chain, paths.DATASET_INFO)
    skipped = sorted(path.rsplit("/", 1)[1] for path in info["skipped_bad_images"])
    assert skipped == sorted(f"{image_id}.jpg" for image_id in faulty_chain.voc.bad)
    timing = read(faulty_chain, paths.STAGE_TIMES / "prepare.json")
    assert timing["skipped_bad_images"] == len(faulty_chain.voc.bad)


def test_skipped_images_in_report(faulty_chain):
    report = read(faulty_chain, paths.REPORT)
    assert f"{len(faulty_chain.voc.bad)} undecodable or missing images skipped" in report


def test_skipped_images_absent_downstream(faulty_chain):
    voc = faulty_chain.voc
    train_ids = voc.train_real + list(voc.odd)
    index = read(faulty_chain, paths.INDEX)
    assert index.loc[index["split"] == "train", "image_id"].tolist() == train_ids
    assert index.loc[index["split"] == "eval", "image_id"].tolist() == voc.eval_real
    assert read(faulty_chain, paths.LABELS)["image_id"].tolist() == train_ids + voc.eval_real
    tiles = read(faulty_chain, paths.TILES)
    assert list(dict.fromkeys(tiles["image_id"])) == train_ids + voc.eval_real
    assert EmbeddingCache(faulty_chain.folder / paths.EMBEDDINGS).image_ids == train_ids
    assert read(faulty_chain, paths.PSEUDO_LABELS)["image_id"].tolist() == train_ids
    assert read(faulty_chain, paths.REFINED_LABELS)["image_id"].tolist() == train_ids
    assert read(faulty_chain, paths.EVAL_METRICS)["images"] == len(voc.eval_real)


def test_image_without_objects_kept(faulty_chain):
    info = read(faulty_chain, paths.DATASET_INFO)
    assert info["images_without_objects"] == 1
    truth = read(faulty_chain, paths.LABELS).set_index("image_id")
    assert (truth.loc["tiny"] == 0).all()


def test_undefined_ap_excluded_in_eval_json(faulty_chain):
    metrics = read(faulty_chain, paths.EVAL_METRICS)
    per_class = read(faulty_chain, paths.PER_CLASS_AP)
    without_positives = per_class.loc[per_class["positives"] == 0, "class"].tolist()
    assert without_positives, "the eval split should lack some classes"
    assert metrics["classes_excluded"] == without_positives
    assert metrics["classes_in_map"] == len(per_class) - len(without_positives)
    raw = (faulty_chain.folder / paths.EVAL_METRICS).read_text()
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"eval.json contains {name}"))


def test_undefined_ap_blank_in_csv(faulty_chain):
    per_class = read(faulty_chain, paths.PER_CLASS_AP)
    undefined = per_class.loc[per_class["positives"] == 0, "ap"]
    assert (undefined == "").all()
    defined = per_class.loc[per_class["positives"] > 0, "ap"].astype(float)
    assert defined.between(0, 100).all()
    assert not NAN.search((faulty_chain.folder / paths.PER_CLASS_AP).read_text())


def test_undefined_ap_named_in_report(faulty_chain):
    report = read(faulty_chain, paths.REPORT)
    excluded = read(faulty_chain, paths.EVAL_METRICS)["classes_excluded"]
    assert f"left out of the mAP: {', '.join(excluded)}." in report
    for name in excluded:
        assert f"| {name} | n/a | 0 |" in report, name
    assert not NAN.search(report)
