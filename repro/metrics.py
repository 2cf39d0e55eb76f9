"""Average precision and mAP: non-interpolated AP per class, as scikit-learn computes it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from repro.datasets import IGNORE, POSITIVE


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
