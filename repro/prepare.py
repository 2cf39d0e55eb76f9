"""Stage prepare: read or download the dataset and write the image index and ground truth."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from repro import io, paths, stage
from repro.config import Config
from repro.datasets import DatasetError, RawDataset
from repro.datasets.registry import get_dataset, resolve_splits
from repro.images import BadImageError, probe_image

log = logging.getLogger(__name__)


def _hash_order(ids: pd.Series, seed: int) -> np.ndarray:
    """Order image ids by a seeded hash: a stable pseudo-random order independent of the platform."""
    keys = [hashlib.sha1(f"{seed}:{image_id}".encode()).hexdigest() for image_id in ids]
    return np.argsort(np.array(keys), kind="stable")


def assign_splits(raw: RawDataset, config: Config) -> pd.Series:
    """Give every image the role 'train' or 'eval'.

    With `dataset.holdout`, the official splits are pooled and a seeded hash holds out that
    share of images for evaluation; otherwise the official split names decide.
    """
    data = config.dataset
    images = raw.images
    if data.holdout is None:
        roles = images["source_split"].map({data.train_split: "train", data.eval_split: "eval"})
        return roles

    order = _hash_order(images["image_id"], config.seed)
    n_eval = int(round(data.holdout * len(images)))
    roles = np.full(len(images), "train", dtype=object)
    roles[order[:n_eval]] = "eval"
    return pd.Series(roles, index=images.index)


def limit_images(frame: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Keep at most `max_images` per role, chosen by the seeded hash order."""
    if max_images is None:
        return frame
    kept = []
    for _, group in frame.groupby("split", sort=False):
        order = _hash_order(group["image_id"], seed)
        kept.append(group.iloc[np.sort(order[:max_images])])
    return pd.concat(kept).sort_index()


def _probe(path: str) -> tuple[int, int] | str:
    try:
        return probe_image(path)
    except BadImageError as error:
        return str(error)


def probe_all(paths_: list[str], workers: int) -> list[tuple[int, int] | str]:
    """Decode every image once; return its size, or the error text for a bad file."""
    if workers <= 1 or len(paths_) < 64:
        return [_probe(p) for p in tqdm(paths_, desc="check images", unit="img")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(
                pool.map(_probe, paths_, chunksize=32),
                total=len(paths_),
                desc="check images",
                unit="img",
            )
        )


def dataset_root(config: Config) -> Path:
    """Return dataset.root, or the folder that the dataset's reader downloads."""
    data = config.dataset
    if data.root is not None:
        return Path(data.root).resolve()
    return get_dataset(data.name).locate(data)


def load_raw(config: Config, root: Path) -> RawDataset:
    data = config.dataset
    return get_dataset(data.name).load(root, [data.train_split, data.eval_split], data)


def prepare(config: Config) -> dict:
    config, split_notes = resolve_splits(config)
    root = dataset_root(config)
    raw = load_raw(config, root)
    frame = raw.images.copy()
    frame["split"] = assign_splits(raw, config)
    frame = frame[frame["split"].notna()]
    frame = limit_images(frame, config.dataset.max_images, config.seed)

    results = probe_all(frame["path"].tolist(), workers=min(8, os.cpu_count() or 1))
    bad = [
        (path, result) for path, result in zip(frame["path"], results) if isinstance(result, str)
    ]
    if bad and config.dataset.on_bad_image == "fail":
        shown = "; ".join(reason for _, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BadImageError(
            f"{len(bad)} image(s) are missing or cannot be decoded: {shown}{more}. Replace "
            "the files, or set dataset.on_bad_image: skip to leave such images out of every "
            "stage."
        )
    for path, reason in bad:
        log.warning("skipped bad image %s", reason)

    good = [not isinstance(result, str) for result in results]
    sizes = [result for result in results if not isinstance(result, str)]
    labels = raw.labels[frame.index.to_numpy()][np.array(good, dtype=bool)]
    frame = frame[good].reset_index(drop=True)
    frame["width"] = [w for w, _ in sizes]
    frame["height"] = [h for _, h in sizes]

    index = frame[["image_id", "split", "source_split", "path", "width", "height"]]
    truth = pd.DataFrame(labels, columns=raw.classes)
    truth.insert(0, "image_id", index["image_id"].to_numpy())

    counts = index["split"].value_counts().to_dict()
    info = {
        "name": raw.name,
        "root": raw.root,
        "classes": raw.classes,
        "natural_names": raw.natural_names,
        "splits": {"train": config.dataset.train_split, "eval": config.dataset.eval_split},
        "holdout": config.dataset.holdout,
        "max_images": config.dataset.max_images,
        "images": {"train": int(counts.get("train", 0)), "eval": int(counts.get("eval", 0))},
        "skipped_bad_images": [path for path, _ in bad],
        **raw.notes,
        **split_notes,
    }
    for role in ("train", "eval"):
        if info["images"][role] == 0:
            raise DatasetError(
                f"the {role} split has no usable images (dataset.{role}_split = "
                f"{info['splits'][role]!r}, holdout = {config.dataset.holdout}). Choose a split "
                "listed under ImageSets/Main, or set dataset.holdout."
            )

    with io.atomic_dir(paths.PREPARED) as folder:
        truth.to_parquet(folder / paths.LABELS.name, index=False)
        index.to_parquet(folder / paths.INDEX.name, index=False)
        io.write_json(folder / paths.DATASET_INFO.name, info)
    log.info(
        "prepared %s: %d train, %d eval images, %d skipped",
        raw.name,
        info["images"]["train"],
        info["images"]["eval"],
        len(bad),
    )
    return {"images": len(index), "skipped_bad_images": len(bad)}


def main() -> None:
    stage.run("prepare", prepare)


if __name__ == "__main__":
    main()
