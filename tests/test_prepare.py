import json

import numpy as np
import pandas as pd
import pytest

from repro import paths
from repro.datasets import DatasetError
from repro.datasets.voc import CLASSES, image_labels, read_objects
from repro.images import BadImageError
from repro.prepare import prepare
from tests import faulty_voc

# Image-level positives (objects with difficult=0) over all 402 images of the VOC 2007
# sample, counted from the original XML files when the sample was assembled.
SAMPLE_POSITIVES = {
    "aeroplane": 10,
    "car": 53,
    "chair": 36,
    "person": 170,
    "sheep": 10,
    "tvmonitor": 16,
}


def test_labels_match_sample_counts(workdir):
    config = workdir(
        dataset={
            "holdout": None,
            "max_images": None,
            "train_split": "trainval",
            "eval_split": "test",
            "difficult": "negative",
        }
    )
    prepare(config)
    truth = pd.read_parquet(paths.LABELS)
    assert len(truth) == 402
    for name, count in SAMPLE_POSITIVES.items():
        assert int((truth[name] == 1).sum()) == count, name


def test_difficult_modes(workdir):
    counts = {}
    for mode in ("negative", "positive", "ignore"):
        config = workdir(dataset={"holdout": None, "max_images": None, "difficult": mode})
        prepare(config)
        truth = pd.read_parquet(paths.LABELS)[list(CLASSES)].to_numpy()
        counts[mode] = ((truth == 1).sum(), (truth == -1).sum())
    assert counts["positive"][0] > counts["negative"][0]
    assert counts["ignore"][1] == counts["positive"][0] - counts["negative"][0]
    assert counts["negative"][1] == 0


def test_index_holds_no_labels(workdir):
    prepare(workdir())
    index = pd.read_parquet(paths.INDEX)
    assert set(index.columns) == {"image_id", "split", "source_split", "path", "width", "height"}
    assert not set(CLASSES) & set(index.columns)


def test_official_splits(workdir):
    prepare(workdir(dataset={"holdout": None, "max_images": None}))
    index = pd.read_parquet(paths.INDEX)
    assert (index["split"] == "train").sum() == 2
    assert (index["split"] == "eval").sum() == 400
    assert set(index.loc[index["split"] == "train", "image_id"]) == {"006251", "009700"}


def test_holdout_is_disjoint_and_deterministic(workdir):
    prepare(workdir(dataset={"holdout": 0.5, "max_images": None}))
    first = pd.read_parquet(paths.INDEX)
    prepare(workdir(dataset={"holdout": 0.5, "max_images": None}))
    second = pd.read_parquet(paths.INDEX)
    assert first.equals(second)
    train = set(first.loc[first["split"] == "train", "image_id"])
    evaluation = set(first.loc[first["split"] == "eval", "image_id"])
    assert not train & evaluation
    assert len(evaluation) == 201
    assert len(train) == 201


def test_max_images_per_split(workdir):
    prepare(workdir(dataset={"holdout": 0.5, "max_images": 7}))
    index = pd.read_parquet(paths.INDEX)
    assert index["split"].value_counts().to_dict() == {"train": 7, "eval": 7}


def test_sizes_from_decoded_images(workdir):
    prepare(workdir(dataset={"max_images": 5}))
    index = pd.read_parquet(paths.INDEX)
    assert ((index["width"] > 0) & (index["height"] > 0)).all()
    info = json.loads(paths.DATASET_INFO.read_text())
    assert info["classes"] == list(CLASSES)
    assert "dining table" in info["natural_names"]


def test_missing_split_lists_available(workdir):
    config = workdir(dataset={"holdout": None, "train_split": "train", "max_images": None})
    with pytest.raises(DatasetError, match="split 'train' not found.*test, trainval"):
        prepare(config)
    assert not paths.PREPARED.exists()


def test_unknown_class_in_xml(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation><object><name>unicorn</name><difficult>0</difficult></object></annotation>"
    )
    with pytest.raises(DatasetError, match="unknown class 'unicorn'"):
        image_labels(read_objects(xml), "positive", xml)


def test_malformed_xml(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="not valid XML"):
        read_objects(xml)


def test_image_without_objects_is_all_negative(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><size><width>5</width></size></annotation>")
    row = image_labels(read_objects(xml), "positive", xml)
    assert (row == 0).all()
    assert row.dtype == np.int8


def small_voc(root, sample, count: int = 4) -> list[str]:
    """A VOC folder with `count` sample images: the first half trainval, the rest test."""
    ids = faulty_voc.copy_sample(root, sample, count)
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(ids[: count // 2]) + "\n")
    (root / "ImageSets/Main/test.txt").write_text("\n".join(ids[count // 2 :]) + "\n")
    return ids


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><object>", "is not valid XML"),
        (
            "<annotation><object><name>unicorn</name></object></annotation>",
            "names the unknown class 'unicorn'",
        ),
        (None, "is missing"),
    ],
)
def test_bad_annotation_stops_prepare(workdir, tmp_path, voc_sample, xml, message):
    root = tmp_path / "voc"
    ids = small_voc(root, voc_sample)
    broken = root / "Annotations" / f"{ids[-1]}.xml"
    if xml is None:
        broken.unlink()
    else:
        broken.write_text(xml)
    config = workdir(dataset={"root": str(root), "holdout": None, "max_images": None})
    with pytest.raises(DatasetError, match=message) as error:
        prepare(config)
    assert str(broken) in str(error.value)
    assert not paths.PREPARED.exists()


def voc_without_one_image(tmp_path, sample) -> tuple:
    root = tmp_path / "voc"
    ids = small_voc(root, sample)
    (root / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    return root, ids


def test_missing_image_fails(workdir, tmp_path, voc_sample):
    root, ids = voc_without_one_image(tmp_path, voc_sample)
    config = workdir(dataset={"root": str(root), "holdout": None, "max_images": None})
    with pytest.raises(BadImageError, match=f"{ids[0]}.jpg: image file not found"):
        prepare(config)
    assert not paths.PREPARED.exists()


def test_missing_image_skipped(workdir, tmp_path, voc_sample):
    root, ids = voc_without_one_image(tmp_path, voc_sample)
    dataset = {"root": str(root), "holdout": None, "max_images": None, "on_bad_image": "skip"}
    assert prepare(workdir(dataset=dataset))["skipped_bad_images"] == 1
    assert pd.read_parquet(paths.INDEX)["image_id"].tolist() == ids[1:]
