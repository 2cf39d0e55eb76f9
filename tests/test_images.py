"""Decoding of odd and broken image files, and how prepare handles the broken ones."""

import logging

import pytest
import torch
import yaml

from repro import paths, stage
from repro.classifier import ImageDataset
from repro.config import config_from_dict
from repro.images import BadImageError, load_rgb_tensor
from repro.prepare import prepare
from tests import faulty_voc
from tests.conftest import chain_params, inside, merge

# (width, height) after EXIF rotation, as every stage must see them.
DISPLAYED_SIZES = {
    "gray": (48, 32),
    "cmyk": (48, 32),
    "pngjpg": (48, 32),
    "exif6": (40, 60),
    "exif8": (40, 60),
    "tiny": (2, 1),
    "large": faulty_voc.LARGE_SIZE,
}
# Colour of the top and bottom rows after rotation: orientation 6 turns the stored left
# half (red) to the top, orientation 8 turns it to the bottom.
ROTATED_COLOURS = {"exif6": ("red", "blue"), "exif8": ("blue", "red")}
CHANNEL = {"red": 0, "blue": 2}


def image_path(voc, image_id: str):
    return voc.root / "JPEGImages" / f"{image_id}.jpg"


def test_odd_images_rgb_and_sized(faulty_dataset):
    for image_id, (width, height) in DISPLAYED_SIZES.items():
        pixels = load_rgb_tensor(image_path(faulty_dataset, image_id))
        assert tuple(pixels.shape) == (3, height, width), image_id
        assert pixels.dtype == torch.uint8, image_id


def test_gray_becomes_equal_channels(faulty_dataset):
    gray = load_rgb_tensor(image_path(faulty_dataset, "gray"))
    assert torch.equal(gray[0], gray[1])
    assert torch.equal(gray[0], gray[2])


def test_cmyk_red_becomes_rgb_red(faulty_dataset):
    mean = load_rgb_tensor(image_path(faulty_dataset, "cmyk")).float().mean(dim=(1, 2))
    assert mean[0] > 200
    assert mean[1] < 50
    assert mean[2] < 50


def test_classifier_input_rotated(faulty_dataset):
    for image_id, (top, bottom) in ROTATED_COLOURS.items():
        _, pixels = ImageDataset([str(image_path(faulty_dataset, image_id))], 32)[0]
        assert pixels.shape == (3, 32, 32)
        top_rows = pixels[:, :8].mean(dim=(1, 2))
        bottom_rows = pixels[:, -8:].mean(dim=(1, 2))
        assert top_rows[CHANNEL[top]] > top_rows[CHANNEL[bottom]], image_id
        assert bottom_rows[CHANNEL[bottom]] > bottom_rows[CHANNEL[top]], image_id


@pytest.mark.parametrize(
    ("image_id", "reason"),
    [
        ("truncated", "image file is truncated"),
        ("missing", "image file not found"),
        ("empty", "cannot identify image file"),
        ("bomb", "12000x12000 pixels is more than the 100 MP limit"),
    ],
)
def test_bad_image_reason(faulty_dataset, image_id, reason):
    with pytest.raises(BadImageError, match=reason):
        load_rgb_tensor(image_path(faulty_dataset, image_id))


def test_skip_logs_each_file(faulty_dataset, tmp_path, caplog):
    config = config_from_dict(chain_params(faulty_dataset.root))
    with inside(tmp_path), caplog.at_level(logging.WARNING, logger="repro.prepare"):
        result = prepare(config)
    logged = [r.getMessage() for r in caplog.records if "skipped bad image" in r.getMessage()]
    assert len(logged) == len(faulty_dataset.bad)
    for image_id in faulty_dataset.bad:
        assert any(f"{image_id}.jpg" in message for message in logged), image_id
    assert result["skipped_bad_images"] == len(faulty_dataset.bad)


def test_fail_names_files_and_fix(faulty_dataset, tmp_path):
    params = merge(chain_params(faulty_dataset.root), {"dataset": {"on_bad_image": "fail"}})
    with inside(tmp_path), pytest.raises(BadImageError) as error:
        prepare(config_from_dict(params))
    message = str(error.value)
    assert "4 image(s) are missing or cannot be decoded" in message
    assert "truncated.jpg: image file is truncated" in message
    assert "missing.jpg: image file not found" in message
    assert "and 1 more" in message
    assert "dataset.on_bad_image: skip" in message
    assert not (tmp_path / paths.PREPARED).exists()


def test_stage_fails_without_traceback(faulty_dataset, tmp_path, caplog):
    params = merge(chain_params(faulty_dataset.root), {"dataset": {"on_bad_image": "fail"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with inside(tmp_path), pytest.raises(SystemExit) as exit_info:
        stage.run("prepare", prepare)
    assert exit_info.value.code == 1
    assert "prepare failed: 4 image(s) are missing" in caplog.text
    assert not (tmp_path / "results").exists()
