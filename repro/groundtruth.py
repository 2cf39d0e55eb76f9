"""Ground-truth labels. Only evaluation code imports this module: pseudo labels, training
and model selection never read ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from repro import paths


def load_labels(image_ids, classes: list[str], path=paths.LABELS) -> np.ndarray:
    """Ground truth (images, classes) int8 for `image_ids`, in that order."""
    truth = pd.read_parquet(path).set_index("image_id")
    missing = [i for i in image_ids if i not in truth.index]
    if missing:
        raise KeyError(
            f"{len(missing)} image ids have no ground truth in {path}, e.g. {missing[:3]}"
        )
    return truth.loc[list(image_ids), list(classes)].to_numpy(dtype=np.int8)
