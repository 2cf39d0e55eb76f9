"""The report renders from fixture metrics, without running the pipeline."""

import json
import shutil

import pandas as pd
import pytest
import yaml

from repro import paths
from repro.claims import load_claims
from repro.config import config_from_dict
from repro.report import report
from tests.conftest import PROJECT, project_params

CLASSES = ["cat", "dog", "person"]


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture
def fixture_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(
        PROJECT / "experiments",
        tmp_path / "experiments",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    write_json(
        paths.DATASET_INFO,
        {
            "name": "voc2007",
            "root": "/data/VOC2007",
            "classes": CLASSES,
            "natural_names": CLASSES,
            "splits": {"train": "trainval", "eval": "test"},
            "holdout": None,
            "max_images": None,
            "images": {"train": 10, "eval": 8},
            "skipped_bad_images": [],
        },
    )
    write_json(
        paths.EMBEDDINGS / "manifest.json",
        {
            "model": "RN50x64",
            "weights": "tag:openai",
            "random_weights": False,
            "grid": 3,
            "image_size": 448,
            "fit": "crop",
        },
    )
    write_json(
        paths.PSEUDO_METRICS,
        {
            "aggregator": "cdul",
            "threshold": 0.2,
            "lam": 0.0,
            "temperature": "learned",
            "scale": 100.0,
            "map_global": 85.9,
            "map_local": 80.1,
            "map_final": 88.8,
            "ci_global": [84.0, 87.5],
            "ci_local": [78.0, 82.0],
            "ci_final": [87.0, 90.1],
        },
    )
    write_json(
        paths.TRAIN_METRICS,
        {
            "backbone": "resnet101",
            "backbone_weights": "imagenet",
            "loss": "softmax_kl",
            "epochs": 3,
            "pseudo_labels_map_final": 89.1,
            "eval_map_best_epoch": 88.7,
            "best_epoch": 2,
        },
    )
    write_json(paths.EVAL_METRICS, {"map": 88.4, "ci": [87.2, 89.6], "classes_excluded": ["dog"]})
    write_csv(
        paths.PER_CLASS_AP, {"class": CLASSES, "ap": [90.0, None, 86.8], "positives": [3, 0, 5]}
    )
    sweep = [
        {
            "weights": "tag:openai",
            "temperature": t,
            "threshold": th,
            "share_max": 1 - th,
            "map_global": 85.9,
            "map_local": 80 + th,
            "map_final": 88 + th,
            "ci_low": 86.0,
            "ci_high": 90.0,
        }
        for t in ("learned", "repro")
        for th in (0.0, 0.1, 0.5)
    ]
    write_csv(paths.TABLES / "threshold_sweep.csv", sweep)
    aggregators = [
        {
            "weights": "tag:openai",
            "temperature": t,
            "aggregator": a,
            "lam": lam,
            "map_local": 80.0,
            "map_final": 88.0,
            "ci_low": 86.0,
            "ci_high": 90.0,
        }
        for t in ("learned", "repro")
        for a in ("max", "mean", "cdul")
        for lam in (-1.0, 0.0, 1.0)
    ]
    aggregators += [
        {
            "weights": "tag:openai",
            "temperature": t,
            "aggregator": "global",
            "lam": None,
            "map_local": None,
            "map_final": 85.9,
            "ci_low": 84.0,
            "ci_high": 87.5,
        }
        for t in ("learned", "repro")
    ]
    write_csv(paths.TABLES / "aggregators.csv", aggregators)
    write_csv(
        paths.TABLES / "prompts.csv",
        [
            {
                "weights": "tag:openai",
                "class_names": n,
                "templates": "single",
                "map_global": 85.0,
                "map_final": 88.0,
                "ci_low": 86.0,
                "ci_high": 90.0,
            }
            for n in ("natural", "raw")
        ],
    )
    write_csv(
        paths.TABLES / "normalisation.csv",
        [
            {
                "weights": "tag:openai",
                "method": "normalise only (global view)",
                "map": 87.0,
                "ci_low": 85.0,
                "ci_high": 89.0,
            }
        ],
    )
    write_csv(
        paths.TABLES / "per_class_ap.csv",
        [
            {"weights": "tag:openai", "configuration": c, "class": k, "ap": 80.0}
            for c in ("a", "b")
            for k in CLASSES
        ],
    )
    write_csv(
        paths.TABLES / "softmax_stats.csv",
        [
            {
                "weights": "tag:openai",
                "temperature": "learned",
                "scale": 100.0,
                "mean_top_probability": 0.8,
                "min_probability": 0.0,
                "max_probability": 0.99,
                "share_max_at_threshold": 0.4,
            },
            {
                "weights": "tag:openai",
                "temperature": "repro",
                "scale": 0.217,
                "mean_top_probability": 0.05,
                "min_probability": 0.049,
                "max_probability": 0.0515,
                "share_max_at_threshold": 0.0,
            },
        ],
    )
    metrics = paths.TRAIN_LOG / "plots" / "metrics"
    for name, values in {
        "pseudo_labels/map": [88.8, 89.0, 89.1],
        "eval/map": [87.0, 88.7, 88.4],
        "train/loss": [0.5, 0.4, 0.3],
        "train/labels_updated": [0, 1, 0],
    }.items():
        path = metrics / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": range(3), name.split("/")[1]: values}).to_csv(
            path, sep="\t", index=False
        )
    write_json(
        paths.EXPERIMENTS,
        {
            "experiments": {
                "fixed_labels": {
                    "experiment": "fixed_labels",
                    "status": "success",
                    "dataset": "voc2007",
                    "random_weights": False,
                    "subset": False,
                    "metrics": {"eval": {"map": 87.5}, "pseudo_labels": {"map_final": 88.8}},
                }
            }
        },
    )
    write_json(
        paths.STAGE_TIMES / "embed.json",
        {
            "stage": "embed",
            "wall_s": 7200.0,
            "device": "cuda",
            "views_per_s": 120.0,
            "machine": {"gpu": "H100"},
        },
    )
    return config_from_dict(
        project_params(dataset={"root": None, "holdout": None, "max_images": None})
    )


def render(config) -> str:
    report(config)
    return paths.REPORT.read_text()


def test_report_names_every_claim(fixture_project):
    text = render(fixture_project)
    for claim in load_claims():
        assert f"| {claim.id} |" in text, claim.id


def test_report_sections_and_figures(fixture_project):
    text = render(fixture_project)
    for heading in (
        "## Claims",
        "## Results",
        "## Ablations of the pseudo labels",
        "## Training",
        "## Experiments",
        "## Per-class AP of the classifier",
        "## Cost",
        "## Deviations from the paper",
        "## Params",
    ):
        assert heading in text, heading
    for figure in (
        "threshold_sweep.png",
        "per_class_configurations.png",
        "training_curves.png",
        "per_class_ap.png",
    ):
        assert (paths.FIGURES / figure).stat().st_size > 1000, figure
        assert f"figures/{figure}" in text


def test_report_verdicts_from_fixture(fixture_project):
    text = render(fixture_project)
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| cdul_")
    }
    assert "| reproduced |" in rows["cdul_voc2007_map"]
    assert "88.40 [87.20, 89.60]" in rows["cdul_voc2007_map"]
    assert "| holds |" in rows["cdul_gradient_alignment_helps"]
    assert "not run: python experiments/run.py --only coco2014" in rows["cdul_coco2014_map"]
    assert "random weights" not in text


def test_report_lists_deviations(fixture_project):
    text = render(fixture_project)
    section = text.split("## Deviations from the paper")[1].split("\n## Params")[0]
    assert "`threshold` is `0.2`; the reproduction used `0.0`. Source:" in section
    assert "`prompts.class_names` is `natural`; the reproduction used `raw`." in section
    assert "`dataset.max_images` is `null`, as in the reproduction. Source:" in section
    assert "`clip.temperature`" not in section.split("### Params CDUL's readable text")[0].replace(
        "- none", ""
    )


def test_report_marks_random_weights_on_every_table(fixture_project):
    manifest = json.loads((paths.EMBEDDINGS / "manifest.json").read_text())
    write_json(
        paths.EMBEDDINGS / "manifest.json",
        {**manifest, "random_weights": True, "weights": "random"},
    )
    text = render(fixture_project)
    assert text.count("random weights: not comparable with the paper") >= 8
    captions = [line for line in text.splitlines() if line.startswith("*")]
    assert len(captions) >= 8
    for caption in captions:
        assert caption.endswith("**(random weights: not comparable with the paper)**"), caption
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| cdul_")
    }
    assert "not comparable" in rows["cdul_voc2007_map"]


def test_report_deviation_when_temperature_changed(fixture_project):
    params = project_params(
        dataset={"root": None, "holdout": None, "max_images": None}, clip={"temperature": "repro"}
    )
    text = render(config_from_dict(params))
    assert "`clip.temperature` is `repro`; CDUL used `learned`. Source:" in text


def test_report_experiments_table(fixture_project):
    text = render(fixture_project)
    line = next(line for line in text.splitlines() if line.startswith("| fixed_labels |"))
    assert "87.50" in line
    assert "not run: `python experiments/run.py --only loss_sigmoid_bce`" in text
    assert yaml.safe_load(text.split("```yaml")[1].split("```")[0])["threshold"] == 0.2


def test_report_without_label_updates(fixture_project):
    train = json.loads(paths.TRAIN_METRICS.read_text())
    write_json(paths.TRAIN_METRICS, {**train, "label_update_epochs": 0})
    text = render(fixture_project)
    row = next(line for line in text.splitlines() if "| cdul_gradient_alignment_helps |" in line)
    assert "| not checkable |" in row
    assert "this run made no label update" in row
    assert "after 3 epochs, 0 of them updating the labels" in text


def test_report_names_changed_first_template(fixture_project):
    params = project_params(
        dataset={"root": None, "holdout": None, "max_images": None},
        prompts={"templates": ["itap of a {}."]},
    )
    text = render(config_from_dict(params))
    assert "`prompts.templates.0` is `itap of a {}.`; the reproduction used `a photo of a {}.`" in (
        text
    )


def test_report_names_weight_file_hash(fixture_project):
    digest = "ab" * 32
    write_json(paths.CLIP_WEIGHTS, {"weights": "clip.pt", "bytes": 10, "sha256": digest})
    text = render(fixture_project)
    clip_line = next(line for line in text.splitlines() if line.startswith("- CLIP:"))
    assert f"(SHA-256 {digest[:12]})" in clip_line
