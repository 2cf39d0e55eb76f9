"""On-disk format of the CLIP embedding cache: fp16 shards, text embeddings and a manifest.

Layout of a finished cache folder:

    manifest.json        model, weights, logit scale, views, dim, shards, classes
    image_ids.json       image ids in row order
    shard-00000.npy ...  float16 (images, views, dim), L2-normalised image embeddings
    text.npy             float32 (2, templates, classes, dim): name variants raw, natural

Shards are read memory-mapped, so readers need memory for one shard at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
IMAGE_IDS = "image_ids.json"
TEXT = "text.npy"
NAME_VARIANTS = ("raw", "natural")
FORMAT_VERSION = 1


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


@dataclass(frozen=True)
class Shard:
    number: int
    start: int  # first image row
    stop: int  # one past the last image row

    @property
    def file(self) -> str:
        return shard_name(self.number)


def plan_shards(n_images: int, shard_images: int) -> list[Shard]:
    """Split image rows [0, n_images) into consecutive shards of `shard_images` rows."""
    return [
        Shard(number, start, min(start + shard_images, n_images))
        for number, start in enumerate(range(0, n_images, shard_images))
    ]


class CacheError(RuntimeError):
    """The embedding cache is missing, incomplete or from another configuration."""


class EmbeddingCache:
    """Read access to a finished embedding cache."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(
                f"{manifest_path} not found: the embedding cache is missing or incomplete. "
                "Run `dvc repro embed` to build it."
            )
        self.manifest = json.loads(manifest_path.read_text())
        if not self.manifest.get("complete"):
            raise CacheError(f"{self.folder} is marked incomplete; run `dvc repro embed` again.")
        self.image_ids: list[str] = json.loads((self.folder / IMAGE_IDS).read_text())
        self.shards = [Shard(s["number"], s["start"], s["stop"]) for s in self.manifest["shards"]]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def views(self) -> int:
        return int(self.manifest["views"])

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"])

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest["random_weights"])

    def text(self, names: str = "natural") -> np.ndarray:
        """Text embeddings (templates, classes, dim) for the 'raw' or 'natural' class names."""
        return np.load(self.folder / TEXT)[NAME_VARIANTS.index(names)]

    def shard(self, shard: Shard) -> np.ndarray:
        return np.load(self.folder / shard.file, mmap_mode="r")

    def iter_shards(self) -> Iterator[tuple[Shard, np.ndarray]]:
        for shard in self.shards:
            yield shard, self.shard(shard)

    def load_all(self) -> np.ndarray:
        """Load all image embeddings as one (images, views, dim) float16 array in memory."""
        return np.concatenate([self.shard(shard) for shard in self.shards], axis=0)
