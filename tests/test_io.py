import os

import pytest

from repro import io


def test_atomic_dir_replaces_folder(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.md").write_text("old")
    with io.atomic_dir(target) as folder:
        (folder / "new.md").write_text("new")
    assert sorted(os.listdir(target)) == ["new.md"]
    assert sorted(os.listdir(tmp_path)) == ["report"]


def test_atomic_dir_failure_keeps_old(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.md").write_text("old")
    with pytest.raises(RuntimeError), io.atomic_dir(target) as folder:
        (folder / "new.md").write_text("half")
        raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["old.md"]
    assert sorted(os.listdir(tmp_path)) == ["report"]


def test_stale_temps_removed_before_write(tmp_path):
    (tmp_path / ".eval.json.abcd1234.tmp").write_text("half")
    (tmp_path / ".report.x_y9z8w7.tmp").mkdir()
    io.write_json(tmp_path / "eval.json", {"map": 1.0})
    with io.atomic_dir(tmp_path / "report") as folder:
        (folder / "report.md").write_text("text")
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "report"]


def test_stale_temps_of_other_outputs_kept(tmp_path):
    other = tmp_path / ".train.json.abcd1234.tmp"
    other.write_text("being written")
    io.remove_stale_temps(tmp_path / "train")
    assert other.exists()


def test_write_json_turns_nan_into_null(tmp_path):
    import json
    import math

    import numpy as np

    from repro.io import write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"map": float("nan"), "ci": [np.float32("inf"), 1.5], "n": 3})
    data = json.loads(path.read_text(), parse_constant=lambda name: math.nan)
    assert data["map"] is None
    assert data["ci"] == [None, 1.5]
    assert data["n"] == 3
