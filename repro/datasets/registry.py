"""Registry of the dataset readers by `dataset.name`, and the split names each one reads."""

from __future__ import annotations

import dataclasses
import logging

from repro.config import Config, DatasetConfig
from repro.datasets import DatasetError, DatasetSpec, coco, nuswide, voc

log = logging.getLogger(__name__)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (*voc.SPECS, coco.SPEC, nuswide.SPEC)
}

# The defaults of dataset.train_split and dataset.eval_split, which are VOC's split names.
DEFAULT_SPLITS = (DatasetConfig.train_split, DatasetConfig.eval_split)


def get_dataset(name: str) -> DatasetSpec:
    """Return the spec of `name`.

    Raises:
        DatasetError: no reader is registered under that name.
    """
    if name not in DATASETS:
        raise DatasetError(
            f"dataset.name = {name!r} has no reader; choose one of {', '.join(DATASETS)}."
        )
    return DATASETS[name]


def resolve_splits(config: Config) -> tuple[Config, dict]:
    """Replace VOC's default split names by the dataset's own train and eval splits.

    A `dataset.train_split` of 'trainval' or a `dataset.eval_split` of 'test' (the
    defaults) is replaced by the dataset's standard split of that role: train2014 and val2014
    for COCO 2014, train and test for NUS-WIDE, and itself for VOC. Any other name is
    kept as given.
    Returns the config with the splits to read and a note for dataset.json that records
    each replaced name, empty when none was replaced.
    """
    data = config.dataset
    spec = get_dataset(data.name)
    requested = (data.train_split, data.eval_split)
    resolved = tuple(
        standard if name == default else name
        for name, default, standard in zip(requested, DEFAULT_SPLITS, spec.standard_splits)
    )
    if resolved == requested:
        return config, {}

    if data.holdout is None and resolved[0] == resolved[1]:
        raise DatasetError(
            f"dataset.train_split and dataset.eval_split both resolve to {resolved[0]!r} of "
            f"{data.name} (VOC's default names map to {' and '.join(spec.standard_splits)}). "
            "Name two different splits, or set dataset.holdout."
        )
    aliases = {
        role: {"requested": name, "read": read}
        for role, name, read in zip(("train", "eval"), requested, resolved)
        if name != read
    }
    for role, alias in aliases.items():
        log.info(
            "dataset.%s_split %r is VOC's default; reading %s split %r instead",
            role,
            alias["requested"],
            data.name,
            alias["read"],
        )
    data = dataclasses.replace(data, train_split=resolved[0], eval_split=resolved[1])
    return dataclasses.replace(config, dataset=data), {"split_aliases": aliases}
