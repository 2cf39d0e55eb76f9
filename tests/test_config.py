import subprocess
import sys

import pytest
import torch
import yaml

from repro.clip_model import resolve_device
from repro.config import (
    Config,
    ConfigError,
    config_from_dict,
    describe_keys,
    known_keys,
    load_config,
)
from tests.conftest import committed_params_text, project_params, stage_env


def committed_config(tmp_path):
    """The committed params.yaml, loaded without the file-system checks."""
    path = tmp_path / "committed.yaml"
    path.write_text(committed_params_text())
    return load_config(path, check=False)


def write_params(tmp_path, params) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_project_params_load(tmp_path):
    config = committed_config(tmp_path)
    assert config.threshold == 0.2
    assert config.clip.model == "RN50x64"
    assert config.clip.pretrained == "openai"
    assert config.tiling.grid == 3


def test_defaults_match_params_file(tmp_path):
    from_file = committed_config(tmp_path).to_dict()
    assert from_file == Config().to_dict()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"threshold": 1.5}, ["threshold = 1.5", "[0.0, 1.0]"]),
        ({"threshold": -0.1}, ["threshold = -0.1", "[0.0, 1.0]"]),
        ({"threshold": "high"}, ["threshold = 'high'", "wrong type"]),
        (
            {"dataset": {"name": "imagenet"}},
            ["dataset.name = 'imagenet'", "'voc2007'", "'nuswide'"],
        ),
        ({"tiling": {"grid": 0}}, ["tiling.grid = 0", "[1, 16]"]),
        ({"train": {"lr": 0}}, ["train.lr = 0", "> 0.0"]),
        ({"train": {"epochs": 2.5}}, ["train.epochs = 2.5", "an integer"]),
        (
            {"aggregation": {"aggregator": "median"}},
            ["aggregation.aggregator = 'median'", "'cdul'"],
        ),
        ({"threshold": [0.2, 0.3]}, ["threshold = [0.2, 0.3]", "wrong type", "a number"]),
        ({"train": {"lr": "1e-5"}}, ["train.lr = '1e-5'", "wrong type", "a number > 0.0"]),
        ({"threshold": float("nan")}, ["threshold = nan", "a number in [0.0, 1.0]"]),
        ({"seed": None}, ["seed is null", "an integer >= 0"]),
        ({"tiling": {"grid": None}}, ["tiling.grid is null", "[1, 16]"]),
        ({"clip": {"quick_gelu": "yes"}}, ["clip.quick_gelu = 'yes'", "true or false"]),
        ({"prompts": {"templates": "a photo of a {}."}}, ["prompts.templates = ", "a list"]),
        ({"clip": 3}, ["clip must be a mapping", "got 3"]),
        ({"train": {"label_update": "often"}}, ["train.label_update must be a mapping"]),
        ({"dataset": ["voc2007"]}, ["dataset must be a mapping"]),
    ],
)
def test_bad_value_names_key_value_and_range(override, expected):
    with pytest.raises(ConfigError) as error:
        config_from_dict(project_params(**override))
    for text in expected:
        assert text in str(error.value)


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="unknown parameter 'treshold'.*'threshold'"):
        config_from_dict({"treshold": 0.3})


def test_unknown_nested_key_suggests_nearest():
    with pytest.raises(ConfigError, match="'clip.pretrain'.*'clip.pretrained'"):
        config_from_dict({"clip": {"pretrain": "openai"}})


def test_misspelt_section_suggests_nearest():
    with pytest.raises(ConfigError, match="unknown parameter 'tilling'.*'tiling'"):
        config_from_dict({"tilling": {"grid": 3}})


def test_null_allowed_where_declared():
    config = config_from_dict(project_params(dataset={"holdout": None, "max_images": None}))
    assert config.dataset.holdout is None


def test_invalid_yaml_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("threshold: [0.2\nseed: 0\n")
    with pytest.raises(ConfigError, match="params.yaml is not valid YAML"):
        load_config(tmp_path / "params.yaml")


def test_params_not_a_mapping_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("- threshold\n- seed\n")
    with pytest.raises(ConfigError, match="params must be a mapping"):
        load_config(tmp_path / "params.yaml")


def test_missing_weights_file_rejected(tmp_path):
    params = project_params(train={"weights": "models/resnet.pth"})
    with pytest.raises(ConfigError, match="train.weights = 'models/resnet.pth' is neither"):
        config_from_dict(params, check=True, base=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_rejected():
    with pytest.raises(ConfigError, match="'cuda:0' was requested but CUDA is not available"):
        resolve_device("cuda:0")


def test_unknown_model_rejected(tmp_path):
    params = project_params(clip={"model": "RN50x65"})
    with pytest.raises(ConfigError) as error:
        config_from_dict(params, check=True, base=tmp_path)
    assert "clip.model = 'RN50x65'" in str(error.value)
    assert "RN50x64" in str(error.value)


def test_unknown_tag_rejected(tmp_path):
    params = project_params(clip={"model": "RN50x64", "pretrained": "laion2b"})
    with pytest.raises(ConfigError) as error:
        config_from_dict(params, check=True, base=tmp_path)
    assert "clip.pretrained = 'laion2b'" in str(error.value)
    assert "openai" in str(error.value)
    assert "'random'" in str(error.value)


def test_missing_root_rejected(tmp_path):
    params = project_params(dataset={"root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="dataset.root = .*nowhere.* does not exist"):
        config_from_dict(params, check=True, base=tmp_path)


def test_template_without_slot_rejected():
    with pytest.raises(ConfigError, match="exactly one"):
        config_from_dict(project_params(prompts={"templates": ["a photo"]}), check=True)


def test_same_train_and_eval_split_rejected(tmp_path):
    params = project_params(dataset={"holdout": None, "train_split": "test", "eval_split": "test"})
    with pytest.raises(ConfigError, match="both 'test'"):
        config_from_dict(params, check=True, base=tmp_path)


def test_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match="tiling.grid = True"):
        config_from_dict({"tiling": {"grid": True}})


def test_every_leaf_key_is_described():
    keys = known_keys()
    leaves = [k for k in keys if not any(other.startswith(k + ".") for other in keys)]
    text = describe_keys()
    for key in leaves:
        assert f"{key} = " in text


def test_stage_stops_before_work_on_bad_param(tmp_path):
    write_params(tmp_path, project_params(threshold=2.0))
    result = subprocess.run(
        [sys.executable, "-m", "repro.prepare"],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "threshold = 2.0 is out of range" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "results").exists()


def test_description_shows_value_and_default():
    text = describe_keys(config_from_dict(project_params(threshold=0.5)))
    assert "threshold = 0.5 (default 0.2): a number in [0.0, 1.0]" in text
