"""Smoke test of the benchmark script's parts on the tiny model and a few VOC images."""

import numpy as np
import pytest
import torch

from benchmarks import run as bench
from repro import clip_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embed_figures(tmp_path_factory):
    if not (bench.VOC_SAMPLE / "JPEGImages").is_dir():
        pytest.skip(f"VOC 2007 sample not found at {bench.VOC_SAMPLE}")
    return bench.embed_benchmark(
        tmp_path_factory.mktemp("embed"),
        "repro-tiny-ViT",
        images=3,
        voc=bench.VOC_SAMPLE,
        batch_size=20,
        num_workers=0,
        device=torch.device("cpu"),
        repeats=1,
        matmul_seconds=0.3,
    )


def test_engine_counts_every_view(embed_figures):
    assert (embed_figures["images"], embed_figures["views"]) == (3, 30)


def test_engine_share_is_rate_times_flops(embed_figures):
    expected = (
        embed_figures["engine_views_per_s"]
        * embed_figures["gflop_per_view"]
        / embed_figures["matmul_gflops"]
    )
    assert embed_figures["engine_share_of_matmul"] == pytest.approx(expected, rel=0.05, abs=1e-4)


def test_naive_driver_rate_positive(embed_figures):
    assert embed_figures["naive_views_per_s"] > 0


def test_view_flops_count_attention():
    clip = bench.load_clip(
        bench.ClipConfig(model="repro-tiny-ViT", pretrained="random"), torch.device("cpu")
    )
    # 64 px in 16 px patches: 16 patches and a class token, width 64, 2 layers. Patch
    # convolution, then per layer and token the attention projections (4 x 64^2) and the
    # MLP (8 x 64^2), then the output projection; 2 FLOPs per multiply-add. The fused
    # attention of inference mode would drop the 4 x 64^2 projections.
    convolution = 16 * 64 * 3 * 16 * 16 * 2
    layers = 2 * 17 * 12 * 64**2 * 2
    expected = (convolution + layers + 64 * 64 * 2) / 1e9
    assert bench.view_gflops(clip.model, clip.image_size, torch.device("cpu")) >= expected


def test_matmul_rate_positive():
    wall_rate, cpu_rate = bench.matmul_gflops(torch.device("cpu"), size=256, seconds=0.2)
    assert min(wall_rate, cpu_rate) > 0


def test_synthetic_cache_unit_length(tmp_path):
    cache = bench.write_synthetic_cache(tmp_path, images=5, views=3, dim=8, shard_images=2)
    norms = np.linalg.norm(cache.load_all().astype(np.float32), axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-3)


def test_synthetic_cache_shards(tmp_path):
    cache = bench.write_synthetic_cache(tmp_path, images=5, views=3, dim=8, shard_images=2)
    assert [s.file for s in cache.shards] == [clip_cache.shard_name(n) for n in range(3)]


def test_aggregate_loop_matches_vectorised(tmp_path):
    figures = bench.aggregate_benchmark(tmp_path, images=40, views=10, dim=16, repeats=1)
    assert figures["loop_matches_vectorised"]


def test_aggregate_counts_scores(tmp_path):
    figures = bench.aggregate_benchmark(tmp_path, images=40, views=10, dim=16, repeats=1)
    assert figures["scores"] == 40 * 10 * 20


def test_aggregate_stage_peak_rss(tmp_path):
    bench.make_aggregate_project(tmp_path, images=30, views=10, dim=16)
    figures = bench.stage_peak_rss(tmp_path, "aggregate")
    assert figures["peak_rss_mb"] > 0


def test_summary_names_targets(embed_figures):
    figures = {
        "machine": bench.machine(torch.device("cpu")),
        "load_average_start": 0.0,
        "load_average_end": 0.0,
        "embed": embed_figures,
    }
    text = bench.summary(figures)
    assert "target on CPU: >= 60%" in text
