"""Fingerprints of local weight files, which make DVC re-run embed and train on new bytes."""

import hashlib
import json
import os

import yaml

from repro import paths
from repro.weights import fingerprint, weights
from tests.conftest import PROJECT, params_writer


def test_keyword_and_tag_kept_as_given(tmp_path):
    assert fingerprint("random", ("random",), tmp_path) == {"weights": "random"}
    assert fingerprint("openai", ("random",), tmp_path) == {"weights": "openai"}


def test_file_hashed_by_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"first weights")
    first = fingerprint("clip.pt", ("random",), tmp_path)
    assert first["sha256"] == hashlib.sha256(b"first weights").hexdigest()
    assert first["bytes"] == 13

    checkpoint.write_bytes(b"other weights")
    os.utime(checkpoint, ns=(1, 1))
    second = fingerprint("clip.pt", ("random",), tmp_path)
    assert second["sha256"] != first["sha256"]


def test_stage_writes_both_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet.pth").write_bytes(b"classifier weights")
    write = params_writer(tmp_path)
    weights(write(train={"weights": "resnet.pth"}), tmp_path)
    clip = json.loads(paths.CLIP_WEIGHTS.read_text())
    classifier = json.loads(paths.CLASSIFIER_WEIGHTS.read_text())
    assert clip == {"weights": "random"}
    assert classifier["weights"] == "resnet.pth"
    assert len(classifier["sha256"]) == 64


def test_dvc_stages_depend_on_fingerprints():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert stages["weights"]["always_changed"] is True
    assert str(paths.CLIP_WEIGHTS) in stages["embed"]["deps"]
    assert str(paths.CLASSIFIER_WEIGHTS) in stages["train"]["deps"]
