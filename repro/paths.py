"""Files that the stages exchange, relative to the project folder (see dvc.yaml)."""

from pathlib import Path

# SHA-256 of local weight files, so that DVC re-runs embed and train when their bytes change.
CLIP_WEIGHTS = Path("data/weights/clip.json")
CLASSIFIER_WEIGHTS = Path("data/weights/classifier.json")

PREPARED = Path("data/prepared")
INDEX = PREPARED / "index.parquet"  # image id, split, path, width, height; no labels
LABELS = PREPARED / "labels.parquet"  # ground truth, read only by evaluation code
DATASET_INFO = PREPARED / "dataset.json"  # class names, splits, counts, skipped images

TILES = Path("data/tiles/tiles.parquet")

EMBEDDINGS = Path("cache/embeddings")
EMBED_WORK = Path(".repro-tmp/embed")  # resumable partial shards, outside DVC's outputs

PSEUDO_LABELS = Path("data/pseudo_labels/initial.parquet")
REFINED_LABELS = Path("data/pseudo_labels/refined.parquet")

CLASSIFIER = Path("models/classifier.pt")
CLASSIFIER_INFO = Path("models/classifier.json")
TRAIN_LOG = Path("results/train")

METRICS = Path("results/metrics")
PSEUDO_METRICS = METRICS / "pseudo_labels.json"
TRAIN_METRICS = METRICS / "train.json"
EVAL_METRICS = METRICS / "eval.json"
PER_CLASS_AP = METRICS / "per_class_ap.csv"
STAGE_TIMES = Path("results/timing")
TABLES = Path("results/tables")  # ablation sweeps
EXPERIMENTS = Path("results/experiments.json")  # collected by experiments/run.py

REPORT = Path("report/report.md")
FIGURES = Path("report/figures")
