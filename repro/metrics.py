"""Average precision and mAP: non-interpolated AP per class, as scikit-learn computes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import digamma
from scipy.stats import norm

from repro.datasets import IGNORE, POSITIVE

log = logging.getLogger(__name__)

Z_95 = 1.959963984540054  # standard normal quantile of 0.975


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: the sum over score thresholds of (recall step) x precision.

    Tied scores form one threshold, as in `sklearn.metrics.average_precision_score`.
    Entries labelled IGNORE (-1) are left out. Returns NaN when there is no positive.
    """
    keep = labels != IGNORE
    scores = np.asarray(scores, dtype=np.float64)[keep]
    positive = np.asarray(labels)[keep] == POSITIVE
    n_positive = int(positive.sum())
    if n_positive == 0:
        return float("nan")

    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    true_positives = np.cumsum(positive)
    # The last row of each group of tied scores closes one threshold.
    last_of_tie = np.r_[np.diff(scores) != 0, True]
    tp = true_positives[last_of_tie]
    predicted = (np.arange(1, len(scores) + 1))[last_of_tie]
    precision = tp / predicted
    recall_step = np.diff(np.r_[0, tp]) / n_positive
    return float(np.sum(recall_step * precision))


@dataclass
class MapResult:
    map: float  # mean over classes with at least one positive, in percent
    per_class: np.ndarray  # AP per class in percent; NaN where undefined
    positives: np.ndarray  # positives per class
    excluded: list[str] = field(default_factory=list)  # classes without positives

    def as_dict(self, classes: list[str]) -> dict:
        return {
            "map": round(self.map, 4),
            "classes_in_map": len(classes) - len(self.excluded),
            "classes_excluded": self.excluded,
            "per_class_ap": {
                name: (None if np.isnan(ap) else round(float(ap), 4))
                for name, ap in zip(classes, self.per_class)
            },
        }


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> MapResult:
    """mAP over the classes that have positives; classes without positives are listed, not averaged.

    Args:
        scores: (images, classes) scores, higher means more likely present.
        labels: (images, classes) ground truth of POSITIVE, NEGATIVE or IGNORE.
        classes: class names, for the list of excluded classes.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    per_class = np.array(
        [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    )
    defined = ~np.isnan(per_class)
    excluded = [name for name, ok in zip(classes, defined) if not ok]
    value = float(np.mean(per_class[defined]) * 100) if defined.any() else float("nan")
    return MapResult(
        map=value,
        per_class=per_class * 100,
        positives=(labels == POSITIVE).sum(axis=0),
        excluded=excluded,
    )


def bootstrap_maps(
    scores: np.ndarray, labels: np.ndarray, resamples: int, seed: int = 0, chunk: int = 250
) -> np.ndarray:
    """mAP (percent) on `resamples` bootstrap resamples of the images.

    Each resample draws images with replacement. All classes share the same resamples, and
    a class without positives in a resample is left out of that resample's mean.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_images, n_classes = labels.shape
    rng = np.random.default_rng(seed)
    results = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        counts = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=size)
        per_class = np.full((size, n_classes), np.nan)
        for c in range(n_classes):
            per_class[:, c] = weighted_ap(scores[:, c], labels[:, c], counts)
        with np.errstate(all="ignore"):
            results.append(np.nanmean(per_class, axis=1) * 100)
    return np.concatenate(results) if results else np.zeros(0)


def weighted_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one class for each row of `weights` (resamples, images), in [0, 1].

    An image drawn k times counts as k adjacent copies, as if its score were jittered by an
    infinitesimal amount. Counting the copies as one tie instead would credit a repeated
    positive with the precision after all its copies and bias bootstrap APs upwards.
    Distinct images with equal scores stay one tie, as in `average_precision`. With all
    weights 1 the result equals `average_precision`. NaN where a row has no positive.
    """
    keep = labels != IGNORE
    scores = scores[keep]
    positive = labels[keep] == POSITIVE
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    weights = weights[:, keep][:, order].astype(np.float64)
    if scores.size == 0:
        return np.full(weights.shape[0], np.nan)

    first_of_tie = np.r_[True, np.diff(scores) != 0]
    group = np.cumsum(first_of_tie) - 1
    group_size = np.bincount(group)
    single = group_size[group] == 1

    hits = weights * positive
    tp = np.cumsum(hits, axis=1)
    seen = np.cumsum(weights, axis=1)
    tp_before = tp - hits
    seen_before = seen - weights

    # A positive image drawn k times adds sum_{j=1..k} (tp_before + j) / (seen_before + j),
    # which the digamma function gives in closed form.
    misses_before = seen_before - tp_before
    harmonic = digamma(seen_before + weights + 1) - digamma(seen_before + 1)
    contribution = np.where(positive & single, weights - misses_before * harmonic, 0.0).sum(axis=1)

    # A tie of distinct images: its positives share the precision at the end of the tie.
    if not single.all():
        starts = np.flatnonzero(first_of_tie)
        ends = np.r_[starts[1:], len(scores)] - 1
        tied = group_size > 1
        group_hits = np.add.reduceat(hits, starts, axis=1)[:, tied]
        end_seen = seen[:, ends[tied]]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(end_seen > 0, tp[:, ends[tied]] / end_seen, 0.0)
        contribution += (group_hits * precision).sum(axis=1)

    total = tp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, contribution / total, np.nan)


def bootstrap_interval(
    scores: np.ndarray, labels: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float] | None:
    """Bias-corrected percentile 95% interval of the mAP over image resamples.

    A resampled image set repeats images, and repeated positives tie with themselves, so
    bootstrap APs run high, most for weak scores. The bias correction (Efron, 1981) shifts
    the percentiles by how far the point estimate sits from the bootstrap median. Returns
    None when `resamples` is 0 or no resample has a positive.

    With few positives per class the shift can exceed the spread, so that nearly every
    resample falls on one side of the estimate and the corrected percentiles miss it. The
    interval is then widened to reach the estimate, and a warning is logged.
    """
    if resamples <= 0:
        return None
    maps = bootstrap_maps(scores, labels, resamples, seed)
    maps = maps[~np.isnan(maps)]
    if len(maps) == 0:
        return None
    names = [str(c) for c in range(np.asarray(labels).shape[1])]
    point = mean_average_precision(scores, labels, names).map
    below = np.mean(maps < point) + 0.5 * np.mean(maps == point)
    below = np.clip(below, 0.5 / len(maps), 1 - 0.5 / len(maps))
    z0 = norm.ppf(below)
    percentiles = norm.cdf([2 * z0 - Z_95, 2 * z0 + Z_95]) * 100
    low, high = np.percentile(maps, percentiles)
    if not low <= point <= high:
        log.warning(
            "the bootstrap mAPs (%.2f to %.2f) lie on one side of the estimate %.2f, so its "
            "95%% interval was widened to include it; with this few images per class the "
            "interval is rough",
            low,
            high,
            point,
        )
        low, high = min(low, point), max(high, point)
    return float(low), float(high)
