"""Stage ablate: every aggregation-side sweep, computed from the cached embeddings.

Nothing here runs CLIP. Cosine similarities are computed once per prompt variant. Every
threshold, aggregator, mixing weight, temperature and normalisation is then a cheap tensor
operation, scored against the training images' ground truth (measurement only). Each table
row gets a bootstrap 95% interval, and a `weights` column marks runs with random CLIP weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from repro import io, paths, stage
from repro.aggregate import (
    aggregate_snippets,
    cache_cosines,
    combine,
    prompt_classes,
    softmax_scale,
)
from repro.clip_cache import EmbeddingCache
from repro.config import Config
from repro.groundtruth import load_labels
from repro.metrics import bootstrap_interval, mean_average_precision

log = logging.getLogger(__name__)

TEMPERATURES = ("learned", "repro")


@dataclass
class Scorer:
    """Scores label matrices against the ground truth of the cached training images."""

    truth: np.ndarray
    classes: list[str]
    resamples: int
    seed: int

    def __call__(self, scores: torch.Tensor | np.ndarray, interval: bool = True) -> dict:
        scores = scores.numpy() if isinstance(scores, torch.Tensor) else scores
        result = mean_average_precision(scores, self.truth, self.classes)
        low = high = None
        if interval:
            bounds = bootstrap_interval(scores, self.truth, self.resamples, self.seed)
            if bounds is not None:
                low, high = bounds
        return {"map": result.map, "ci_low": low, "ci_high": high, "per_class": result.per_class}


def zscore(values: torch.Tensor, dim: int) -> torch.Tensor:
    mean = values.mean(dim=dim, keepdim=True)
    std = values.std(dim=dim, keepdim=True).clamp_min(1e-12)
    return (values - mean) / std


def normalise_only(cosines: torch.Tensor) -> torch.Tensor:
    """SPARC's training-free 'Normalize only' scores (Miller et al., CVPR 2025).

    Raw cosine similarities are z-scored per image across classes, then per class across
    images, both with the unbiased standard deviation, as `calibrate_data` in
    github.com/kjmillerCURIS/SPARC (run_SPARC.py) does: (images, classes).
    """
    return zscore(zscore(cosines, dim=1), dim=0)


def threshold_sweep(
    probabilities: dict[str, torch.Tensor], config: Config, score: Scorer
) -> pd.DataFrame:
    """mAP of CDUL's local and final labels for every threshold and temperature."""
    rows = []
    for temperature, probs in probabilities.items():
        global_ = probs[:, 0]
        alpha = probs[:, 1:].amax(dim=1)
        beta = probs[:, 1:].amin(dim=1)
        map_global = score(global_, interval=False)["map"]
        for threshold in config.ablation.thresholds:
            takes_max = alpha >= threshold
            local = torch.where(takes_max, alpha, beta)
            final = combine(global_, local, config.aggregation.lam)
            scored = score(final)
            rows.append(
                {
                    "temperature": temperature,
                    "threshold": threshold,
                    "share_max": float(takes_max.float().mean()),
                    "map_global": map_global,
                    "map_local": score(local, interval=False)["map"],
                    "map_final": scored["map"],
                    "ci_low": scored["ci_low"],
                    "ci_high": scored["ci_high"],
                }
            )
    return pd.DataFrame(rows)


def aggregator_table(
    probabilities: dict[str, torch.Tensor], config: Config, score: Scorer
) -> pd.DataFrame:
    """mAP of each snippet aggregator and mixing weight lambda, per temperature."""
    rows = []
    for temperature, probs in probabilities.items():
        global_ = probs[:, 0]
        scored = score(global_)
        rows.append(
            {
                "temperature": temperature,
                "aggregator": "global",
                "lam": None,
                "map_local": None,
                "map_final": scored["map"],
                "ci_low": scored["ci_low"],
                "ci_high": scored["ci_high"],
            }
        )
        for aggregator in ("max", "mean", "cdul"):
            local = aggregate_snippets(probs[:, 1:], config.threshold, aggregator)
            map_local = score(local, interval=False)["map"]
            for lam in config.ablation.lams:
                scored = score(combine(global_, local, lam))
                rows.append(
                    {
                        "temperature": temperature,
                        "aggregator": aggregator,
                        "lam": lam,
                        "map_local": map_local,
                        "map_final": scored["map"],
                        "ci_low": scored["ci_low"],
                        "ci_high": scored["ci_high"],
                    }
                )
    return pd.DataFrame(rows)


def final_labels(probs: torch.Tensor, config: Config) -> torch.Tensor:
    """Compute the configured pipeline's final labels from view probabilities."""
    if config.aggregation.aggregator == "global":
        return probs[:, 0]
    local = aggregate_snippets(probs[:, 1:], config.threshold, config.aggregation.aggregator)
    return combine(probs[:, 0], local, config.aggregation.lam)


def prompt_table(cache: EmbeddingCache, config: Config, score: Scorer) -> pd.DataFrame:
    """Global and final mAP for raw or natural class names, one template or the ensemble."""
    scale = softmax_scale(cache.logit_scale, config.clip.temperature)
    rows = []
    for names in ("natural", "raw"):
        for ensemble in (False, True):
            if ensemble and len(config.prompts.templates) == 1:
                continue
            cosines = cache_cosines(cache, prompt_classes(cache, names, ensemble))
            probs = torch.softmax(cosines * scale, dim=-1)
            scored = score(final_labels(probs, config))
            rows.append(
                {
                    "class_names": names,
                    "templates": f"ensemble of {len(config.prompts.templates)}"
                    if ensemble
                    else f"single: {config.prompts.templates[0]}",
                    "map_global": score(probs[:, 0], interval=False)["map"],
                    "map_final": scored["map"],
                    "ci_low": scored["ci_low"],
                    "ci_high": scored["ci_high"],
                }
            )
    return pd.DataFrame(rows)


def softmax_stats(
    cache: EmbeddingCache, probabilities: dict[str, torch.Tensor], config: Config
) -> pd.DataFrame:
    """Measure how peaked each temperature's softmax is, which decides what a threshold can select."""
    rows = []
    for temperature, probs in probabilities.items():
        rows.append(
            {
                "temperature": temperature,
                "scale": softmax_scale(cache.logit_scale, temperature),
                "mean_top_probability": float(probs[:, 0].amax(dim=-1).mean()),
                "min_probability": float(probs.min()),
                "max_probability": float(probs.max()),
                "share_max_at_threshold": float(
                    (probs[:, 1:].amax(dim=1) >= config.threshold).float().mean()
                ),
            }
        )
    return pd.DataFrame(rows)


def ablate(config: Config) -> dict:
    cache = EmbeddingCache(paths.EMBEDDINGS)
    info = io.read_json(paths.DATASET_INFO)
    classes = info["classes"]
    weights = "random" if cache.random_weights else cache.manifest["weights"]
    score = Scorer(
        load_labels(cache.image_ids, classes), classes, config.ablation.bootstrap, config.seed
    )

    cosines = cache_cosines(
        cache, prompt_classes(cache, config.prompts.class_names, config.prompts.ensemble)
    )
    probabilities = {
        t: torch.softmax(cosines * softmax_scale(cache.logit_scale, t), dim=-1)
        for t in TEMPERATURES
    }

    tables = {
        "threshold_sweep": threshold_sweep(probabilities, config, score),
        "aggregators": aggregator_table(probabilities, config, score),
        "prompts": prompt_table(cache, config, score),
        "softmax_stats": softmax_stats(cache, probabilities, config),
    }

    per_class_configs = {
        "global view (learned temperature)": probabilities["learned"][:, 0],
        "CDUL final (learned temperature)": final_labels(probabilities["learned"], config),
        "CDUL final (repro temperature)": final_labels(probabilities["repro"], config),
        "normalise only (global view)": normalise_only(cosines[:, 0]),
    }
    normalisation_rows, per_class_rows = [], []
    for name, scores in {
        **per_class_configs,
        "normalise only (max over views)": normalise_only(cosines.amax(dim=1)),
    }.items():
        scored = score(scores)
        normalisation_rows.append(
            {
                "method": name,
                "map": scored["map"],
                "ci_low": scored["ci_low"],
                "ci_high": scored["ci_high"],
            }
        )
        if name in per_class_configs:
            for class_name, ap in zip(classes, scored["per_class"]):
                per_class_rows.append({"configuration": name, "class": class_name, "ap": ap})
    tables["normalisation"] = pd.DataFrame(normalisation_rows)
    tables["per_class_ap"] = pd.DataFrame(per_class_rows)

    with io.atomic_dir(paths.TABLES) as folder:
        for name, table in tables.items():
            table.insert(0, "weights", weights)
            table.round(4).to_csv(folder / f"{name}.csv", index=False)
    log.info("wrote %d ablation tables over %d images", len(tables), cache.n_images)
    rows = sum(len(t) for t in tables.values())
    return {"images": cache.n_images, "rows": rows, "bootstrap": config.ablation.bootstrap}


def main() -> None:
    stage.run("ablate", ablate)


if __name__ == "__main__":
    main()
