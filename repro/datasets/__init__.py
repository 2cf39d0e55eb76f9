"""Dataset readers. Each returns the images of the requested splits and their ground truth.

A reader module describes its dataset with a `DatasetSpec`; `repro.datasets.registry` maps
`dataset.name` to the spec, and the prepare stage calls only the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from repro.config import DatasetConfig

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


@dataclass(frozen=True)
class DatasetSpec:
    """How the prepare stage finds and reads one dataset.

    Attributes:
        name: the value of `dataset.name`.
        standard_splits: the (train, eval) splits that VOC's default split names, the
            defaults of `dataset.train_split` and `dataset.eval_split`, stand for.
        locate: returns the dataset folder when `dataset.root` is null. It downloads the
            dataset, or raises a DatasetError that explains how to supply a copy.
        load: reads the requested splits from the dataset folder.
    """

    name: str
    standard_splits: tuple[str, str]
    locate: Callable[[DatasetConfig], Path]
    load: Callable[[Path, list[str], DatasetConfig], RawDataset]
