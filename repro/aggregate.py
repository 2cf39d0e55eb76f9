"""Stage aggregate: CDUL's initial soft pseudo labels from the cached CLIP embeddings.

Per view, class probabilities are softmax(cosine x scale) over the classes. Per class, the
CDUL aggregator takes the largest snippet probability (alpha) if it reaches the threshold,
and the smallest (beta) otherwise. The result `a` is mixed with the global vector `g` as
(g + a + lam * |g - a|) / 2, which is their mean for lam = 0 (the rule and lam as the
public reproduction cs-mshah/CDUL implements CDUL's Sec. 3.1.3).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import torch

from repro import io, paths, stage
from repro.clip_cache import EmbeddingCache
from repro.config import RANDOM_WEIGHTS_NOTE, Config

log = logging.getLogger(__name__)


def class_embeddings(text: np.ndarray, ensemble: bool = True) -> torch.Tensor:
    """Text embedding per class: (classes, dim), L2-normalised.

    With `ensemble`, the templates of each class are averaged and re-normalised (CLIP's
    prompt ensemble); otherwise only the first template is used.
    """
    text = torch.as_tensor(np.asarray(text), dtype=torch.float32)
    mean = text.mean(dim=0) if ensemble else text[0]
    return torch.nn.functional.normalize(mean, dim=-1)


def prompt_classes(cache: EmbeddingCache, names: str, ensemble: bool) -> torch.Tensor:
    """Class embeddings of the cache for 'raw' or 'natural' names, one template or all."""
    return class_embeddings(cache.text(names), ensemble)


def softmax_scale(logit_scale: float, temperature: str) -> float:
    """Factor applied to cosine similarities before the softmax.

    'learned' is CLIP's own scale, exp(logit_scale) (100 for OpenAI's weights). 'repro' is
    the public reproduction's 1 / logit_scale (about 1 / 4.6), which flattens the softmax to
    nearly uniform.
    """
    if temperature == "learned":
        return float(np.exp(logit_scale))
    if temperature == "repro":
        return 1.0 / logit_scale
    raise ValueError(f"unknown temperature {temperature!r}; expected 'learned' or 'repro'")


# Views converted to float32 at a time: a block stays in the CPU cache, and the reused buffer
# avoids page-faulting a fresh shard-sized array, which took longer than the matrix product.
COSINE_BLOCK_ROWS = 1024


def cosine_similarities(embeddings, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every view with every class: (images, views, classes) float32.

    `embeddings` is any (images, views, dim) array, typically a memory-mapped float16 shard.
    Blocks of views are converted to float32 in one reused buffer, so memory stays at one
    block plus the result, and the values equal those of one float32 product.
    """
    array = np.asarray(embeddings)
    images, views, dim = array.shape
    with warnings.catch_warnings():
        # A read-only memory map gives a read-only tensor, which is only read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        flat = torch.from_numpy(array.reshape(images * views, dim))
    classes_t = classes.T.contiguous()
    cosine = torch.empty(images * views, classes.shape[0], dtype=torch.float32)
    buffer = torch.empty(min(COSINE_BLOCK_ROWS, len(flat)), dim, dtype=torch.float32)
    for start in range(0, len(flat), COSINE_BLOCK_ROWS):
        block = flat[start : start + COSINE_BLOCK_ROWS]
        rows = buffer[: len(block)]
        rows.copy_(block)
        torch.mm(rows, classes_t, out=cosine[start : start + len(block)])
    return cosine.view(images, views, -1)


def view_probabilities(embeddings, classes: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over classes of scaled cosine similarity, for every view: (images, views, classes)."""
    cosine = cosine_similarities(embeddings, classes)
    return torch.softmax(cosine.mul_(scale), dim=-1)


def cache_cosines(cache: EmbeddingCache, classes: torch.Tensor) -> torch.Tensor:
    """Cosines of all cached views, shard by shard: (images, views, classes) float32 in memory."""
    return torch.cat([cosine_similarities(shard, classes) for _, shard in cache.iter_shards()])


def aggregate_snippets(local: torch.Tensor, threshold: float, aggregator: str) -> torch.Tensor:
    """Combine snippet probabilities (images, snippets, classes) into one vector per image.

    'cdul': max over snippets where it reaches `threshold`, else min. 'max' and 'mean' are
    the plain reductions. Every image is reduced on its own snippets only.
    """
    if aggregator == "cdul":
        alpha = local.amax(dim=1)
        beta = local.amin(dim=1)
        return torch.where(alpha >= threshold, alpha, beta)
    if aggregator == "max":
        return local.amax(dim=1)
    if aggregator == "mean":
        return local.mean(dim=1)
    raise ValueError(f"unknown snippet aggregator {aggregator!r}")


def combine(global_: torch.Tensor, local: torch.Tensor, lam: float) -> torch.Tensor:
    """(g + a + lam * |g - a|) / 2: the mean for lam = 0, max for lam = 1, min for lam = -1."""
    return 0.5 * (global_ + local + lam * (global_ - local).abs())


def pseudo_labels(
    probabilities: torch.Tensor, threshold: float, aggregator: str, lam: float
) -> dict:
    """Global, aggregated-local and final soft labels from view probabilities (images, views, classes)."""
    global_ = probabilities[:, 0]
    if aggregator == "global" or probabilities.shape[1] == 1:
        return {"global": global_, "local": global_, "final": global_}
    local = aggregate_snippets(probabilities[:, 1:], threshold, aggregator)
    return {"global": global_, "local": local, "final": combine(global_, local, lam)}


def cache_pseudo_labels(cache: EmbeddingCache, config: Config) -> dict[str, np.ndarray]:
    """Compute the labels of `pseudo_labels` shard by shard over a cache: arrays (images, classes)."""
    classes = prompt_classes(cache, config.prompts.class_names, config.prompts.ensemble)
    scale = softmax_scale(cache.logit_scale, config.clip.temperature)
    parts: dict[str, list[np.ndarray]] = {"global": [], "local": [], "final": []}
    for _, embeddings in cache.iter_shards():
        probabilities = view_probabilities(embeddings, classes, scale)
        labels = pseudo_labels(
            probabilities, config.threshold, config.aggregation.aggregator, config.aggregation.lam
        )
        for key, value in labels.items():
            parts[key].append(value.numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def evaluate_pseudo_labels(
    labels: dict[str, np.ndarray],
    image_ids: list[str],
    class_names: list[str],
    resamples: int,
    seed: int,
) -> dict[str, dict]:
    """mAP and bootstrap 95% interval of each kind of pseudo label (measurement only)."""
    from repro.groundtruth import load_labels
    from repro.metrics import bootstrap_interval, mean_average_precision

    truth = load_labels(image_ids, class_names)
    results = {}
    for kind, scores in labels.items():
        interval = bootstrap_interval(scores, truth, resamples, seed)
        results[kind] = {
            "result": mean_average_precision(scores, truth, class_names),
            "ci": None if interval is None else [round(v, 4) for v in interval],
        }
    return results


def aggregate(config: Config) -> dict:
    cache = EmbeddingCache(paths.EMBEDDINGS)
    info = io.read_json(paths.DATASET_INFO)
    labels = cache_pseudo_labels(cache, config)

    table = pd.DataFrame(labels["final"].astype(np.float32), columns=info["classes"])
    table.insert(0, "image_id", cache.image_ids)
    io.write_parquet(paths.PSEUDO_LABELS, table)

    results = evaluate_pseudo_labels(
        labels, cache.image_ids, info["classes"], config.eval.bootstrap, config.seed
    )
    final = results["final"]["result"]
    metrics = {
        "note": RANDOM_WEIGHTS_NOTE if cache.random_weights else "",
        "weights": cache.manifest["weights"],
        "split": "train",
        "images": cache.n_images,
        "threshold": config.threshold,
        "aggregator": config.aggregation.aggregator,
        "lam": config.aggregation.lam,
        "temperature": config.clip.temperature,
        "scale": softmax_scale(cache.logit_scale, config.clip.temperature),
        **{f"map_{kind}": round(results[kind]["result"].map, 4) for kind in results},
        **{f"ci_{kind}": results[kind]["ci"] for kind in results},
        "classes_excluded": final.excluded,
        "per_class_ap_final": final.as_dict(info["classes"])["per_class_ap"],
    }
    io.write_json(paths.PSEUDO_METRICS, metrics)
    log.info(
        "pseudo-label mAP on %d train images: global %.2f, local %.2f, final %.2f",
        cache.n_images,
        metrics["map_global"],
        metrics["map_local"],
        metrics["map_final"],
    )
    return {"images": cache.n_images, "scores": cache.n_images * cache.views * len(info["classes"])}


def main() -> None:
    stage.run("aggregate", aggregate)


if __name__ == "__main__":
    main()
