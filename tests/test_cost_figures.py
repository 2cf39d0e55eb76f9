"""Cost figures of the stages, the shard-size override, and the blocked cosine product."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repro import stage
from repro.aggregate import cosine_similarities
from repro.config import Config
from repro.embed import SHARD_IMAGES, cost_figures, keep_buffers_on_heap, shard_images
from tests.conftest import PROJECT


def test_shard_images_default(monkeypatch):
    monkeypatch.delenv("REPRO_EMBED_SHARD_IMAGES", raising=False)
    assert shard_images() == SHARD_IMAGES


def test_shard_images_override(monkeypatch):
    monkeypatch.setenv("REPRO_EMBED_SHARD_IMAGES", "3")
    assert shard_images() == 3


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_shard_images_invalid(monkeypatch, value):
    monkeypatch.setenv("REPRO_EMBED_SHARD_IMAGES", value)
    with pytest.raises(ValueError, match="REPRO_EMBED_SHARD_IMAGES.*invalid"):
        shard_images()


RANKS = [
    {"rank": 0, "device": "cpu", "images_encoded": 6, "views_encoded": 60, "encode_s": 2.0},
    {"rank": 1, "device": "cpu", "images_encoded": 4, "views_encoded": 40, "encode_s": 4.0},
]


def test_cost_figures_sum_ranks():
    figures = cost_figures(RANKS, 10, Config(), 60)
    assert (figures["images_encoded"], figures["views_encoded"]) == (10, 100)


def test_cost_figures_rate_of_slowest_rank():
    figures = cost_figures(RANKS, 10, Config(), 60)
    assert (figures["encode_s"], figures["views_per_s"], figures["images_per_s"]) == (4, 25, 2.5)


def test_cost_figures_resumed_run_has_no_rate():
    idle = [{**RANKS[0], "images_encoded": 0, "views_encoded": 0}]
    assert cost_figures(idle, 10, Config(), 60)["views_per_s"] is None


def test_peak_rss_ignores_parent_peak(tmp_path):
    """A child started by a large process reports its own peak, not the parent's."""
    ballast = np.ones(600 * 2**20, dtype=np.uint8)  # 600 MiB resident in this process
    code = "from repro.stage import peak_rss_mb; print(peak_rss_mb())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(PROJECT), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(result.stdout) < stage.peak_rss_mb() - ballast.nbytes / 2**20 / 2


def test_stage_writes_cost_keys(workdir):
    workdir(dataset={"max_images": 2})
    stage.run("prepare", lambda config: {"images": 2})
    figures = json.loads(Path("results/timing/prepare.json").read_text())
    assert list(figures)[:5] == ["stage", "wall_s", "cpu_s", "peak_rss_mb", "images"]


def test_cosine_blocks_equal_one_product():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((300, 10, 32)).astype(np.float16)  # 3000 views, 3 blocks
    classes = torch.nn.functional.normalize(torch.randn(7, 32), dim=-1)
    whole = torch.from_numpy(embeddings.astype(np.float32)) @ classes.T
    assert torch.equal(cosine_similarities(embeddings, classes), whole)


def test_cosine_reads_memory_map(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "shard.npy", rng.standard_normal((5, 3, 8)).astype(np.float16))
    shard = np.load(tmp_path / "shard.npy", mmap_mode="r")
    classes = torch.eye(8)[:4]
    result = cosine_similarities(shard, classes)
    assert torch.equal(result, torch.from_numpy(shard[..., :4].astype(np.float32)))


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the allocator setting exists only in glibc"
)
def test_buffers_kept_on_heap_on_glibc():
    assert keep_buffers_on_heap()
