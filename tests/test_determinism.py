"""Two runs of prepare to report with the same params and seed give identical results on CPU."""

import subprocess
import sys

import pytest
import yaml

from repro import paths
from tests.conftest import CHAIN_ENV, stage_env

pytestmark = pytest.mark.slow

# The second run is a separate process with another hash seed, so any result that depends
# on set or dict order of strings would differ between the runs.
SECOND_RUN = (
    "from pathlib import Path; from tests.conftest import ALL_STAGES, run_stages; "
    "run_stages(Path.cwd(), ALL_STAGES)"
)


@pytest.fixture(scope="module")
def second_run(faulty_chain, tmp_path_factory):
    folder = tmp_path_factory.mktemp("second")
    (folder / "params.yaml").write_text(yaml.safe_dump(faulty_chain.params, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-c", SECOND_RUN],
        cwd=folder,
        env=stage_env(PYTHONHASHSEED="12345", **CHAIN_ENV),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return folder


def test_metrics_identical(faulty_chain, second_run):
    names = sorted(p.name for p in (faulty_chain.folder / paths.METRICS).iterdir())
    assert names == ["eval.json", "per_class_ap.csv", "pseudo_labels.json", "train.json"]
    for name in names:
        first = (faulty_chain.folder / paths.METRICS / name).read_text()
        second = (second_run / paths.METRICS / name).read_text()
        assert first == second, name


def test_training_curves_identical(faulty_chain, second_run):
    relative = paths.TRAIN_LOG / "metrics.json"
    assert (faulty_chain.folder / relative).read_text() == (second_run / relative).read_text()


def test_classifier_file_identical(faulty_chain, second_run):
    first = (faulty_chain.folder / paths.CLASSIFIER).read_bytes()
    assert first == (second_run / paths.CLASSIFIER).read_bytes()


def test_embeddings_identical(faulty_chain, second_run):
    folder = faulty_chain.folder / paths.EMBEDDINGS
    for path in sorted(folder.iterdir()):
        assert path.read_bytes() == (second_run / paths.EMBEDDINGS / path.name).read_bytes(), path
