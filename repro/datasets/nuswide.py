"""NUS-WIDE with its 81 concepts: the official train/test image lists and label files.

Layout under the dataset root:

    Concepts81.txt                       or ConceptsList/Concepts81.txt
    ImageList/TrainImagelist.txt         one image per line, e.g. actor\\0001_2124494179.jpg
    ImageList/TestImagelist.txt
    TrainTestLabels/Labels_<concept>_Train.txt   or Groundtruth/TrainTestLabels/...
    TrainTestLabels/Labels_<concept>_Test.txt    one 0/1 per line, aligned with the list
    Flickr/<folder>/<file>               the images, e.g. Flickr/actor/0001_2124494179.jpg

The list format (backslash paths relative to Flickr/) and the file names follow public
loaders of NUS-WIDE, e.g. jasonseu/TSFormer scripts/nuswide.py (commit a254de42), which
reads Concepts81.txt from the root, and djh95/Triplet-Embedding-NN Define.py, which keeps
ConceptsList/ and Flickr/ beside ImageList/.
NOTE: not checked against the official zips; both places for the concept list and the
label folder are accepted for that reason.
"""

from __future__ import annotations

import logging
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from repro.datasets import NEGATIVE, POSITIVE, DatasetError, DatasetSpec, RawDataset

log = logging.getLogger(__name__)

NAME = "nuswide"
SPLITS = {"train": "Train", "test": "Test"}  # split name -> spelling in the file names
CONCEPT_COUNT = 81
EXAMPLES = 5  # missing image paths quoted in the log and in dataset.json

CONCEPT_FILES = ("Concepts81.txt", "ConceptsList/Concepts81.txt")
LABEL_FOLDERS = ("TrainTestLabels", "Groundtruth/TrainTestLabels")

HOW_TO_SUPPLY = (
    "NUS-WIDE has no official image archive to download, so dataset.root must name a local "
    "copy. The image lists, concept list and labels come from the NUS-WIDE page of the NUS "
    "Lab for Media Search, lms.comp.nus.edu.sg (archives ImageList, Groundtruth and "
    "ConceptsList). The images come from the dataset's authors on request, or from the "
    "Flickr URLs that the dataset lists, many of which are dead. Expected layout under "
    "dataset.root: Concepts81.txt (or ConceptsList/), ImageList/TrainImagelist.txt and "
    "TestImagelist.txt, TrainTestLabels/ (or Groundtruth/TrainTestLabels/) with "
    "Labels_<concept>_Train.txt and _Test.txt, and the images in Flickr/<folder>/<file> as "
    "the lists name them."
)


def locate(data) -> Path:
    """Raise a DatasetError that explains how to supply a copy (there is no download)."""
    raise DatasetError(f"dataset.root is null. {HOW_TO_SUPPLY}")


def _first_existing(root: Path, candidates: tuple[str, ...], description: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise DatasetError(
        f"{root} is not a NUS-WIDE folder: the {description} is missing (looked for "
        f"{', '.join(candidates)}). {HOW_TO_SUPPLY}"
    )


def _lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped (the official files use CRLF endings)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_concepts(root: Path) -> list[str]:
    path = _first_existing(root, CONCEPT_FILES, "concept list")
    concepts = _lines(path)
    if len(set(concepts)) != len(concepts):
        raise DatasetError(f"{path} lists a concept twice; restore the official file.")
    if len(concepts) != CONCEPT_COUNT:
        log.warning("%s lists %d concepts, not %d", path, len(concepts), CONCEPT_COUNT)
    return concepts


def relative_image_path(entry: str) -> str:
    """Turn a list entry such as `actor\\0001_2124494179.jpg` into `actor/0001_2124494179.jpg`.

    Only the folder and file name are kept, so entries that carry a longer Windows path
    (`C:\\ImageData\\Flickr\\actor\\...`) resolve the same way.
    """
    parts = PureWindowsPath(entry).parts
    return "/".join(parts[-2:])


def read_image_list(root: Path, split: str) -> list[str]:
    path = root / "ImageList" / f"{SPLITS[split]}Imagelist.txt"
    if not path.is_file():
        raise DatasetError(f"the image list {path} is missing. {HOW_TO_SUPPLY}")
    return [relative_image_path(entry) for entry in _lines(path)]


def read_concept_labels(folder: Path, concept: str, split: str, expected: int) -> np.ndarray:
    """Read one concept's 0/1 column of a split, which must have one value per listed image."""
    path = folder / f"Labels_{concept}_{SPLITS[split]}.txt"
    if not path.is_file():
        raise DatasetError(
            f"the label file {path} is missing; every concept in the concept list needs "
            f"Labels_<concept>_Train.txt and _Test.txt in {folder}."
        )
    values = _lines(path)
    if len(values) != expected:
        raise DatasetError(
            f"{path} has {len(values)} values but ImageList/{SPLITS[split]}Imagelist.txt lists "
            f"{expected} images; the files must come from the same NUS-WIDE release."
        )
    invalid = next((v for v in values if v not in ("0", "1")), None)
    if invalid is not None:
        raise DatasetError(f"{path} contains {invalid!r}; label files hold one 0 or 1 per line.")
    return np.array(values) == "1"


def load(root: Path, splits: list[str]) -> RawDataset:
    """Read the listed images of `splits` that exist on disk, with their concept labels.

    Listed images missing under Flickr/ (dead Flickr links) are skipped and counted;
    images with no positive concept are kept and counted.
    """
    for split in splits:
        if split not in SPLITS:
            raise DatasetError(
                f"split {split!r} not found: NUS-WIDE splits are {', '.join(SPLITS)}. Set "
                "dataset.train_split and dataset.eval_split to those."
            )
    concepts = read_concepts(root)
    label_folder = _first_existing(root, LABEL_FOLDERS, "label folder")
    images_folder = _first_existing(root, ("Flickr",), "image folder")

    records, blocks, missing = [], [], []
    seen: set[str] = set()
    for split in dict.fromkeys(splits):
        entries = read_image_list(root, split)
        columns = [read_concept_labels(label_folder, c, split, len(entries)) for c in concepts]
        labels = np.where(np.stack(columns, axis=1), POSITIVE, NEGATIVE).astype(np.int8)
        keep = []
        for row, entry in enumerate(entries):
            if entry in seen:
                continue
            seen.add(entry)
            path = images_folder / entry
            if not path.is_file():
                missing.append(entry)
                continue
            keep.append(row)
            records.append({"image_id": entry, "source_split": split, "path": str(path)})
        if entries and not keep:
            raise DatasetError(
                f"none of the {len(entries)} images in ImageList/{SPLITS[split]}Imagelist.txt "
                f"is on disk (looked for {images_folder / entries[0]} first). Put the images "
                "in Flickr/<folder>/<file> under dataset.root."
            )
        blocks.append(labels[keep])

    if missing:
        log.warning(
            "%d of %d listed NUS-WIDE images are not on disk and were skipped; first: %s",
            len(missing),
            len(missing) + len(records),
            ", ".join(missing[:EXAMPLES]),
        )
    labels = np.concatenate(blocks)
    unlabeled = int((labels == NEGATIVE).all(axis=1).sum())
    empty = [name for name, column in zip(concepts, labels.T) if not (column == POSITIVE).any()]
    return RawDataset(
        name=NAME,
        root=str(root),
        classes=concepts,
        natural_names=[concept.replace("_", " ") for concept in concepts],
        images=pd.DataFrame.from_records(records, columns=["image_id", "source_split", "path"]),
        labels=labels,
        notes={
            "missing_images": len(missing),
            "missing_image_examples": missing[:EXAMPLES],
            "images_without_labels": unlabeled,
            "classes_without_positives": empty,
        },
    )


def _load(root: Path, splits: list[str], data) -> RawDataset:
    return load(root, splits)


SPEC = DatasetSpec(name=NAME, standard_splits=("train", "test"), locate=locate, load=_load)
