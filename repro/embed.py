"""Stage embed: CLIP image embeddings of every view and text embeddings of every prompt.

Images are decoded once, in DataLoader workers, and all their views are cut from the decoded
tensor. Batches span images. Shards are written atomically into a work folder outside DVC's
outputs, so a killed run resumes at the first missing shard; the cache folder appears under
its final name only when every shard exists. Under `torchrun`, shard k belongs to rank
k mod world size.

The work folder keeps each finished shard, so a later run whose image side is unchanged (a
change of `prompts.templates` only) encodes just the prompts. Each kept shard starts as a
hard link to the cache's file and becomes a copy of its own once DVC copies the outputs.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from repro import clip_cache, io, paths, stage
from repro.clip_model import LoadedClip, encode_prompts, load_clip, resolve_device
from repro.config import RANDOM_WEIGHTS_NOTE, Config, ConfigError
from repro.download import check_free_space
from repro.images import load_rgb_tensor
from repro.tiling import boxes_from_tiles

log = logging.getLogger(__name__)

SHARD_IMAGES = 2048
# Images per shard can be lowered through this environment variable, so that a test can cut
# a small run into several shards and kill the stage between them. It is not a param because
# it sets how often a killed run saves progress, not what is embedded. Batches end at shard
# boundaries, so it can change embeddings in their last bits, and the fingerprint includes it.
SHARD_IMAGES_ENV = "REPRO_EMBED_SHARD_IMAGES"
# A rank that has finished waits at a barrier for the slowest rank, which can be hours behind
# (a large model on CPU, or a resumed run whose shards are unevenly done).
DIST_TIMEOUT = timedelta(hours=24)
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
PR_SET_PDEATHSIG = 1  # prctl(2)
HEAP_BUFFER_BYTES = 1 << 30
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def fit_view(
    view: torch.Tensor, size: int, fit: str, interpolation: str = "bicubic"
) -> torch.Tensor:
    """Turn one uint8 view (3, h, w) into CLIP's square input (3, size, size).

    'crop' is CLIP's own preprocessing: resize the shorter side to `size`, then centre-crop.
    'squash' resizes both sides to `size`, keeping the whole view but not its aspect ratio.
    """
    mode = INTERPOLATIONS[interpolation]
    if fit == "squash":
        return TF.resize(view, [size, size], interpolation=mode, antialias=True)
    resized = TF.resize(view, size, interpolation=mode, antialias=True)
    return TF.center_crop(resized, [size, size])


def cut_views(
    image: torch.Tensor, boxes: np.ndarray, size: int, fit: str, interpolation: str
) -> torch.Tensor:
    """Cut every box (x0, y0, x1, y1) from a uint8 image and fit it: (views, 3, size, size)."""
    views = [fit_view(image[:, y0:y1, x0:x1], size, fit, interpolation) for x0, y0, x1, y1 in boxes]
    return torch.stack(views)


class ViewDataset(Dataset):
    """Item i: all views of image i as uint8 (views, 3, size, size), decoded once."""

    def __init__(
        self, image_paths: list[str], boxes: np.ndarray, size: int, fit: str, interpolation: str
    ):
        self.image_paths = image_paths
        self.boxes = boxes
        self.size = size
        self.fit = fit
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image = load_rgb_tensor(self.image_paths[index])
        return index, cut_views(image, self.boxes[index], self.size, self.fit, self.interpolation)


def _collate(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
    indices = [index for index, _ in items]
    return indices, torch.stack([views for _, views in items])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision param; None runs in fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16


@dataclass
class Distributed:
    """This process's place in a `torchrun` launch; rank 0 of world 1 without one.

    Ranks only exchange barriers and small per-rank figures, so they always talk over gloo
    (CPU), whatever device encodes: that needs no NCCL set-up and works on CPU-only machines.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    def start(self) -> None:
        """Join the process group unless this is a single process or the caller already did."""
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=DIST_TIMEOUT)
            self.owns_group = True

    def stop(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, item: dict) -> list[dict]:
        """Gather every rank's `item` on every rank, in rank order."""
        if self.world == 1:
            return [item]
        items: list = [None] * self.world
        dist.all_gather_object(items, item)
        return items


def keep_buffers_on_heap() -> bool:
    """Make glibc reuse large freed buffers instead of mapping fresh memory for each one.

    glibc serves an allocation above its mmap threshold (which adapts up to 32 MiB on 64-bit
    systems, says glibc's mallopt(3) manual) with a new memory map and unmaps it on free, so
    every forward pass page-faults its large activations again. ViT-B-32 on 60 views, whose
    MLP activations are 37 MB each, ran at 24 views/s on 2 cores this way and at 31 with the
    buffers kept (benchmarks/README.md). The embeddings are unchanged, because only the
    place the memory comes from differs.

    Returns:
        Whether the setting took effect. Other C libraries are left alone.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    # Some glibc versions reject a threshold above 32 MiB, so 32 MiB is the fallback.
    threshold = next(
        (size for size in (HEAP_BUFFER_BYTES, 32 << 20) if mallopt(M_MMAP_THRESHOLD, size)), 0
    )
    # Without a trim threshold as high, free() would hand the heap's top back to the system.
    kept = bool(threshold) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    log.debug("large buffers kept on the heap: %s", kept)
    return kept


def embed_device(name: str, dist_: Distributed) -> torch.device:
    """Resolve the device param, putting each rank on its own GPU (LOCAL_RANK) under `torchrun`."""
    device = resolve_device(name)
    if device.type == "cuda" and dist_.world > 1:
        device = torch.device("cuda", dist_.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class ImageEncoder:
    """Runs the CLIP image tower on uint8 view batches and returns normalised fp16 embeddings."""

    def __init__(self, clip: LoadedClip, device: torch.device, precision: str):
        self.clip = clip
        self.device = device
        self.dtype = autocast_dtype(precision, device)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            clip.model.to(memory_format=torch.channels_last)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(clip.mean, device=device).view(shape) * 255.0
        self.std = torch.tensor(clip.std, device=device).view(shape) * 255.0

    @torch.inference_mode()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        """Embed uint8 views of shape (n, 3, size, size); return float16 (n, dim) on the CPU."""
        pixels = views.to(self.device, non_blocking=True).float()
        pixels = (pixels - self.mean) / self.std
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            features = self.clip.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1).half().cpu()


def shard_images() -> int:
    """Images per shard: SHARD_IMAGES, or the value of the SHARD_IMAGES_ENV variable."""
    raw = os.environ.get(SHARD_IMAGES_ENV)
    if raw is None or raw == "":
        return SHARD_IMAGES
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(
            f"environment variable {SHARD_IMAGES_ENV} = {raw!r} is invalid; expected a positive "
            "integer. Unset it to use the default."
        )
    return int(raw)


def fingerprint(
    config: Config,
    clip: LoadedClip,
    image_ids: np.ndarray,
    boxes: np.ndarray,
    paths_: list[str],
    shard_size: int = SHARD_IMAGES,
) -> str:
    """Hash of everything that decides the image embeddings and their shards.

    A run reuses finished shards only if its fingerprint matches. A local checkpoint counts
    by its path, size and modification time, so replacing the file invalidates the shards.
    """
    digest = hashlib.sha256()
    checkpoint = None
    if clip.weights.startswith("file:"):
        stat = os.stat(clip.weights.removeprefix("file:"))
        checkpoint = [stat.st_size, stat.st_mtime_ns]
    header = {
        "checkpoint": checkpoint,
        "format": clip_cache.FORMAT_VERSION,
        "shard_images": shard_size,
        "model": config.clip.model,
        "weights": clip.weights,
        "quick_gelu": config.clip.quick_gelu,
        "fit": config.tiling.fit,
        "size": clip.image_size,
        "precision": config.clip.precision,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update("\n".join(map(str, image_ids)).encode())
    digest.update("\n".join(paths_).encode())
    digest.update(np.ascontiguousarray(boxes, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def prepare_work_dir(work: Path, key: str, rank: int, dist_: Distributed) -> None:
    """Reuse `work` when it belongs to the same fingerprint; otherwise start it empty."""
    state = work / "state.json"
    if rank == 0:
        current = json.loads(state.read_text()).get("fingerprint") if state.is_file() else None
        if current != key:
            if work.exists():
                log.info("discarding partial embeddings of another configuration in %s", work)
                shutil.rmtree(work)
            work.mkdir(parents=True)
            io.write_json(state, {"fingerprint": key})
        else:
            finished = len(list(work.glob("shard-*.npy")))
            log.info("reusing %d finished shard(s) of these images in %s", finished, work)
    dist_.barrier()


def check_cache_space(clip: LoadedClip, device: torch.device, work: Path, views: int) -> None:
    """Raise DiskSpaceError unless `work` has room for `views` fp16 embeddings.

    The shards are hard-linked from `work` into the cache folder, which needs no more space.
    """
    dim = encode_prompts(clip, ["{}"], ["photo"], device).shape[-1]
    check_free_space(
        work,
        views * dim * np.dtype(np.float16).itemsize,
        f"the CLIP embedding cache ({views} views of {dim} dims in fp16)",
        "Free some space in the project folder, which holds .repro-tmp/ and cache/.",
    )


def encode_shard(
    encoder: ImageEncoder,
    dataset: ViewDataset,
    shard: clip_cache.Shard,
    target: Path,
    batch_images: int,
    num_workers: int,
    progress: tqdm,
) -> None:
    """Embed the images of one shard and write them atomically to `target`."""
    rows = list(range(shard.start, shard.stop))
    subset = torch.utils.data.Subset(dataset, rows)
    loader = DataLoader(
        subset,
        batch_size=batch_images,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=encoder.device.type == "cuda",
        persistent_workers=False,
    )
    with io.atomic_path(target) as tmp:
        views = dataset.boxes.shape[1]
        dim = None
        array = None
        for indices, batch in loader:
            n = len(indices)
            embeddings = encoder(batch.flatten(0, 1)).view(n, views, -1)
            if array is None:
                dim = embeddings.shape[-1]
                array = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float16, shape=(len(rows), views, dim)
                )
            first = indices[0] - shard.start
            array[first : first + n] = embeddings.numpy()
            progress.update(n)
        array.flush()
        del array


def embed(config: Config) -> dict:
    """Embed every view of the training split into the cache; return the cost figures.

    Returns:
        The cost figures that `stage.run` writes into results/timing/embed.json. These
        keys are stable, because the report's cost table reads them:

        - device, world_size, threads (intra-op threads of rank 0), num_workers,
          batch_views (views per forward pass).
        - images: images in the cache.
        - images_encoded, views_encoded: encoded by this run over all ranks. A resumed run
          skips the shards that were already finished.
        - encode_s: image encoding time of the slowest rank, without model loading and
          text encoding.
        - encode_cpu_s: CPU seconds of the image encoding, all threads and finished
          DataLoader workers of all ranks.
        - images_per_s, views_per_s: encoded / encode_s, or null when nothing was encoded.
        - ranks: one entry per rank with rank, device, images_encoded, views_encoded,
          encode_s, encode_cpu_s and peak_rss_mb.
    """
    if config.clip.processes > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ranks(config)
    dist_ = Distributed.from_env()
    dist_.start()
    try:
        return _embed(config, dist_)
    finally:
        dist_.stop()


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this (forked) process when its parent dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch_ranks(config: Config) -> dict:
    """Run this stage as `clip.processes` ranks under torchrun and return their cost figures.

    This process sends torchrun SIGTERM when interrupted, and torchrun then terminates its
    workers. On Linux, torchrun also gets SIGTERM if this process is killed outright.
    """
    processes = config.clip.processes
    device = resolve_device(config.clip.device)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise ConfigError(
            f"clip.processes = {processes}, but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s): set clip.processes to at most "
            "that, one process per GPU"
        )
    cores = os.cpu_count() or 1
    if device.type != "cuda" and processes > cores:
        raise ConfigError(
            f"clip.processes = {processes}, but this machine has {cores} CPU core(s) and no "
            "GPU in use: set clip.processes to at most that, since each process needs a core"
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "repro.embed",
    ]
    timing = paths.STAGE_TIMES / "embed.json"
    timing.unlink(missing_ok=True)
    log.info("starting %d embed processes: %s", processes, " ".join(command))
    linux = sys.platform.startswith("linux")
    launcher = subprocess.Popen(command, preexec_fn=_die_with_parent if linux else None)
    try:
        code = launcher.wait()
    except BaseException:
        launcher.terminate()
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        raise
    if code != 0:
        log.error(
            "embed failed: torchrun exited with code %d (the errors of its ranks are above)", code
        )
        sys.exit(code)
    figures = io.read_json(timing)
    for key in ("stage", "wall_s", "cpu_s", "machine"):
        figures.pop(key, None)
    figures["peak_rss_mb"] = max(rank["peak_rss_mb"] for rank in figures["ranks"])
    return figures


def _embed(config: Config, dist_: Distributed) -> dict:
    device = embed_device(config.clip.device, dist_)
    if device.type == "cpu":
        keep_buffers_on_heap()
    index = pd.read_parquet(paths.INDEX)
    tiles = pd.read_parquet(paths.TILES)
    info = io.read_json(paths.DATASET_INFO)
    train = index[index["split"] == "train"].reset_index(drop=True)
    tile_ids, all_boxes = boxes_from_tiles(tiles)
    row_of = {image_id: row for row, image_id in enumerate(tile_ids)}
    boxes = all_boxes[[row_of[i] for i in train["image_id"]]]
    image_ids = train["image_id"].to_numpy()
    image_paths = train["path"].tolist()

    shard_size = shard_images()
    clip = load_clip(config.clip, device)
    key = fingerprint(config, clip, image_ids, boxes, image_paths, shard_size)
    work = paths.EMBED_WORK
    prepare_work_dir(work, key, dist_.rank, dist_)

    dataset = ViewDataset(
        image_paths, boxes, clip.image_size, config.tiling.fit, clip.interpolation
    )
    encoder = ImageEncoder(clip, device, config.clip.precision)
    views = boxes.shape[1]
    batch_images = max(1, config.clip.batch_size // views)
    shards = clip_cache.plan_shards(len(image_ids), shard_size)
    if dist_.rank == 0 and len(shards) < dist_.world:
        log.warning(
            "%d image(s) make %d shard(s) of at most %d images, so %d of the %d processes "
            "have nothing to encode",
            len(image_ids),
            len(shards),
            shard_size,
            dist_.world - len(shards),
            dist_.world,
        )
    mine = [s for s in shards if s.number % dist_.world == dist_.rank]
    todo = [s for s in mine if not (work / s.file).is_file()]
    done_images = sum(s.stop - s.start for s in mine if s not in todo)
    check_cache_space(clip, device, work, sum(s.stop - s.start for s in todo) * views)

    started = time.perf_counter()
    cpu_started = stage.cpu_seconds()
    with tqdm(
        total=sum(s.stop - s.start for s in mine),
        initial=done_images,
        unit="img",
        desc=f"embed rank {dist_.rank}" if dist_.world > 1 else "embed",
        position=dist_.local_rank,
    ) as progress:
        for shard in todo:
            encode_shard(
                encoder,
                dataset,
                shard,
                work / shard.file,
                batch_images,
                config.clip.num_workers,
                progress,
            )
    encoded_images = sum(s.stop - s.start for s in todo)
    mine_figures = {
        "rank": dist_.rank,
        "device": str(device),
        "images_encoded": encoded_images,
        "views_encoded": encoded_images * views,
        "encode_s": round(time.perf_counter() - started, 3),
        "encode_cpu_s": round(stage.cpu_seconds() - cpu_started, 3),
        "peak_rss_mb": stage.peak_rss_mb(),
    }

    # Every rank's shards are on disk once all ranks pass this point; only then rank 0
    # may move them into the cache.
    ranks = dist_.gather(mine_figures)
    if dist_.rank == 0:
        text = np.stack(
            [
                encode_prompts(clip, config.prompts.templates, info["classes"], device).numpy(),
                encode_prompts(
                    clip, config.prompts.templates, info["natural_names"], device
                ).numpy(),
            ]
        )
        finalize(work, shards, image_ids, text, config, clip, key, views)
    dist_.barrier()
    return cost_figures(ranks, len(image_ids), config, batch_images * views)


def cost_figures(ranks: list[dict], images: int, config: Config, batch_views: int) -> dict:
    """Sum the per-rank encoding figures into the stage's cost figures (see `embed`)."""
    images_encoded = sum(r["images_encoded"] for r in ranks)
    views_encoded = sum(r["views_encoded"] for r in ranks)
    encode_s = max(r["encode_s"] for r in ranks)
    busy = encode_s > 0 and views_encoded > 0
    return {
        "device": ranks[0]["device"],
        "world_size": len(ranks),
        "threads": torch.get_num_threads(),
        "num_workers": config.clip.num_workers,
        "batch_views": batch_views,
        "images": images,
        "images_encoded": images_encoded,
        "views_encoded": views_encoded,
        "encode_s": encode_s,
        "encode_cpu_s": round(sum(r.get("encode_cpu_s", 0.0) for r in ranks), 3),
        "images_per_s": round(images_encoded / encode_s, 3) if busy else None,
        "views_per_s": round(views_encoded / encode_s, 2) if busy else None,
        "ranks": ranks,
    }


def finalize(
    work: Path,
    shards: list[clip_cache.Shard],
    image_ids: np.ndarray,
    text: np.ndarray,
    config: Config,
    clip: LoadedClip,
    key: str,
    views: int,
) -> None:
    """Link the finished shards into the cache folder and write its manifest last."""
    missing = [s.file for s in shards if not (work / s.file).is_file()]
    if missing:
        raise clip_cache.CacheError(
            f"shards {missing[:3]} were not written; run embed again to resume."
        )
    dim = int(np.load(work / shards[0].file, mmap_mode="r").shape[-1]) if shards else text.shape[-1]
    manifest = {
        "format": clip_cache.FORMAT_VERSION,
        "complete": True,
        "fingerprint": key,
        "model": config.clip.model,
        "weights": clip.weights,
        "random_weights": config.random_clip_weights,
        "note": RANDOM_WEIGHTS_NOTE if config.random_clip_weights else "",
        "logit_scale": clip.logit_scale,
        "image_size": clip.image_size,
        "fit": config.tiling.fit,
        "grid": config.tiling.grid,
        "views": views,
        "dim": dim,
        "dtype": "float16",
        "templates": list(config.prompts.templates),
        "shards": [{"number": s.number, "start": s.start, "stop": s.stop} for s in shards],
    }
    with io.atomic_dir(paths.EMBEDDINGS) as folder:
        for shard in shards:
            link_or_move(work / shard.file, folder / shard.file)
        np.save(folder / clip_cache.TEXT, text.astype(np.float32))
        (folder / clip_cache.IMAGE_IDS).write_text(json.dumps([str(i) for i in image_ids]))
        io.write_json(folder / clip_cache.MANIFEST, manifest)


def link_or_move(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or move it where the file system has no hard links.

    A link costs no disk space. A moved shard is encoded again by the next run that needs it.
    """
    try:
        os.link(source, target)
    except OSError:
        os.replace(source, target)


def main() -> None:
    stage.run("embed", embed)


if __name__ == "__main__":
    main()
