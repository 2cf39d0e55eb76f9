"""Shared fixtures: the real VOC 2007 sample, tiny-model params, and stage runs in a temp folder."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from repro.config import config_from_dict

PROJECT = Path(__file__).resolve().parents[1]
VOC_SAMPLE = Path(os.environ.get("REPRO_VOC_SAMPLE", PROJECT.parent / "shared/data/voc2007-sample"))
COCO_SAMPLE = Path(
    os.environ.get("REPRO_COCO_SAMPLE", PROJECT.parent / "shared/data/coco2014-sample")
)

# Small settings that keep a whole pipeline run on 2 CPU cores within seconds.
TINY_PARAMS = {
    "dataset": {"root": str(VOC_SAMPLE), "holdout": 0.5, "max_images": 24},
    "clip": {"model": "repro-tiny-ViT", "pretrained": "random", "batch_size": 40, "num_workers": 0},
    "train": {
        "backbone": "resnet18",
        "weights": "none",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "label_update": {"every": 1},
    },
    "eval": {"batch_size": 16, "num_workers": 0},
}


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def project_params(**overrides) -> dict:
    """The project's params.yaml with the tiny settings and `overrides` merged in."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return merge(merge(params, TINY_PARAMS), overrides)


@pytest.fixture
def voc_sample() -> Path:
    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        if os.environ.get("REPRO_REQUIRE_SAMPLE"):
            pytest.fail(f"the VOC 2007 sample is required but missing at {VOC_SAMPLE}")
        pytest.skip(f"VOC 2007 sample not found at {VOC_SAMPLE}; set REPRO_VOC_SAMPLE")
    return VOC_SAMPLE


@pytest.fixture
def workdir(tmp_path, monkeypatch, voc_sample):
    """A temp project folder (the cwd) with tiny params; returns a function to rewrite them."""
    monkeypatch.chdir(tmp_path)

    def write(**overrides):
        params = project_params(**overrides)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return config_from_dict(params, check=True, base=tmp_path)

    write()
    return write
