"""Embed as 2 CPU processes under torchrun (gloo), started by `clip.processes`, against 1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.config import config_from_dict
from repro.prepare import prepare
from repro.tiling import tile
from tests.conftest import PROJECT, VOC_SAMPLE, project_params

pytestmark = pytest.mark.slow

IMAGES = 10
SHARD = 3  # 4 shards: ranks 0 and 1 get 2 each


def run_embed(folder: Path, processes: int) -> subprocess.CompletedProcess:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["clip"]["processes"] = processes
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # One thread per process in both runs, as torchrun sets by default: the byte comparison
    # is about sharding and finalizing, not about how a math library splits its work.
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "REPRO_EMBED_SHARD_IMAGES": str(SHARD),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "repro.embed"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_ok(folder: Path, processes: int) -> None:
    result = run_embed(folder, processes)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def cache_files(folder: Path) -> dict[str, bytes]:
    cache = folder / "cache/embeddings"
    return {path.name: path.read_bytes() for path in sorted(cache.iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The cache and timing of a 1-process run and of a 2-process torchrun run."""
    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        pytest.skip(f"VOC 2007 sample not found at {VOC_SAMPLE}")
    folder = tmp_path_factory.mktemp("distributed")
    params = project_params(dataset={"max_images": IMAGES})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        config = config_from_dict(params, check=True, base=folder)
        prepare(config)
        tile(config)

    run_ok(folder, 1)
    single = cache_files(folder)
    shutil.rmtree(folder / "cache")
    shutil.rmtree(folder / ".repro-tmp/embed")  # else the second run reuses the shards

    run_ok(folder, 2)
    timing = json.loads((folder / "results/timing/embed.json").read_text())
    return single, cache_files(folder), timing, folder


def test_runs_span_several_shards(runs):
    single, _, _, _ = runs
    assert sorted(name for name in single if name.startswith("shard-")) == [
        f"shard-0000{number}.npy" for number in range(4)
    ]


def test_two_ranks_write_same_files(runs):
    single, double, _, _ = runs
    assert sorted(double) == sorted(single)


@pytest.mark.parametrize("name", ["shard-00000.npy", "shard-00003.npy", "text.npy"])
def test_two_ranks_write_same_bytes(runs, name):
    single, double, _, _ = runs
    assert double[name] == single[name]


def test_two_ranks_write_same_ids_and_manifest(runs):
    single, double, _, _ = runs
    keys = ("image_ids.json", "manifest.json")
    assert [double[k] for k in keys] == [single[k] for k in keys]


def test_work_folder_links_cache_shards(runs):
    _, _, _, folder = runs
    for number in range(4):
        shard = folder / f"cache/embeddings/shard-0000{number}.npy"
        assert shard.samefile(folder / ".repro-tmp/embed" / shard.name)


def test_timing_counts_every_rank(runs):
    _, _, timing, _ = runs
    assert [r["images_encoded"] for r in timing["ranks"]] == [6, 4]


def test_timing_totals_views_of_all_ranks(runs):
    _, _, timing, _ = runs
    assert (timing["world_size"], timing["views_encoded"]) == (2, IMAGES * 10)


def test_timing_takes_peak_memory_of_ranks(runs):
    _, _, timing, _ = runs
    assert timing["peak_rss_mb"] == max(r["peak_rss_mb"] for r in timing["ranks"])


def test_failed_rank_fails_stage(runs):
    _, _, _, folder = runs
    (folder / "data/tiles/tiles.parquet").rename(folder / "tiles.parquet")
    try:
        result = run_embed(folder, 2)
    finally:
        (folder / "tiles.parquet").rename(folder / "data/tiles/tiles.parquet")
    assert result.returncode != 0
