"""Speed and memory of the CLIP embedding engine and the aggregation, measured in one run.

    python benchmarks/run.py --model ViT-B-32 --images 64
    python benchmarks/run.py --model ViT-B-32 --threshold-experiment   # adds a DVC run

Every figure that is compared with another is measured in this process, on this machine,
under the same thread settings, and printed as a ratio. benchmarks/README.md gives the
figures measured so far and what each one means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    # Run as a script from a checkout: import this checkout's `repro`.
    sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from repro import clip_cache, paths  # noqa: E402
from repro.aggregate import (  # noqa: E402
    cache_pseudo_labels,
    class_embeddings,
    combine,
    cosine_similarities,
    pseudo_labels,
    softmax_scale,
)
from repro.clip_model import load_clip, resolve_device  # noqa: E402
from repro.config import ClipConfig, Config, config_from_dict  # noqa: E402
from repro.datasets import NEGATIVE, POSITIVE  # noqa: E402
from repro.images import load_rgb  # noqa: E402
from repro.stage import cpu_model  # noqa: E402

VOC_SAMPLE = Path(os.environ.get("REPRO_VOC_SAMPLE", PROJECT.parent / "shared/data/voc2007-sample"))
# Files a copy of the project needs to run `dvc repro`.
PROJECT_FILES = [
    "repro",
    "experiments",
    "results/experiments.json",
    "dvc.yaml",
    ".gitignore",
    ".dvcignore",
    "pyproject.toml",
    "params.yaml",
]
# Small classifier settings for the threshold experiment, so that CLIP dominates a full run.
SMALL_TRAIN = {
    "backbone": "resnet18",
    "weights": "none",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 16,
    "num_workers": 0,
    "label_update": {"every": 1},
}
CLASSES = 20  # VOC's classes, for the synthetic cache
BASE_THRESHOLD = 0.0  # the full run's threshold in the threshold experiment


# ----------------------------------------------------------------------------- machine


def machine(device: torch.device) -> dict:
    """Describe the machine, the software and the thread settings of this run."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> float:
    """Return the 1-minute load average: above the core count, other jobs shared the CPU."""
    return round(os.getloadavg()[0], 2)


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes."""
    from repro.stage import cpu_seconds as stage_cpu_seconds

    return stage_cpu_seconds()


def best_of(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Shortest wall time and shortest CPU time of `repeats` calls, in seconds.

    The shortest call is the least disturbed by other processes. CPU time is what this
    process received, so on a shared machine it measures the work more steadily than wall
    time, as long as the threads do not wait for each other (one thread never does).
    """
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        function()
        walls.append(time.perf_counter() - started)
        cpus.append(cpu_seconds() - cpu_started)
    return min(walls), min(cpus)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- compute


def matmul_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 0, seconds: float = 2.0
) -> tuple[float, float]:
    """Rate of large square matrix products, 2 n^3 FLOPs each, best of 3 windows.

    Returns GFLOP per wall second and GFLOP per CPU second (CPU time is meaningless on a
    GPU, where it is reported as the wall rate).
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    wall_rates, cpu_rates = [], []
    for _ in range(3):
        count = 0
        started, cpu_started = time.perf_counter(), cpu_seconds()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            count += 1
        synchronize(device)
        flops = 2 * size**3 * count / 1e9
        wall_rates.append(flops / (time.perf_counter() - started))
        cpu_rates.append(flops / max(cpu_seconds() - cpu_started, 1e-9))
    if device.type == "cuda":
        cpu_rates = wall_rates
    return max(wall_rates), max(cpu_rates)


def view_gflops(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """FLOPs of the image tower on one view, in GFLOP, from torch's FlopCounterMode.

    Counted with autograd on: in inference mode torch's MultiheadAttention takes a fused
    kernel that FlopCounterMode does not count, which hides about a third of ViT-B-32's FLOPs.
    NOTE: the attention score products (QK^T and AV) are still not counted on the CPU with
    torch 2.14; for ViT-B-32 they are about 1% of its FLOPs, so the share of the matmul
    rate comes out that much low.
    """
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model.encode_image(pixels)
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- projects


def params_for(
    voc: Path, images: int, model: str, batch_size: int, num_workers: int, device: str
) -> dict:
    """Return the project's params with `images` VOC test images as the training split."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["dataset"].update(
        {
            "root": str(voc),
            "train_split": "test",
            "eval_split": "trainval",
            "holdout": None,
            "max_images": images,
        }
    )
    params["clip"].update(
        {
            "model": model,
            "pretrained": "random",
            "batch_size": batch_size,
            "num_workers": num_workers,
            "device": device,
        }
    )
    return params


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run the block with `folder` as the working folder, as the stages expect."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def make_embed_project(folder: Path, params: dict) -> Config:
    """Write params.yaml into `folder` and run prepare and tile there."""
    from repro.prepare import prepare
    from repro.tiling import tile

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with inside(folder):
        config = config_from_dict(params, check=True, base=folder)
        prepare(config)
        tile(config)
    return config


def train_views(folder: Path) -> tuple[list[str], np.ndarray]:
    """Image paths and view boxes (images, views, 4) of a project's training split."""
    from repro.tiling import boxes_from_tiles

    index = pd.read_parquet(folder / paths.INDEX)
    train = index[index["split"] == "train"]
    ids, boxes = boxes_from_tiles(pd.read_parquet(folder / paths.TILES))
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    return train["path"].tolist(), boxes[[row_of[i] for i in train["image_id"]]]


def clean_cache(folder: Path) -> None:
    for name in (paths.EMBEDDINGS, paths.EMBED_WORK):
        shutil.rmtree(folder / name, ignore_errors=True)


# ----------------------------------------------------------------------------- embed


def engine_run(folder: Path, config: Config) -> dict:
    """Run the embed stage's body in `folder` on a fresh cache; return its cost figures."""
    from repro.embed import embed

    clean_cache(folder)
    with inside(folder):
        return embed(config)


def naive_embed(
    model_name: str, image_paths: list[str], boxes: np.ndarray, device: torch.device
) -> tuple[np.ndarray, float, float]:
    """Embed the views the plain way: one image per call, PIL crops, open_clip's preprocess.

    Returns the L2-normalised float32 embeddings (images, views, dim), and the wall and CPU
    seconds spent on them (model loading excluded).
    """
    import open_clip

    clip = load_clip(ClipConfig(model=model_name, pretrained="random"), device)
    cfg = clip.model.visual.preprocess_cfg
    preprocess = open_clip.image_transform(
        clip.model.visual.image_size,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        resize_mode=cfg.get("resize_mode"),
    )
    outputs = []
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with torch.no_grad():
        for path, image_boxes in zip(image_paths, boxes):
            image = load_rgb(path)
            crops = [preprocess(image.crop(tuple(int(v) for v in box))) for box in image_boxes]
            features = clip.model.encode_image(torch.stack(crops).to(device))
            outputs.append(torch.nn.functional.normalize(features, dim=-1).cpu())
    synchronize(device)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    return torch.stack(outputs).numpy(), wall, cpu


def _naive_child(
    model_name: str, image_paths: list[str], boxes: np.ndarray, device: str, threads: int
) -> tuple[float, float]:
    torch.set_num_threads(threads)
    _, wall, cpu = naive_embed(model_name, image_paths, boxes, torch.device(device))
    return wall, cpu


def naive_in_fresh_process(
    model_name: str, image_paths: list[str], boxes: np.ndarray, device: torch.device
) -> tuple[float, float]:
    """Run `naive_embed` in a new interpreter with this one's thread count.

    The engine tunes the C allocator of the process it runs in, and a naive driver would not,
    so the naive driver gets a process of its own. Returns its wall and CPU seconds.
    """
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        arguments = (model_name, image_paths, boxes, str(device), torch.get_num_threads())
        return pool.apply(_naive_child, arguments)


def embed_benchmark(
    folder: Path,
    model_name: str,
    images: int,
    voc: Path,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    repeats: int,
    naive: bool = True,
    matmul_seconds: float = 2.0,
) -> dict:
    """Engine views/s against the matmul rate and against the naive driver (figures a, b)."""
    params = params_for(voc, images, model_name, batch_size, num_workers, str(device))
    config = make_embed_project(folder, params)
    image_paths, boxes = train_views(folder)
    views = len(image_paths) * boxes.shape[1]

    clip = load_clip(config.clip, device)
    gflops = view_gflops(clip.model, clip.image_size, device)
    image_size = clip.image_size
    del clip
    engine_dtype = torch.float16 if device.type == "cuda" else torch.float32
    before = matmul_gflops(device, engine_dtype, seconds=matmul_seconds)

    engine_runs, naive_runs = [], []
    batch_views = 0
    for _ in range(repeats):
        figures = engine_run(folder, config)
        batch_views = figures["batch_views"]
        engine_runs.append((figures["encode_s"], figures["encode_cpu_s"]))
        if naive:
            naive_runs.append(naive_in_fresh_process(model_name, image_paths, boxes, device))
    after = matmul_gflops(device, engine_dtype, seconds=matmul_seconds)

    matmul_wall = max(before[0], after[0])
    matmul_cpu = max(before[1], after[1])
    engine_wall = views / min(wall for wall, _ in engine_runs)
    engine_cpu = views / min(cpu for _, cpu in engine_runs)
    if device.type == "cuda":
        engine_cpu = engine_wall
    result = {
        "model": model_name,
        "image_size": image_size,
        "images": len(image_paths),
        "views": views,
        "gflop_per_view": round(gflops, 3),
        "matmul_dtype": str(engine_dtype).removeprefix("torch."),
        "matmul_gflops": round(matmul_wall, 1),
        "matmul_gflops_before_after": [round(before[0], 1), round(after[0], 1)],
        "matmul_gflops_per_cpu_s": round(matmul_cpu, 1),
        "engine_batch_views": batch_views,
        "engine_num_workers": num_workers,
        "engine_views_per_s": round(engine_wall, 2),
        "engine_views_per_s_each_run": [round(views / wall, 2) for wall, _ in engine_runs],
        "engine_views_per_cpu_s": round(engine_cpu, 2),
        "engine_gflops": round(engine_wall * gflops, 1),
        "engine_share_of_matmul": round(engine_wall * gflops / matmul_wall, 4),
        "engine_share_of_matmul_cpu": round(engine_cpu * gflops / matmul_cpu, 4),
    }
    if device.type == "cuda":
        result["matmul_gflops_fp32"] = round(matmul_gflops(device, torch.float32)[0], 1)
    if naive:
        naive_wall = views / min(wall for wall, _ in naive_runs)
        naive_cpu = views / min(cpu for _, cpu in naive_runs)
        result.update(
            {
                "naive_views_per_s": round(naive_wall, 2),
                "naive_views_per_s_each_run": [round(views / wall, 2) for wall, _ in naive_runs],
                "naive_views_per_cpu_s": round(naive_cpu, 2),
                "engine_over_naive": round(engine_wall / naive_wall, 3),
                "engine_over_naive_cpu": round(engine_cpu / naive_cpu, 3),
            }
        )
    return result


# ----------------------------------------------------------------------------- aggregate


def write_synthetic_cache(
    folder: Path, images: int, views: int, dim: int, shard_images: int = 2048, seed: int = 0
) -> clip_cache.EmbeddingCache:
    """Write a cache of random unit-length float16 embeddings in the embed stage's format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards = clip_cache.plan_shards(images, shard_images)
    for shard in shards:
        block = rng.standard_normal((shard.stop - shard.start, views, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=-1, keepdims=True)
        np.save(folder / shard.file, block.astype(np.float16))
    text = rng.standard_normal((2, 1, CLASSES, dim), dtype=np.float32)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    np.save(folder / clip_cache.TEXT, text)
    ids = [f"{i:06d}" for i in range(images)]
    (folder / clip_cache.IMAGE_IDS).write_text(json.dumps(ids))
    manifest = {
        "format": clip_cache.FORMAT_VERSION,
        "complete": True,
        "model": "synthetic",
        "weights": "random",
        "random_weights": True,
        "note": "",
        "logit_scale": float(np.log(100.0)),
        "views": views,
        "dim": dim,
        "dtype": "float16",
        "shards": [{"number": s.number, "start": s.start, "stop": s.stop} for s in shards],
    }
    (folder / clip_cache.MANIFEST).write_text(json.dumps(manifest))
    return clip_cache.EmbeddingCache(folder)


def loop_pseudo_labels(cache: clip_cache.EmbeddingCache, config: Config, limit: int) -> np.ndarray:
    """Compute the final labels of the first `limit` images one image at a time (the slow way)."""
    classes = class_embeddings(cache.text(config.prompts.class_names))
    scale = softmax_scale(cache.logit_scale, config.clip.temperature)
    rows = []
    for shard, embeddings in cache.iter_shards():
        for row in range(min(shard.stop, limit) - shard.start):
            image = torch.from_numpy(embeddings[row].astype(np.float32))
            probabilities = torch.softmax(image @ classes.T * scale, dim=-1)
            global_, snippets = probabilities[0], probabilities[1:]
            alpha, beta = snippets.amax(dim=0), snippets.amin(dim=0)
            local = torch.where(alpha >= config.threshold, alpha, beta)
            rows.append(combine(global_, local, config.aggregation.lam).numpy())
        if shard.stop >= limit:
            break
    return np.stack(rows)


def aggregate_benchmark(
    folder: Path, images: int, views: int, dim: int, repeats: int, loop_images: int = 2048
) -> dict:
    """Vectorised aggregation against a per-image loop, in scores per second (figure c)."""
    cache = write_synthetic_cache(folder, images, views, dim)
    config = Config()
    scores = images * views * CLASSES

    labels: dict = {}

    def vectorised() -> None:
        labels.update(cache_pseudo_labels(cache, config))

    vectorised()  # map the shards once, as a second aggregate run finds them
    seconds, cpu = best_of(vectorised, repeats)

    classes = class_embeddings(cache.text(config.prompts.class_names))
    scale = softmax_scale(cache.logit_scale, config.clip.temperature)
    cosines = [cosine_similarities(shard, classes) for _, shard in cache.iter_shards()]

    def from_cosines() -> None:
        for cosine in cosines:
            probabilities = torch.softmax(cosine * scale, dim=-1)
            pseudo_labels(probabilities, config.threshold, "cdul", config.aggregation.lam)

    cosine_seconds, cosine_cpu = best_of(from_cosines, repeats)

    loop_images = min(loop_images, images)
    looped: list = []
    loop_seconds, loop_cpu = best_of(
        lambda: looped.append(loop_pseudo_labels(cache, config, loop_images)), 1
    )
    loop_scores = loop_images * views * CLASSES

    same = np.allclose(looped[0], labels["final"][:loop_images], atol=1e-6)
    return {
        "images": images,
        "views": views,
        "classes": CLASSES,
        "dim": dim,
        "scores": scores,
        "vectorised_scores_per_s": round(scores / seconds),
        "vectorised_scores_per_cpu_s": round(scores / cpu),
        "from_cosines_scores_per_s": round(scores / cosine_seconds),
        "from_cosines_scores_per_cpu_s": round(scores / cosine_cpu),
        "loop_images": loop_images,
        "loop_scores_per_s": round(loop_scores / loop_seconds),
        "loop_scores_per_cpu_s": round(loop_scores / loop_cpu),
        "vectorised_over_loop": round(scores / seconds / (loop_scores / loop_seconds), 1),
        "vectorised_over_loop_cpu": round(scores / cpu / (loop_scores / loop_cpu), 1),
        "loop_matches_vectorised": bool(same),
    }


# ----------------------------------------------------------------------------- memory


def stage_peak_rss(folder: Path, stage: str, env: dict | None = None) -> dict:
    """Run `python -m repro.<stage>` in `folder` as a fresh process; return its timing JSON."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", f"repro.{stage}"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"repro.{stage} failed in {folder}:\n{result.stderr[-3000:]}")
    return json.loads((folder / paths.STAGE_TIMES / f"{stage}.json").read_text())


def make_aggregate_project(folder: Path, images: int, views: int, dim: int) -> None:
    """Write a project folder whose cache, class names and ground truth are synthetic."""
    write_synthetic_cache(folder / paths.EMBEDDINGS, images, views, dim)
    names = [f"class{c}" for c in range(CLASSES)]
    prepared = folder / paths.PREPARED
    prepared.mkdir(parents=True, exist_ok=True)
    (folder / paths.DATASET_INFO).write_text(json.dumps({"classes": names, "natural_names": names}))
    rng = np.random.default_rng(1)
    truth = pd.DataFrame(
        rng.choice([NEGATIVE, POSITIVE], size=(images, CLASSES)).astype(np.int8), columns=names
    )
    truth.insert(0, "image_id", [f"{i:06d}" for i in range(images)])
    truth.to_parquet(folder / paths.LABELS, index=False)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["clip"].update({"model": "repro-tiny-ViT", "pretrained": "random"})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def memory_benchmark(
    folder: Path,
    model_name: str,
    images: int,
    voc: Path,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    aggregate_images: int,
    dim: int,
    views: int,
) -> dict:
    """Peak RSS of the embed and aggregate stages at N and 4N images, fresh processes (d)."""
    result = {}
    for stage, base in (("embed", images), ("aggregate", aggregate_images)):
        sizes = [base, 4 * base]
        peaks = []
        for size in sizes:
            project = folder / f"{stage}-{size}"
            if stage == "embed":
                params = params_for(voc, size, model_name, batch_size, num_workers, str(device))
                make_embed_project(project, params)
            else:
                make_aggregate_project(project, size, views, dim)
            peaks.append(stage_peak_rss(project, stage)["peak_rss_mb"])
            shutil.rmtree(project, ignore_errors=True)
        result[stage] = {
            "images": sizes,
            "peak_rss_mb": peaks,
            "ratio_4n_over_n": round(peaks[1] / peaks[0], 3),
        }
    return result


# ----------------------------------------------------------------------------- dvc


def copy_project(folder: Path) -> None:
    """Copy the files that `dvc repro` needs (PROJECT_FILES) into `folder`, caches left out."""
    for name in PROJECT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)


def run_command(command: list[str], cwd: Path) -> float:
    """Run a command, raise with its output if it fails, return its wall time in seconds.

    DVC starts each stage as `python -m ...` from PATH, so this interpreter's folder goes
    first on PATH: the stages then import the packages of the benchmark's environment.
    """
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(command)} failed in {cwd}:\n{output}")
    return seconds


def threshold_experiment(
    folder: Path, model_name: str, voc: Path, batch_size: int, num_workers: int, holdout: float
) -> dict:
    """Wall time of `dvc exp run -S threshold=0.5` as a share of a full `dvc repro` (e)."""
    copy_project(folder)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    # Random weights give nearly uniform class probabilities (about 1/20), below both 0.2 and
    # 0.5, so from the default 0.2 the change to 0.5 would not change a single pseudo label
    # and DVC would skip train and evaluate. From 0 (max over snippets) to 0.5 (min) every
    # label changes, as it would with trained weights.
    params["threshold"] = BASE_THRESHOLD
    params["dataset"].update({"root": str(voc), "holdout": holdout})
    params["clip"].update(
        {
            "model": model_name,
            "pretrained": "random",
            "batch_size": batch_size,
            "num_workers": num_workers,
        }
    )
    params["train"].update(SMALL_TRAIN)
    params["eval"].update({"batch_size": 16, "num_workers": 0})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    dvc = str(Path(sys.executable).with_name("dvc"))
    dvc = dvc if Path(dvc).exists() else "dvc"
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "benchmark"],
        [dvc, "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project"],
    ):
        run_command(command, folder)
    full = run_command([dvc, "repro"], folder)
    full_stages = stage_times(folder)
    run_command(["git", "add", "-A"], folder)
    run_command(["git", "commit", "-qm", "full run"], folder)
    experiment = run_command([dvc, "exp", "run", "-S", "threshold=0.5"], folder)
    rerun = sorted(
        stage for stage, wall in stage_times(folder).items() if full_stages.get(stage) != wall
    )
    return {
        "settings": {
            "clip": params["clip"],
            "dataset": {"holdout": holdout, "images": full_stages.get("embed_images")},
            "train": SMALL_TRAIN,
            "threshold": f"{BASE_THRESHOLD} in the full run, then 0.5",
        },
        "threshold_run_stages": rerun,
        "full_run_s": round(full, 1),
        "full_run_stage_s": {k: v for k, v in full_stages.items() if k != "embed_images"},
        "threshold_run_s": round(experiment, 1),
        "threshold_run_stage_s": {
            k: v for k, v in stage_times(folder).items() if k != "embed_images"
        },
        "threshold_share_of_full": round(experiment / full, 4),
    }


def stage_times(folder: Path) -> dict:
    """Read each stage's wall_s from results/timing (its body, without the interpreter start)."""
    times = {}
    for path in sorted((folder / paths.STAGE_TIMES).glob("*.json")):
        figures = json.loads(path.read_text())
        times[figures["stage"]] = figures["wall_s"]
        if figures["stage"] == "embed":
            times["embed_images"] = figures.get("images")
    return times


# ----------------------------------------------------------------------------- summary


def summary(figures: dict) -> str:
    """Render the figures as one line per measurement, each with its target."""
    m = figures["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, open_clip {m.get('open_clip')}, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"load average (1 min): {figures['load_average_start']} at start, "
        f"{figures.get('load_average_end')} at end",
    ]
    if "embed" in figures:
        e = figures["embed"]
        lines.append(
            f"a. engine {e['model']} ({e['image_size']} px, {e['gflop_per_view']} GFLOP/view, "
            f"{e['images']} images, {e['views']} views, {e['engine_batch_views']} views/batch): "
            f"{e['engine_views_per_s']} views/s = {e['engine_gflops']} GFLOP/s = "
            f"{e['engine_share_of_matmul']:.0%} of the {e['matmul_dtype']} matmul rate "
            f"{e['matmul_gflops']} GFLOP/s; per CPU second: {e['engine_views_per_cpu_s']} "
            f"views, {e['engine_share_of_matmul_cpu']:.0%} of {e['matmul_gflops_per_cpu_s']} "
            "GFLOP (target on CPU: >= 60%)"
        )
        if "naive_views_per_s" in e:
            lines.append(
                f"b. naive driver: {e['naive_views_per_s']} views/s; engine / naive = "
                f"{e['engine_over_naive']}, per CPU second {e['engine_over_naive_cpu']} "
                "(target: >= 1.0)"
            )
    if "aggregate" in figures:
        g = figures["aggregate"]
        lines.append(
            f"c. aggregate ({g['images']} images x {g['views']} views x {g['classes']} classes, "
            f"dim {g['dim']}): {g['vectorised_scores_per_s']:.3g} scores/s from the cache, "
            f"{g['from_cosines_scores_per_s']:.3g} from cosines, per-image loop "
            f"{g['loop_scores_per_s']:.3g}; vectorised / loop = {g['vectorised_over_loop']}, "
            f"per CPU second {g['vectorised_over_loop_cpu']} (targets: >= 2e8 scores/s, "
            f">= 50x); same labels: {g['loop_matches_vectorised']}"
        )
    if "memory" in figures:
        parts = [
            f"{stage} {r['peak_rss_mb'][0]} MiB at {r['images'][0]} images, "
            f"{r['peak_rss_mb'][1]} MiB at {r['images'][1]} ({r['ratio_4n_over_n']}x)"
            for stage, r in figures["memory"].items()
        ]
        lines.append("d. peak RSS: " + "; ".join(parts) + " (target: 4N <= 1.2x N)")
    if "threshold_experiment" in figures:
        t = figures["threshold_experiment"]
        lines.append(
            f"e. dvc exp run -S threshold=0.5: {t['threshold_run_s']} s after a "
            f"{t['full_run_s']} s dvc repro = {t['threshold_share_of_full']:.1%}, re-running "
            f"{', '.join(t['threshold_run_stages'])} (target: <= 2%)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def model_dim(model_name: str) -> int:
    """Embedding width of an open_clip model, from its config."""
    from repro.clip_model import _open_clip

    config = _open_clip().get_model_config(model_name)
    return int(config["embed_dim"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    parser.add_argument("--images", type=int, default=64, help="VOC images to embed (N)")
    parser.add_argument("--voc", type=Path, default=VOC_SAMPLE, help="VOC-layout folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="engine views per forward (clip.batch_size)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        help="engine DataLoader workers; default 0 on CPU (see README), 8 on a GPU",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each timed part")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--aggregate-images", type=int, default=8192, help="synthetic cache size (N)"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: embed, naive, aggregate, memory",
    )
    parser.add_argument(
        "--threshold-experiment",
        action="store_true",
        help="also time `dvc repro` and `dvc exp run -S threshold=0.5` on a project copy",
    )
    parser.add_argument("--holdout", type=float, default=0.5, help="for the experiment")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        # Stages started as fresh processes (the memory part) take the same setting.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    device = resolve_device(args.device)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if args.num_workers is None:
        args.num_workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    if "embed" not in skip and not (args.voc / "JPEGImages").is_dir():
        raise SystemExit(f"VOC images not found in {args.voc}; pass --voc or set REPRO_VOC_SAMPLE.")
    views = 10  # the default 3x3 grid plus the global view
    figures: dict = {"machine": machine(device), "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="repro-bench-") as scratch:
        scratch = Path(scratch)
        if "embed" not in skip:
            figures["embed"] = embed_benchmark(
                scratch / "embed",
                args.model,
                args.images,
                args.voc,
                args.batch_size,
                args.num_workers,
                device,
                args.repeats,
                naive="naive" not in skip,
            )
        if "aggregate" not in skip:
            figures["aggregate"] = aggregate_benchmark(
                scratch / "aggregate",
                args.aggregate_images,
                views,
                model_dim(args.model),
                max(args.repeats, 3),
            )
        if "memory" not in skip:
            figures["memory"] = memory_benchmark(
                scratch / "memory",
                args.model,
                args.images,
                args.voc,
                args.batch_size,
                args.num_workers,
                device,
                args.aggregate_images,
                model_dim(args.model),
                views,
            )
        if args.threshold_experiment:
            figures["threshold_experiment"] = threshold_experiment(
                scratch / "experiment",
                args.model,
                args.voc,
                args.batch_size,
                args.num_workers,
                args.holdout,
            )
    figures["load_average_end"] = load_average()
    print(json.dumps(figures, indent=2))
    print(summary(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
