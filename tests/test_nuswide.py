import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from repro import paths
from repro.datasets import DatasetError, nuswide
from repro.prepare import prepare
from tests.conftest import params_writer

CONCEPTS = ["animal", "beach", "fire", "sun"]
# (list entry with the official backslash, positive concepts, on disk)
LISTS = {
    "Train": [
        ("animal\\0001_11.jpg", {"animal"}, True),
        ("beach\\0002_22.jpg", {"beach", "sun"}, True),
        ("animal\\0003_33.jpg", {"animal"}, False),  # a dead Flickr link
        ("sun\\0004_44.jpg", set(), True),  # no concept at all
    ],
    "Test": [
        ("beach\\0005_55.jpg", {"beach"}, True),
        ("sun\\0006_66.jpg", {"sun"}, True),
    ],
}


def write_layout(root: Path, concepts_at: str, labels_at: str) -> Path:
    """Write a NUS-WIDE folder with CRLF text files and real JPEG images."""
    (root / concepts_at).parent.mkdir(parents=True, exist_ok=True)
    (root / concepts_at).write_bytes(("\r\n".join(CONCEPTS) + "\r\n").encode())
    (root / "ImageList").mkdir(parents=True)
    (root / labels_at).mkdir(parents=True)
    for split, entries in LISTS.items():
        listing = "".join(f"{entry}\r\n" for entry, _, _ in entries)
        (root / "ImageList" / f"{split}Imagelist.txt").write_bytes(listing.encode())
        for concept in CONCEPTS:
            values = "".join(f"{int(concept in positives)}\r\n" for _, positives, _ in entries)
            (root / labels_at / f"Labels_{concept}_{split}.txt").write_bytes(values.encode())
        for entry, _, on_disk in entries:
            if on_disk:
                path = root / "Flickr" / entry.replace("\\", "/")
                path.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.new("RGB", (24, 16), (200, 40, 40)).save(buffer, format="JPEG")
                path.write_bytes(buffer.getvalue())
    return root


@pytest.fixture
def nus_root(tmp_path) -> Path:
    return write_layout(tmp_path / "nus", "Concepts81.txt", "TrainTestLabels")


def test_images_and_ids(nus_root):
    raw = nuswide.load(nus_root, ["train", "test"])
    assert raw.images["image_id"].tolist() == [
        "animal/0001_11.jpg",
        "beach/0002_22.jpg",
        "sun/0004_44.jpg",
        "beach/0005_55.jpg",
        "sun/0006_66.jpg",
    ]


def test_paths_under_flickr(nus_root):
    raw = nuswide.load(nus_root, ["train", "test"])
    assert raw.images["path"].iloc[1] == str(nus_root / "Flickr" / "beach" / "0002_22.jpg")


def test_labels(nus_root):
    raw = nuswide.load(nus_root, ["train", "test"])
    expected = np.array(
        [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.int8
    )
    assert np.array_equal(raw.labels, expected)


def test_source_splits(nus_root):
    raw = nuswide.load(nus_root, ["train", "test"])
    assert raw.images["source_split"].tolist() == ["train"] * 3 + ["test"] * 2


def test_notes(nus_root):
    notes = nuswide.load(nus_root, ["train", "test"]).notes
    assert notes == {
        "missing_images": 1,
        "missing_image_examples": ["animal/0003_33.jpg"],
        "images_without_labels": 1,
        "classes_without_positives": ["fire"],
    }


def test_missing_images_logged_once(nus_root, caplog):
    with caplog.at_level(logging.WARNING, logger="repro.datasets.nuswide"):
        nuswide.load(nus_root, ["train", "test"])
    lines = [r.getMessage() for r in caplog.records if "not on disk" in r.getMessage()]
    assert lines == [
        "1 of 6 listed NUS-WIDE images are not on disk and were skipped; first: animal/0003_33.jpg"
    ]


def test_groundtruth_layout(tmp_path):
    root = write_layout(
        tmp_path / "nus", "ConceptsList/Concepts81.txt", "Groundtruth/TrainTestLabels"
    )
    raw = nuswide.load(root, ["test"])
    assert raw.classes == CONCEPTS


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("actor\\0001_2124494179.jpg", "actor/0001_2124494179.jpg"),
        ("C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg", "actor/0001_2124494179.jpg"),
        ("actor/0001_2124494179.jpg", "actor/0001_2124494179.jpg"),
    ],
)
def test_list_entry_paths(entry, expected):
    assert nuswide.relative_image_path(entry) == expected


def test_label_count_mismatch(nus_root):
    path = nus_root / "TrainTestLabels" / "Labels_sun_Test.txt"
    path.write_text("0\n1\n0\n")
    with pytest.raises(DatasetError, match="Labels_sun_Test.txt has 3 values but .* lists 2"):
        nuswide.load(nus_root, ["test"])


def test_label_value_invalid(nus_root):
    (nus_root / "TrainTestLabels" / "Labels_sun_Test.txt").write_text("0\n2\n")
    with pytest.raises(DatasetError, match="contains '2'"):
        nuswide.load(nus_root, ["test"])


def test_unknown_split(nus_root):
    with pytest.raises(
        DatasetError, match="split 'val' not found: NUS-WIDE splits are train, test"
    ):
        nuswide.load(nus_root, ["val"])


def test_missing_concept_list(nus_root):
    (nus_root / "Concepts81.txt").unlink()
    with pytest.raises(DatasetError, match="concept list is missing"):
        nuswide.load(nus_root, ["test"])


def test_no_listed_image_on_disk(nus_root):
    for path in (nus_root / "Flickr" / "sun").iterdir():
        path.unlink()
    (nus_root / "Flickr" / "beach" / "0005_55.jpg").unlink()
    with pytest.raises(DatasetError, match="none of the 2 images .* is on disk"):
        nuswide.load(nus_root, ["test"])


def test_no_root_explains_how_to_supply(tmp_path):
    with pytest.raises(DatasetError, match="no official image archive.*Flickr/<folder>/<file>"):
        nuswide.locate(None)


def test_prepare_records_missing_images(project_dir, nus_root):
    write = params_writer(
        project_dir,
        dataset={"name": "nuswide", "root": str(nus_root), "holdout": None, "max_images": None},
    )
    prepare(write())
    info = json.loads(paths.DATASET_INFO.read_text())
    assert info["missing_images"] == 1
    assert info["splits"] == {"train": "train", "eval": "test"}
    assert pd.read_parquet(paths.INDEX)["split"].value_counts().to_dict() == {"train": 3, "eval": 2}
