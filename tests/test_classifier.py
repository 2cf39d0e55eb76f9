"""Loading of local classifier backbone weights (`train.weights`)."""

import logging
import shutil

import pytest
import torch
import torchvision
import yaml

from repro.classifier import build_classifier
from repro.clip_model import UnsafeCheckpointError, WeightsUnavailableError
from tests.conftest import merge, run_stages


class Payload:
    """A pickled object that is not a tensor; loading it must be rejected."""


def test_state_dict_file_loaded(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, description = build_classifier("resnet18", str(path), 20)
    assert description == f"file:{path}"
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 20


def test_pickled_object_rejected(tmp_path):
    path = tmp_path / "evil.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save({**state, "payload": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects"):
        build_classifier("resnet18", str(path), 20)


def test_whole_model_pickle_rejected(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torchvision.models.resnet18(), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch.save\(model.state_dict\(\), path\)"):
        build_classifier("resnet18", str(path), 20)


def test_other_backbone_rejected(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="does not fit resnet18"):
        build_classifier("resnet18", str(path), 20)


@pytest.mark.slow
def test_train_stage_rejects_pickle(faulty_chain, tmp_path, caplog):
    folder = tmp_path / "project"
    shutil.copytree(faulty_chain.folder, folder)
    weights = folder / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload()}, weights)
    params = merge(faulty_chain.params, {"train": {"weights": str(weights)}})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_stages(folder, ["train"])
    assert exit_info.value.code == 1
    assert f"train failed: {weights} contains pickled Python objects" in caplog.text
