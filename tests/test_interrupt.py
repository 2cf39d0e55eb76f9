"""SIGKILL during embed, train and report, then a rerun that must end as an uninterrupted run.

Each test copies the finished project of the `faulty_chain` fixture, so the outputs there
are the previous complete version and the uninterrupted result at once (the params are the
same). The stage runs as `python -m repro.<stage>` and is killed once a file shows that it is
mid-work; the rerun happens in this process.
"""

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from repro import paths
from tests.conftest import CHAIN_ENV, run_stages, stage_env

pytestmark = pytest.mark.slow

TIMING = Path("results/timing")


def copy_project(chain, tmp_path: Path) -> Path:
    """Copy the chain's project, leaving out the finished shards that embed would reuse."""
    folder = tmp_path / "project"
    shutil.copytree(chain.folder, folder, symlinks=True)
    shutil.rmtree(folder / paths.EMBED_WORK, ignore_errors=True)
    return folder


def snapshot(folder: Path, relative: list[Path]) -> dict[str, bytes]:
    """Bytes of every file under the `relative` paths of `folder`, keyed by relative path."""
    files = {}
    for item in relative:
        root = folder / item
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in found:
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def kill_when(
    folder: Path,
    stage: str,
    reached: Callable[[], bool],
    timeout: float = 180,
    sig: signal.Signals = signal.SIGKILL,
) -> int:
    """Start `python -m repro.<stage>` in `folder`, send `sig` as soon as `reached()`.

    Returns the stage's exit status; its stderr is in `<stage>.stderr` beside `folder`.
    """
    log_path = folder.parent / f"{stage}.stderr"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"repro.{stage}"],
            cwd=folder,
            env=stage_env(**CHAIN_ENV),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while not reached():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(
                    f"{stage} ended (code {process.returncode}) before the kill point:\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.002)
        process.send_signal(sig)
        code = process.wait()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, f"{stage} finished before the kill landed"
    return code


def remove(folder: Path, relative: list[Path]) -> None:
    for item in relative:
        path = folder / item
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def test_embed_killed_resumes_same_cache(faulty_chain, tmp_path):
    folder = copy_project(faulty_chain, tmp_path)
    outputs = [paths.EMBEDDINGS, TIMING / "embed.json"]
    previous = snapshot(folder, outputs)
    work = folder / paths.EMBED_WORK

    kill_when(folder, "embed", lambda: (work / "shard-00001.npy").is_file())
    assert snapshot(folder, outputs) == previous
    assert (work / "shard-00000.npy").is_file()
    assert not (work / "shard-00008.npy").is_file()

    remove(folder, outputs)
    run_stages(folder, ["embed"], **CHAIN_ENV)
    timing = json.loads((folder / TIMING / "embed.json").read_text())
    assert 0 < timing["views_encoded"] < 17 * 10
    assert snapshot(folder, [paths.EMBEDDINGS]) == snapshot(faulty_chain.folder, [paths.EMBEDDINGS])
    assert temp_leftovers(folder) == []


TRAIN_OUTPUTS = [
    paths.CLASSIFIER.parent,
    paths.REFINED_LABELS,
    paths.TRAIN_LOG,
    paths.TRAIN_METRICS,
    TIMING / "train.json",
]


def test_train_killed_resumes_same_model(faulty_chain, tmp_path, caplog):
    folder = copy_project(faulty_chain, tmp_path)
    previous = snapshot(folder, TRAIN_OUTPUTS)
    resume = folder / ".repro-tmp" / "train"

    kill_when(folder, "train", lambda: any(resume.glob("*.pt")))
    assert snapshot(folder, TRAIN_OUTPUTS) == previous

    remove(folder, TRAIN_OUTPUTS)
    with caplog.at_level(logging.INFO, logger="repro.train"):
        run_stages(folder, ["train"], **CHAIN_ENV)
    assert "resuming training at epoch 2" in caplog.text

    classifier = (folder / paths.CLASSIFIER).read_bytes()
    assert classifier == (faulty_chain.folder / paths.CLASSIFIER).read_bytes()
    expected = torch.load(faulty_chain.folder / paths.CLASSIFIER, weights_only=True)
    actual = torch.load(folder / paths.CLASSIFIER, weights_only=True)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name
    for relative in (paths.TRAIN_METRICS, paths.CLASSIFIER_INFO, paths.TRAIN_LOG / "metrics.json"):
        assert (folder / relative).read_text() == (faulty_chain.folder / relative).read_text()
    refined = pd.read_parquet(folder / paths.REFINED_LABELS)
    assert refined.equals(pd.read_parquet(faulty_chain.folder / paths.REFINED_LABELS))
    assert not resume.exists()
    assert temp_leftovers(folder) == []


def test_train_interrupted_logs_one_line(faulty_chain, tmp_path):
    folder = copy_project(faulty_chain, tmp_path)
    previous = snapshot(folder, TRAIN_OUTPUTS)
    resume = folder / ".repro-tmp" / "train"

    code = kill_when(folder, "train", lambda: any(resume.glob("*.pt")), sig=signal.SIGINT)
    assert code == 130
    log = (tmp_path / "train.stderr").read_text()
    assert "train interrupted: no output was half written" in log
    assert "Traceback" not in log
    assert snapshot(folder, TRAIN_OUTPUTS) == previous


def without_timestamp(report: str) -> list[str]:
    return [line for line in report.splitlines() if "report written" not in line]


def test_report_killed_rerun_same_text(faulty_chain, tmp_path):
    folder = copy_project(faulty_chain, tmp_path)
    outputs = [paths.REPORT.parent, TIMING / "report.json"]
    previous = snapshot(folder, outputs)

    kill_when(folder, "report", lambda: any(folder.glob(".report.*.tmp")))
    assert snapshot(folder, outputs) == previous

    remove(folder, outputs)
    run_stages(folder, ["report"])
    report = (folder / paths.REPORT).read_text()
    assert without_timestamp(report) == without_timestamp(
        (faulty_chain.folder / paths.REPORT).read_text()
    )
    assert (folder / paths.FIGURES / "per_class_ap.png").is_file()
    assert temp_leftovers(folder) == []
