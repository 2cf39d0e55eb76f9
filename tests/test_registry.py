import pytest

from repro.config import DATASETS, config_from_dict
from repro.datasets import DatasetError
from repro.datasets.registry import DATASETS as READERS
from repro.datasets.registry import get_dataset, resolve_splits


def config_for(**dataset):
    return config_from_dict({"dataset": dataset})


def test_every_configurable_name_has_reader():
    assert set(READERS) == set(DATASETS)


def test_unknown_name():
    with pytest.raises(DatasetError, match="'imagenet' has no reader.*coco2014"):
        get_dataset("imagenet")


def test_voc_keeps_its_splits():
    config = config_for(name="voc2007")
    assert resolve_splits(config) == (config, {})


def test_coco_maps_default_splits():
    config, _ = resolve_splits(config_for(name="coco2014"))
    assert (config.dataset.train_split, config.dataset.eval_split) == ("train2014", "val2014")


def test_nuswide_maps_default_train_split():
    config, notes = resolve_splits(config_for(name="nuswide"))
    assert (config.dataset.train_split, config.dataset.eval_split) == ("train", "test")
    assert notes == {"split_aliases": {"train": {"requested": "trainval", "read": "train"}}}


def test_explicit_splits_kept():
    config = config_for(name="coco2014", train_split="val2014", eval_split="train2014")
    assert resolve_splits(config) == (config, {})


def test_mapping_onto_same_split():
    config = config_for(name="coco2014", train_split="val2014")
    with pytest.raises(DatasetError, match="both resolve to 'val2014'"):
        resolve_splits(config)


def test_mapping_onto_same_split_with_holdout():
    config, _ = resolve_splits(config_for(name="coco2014", train_split="val2014", holdout=0.5))
    assert config.dataset.eval_split == "val2014"
