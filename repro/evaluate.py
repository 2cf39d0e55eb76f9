"""Stage evaluate: mAP of the trained classifier on the evaluation split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from repro import io, paths, stage
from repro.classifier import load_trained, predict
from repro.clip_model import resolve_device
from repro.config import Config
from repro.groundtruth import load_labels
from repro.metrics import bootstrap_interval, mean_average_precision

log = logging.getLogger(__name__)


def evaluate(config: Config) -> dict:
    device = resolve_device(config.train.device)
    info = io.read_json(paths.CLASSIFIER_INFO)
    classes = info["classes"]
    index = pd.read_parquet(paths.INDEX)
    eval_index = index[index["split"] == "eval"]
    image_ids = eval_index["image_id"].tolist()

    model = load_trained(paths.CLASSIFIER, info, device)
    scores = predict(
        model,
        eval_index["path"].tolist(),
        info["image_size"],
        info["loss"],
        config.eval.batch_size,
        config.eval.num_workers,
        device,
        desc="evaluate",
    )
    truth = load_labels(image_ids, classes)
    result = mean_average_precision(scores, truth, classes)
    interval = bootstrap_interval(scores, truth, config.eval.bootstrap, config.seed)

    metrics = {
        "note": info["note"],
        "split": "eval",
        "images": len(image_ids),
        "map": round(result.map, 4),
        "ci": None if interval is None else [round(v, 4) for v in interval],
        "classes_in_map": len(classes) - len(result.excluded),
        "classes_excluded": result.excluded,
        "selection": info["selection"],
        "clip_weights": info["clip_weights"],
        "backbone": info["backbone"],
        "backbone_weights": info["weights"],
    }
    io.write_json(paths.EVAL_METRICS, metrics)
    per_class = pd.DataFrame(
        {
            "class": classes,
            "ap": np.where(np.isnan(result.per_class), np.nan, np.round(result.per_class, 4)),
            "positives": result.positives,
        }
    )
    io.write_csv(paths.PER_CLASS_AP, per_class)
    if result.excluded:
        log.warning(
            "AP undefined (no positives in the eval split) and left out of mAP: %s",
            ", ".join(result.excluded),
        )
    log.info("classifier mAP on %d eval images: %.2f", len(image_ids), result.map)
    return {"device": str(device), "images": len(image_ids)}


def main() -> None:
    stage.run("evaluate", evaluate)


if __name__ == "__main__":
    main()
