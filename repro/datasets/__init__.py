"""Dataset readers. Each returns the images of the requested splits and their ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Label values in the ground-truth matrix.
POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class DatasetError(ValueError):
    """The dataset on disk is incomplete or malformed."""


@dataclass
class RawDataset:
    """Images of the requested splits with their ground truth, before any filtering."""

    name: str
    root: str
    classes: list[str]  # names as the dataset spells them ("diningtable")
    natural_names: list[str]  # names for prompts ("dining table")
    images: pd.DataFrame  # image_id, source_split, path
    labels: np.ndarray  # (images, classes) int8 of POSITIVE, NEGATIVE, IGNORE
    notes: dict = field(default_factory=dict)
