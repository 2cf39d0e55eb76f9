"""MS-COCO 2014: instances JSON files read with pycocotools, one image folder per split.

Layout under the dataset root (as the official archives extract):

    annotations/instances_<split>.json
    <split>/<file_name>          e.g. train2014/COCO_train2014_000000000009.jpg

When `<split>/` does not exist, images are looked up in `images/<file_name>`, so a small
COCO-format sample with one JSON and one image folder can be read as it is.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools.coco import COCO

from repro.datasets import NEGATIVE, POSITIVE, DatasetError, DatasetSpec, RawDataset
from repro.download import Archive, download, extract

log = logging.getLogger(__name__)

NAME = "coco2014"
OFFICIAL_SPLITS = ("train2014", "val2014")
CATEGORY_COUNT = 80
FOLDER = "coco2014"  # under dataset.download_dir

# Official archives. The MD5 sums are those listed in twsl/pytorchcocotools
# (src/pytorchcocotools/torch/download.py, commit 34e5eafe). salesforce/LAVIS lists the same
# image sums (lavis/datasets/download_scripts/download_coco.py). Sizes in bytes are
# estimates, used only for the free-space check.
ARCHIVES = {
    "annotations": Archive(
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "annotations_trainval2014.zip",
        "0a379cfc70b0e71301e0f377548639bd",
        253_000_000,
    ),
    "train2014": Archive(
        "http://images.cocodataset.org/zips/train2014.zip",
        "train2014.zip",
        "0da8c0bd3d6becc4dcb32757491aca88",
        13_510_000_000,
    ),
    "val2014": Archive(
        "http://images.cocodataset.org/zips/val2014.zip",
        "val2014.zip",
        "a3d79f5ed8d289b7a7554ce06a5782b3",
        6_650_000_000,
    ),
}
# Path that each archive must contain, relative to the extraction folder.
EXTRACTED = {
    "annotations": "annotations/instances_train2014.json",
    "train2014": "train2014",
    "val2014": "val2014",
}

# NOTE: crowd annotations (iscrowd=1, one region covering a group of objects) still mean the
# category is in the image, so they make the class positive, as a plain instance does.
CROWD_POLICY = "iscrowd annotations count as positive"


def fetch(
    download_dir: Path, splits: list[str], archives: dict[str, Archive] | None = None
) -> Path:
    """Download and extract the annotations and the image archives of `splits`.

    Returns the COCO root folder (`<download_dir>/coco2014`). A marker file records each
    finished extraction, so a later run skips that archive and repeats an interrupted one.
    """
    archives = archives or ARCHIVES
    root = download_dir / FOLDER
    for split in splits:
        if split not in archives:
            raise DatasetError(
                f"split {split!r} has no official COCO 2014 archive; downloads cover "
                f"{', '.join(OFFICIAL_SPLITS)}. Set dataset.root to a local copy that has "
                f"annotations/instances_{split}.json, or choose one of those splits."
            )
    for key in ("annotations", *dict.fromkeys(splits)):
        marker = root / f".{key}.extracted"
        if marker.is_file():
            continue
        extract(download(archives[key], download_dir), root)
        if not (root / EXTRACTED[key]).exists():
            raise DatasetError(
                f"{archives[key].filename} did not contain {EXTRACTED[key]}; delete it from "
                f"{download_dir} and run the stage again."
            )
        marker.write_text("extracted\n")
    return root


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def available_splits(root: Path) -> list[str]:
    folder = root / "annotations"
    return sorted(p.stem.removeprefix("instances_") for p in folder.glob("instances_*.json"))


def read_instances(path: Path) -> COCO:
    """Parse one instances JSON and index it with pycocotools.

    Raises:
        DatasetError: the file is missing, is not JSON, or lacks COCO's keys.
    """
    if not path.is_file():
        root = path.parents[1]
        split = path.stem.removeprefix("instances_")
        raise DatasetError(
            f"annotation file {path} not found, so split {split!r} cannot be read. Splits "
            f"with an instances file in {root}: {', '.join(available_splits(root)) or 'none'}. "
            "Extract annotations_trainval2014.zip (cocodataset.org) into dataset.root, or set "
            "dataset.train_split and dataset.eval_split to listed splits."
        )
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"annotation file {path} is not valid JSON ({error}); replace it with the file "
            "from annotations_trainval2014.zip."
        ) from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(
                f"annotation file {path} is not a COCO instances file: the list {key!r} is "
                "missing. Use annotations/instances_<split>.json (image_info files carry no "
                "labels)."
            )

    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as error:
        raise DatasetError(
            f"annotation file {path} has a malformed record (missing or wrong field "
            f"{error}); replace it with the file from annotations_trainval2014.zip."
        ) from error
    return coco


def image_folder(root: Path, split: str) -> Path:
    for folder in (root / split, root / "images"):
        if folder.is_dir():
            return folder
    raise DatasetError(
        f"no image folder for split {split!r}: neither {root / split} nor {root / 'images'} "
        f"exists. Extract {split}.zip into dataset.root."
    )


def _image_id(coco_id) -> str:
    return f"{coco_id:012d}" if isinstance(coco_id, int) else str(coco_id)


def split_labels(coco: COCO, category_ids: list[int], source: Path) -> tuple[list, np.ndarray, int]:
    """Image-level labels of one split.

    A class is positive if the image has any instance of it, crowd regions included.
    Returns the image records in file order, their label rows, and the number of
    (image, class) positives that come from crowd annotations alone.
    """
    column = {category: j for j, category in enumerate(category_ids)}
    images = coco.dataset["images"]
    known = set(coco.imgs)
    stray = [image_id for image_id in coco.imgToAnns if image_id not in known]
    if stray:
        raise DatasetError(
            f"annotation file {source} has annotations for image id {stray[0]}, which is not "
            "in its 'images' list; replace the file with the official one."
        )

    plain = np.zeros((len(images), len(category_ids)), dtype=bool)
    crowd = np.zeros_like(plain)
    for row, image in enumerate(images):
        for annotation in coco.imgToAnns.get(image["id"], ()):
            j = column.get(annotation["category_id"])
            if j is None:
                raise DatasetError(
                    f"annotation file {source} names category id {annotation['category_id']}, "
                    "which is not in its 'categories' list; replace the file with the "
                    "official one."
                )
            (crowd if annotation.get("iscrowd", 0) else plain)[row, j] = True

    labels = np.full(plain.shape, NEGATIVE, dtype=np.int8)
    labels[plain | crowd] = POSITIVE
    return images, labels, int((crowd & ~plain).sum())


def load(root: Path, splits: list[str]) -> RawDataset:
    """Read the images and image-level labels of `splits` from a COCO folder."""
    classes: list[str] | None = None
    records, blocks = [], []
    seen: set[str] = set()
    crowd_only = 0
    for split in dict.fromkeys(splits):
        path = annotation_path(root, split)
        coco = read_instances(path)
        categories = coco.loadCats(sorted(coco.getCatIds()))
        names = [category["name"] for category in categories]
        if classes is None:
            classes = names
            if len(classes) != CATEGORY_COUNT:
                log.warning("%s lists %d categories, not %d", path, len(classes), CATEGORY_COUNT)
        elif names != classes:
            raise DatasetError(
                f"the categories of {path} differ from those of the other split; both splits "
                "must come from the same COCO release."
            )

        images, labels, crowd = split_labels(coco, [c["id"] for c in categories], path)
        crowd_only += crowd
        folder = image_folder(root, split)
        keep = []
        for row, image in enumerate(images):
            image_id = _image_id(image["id"])
            if image_id in seen:
                continue
            seen.add(image_id)
            keep.append(row)
            records.append(
                {
                    "image_id": image_id,
                    "source_split": split,
                    "path": str(folder / image["file_name"]),
                }
            )
        blocks.append(labels[keep])
        log.info("read %s: %d images, %d annotations", path, len(images), len(coco.anns))

    labels = np.concatenate(blocks)
    no_annotations = int((labels == NEGATIVE).all(axis=1).sum())
    empty = [name for name, column in zip(classes, labels.T) if not (column == POSITIVE).any()]
    if empty:
        log.warning("%d COCO classes have no positive image: %s", len(empty), ", ".join(empty))
    return RawDataset(
        name=NAME,
        root=str(root),
        classes=list(classes),
        natural_names=list(classes),  # COCO's names are already words ("dining table")
        images=pd.DataFrame.from_records(records, columns=["image_id", "source_split", "path"]),
        labels=labels,
        notes={
            "images_without_annotations": no_annotations,
            "classes_without_positives": empty,
            "crowd_annotations": CROWD_POLICY,
            "positives_from_crowd_only": crowd_only,
        },
    )


def _locate(data) -> Path:
    return fetch(Path(data.download_dir), [data.train_split, data.eval_split])


def _load(root: Path, splits: list[str], data) -> RawDataset:
    return load(root, splits)


SPEC = DatasetSpec(name=NAME, standard_splits=OFFICIAL_SPLITS, locate=_locate, load=_load)
