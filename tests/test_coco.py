import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from repro import paths
from repro.datasets import DatasetError, coco
from repro.download import DownloadError
from repro.prepare import prepare
from tests.conftest import params_writer

# Images with at least one instance of the category (crowd regions included), counted from
# the sample's instances JSON when the sample was assembled.
SAMPLE_POSITIVES = {
    "person": 123,
    "car": 24,
    "dining table": 34,
    "bottle": 37,
    "sink": 34,
    "hot dog": 1,
    "toothbrush": 6,
}
SAMPLE_IMAGES = 258
SAMPLE_WITHOUT_ANNOTATIONS = 3

# A tiny COCO 2014 layout: category ids are not contiguous, and one category has no instance.
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 67, "name": "dining table", "supercategory": "furniture"},
]
TINY = {
    "train2014": [
        # (id, mode, annotations as (category id, iscrowd))
        (9, "RGB", [(1, 0), (18, 0), (1, 1)]),
        (25, "L", [(1, 1)]),  # grayscale; person only as a crowd region
    ],
    "val2014": [
        (42, "RGB", []),  # no annotations at all
        (73, "RGB", [(18, 0)]),
    ],
}


def jpeg_bytes(mode: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="JPEG")
    return buffer.getvalue()


def instances(split: str) -> dict:
    images, annotations = [], []
    for image_id, mode, objects in TINY[split]:
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": 40, "height": 30})
        for category, crowd in objects:
            annotations.append(
                {
                    "id": len(annotations) + 100 * image_id,
                    "image_id": image_id,
                    "category_id": category,
                    "iscrowd": crowd,
                    "bbox": [0, 0, 10, 10],
                    "area": 100.0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def tiny_files() -> dict[str, bytes]:
    """Relative path -> bytes of the tiny layout, as the official archives extract."""
    files = {}
    for split, entries in TINY.items():
        files[f"annotations/instances_{split}.json"] = json.dumps(instances(split)).encode()
        for image_id, mode, _ in entries:
            files[f"{split}/COCO_{split}_{image_id:012d}.jpg"] = jpeg_bytes(mode)
    return files


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    for name, data in tiny_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_sample_positive_counts(coco_sample):
    raw = coco.load(coco_sample, ["sample"])
    for name, count in SAMPLE_POSITIVES.items():
        assert int((raw.labels[:, raw.classes.index(name)] == 1).sum()) == count, name


def test_sample_shape_and_names(coco_sample):
    raw = coco.load(coco_sample, ["sample"])
    assert raw.labels.shape == (SAMPLE_IMAGES, 80)
    assert raw.classes[:3] == ["person", "bicycle", "car"]
    assert raw.natural_names == raw.classes


def test_sample_images_folder_fallback(coco_sample):
    raw = coco.load(coco_sample, ["sample", "sample"])
    assert len(raw.images) == SAMPLE_IMAGES
    assert all(Path(p).parent == coco_sample / "images" for p in raw.images["path"])
    assert all(Path(p).is_file() for p in raw.images["path"])


def test_sample_notes(coco_sample):
    notes = coco.load(coco_sample, ["sample"]).notes
    assert notes["images_without_annotations"] == SAMPLE_WITHOUT_ANNOTATIONS
    assert notes["classes_without_positives"] == []


def test_tiny_labels(tiny_coco):
    raw = coco.load(tiny_coco, ["train2014", "val2014"])
    assert raw.classes == ["person", "dog", "dining table"]
    assert raw.images["image_id"].tolist() == [
        "000000000009",
        "000000000025",
        "000000000042",
        "000000000073",
    ]
    expected = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=np.int8)
    assert np.array_equal(raw.labels, expected)
    assert raw.labels.dtype == np.int8


def test_tiny_paths_and_splits(tiny_coco):
    raw = coco.load(tiny_coco, ["train2014", "val2014"])
    assert raw.images["source_split"].tolist() == ["train2014"] * 2 + ["val2014"] * 2
    assert raw.images["path"].iloc[3] == str(
        tiny_coco / "val2014" / "COCO_val2014_000000000073.jpg"
    )


def test_tiny_notes(tiny_coco):
    notes = coco.load(tiny_coco, ["train2014", "val2014"]).notes
    assert notes["images_without_annotations"] == 1
    assert notes["classes_without_positives"] == ["dining table"]
    assert notes["positives_from_crowd_only"] == 1


def test_malformed_json(tiny_coco):
    (tiny_coco / "annotations" / "instances_val2014.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="instances_val2014.json is not valid JSON"):
        coco.load(tiny_coco, ["train2014", "val2014"])


def test_missing_annotation_file_lists_splits(tiny_coco):
    with pytest.raises(DatasetError, match="instances_test2014.json not found.*train2014, val2014"):
        coco.load(tiny_coco, ["test2014"])


def test_missing_annotations_list(tiny_coco):
    path = tiny_coco / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="not a COCO instances file.*'annotations'"):
        coco.load(tiny_coco, ["val2014"])


def test_unknown_category(tiny_coco):
    path = tiny_coco / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category id 999"):
        coco.load(tiny_coco, ["val2014"])


def test_missing_image_folder(tiny_coco):
    (tiny_coco / "val2014").rename(tiny_coco / "elsewhere")
    with pytest.raises(DatasetError, match="no image folder for split 'val2014'"):
        coco.load(tiny_coco, ["val2014"])


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def serve_tiny_archives(served: Path, url: str, keep_official_md5: bool) -> dict:
    """Write zips laid out like COCO's official ones; return archives that point at them."""
    files = tiny_files()
    groups = {"annotations": "annotations/", "train2014": "train2014/", "val2014": "val2014/"}
    archives = {}
    for key, prefix in groups.items():
        official = coco.ARCHIVES[key]
        data = zip_bytes({n: d for n, d in files.items() if n.startswith(prefix)})
        (served / official.filename).write_bytes(data)
        md5 = official.md5 if keep_official_md5 else hashlib.md5(data).hexdigest()
        archives[key] = dataclasses.replace(
            official, url=f"{url}/{official.filename}", md5=md5, size=len(data)
        )
    return archives


def test_checksum_mismatch_removes_partial_file(server, tmp_path):
    served, url, _ = server
    archives = serve_tiny_archives(served, url, keep_official_md5=True)
    downloads = tmp_path / "downloads"
    with pytest.raises(DownloadError, match="has MD5 .*expected 0a379cfc70b0e71301e0f377548639bd"):
        coco.fetch(downloads, ["val2014"], archives)
    assert not (downloads / "annotations_trainval2014.zip.part").exists()
    assert not (downloads / "annotations_trainval2014.zip").exists()


def test_fetch_from_local_server(server, tmp_path):
    served, url, _ = server
    archives = serve_tiny_archives(served, url, keep_official_md5=False)
    root = coco.fetch(tmp_path / "downloads", ["train2014", "val2014"], archives)
    raw = coco.load(root, ["train2014", "val2014"])
    assert raw.labels.shape == (4, 3)


def test_fetch_reuses_extracted_archives(server, tmp_path):
    served, url, _ = server
    archives = serve_tiny_archives(served, url, keep_official_md5=False)
    coco.fetch(tmp_path / "downloads", ["val2014"], archives)
    for path in served.iterdir():
        path.unlink()
    root = coco.fetch(tmp_path / "downloads", ["val2014"], archives)
    assert (root / "val2014" / "COCO_val2014_000000000073.jpg").is_file()


def test_fetch_rejects_unofficial_split(tmp_path):
    with pytest.raises(DatasetError, match="split 'sample' has no official COCO 2014 archive"):
        coco.fetch(tmp_path, ["sample"])


@pytest.fixture
def coco_workdir(project_dir, coco_sample):
    return params_writer(
        project_dir,
        dataset={
            "name": "coco2014",
            "root": str(coco_sample),
            "train_split": "sample",
            "eval_split": "sample",
            "holdout": 0.5,
            "max_images": None,
        },
    )


def test_prepare_sample(coco_workdir):
    prepare(coco_workdir())
    index = pd.read_parquet(paths.INDEX)
    assert index["split"].value_counts().to_dict() == {"train": 129, "eval": 129}
    truth = pd.read_parquet(paths.LABELS)
    assert int((truth["person"] == 1).sum()) == SAMPLE_POSITIVES["person"]


def test_prepare_sample_records_notes(coco_workdir):
    prepare(coco_workdir(dataset={"max_images": 10}))
    info = json.loads(paths.DATASET_INFO.read_text())
    assert info["name"] == "coco2014"
    assert "dining table" in info["natural_names"]
    assert info["images_without_annotations"] == SAMPLE_WITHOUT_ANNOTATIONS
    assert info["crowd_annotations"] == coco.CROWD_POLICY
    assert "split_aliases" not in info


def test_prepare_default_splits_name_coco_splits(coco_workdir):
    config = coco_workdir(
        dataset={"train_split": "trainval", "eval_split": "test", "holdout": None}
    )
    with pytest.raises(DatasetError, match="instances_train2014.json not found.*: sample"):
        prepare(config)
    assert not paths.PREPARED.exists()


def test_prepare_tiny_maps_default_splits(project_dir, tiny_coco):
    write = params_writer(
        project_dir, dataset={"name": "coco2014", "root": str(tiny_coco), "max_images": None}
    )
    prepare(write(dataset={"holdout": None}))
    info = json.loads(paths.DATASET_INFO.read_text())
    assert info["splits"] == {"train": "train2014", "eval": "val2014"}
    assert info["split_aliases"]["train"] == {"requested": "trainval", "read": "train2014"}


def test_prepare_tiny_reads_grayscale(project_dir, tiny_coco):
    write = params_writer(
        project_dir, dataset={"name": "coco2014", "root": str(tiny_coco), "max_images": None}
    )
    prepare(write(dataset={"holdout": None}))
    index = pd.read_parquet(paths.INDEX).set_index("image_id")
    assert index.loc["000000000025", ["width", "height"]].tolist() == [40, 30]
