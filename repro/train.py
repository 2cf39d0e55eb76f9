"""Stage train: the classifier on the pseudo labels, with gradient alignment of the labels.

The headline model is the last epoch's, chosen without ground truth. Per epoch the stage
also measures, for the report only, the pseudo labels' mAP against the training images'
ground truth and the classifier's mAP on the evaluation split; the epoch with the best
evaluation mAP is reported separately and labelled as selected with ground truth.

Training state is saved after every epoch outside DVC's outputs, so a killed run resumes at
the next epoch and ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

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
from repro.label_update import PseudoLabels, is_update_epoch
from repro.losses import LOSSES

log = logging.getLogger(__name__)

RESUME_DIR = paths.EMBED_WORK.parent / "train"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_fingerprint(config: Config, image_ids: list[str], initial: np.ndarray) -> str:
    digest = hashlib.sha256(
        json.dumps(
            {"train": config.to_dict()["train"], "seed": config.seed}, sort_keys=True
        ).encode()
    )
    digest.update("\n".join(image_ids).encode())
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

    key = run_fingerprint(config, image_ids, initial)
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
    eval_paths = eval_index["path"].tolist()
    eval_ids = eval_index["image_id"].tolist()
    initial_map = measure(initial, image_ids, classes)

    with Live(dir=str(paths.TRAIN_LOG), dvcyaml=None, save_dvc_exp=False, report=None) as live:
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
            log.info(
                "epoch %d: loss %.4f, pseudo-label mAP %.2f, eval mAP %s",
                epoch + 1,
                loss,
                row["pseudo_labels/map"],
                "-" if row["eval/map"] is None else f"{row['eval/map']:.2f}",
            )

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

    write_outputs(
        config, model, weights, labels, image_ids, classes, history, initial_map, embed_info
    )
    shutil.rmtree(RESUME_DIR, ignore_errors=True)
    return {"device": str(device), "epochs": cfg.epochs, "train_images": len(image_ids)}


def write_outputs(
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
    with io.atomic_path(paths.CLASSIFIER) as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    io.write_json(paths.CLASSIFIER_INFO, classifier_info)

    refined = pd.DataFrame(labels.values.numpy(), columns=classes)
    refined.insert(0, "image_id", image_ids)
    io.write_parquet(paths.REFINED_LABELS, refined)

    evaluated = [row for row in history if row["eval/map"] is not None]
    best = max(evaluated, key=lambda row: row["eval/map"])
    summary = {
        "note": note,
        "backbone": cfg.backbone,
        "backbone_weights": weights,
        "loss": cfg.loss,
        "epochs": cfg.epochs,
        "pseudo_labels_map_initial": round(initial_map, 4),
        "pseudo_labels_map_final": round(history[-1]["pseudo_labels/map"], 4),
        "eval_map_last_epoch": round(history[-1]["eval/map"], 4),
        "eval_map_best_epoch": round(best["eval/map"], 4),
        "best_epoch": best["epoch"],
        "best_epoch_selection": "chosen on the evaluation split's ground truth; not the headline",
    }
    io.write_json(paths.TRAIN_METRICS, summary)


def main() -> None:
    stage.run("train", train)


if __name__ == "__main__":
    main()
