"""PASCAL VOC 2007 and 2012: the JPEGImages / Annotations / ImageSets/Main layout."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from repro.datasets import IGNORE, NEGATIVE, POSITIVE, DatasetError, DatasetSpec, RawDataset
from repro.download import Archive, download, extract

log = logging.getLogger(__name__)

CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NATURAL_NAMES = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}

# Official archives (the URLs and MD5 sums that torchvision 0.29 lists) with their approximate
# sizes in bytes for the free-space check.
ARCHIVES = {
    "voc2007": [
        Archive(
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
            "VOCtrainval_06-Nov-2007.tar",
            "c52e279531787c972589f7e41ab4ae64",
            460_032_000,
        ),
        Archive(
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
            "VOCtest_06-Nov-2007.tar",
            "b6e924de25625d8de591ea690078ad9f",
            451_020_800,
        ),
    ],
    "voc2012": [
        Archive(
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "VOCtrainval_11-May-2012.tar",
            "6cd6e144f989b92b3379bac3b3de84fd",
            1_999_639_040,
        ),
    ],
}
YEAR_FOLDER = {"voc2007": "VOCdevkit/VOC2007", "voc2012": "VOCdevkit/VOC2012"}


def fetch(name: str, download_dir: Path, archives: list[Archive] | None = None) -> Path:
    """Download and extract the official archives of `name`; return the VOC root folder."""
    root = download_dir / YEAR_FOLDER[name]
    marker = download_dir / f".{name}.extracted"
    if marker.is_file() and root.is_dir():
        return root
    for archive in archives or ARCHIVES[name]:
        extract(download(archive, download_dir), download_dir)
    if not root.is_dir():
        raise DatasetError(f"the {name} archives did not contain {YEAR_FOLDER[name]}")
    marker.write_text("extracted\n")
    return root


def available_splits(root: Path) -> list[str]:
    folder = root / "ImageSets" / "Main"
    return sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem)


def read_split(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(
            f"split {split!r} not found: {path} does not exist. Splits in {root}: "
            f"{', '.join(available_splits(root)) or 'none'}. Set dataset.train_split and "
            "dataset.eval_split to those."
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def read_objects(path: Path) -> list[tuple[str, bool]]:
    """Return (class name, difficult) for every object in one VOC XML file."""
    if not path.is_file():
        raise DatasetError(
            f"annotation {path} is missing; restore it or remove the image from the split lists."
        )
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise DatasetError(
            f"annotation {path} is not valid XML ({error}); fix or replace the file."
        ) from error
    objects = []
    for node in tree.getroot().iter("object"):
        name = (node.findtext("name") or "").strip()
        difficult = (node.findtext("difficult") or "0").strip() == "1"
        objects.append((name, difficult))
    return objects


def image_labels(objects: list[tuple[str, bool]], difficult: str, source: Path) -> np.ndarray:
    """Turn one image's objects into a label row.

    A class with a non-difficult instance is positive. A class seen only as 'difficult' is
    positive, negative or ignored, as the `difficult` argument sets.
    """
    row = np.full(len(CLASSES), NEGATIVE, dtype=np.int8)
    only_difficult = {"positive": POSITIVE, "negative": NEGATIVE, "ignore": IGNORE}
    for name, is_difficult in objects:
        if name not in CLASSES:
            raise DatasetError(
                f"{source} names the unknown class {name!r}; VOC classes are {', '.join(CLASSES)}. "
                "Fix the annotation or remove the image from the split lists."
            )
        index = CLASSES.index(name)
        if not is_difficult:
            row[index] = POSITIVE
        elif row[index] != POSITIVE:
            row[index] = only_difficult[difficult]
    return row


def load(name: str, root: Path, splits: list[str], difficult: str) -> RawDataset:
    """Read the ids of `splits` and their labels from a VOC folder."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        if not (root / folder).is_dir():
            raise DatasetError(
                f"{root} is not a PASCAL VOC folder: {folder}/ is missing. dataset.root must "
                "contain JPEGImages/, Annotations/ and ImageSets/Main/."
            )

    records, rows = [], []
    seen = set()
    for split in splits:
        for image_id in read_split(root, split):
            if image_id in seen:
                continue
            seen.add(image_id)
            xml = root / "Annotations" / f"{image_id}.xml"
            rows.append(image_labels(read_objects(xml), difficult, xml))
            records.append(
                {
                    "image_id": image_id,
                    "source_split": split,
                    "path": str(root / "JPEGImages" / f"{image_id}.jpg"),
                }
            )

    labels = np.stack(rows) if rows else np.zeros((0, len(CLASSES)), dtype=np.int8)
    no_objects = int((labels == NEGATIVE).all(axis=1).sum()) if len(rows) else 0
    return RawDataset(
        name=name,
        root=str(root),
        classes=list(CLASSES),
        natural_names=[NATURAL_NAMES.get(c, c) for c in CLASSES],
        images=pd.DataFrame.from_records(records, columns=["image_id", "source_split", "path"]),
        labels=labels,
        notes={"images_without_objects": no_objects},
    )


def _locate(name: str, data) -> Path:
    return fetch(name, Path(data.download_dir))


def _load(name: str, root: Path, splits: list[str], data) -> RawDataset:
    return load(name, root, splits, data.difficult)


SPECS = tuple(
    DatasetSpec(
        name=name,
        standard_splits=("trainval", "test"),
        locate=partial(_locate, name),
        load=partial(_load, name),
    )
    for name in ("voc2007", "voc2012")
)
