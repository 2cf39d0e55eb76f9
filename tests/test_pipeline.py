"""The real DVC pipeline, end to end, on VOC 2007 images with a tiny random-weight CLIP."""

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from benchmarks.run import copy_project
from tests.conftest import project_params, venv_env

pytestmark = pytest.mark.slow


def run(command: list[str], cwd, timeout=900) -> str:
    if command[0] == "dvc":  # the DVC of this interpreter, whether or not it is on PATH
        command = [sys.executable, "-m", "dvc", *command[1:]]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=venv_env()
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z]+)'", output))


def stages_skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([a-z]+)' didn't change, skipping", output))


@pytest.fixture(scope="module")
def pipeline_project(
    tmp_path_factory,
):
    from tests.conftest import VOC_SAMPLE

    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        pytest.skip(f"VOC 2007 sample not found at {VOC_SAMPLE}")
    folder = tmp_path_factory.mktemp("project")
    copy_project(folder)  # its params.yaml is replaced below by the tiny test settings
    params = project_params(dataset={"max_images": 16})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["git", "init", "-q"], folder)
    run(["git", "config", "user.email", "test@example.com"], folder)
    run(["git", "config", "user.name", "pipeline test"], folder)
    run(["dvc", "init", "-q"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "project"], folder)
    output = run(["dvc", "repro"], folder)
    return folder, output


def test_repro_runs_every_stage(pipeline_project):
    _, output = pipeline_project
    expected = {
        "weights",
        "prepare",
        "tile",
        "embed",
        "aggregate",
        "ablate",
        "train",
        "evaluate",
        "report",
    }
    assert stages_run(output) == expected


def test_repro_writes_metrics_and_report(pipeline_project):
    folder, _ = pipeline_project
    evaluation = json.loads((folder / "results/metrics/eval.json").read_text())
    assert evaluation["images"] == 16
    assert math.isfinite(evaluation["map"])
    assert evaluation["note"] == "random weights: not comparable with the paper"
    pseudo = json.loads((folder / "results/metrics/pseudo_labels.json").read_text())
    assert 0 < pseudo["map_final"] <= 100
    report = (folder / "report/report.md").read_text()
    assert "random weights: not comparable with the paper" in report
    assert "## Per-class AP" in report
    assert (folder / "report/figures/per_class_ap.png").stat().st_size > 1000
    live = json.loads((folder / "results/train/metrics.json").read_text())
    assert "train" in live
    assert (folder / "dvc.lock").is_file()


def test_threshold_change_skips_tile_and_embed(pipeline_project):
    folder, _ = pipeline_project
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "first run"], folder)
    output = run(["dvc", "exp", "run", "-S", "threshold=0.5"], folder)
    assert {"prepare", "tile", "embed"} <= stages_skipped(output)
    assert stages_run(output) == {"weights", "aggregate", "ablate", "train", "evaluate", "report"}
    pseudo = json.loads((folder / "results/metrics/pseudo_labels.json").read_text())
    assert pseudo["threshold"] == 0.5


def test_experiment_queue_fills_report(pipeline_project):
    folder, _ = pipeline_project
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "threshold run"], folder)
    run([sys.executable, "experiments/run.py", "--only", "fixed_labels", "--poll", "2"], folder)
    collected = json.loads((folder / "results/experiments.json").read_text())["experiments"]
    record = collected["fixed_labels"]
    assert record["status"] == "success"
    assert record["params"]["train.label_update.every"] == 0
    assert math.isfinite(record["metrics"]["eval"]["map"])
    report = (folder / "report/report.md").read_text()
    row = next(
        line for line in report.splitlines() if line.startswith("| cdul_gradient_alignment_helps |")
    )
    assert "not run" not in row
    assert "not comparable" in row
    experiments_row = next(
        line for line in report.splitlines() if line.startswith("| fixed_labels |")
    )
    assert "not run" not in experiments_row
