"""Stage train: the classifier on the pseudo labels, with gradient alignment of the labels.

The headline model is the last epoch's, chosen without ground truth. For the report only,
each epoch also measures the pseudo labels' mAP against the training images' ground truth
and the classifier's mAP on the evaluation split. The epoch with the best evaluation mAP is
reported separately and labelled as selected with ground truth.

Training state is saved after every epoch outside DVC's outputs, so a killed run resumes at
the next epoch and ends with the same result as an uninterrupted one. The outputs (models/,
the refined labels, the DVCLive folder, the metrics) are written into a staging folder
beside that state and renamed into place at the end, so none of them is ever half written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from repro import io, paths, stage
from repro.classifier import ImageDataset, build_classifier, predict
from repro.clip_model import resolve_device
from repro.config import RANDOM_WEIGHTS_NOTE, Config
from repro.datasets import DatasetError
from repro.label_update import PseudoLabels, is_update_epoch
from repro.losses import LOSSES

log = logging.getLogger(__name__)

RESUME_DIR = paths.EMBED_WORK.parent / "train"
STAGING_DIR = RESUME_DIR / "outputs"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_fingerprint(
    config: Config, image_ids: list[str], initial: np.ndarray, eval_ids: list[str]
) -> str:
    """Hash of everything a saved epoch depends on; a resumed run must match it."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "train": config.to_dict()["train"],
                "seed": config.seed,
                "eval_batch_size": config.eval.batch_size,
            },
            sort_keys=True,
        ).encode()
    )
    digest.update("\n".join(image_ids).encode())
    digest.update(b"\0eval\0" + "\n".join(eval_ids).encode())
    digest.update(np.ascontiguousarray(initial, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def train_epoch(
    model,
    loader,
    labels: PseudoLabels,
    optimizer,
    loss_fn,
    update: bool,
    sigma: float,
    device: torch.device,
    desc: str,
) -> float:
    """One pass over the training images; returns the mean loss."""
    model.train()
    total, batches = 0.0, 0
    for rows, images in tqdm(loader, desc=desc, unit="batch", leave=False):
        rows = torch.as_tensor(rows)
        logits = model(images.to(device))
        loss = loss_fn(logits.float(), labels.targets(rows).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if update:
            labels.update(rows, logits, loss_fn, sigma)
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1)


def measure(scores: np.ndarray, image_ids: list[str], classes: list[str]) -> float:
    """mAP of scores against ground truth; measurement only, never used to choose anything."""
    from repro.groundtruth import load_labels
    from repro.metrics import mean_average_precision

    return mean_average_precision(scores, load_labels(image_ids, classes), classes).map


def train(config: Config) -> dict:
    cfg = config.train
    device = resolve_device(cfg.device)
    info = io.read_json(paths.DATASET_INFO)
    classes = info["classes"]
    index = pd.read_parquet(paths.INDEX)
    train_index = index[index["split"] == "train"]
    eval_index = index[index["split"] == "eval"]
    pseudo = pd.read_parquet(paths.PSEUDO_LABELS).set_index("image_id")
    image_ids = train_index["image_id"].tolist()
    if len(image_ids) < 2:
        raise DatasetError(
            f"the train split has {len(image_ids)} image(s), but the classifier's batch norm "
            "needs at least 2. Add images to the train split or lower dataset.holdout."
        )
    initial = pseudo.loc[image_ids, classes].to_numpy(dtype=np.float32)
    embed_info = io.read_json(paths.EMBEDDINGS / "manifest.json")

    seed_everything(config.seed)
    model, weights = build_classifier(cfg.backbone, cfg.weights, len(classes))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    labels = PseudoLabels(torch.tensor(initial))
    loss_fn = LOSSES[cfg.loss]
    history: list[dict] = []
    start_epoch = 0

    key = run_fingerprint(config, image_ids, initial, eval_index["image_id"].tolist())
    resume_file = RESUME_DIR / f"{key}.pt"
    if resume_file.is_file():
        state = torch.load(resume_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        labels.logits = state["label_logits"]
        history = json.loads(state["history"])
        start_epoch = len(history)
        log.info("resuming training at epoch %d from %s", start_epoch + 1, resume_file)
    elif RESUME_DIR.exists():
        shutil.rmtree(RESUME_DIR)

    dataset = ImageDataset(train_index["path"].tolist(), cfg.image_size)
    # Batch norm cannot train on a batch of one image, so when the last batch of an epoch
    # would hold a single image, that image (a different one each epoch) sits the epoch out.
    drop_last = len(dataset) % cfg.batch_size == 1
    if drop_last:
        log.info(
            "%d train images leave one over train.batch_size = %d; each epoch skips that image",
            len(dataset),
            cfg.batch_size,
        )
    eval_paths = eval_index["path"].tolist()
    eval_ids = eval_index["image_id"].tolist()
    initial_map = measure(initial, image_ids, classes)

    shutil.rmtree(STAGING_DIR, ignore_errors=True)
    live_dir = STAGING_DIR / paths.TRAIN_LOG.name
    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for row in history:
            for name, value in row.items():
                if name != "epoch" and value is not None:
                    live.log_metric(name, value)
            live.next_step()

        for epoch in range(start_epoch, cfg.epochs):
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                sampler=RandomSampler(dataset, generator=generator),
                drop_last=drop_last,
            )
            update = is_update_epoch(epoch, cfg.label_update.every, cfg.label_update.warmup)
            loss = train_epoch(
                model,
                loader,
                labels,
                optimizer,
                loss_fn,
                update,
                cfg.label_update.sigma,
                device,
                f"epoch {epoch + 1}/{cfg.epochs}",
            )

            row = {
                "epoch": epoch + 1,
                "train/loss": loss,
                "train/labels_updated": int(update),
                "pseudo_labels/map": measure(labels.values.numpy(), image_ids, classes),
                "eval/map": None,
            }
            last = epoch + 1 == cfg.epochs
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                scores = predict(
                    model,
                    eval_paths,
                    cfg.image_size,
                    cfg.loss,
                    config.eval.batch_size,
                    cfg.num_workers,
                    device,
                    desc="eval",
                )
                row["eval/map"] = measure(scores, eval_ids, classes)
            history.append(row)
            for name, value in row.items():
                if name != "epoch" and value is not None:
                    live.log_metric(name, value)
            live.next_step()
            # Saved before the epoch is logged, so a logged epoch is never trained again.
            with io.atomic_path(resume_file) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "label_logits": labels.logits,
                        "history": json.dumps(history),
                    },
                    tmp,
                )
            log.info(
                "epoch %d: loss %.4f, pseudo-label mAP %.2f, eval mAP %s",
                epoch + 1,
                loss,
                row["pseudo_labels/map"],
                "-" if row["eval/map"] is None else f"{row['eval/map']:.2f}",
            )

    write_outputs(
        STAGING_DIR,
        config,
        model,
        weights,
        labels,
        image_ids,
        classes,
        history,
        initial_map,
        embed_info,
    )
    publish_outputs(STAGING_DIR)
    shutil.rmtree(RESUME_DIR, ignore_errors=True)
    return {"device": str(device), "epochs": cfg.epochs, "train_images": len(image_ids)}


def write_outputs(
    folder: Path,
    config: Config,
    model,
    weights: str,
    labels: PseudoLabels,
    image_ids: list[str],
    classes: list[str],
    history: list[dict],
    initial_map: float,
    embed_info: dict,
) -> None:
    cfg = config.train
    note = RANDOM_WEIGHTS_NOTE if embed_info["random_weights"] else ""
    classifier_info = {
        "backbone": cfg.backbone,
        "weights": weights,
        "loss": cfg.loss,
        "image_size": cfg.image_size,
        "classes": classes,
        "epochs": cfg.epochs,
        "selected_epoch": cfg.epochs,
        "selection": "last epoch (no ground truth)",
        "clip_weights": embed_info["weights"],
        "note": note,
    }
    models = folder / paths.CLASSIFIER.parent.name
    with io.atomic_path(models / paths.CLASSIFIER.name) as tmp, open(tmp, "wb") as handle:
        # Saved through a handle: given a path, torch.save names the archive's root folder
        # after the (random) temporary file name, so equal weights gave different bytes.
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, handle)
    io.write_json(models / paths.CLASSIFIER_INFO.name, classifier_info)

    refined = pd.DataFrame(labels.values.numpy(), columns=classes)
    refined.insert(0, "image_id", image_ids)
    io.write_parquet(folder / paths.REFINED_LABELS.name, refined)

    evaluated = [row for row in history if row["eval/map"] is not None]
    best = max(evaluated, key=lambda row: row["eval/map"])
    summary = {
        "note": note,
        "backbone": cfg.backbone,
        "backbone_weights": weights,
        "loss": cfg.loss,
        "epochs": cfg.epochs,
        "label_update_epochs": sum(row["train/labels_updated"] for row in history),
        "pseudo_labels_map_initial": round(initial_map, 4),
        "pseudo_labels_map_final": round(history[-1]["pseudo_labels/map"], 4),
        "eval_map_last_epoch": round(history[-1]["eval/map"], 4),
        "eval_map_best_epoch": round(best["eval/map"], 4),
        "best_epoch": best["epoch"],
        "best_epoch_selection": "chosen on the evaluation split's ground truth; not the headline",
    }
    io.write_json(folder / paths.TRAIN_METRICS.name, summary)


def publish_outputs(folder: Path) -> None:
    """Rename the outputs staged in `folder` to their final paths, the metrics file last.

    Every rename is atomic, so each output path contains its previous complete version,
    nothing, or the new version. A kill between two renames leaves the rest staged in
    `folder`, and the next run rewrites all outputs from the last saved epoch.
    """
    moves = [
        (folder / paths.CLASSIFIER.parent.name, paths.CLASSIFIER.parent),
        (folder / paths.REFINED_LABELS.name, paths.REFINED_LABELS),
        (folder / paths.TRAIN_LOG.name, paths.TRAIN_LOG),
        (folder / paths.TRAIN_METRICS.name, paths.TRAIN_METRICS),
    ]
    for source, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        io.remove_stale_temps(target)
        if source.is_dir():
            io.replace_dir(source, target)
        else:
            os.replace(source, target)


def main() -> None:
    stage.run("train", train)


if __name__ == "__main__":
    main()
