import json
import os
import shutil

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from repro import embed as embed_module
from repro import paths
from repro.aggregate import aggregate
from repro.clip_cache import EmbeddingCache, plan_shards
from repro.clip_model import load_clip
from repro.config import ClipConfig, ConfigError, config_from_dict
from repro.download import DiskSpaceError
from repro.embed import (
    SHARD_IMAGES_ENV,
    ImageEncoder,
    cut_views,
    embed,
    fingerprint,
    fit_view,
    shard_images,
)
from repro.prepare import prepare
from repro.tiling import tile, view_boxes
from tests.conftest import project_params


def quadrant_image() -> torch.Tensor:
    """A 3x40x60 uint8 image whose four quadrants are red, green, blue and white."""
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[0, :20, :30] = 255
    image[1, :20, 30:] = 255
    image[2, 20:, :30] = 255
    image[:, 20:, 30:] = 255
    return image


def test_snippets_cut_from_decoded_image():
    image = quadrant_image()
    boxes = view_boxes(np.array([60]), np.array([40]), grid=2, overlap=0.0)[0]
    views = cut_views(image, boxes, size=16, fit="squash", interpolation="bicubic")
    assert views.shape == (5, 3, 16, 16)
    expected = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for view, colour in zip(views[1:], expected):
        assert view.float().mean(dim=(1, 2)).tolist() == pytest.approx(colour, abs=1)


def test_crop_fit_keeps_centre_and_squash_keeps_all():
    image = torch.zeros(3, 10, 30, dtype=torch.uint8)
    image[:, :, :5] = 255  # a white band on the left edge
    cropped = fit_view(image, 10, "crop")
    squashed = fit_view(image, 10, "squash")
    assert cropped.shape == squashed.shape == (3, 10, 10)
    assert cropped.max() == 0
    assert squashed[:, :, 0].float().mean() > 200


def test_plan_shards_cover_rows():
    shards = plan_shards(10, 4)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    assert shards[2].file == "shard-00002.npy"


def test_embedding_independent_of_batch():
    clip = load_clip(ClipConfig(model="repro-tiny-RN", pretrained="random"), torch.device("cpu"))
    encoder = ImageEncoder(clip, torch.device("cpu"), "fp32")
    views = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    together = encoder(views).float()
    alone = torch.cat([encoder(views[i : i + 1]) for i in range(6)]).float()
    assert torch.allclose(together, alone, atol=2e-3)
    assert torch.allclose(together.norm(dim=-1), torch.ones(6), atol=2e-3)


def run_cache_stages(config) -> EmbeddingCache:
    prepare(config)
    tile(config)
    embed(config)
    return EmbeddingCache(paths.EMBEDDINGS)


def test_embed_writes_complete_cache(workdir):
    config = workdir(dataset={"max_images": 6})
    prepare(config)
    tile(config)
    stats = embed(config)
    cache = EmbeddingCache(paths.EMBEDDINGS)
    index = pd.read_parquet(paths.INDEX)
    assert cache.image_ids == index.loc[index["split"] == "train", "image_id"].tolist()
    assert cache.views == 10
    embeddings = cache.load_all()
    assert embeddings.shape == (6, 10, 64)
    assert embeddings.dtype == np.float16
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=-1)
    assert np.allclose(norms, 1.0, atol=5e-3)
    assert cache.text("natural").shape == (len(config.prompts.templates), 20, 64)
    assert not np.allclose(cache.text("natural"), cache.text("raw"))
    assert cache.random_weights
    assert cache.manifest["note"] == "random weights: not comparable with the paper"
    assert stats["views_encoded"] == 60
    shard = paths.EMBEDDINGS / "shard-00000.npy"
    assert shard.samefile(paths.EMBED_WORK / shard.name)


def test_template_change_encodes_only_text(workdir):
    config = workdir(dataset={"max_images": 4})
    prepare(config)
    tile(config)
    embed(config)
    shard = paths.EMBEDDINGS / "shard-00000.npy"
    first_shard = shard.read_bytes()
    first_text = EmbeddingCache(paths.EMBEDDINGS).text("natural")

    templates = ["a photo of a {}.", "a sketch of a {}."]
    stats = embed(workdir(dataset={"max_images": 4}, prompts={"templates": templates}))
    assert stats["views_encoded"] == 0
    assert shard.read_bytes() == first_shard
    assert EmbeddingCache(paths.EMBEDDINGS).text("natural").shape[0] == 2
    assert EmbeddingCache(paths.EMBEDDINGS).text("natural")[0] == pytest.approx(first_text[0])


def test_replaced_checkpoint_encodes_again(workdir):
    model = open_clip.create_model("repro-tiny-ViT")
    torch.save(model.state_dict(), "clip.pt")
    config = workdir(dataset={"max_images": 2}, clip={"pretrained": "clip.pt"})
    prepare(config)
    tile(config)
    embed(config)
    torch.save(open_clip.create_model("repro-tiny-ViT").state_dict(), "clip.pt")
    os.utime("clip.pt", ns=(1, 1))
    assert embed(config)["views_encoded"] == 20


def test_views_of_one_image_differ(workdir):
    cache = run_cache_stages(workdir(dataset={"max_images": 2}))
    first = cache.load_all()[0].astype(np.float32)
    assert not np.allclose(first[0], first[1])


def test_pseudo_labels_ignore_ground_truth(workdir):
    config = workdir(dataset={"max_images": 8})
    run_cache_stages(config)
    aggregate(config)
    before = pd.read_parquet(paths.PSEUDO_LABELS)

    truth = pd.read_parquet(paths.LABELS)
    classes = [c for c in truth.columns if c != "image_id"]
    rng = np.random.default_rng(0)
    truth[classes] = rng.permutation(truth[classes].to_numpy())
    truth.to_parquet(paths.LABELS, index=False)
    aggregate(config)
    after = pd.read_parquet(paths.PSEUDO_LABELS)
    assert before.equals(after)
    metrics = json.loads(paths.PSEUDO_METRICS.read_text())
    assert metrics["images"] == 8


def test_embed_checks_free_space(workdir, monkeypatch):
    config = workdir(dataset={"max_images": 2})
    prepare(config)
    tile(config)
    usage = shutil.disk_usage(".")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    expected = r"the CLIP embedding cache \(20 views of 64 dims in fp16\) needs 2.56 kB"
    with pytest.raises(DiskSpaceError, match=expected):
        embed(config)
    assert not paths.EMBEDDINGS.exists()


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_shard_size_variable_rejected(monkeypatch, value):
    monkeypatch.setenv(SHARD_IMAGES_ENV, value)
    with pytest.raises(ConfigError, match=f"{SHARD_IMAGES_ENV} = '{value}' is invalid"):
        shard_images()


def test_shard_size_changes_fingerprint():
    config = config_from_dict(project_params())
    clip = load_clip(config.clip, torch.device("cpu"))
    ids = np.array(["a", "b"])
    boxes = np.zeros((2, 10, 4), dtype=np.int64)
    first = fingerprint(config, clip, ids, boxes, ["a.jpg", "b.jpg"], shard_size=1)
    second = fingerprint(config, clip, ids, boxes, ["a.jpg", "b.jpg"], shard_size=2)
    assert first != second


def test_more_processes_than_cores_rejected(monkeypatch):
    config = config_from_dict(project_params(clip={"processes": 3, "device": "cpu"}))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="clip.processes = 3, but this machine has 2 CPU"):
        embed(config)


def test_more_processes_than_gpus_rejected(monkeypatch):
    config = config_from_dict(project_params(clip={"processes": 3, "device": "cuda"}))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(embed_module, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="clip.processes = 3, but this machine has 2 CUDA"):
        embed(config)
