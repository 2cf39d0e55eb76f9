import pytest
import torch

from repro.clip_model import (
    UnsafeCheckpointError,
    WeightsUnavailableError,
    encode_prompts,
    load_clip,
    read_state_dict,
)
from repro.config import ClipConfig

CPU = torch.device("cpu")


class Payload:
    """A pickled object that is not a tensor; loading it must be refused."""


@pytest.mark.parametrize("model", ["repro-tiny-ViT", "repro-tiny-RN"])
def test_random_tiny_model_encodes_prompts(model):
    clip = load_clip(ClipConfig(model=model, pretrained="random"), CPU)
    assert clip.weights == "random"
    assert clip.image_size == 64
    text = encode_prompts(clip, ["a photo of a {}.", "a {}"], ["cat", "dog", "dining table"], CPU)
    assert text.shape == (2, 3, 64)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2, 3), atol=1e-5)


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(123)
    source = load_clip(ClipConfig(model="repro-tiny-RN", pretrained="random"), CPU).model
    for parameter in source.parameters():
        parameter.data.normal_()
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)

    loaded = load_clip(ClipConfig(model="repro-tiny-RN", pretrained=str(path)), CPU)
    assert loaded.weights == f"file:{path}"
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    source = load_clip(ClipConfig(model="repro-tiny-ViT", pretrained="random"), CPU).model
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_clip(ClipConfig(model="repro-tiny-ViT", pretrained=str(path)), CPU)
    assert torch.equal(loaded.model.logit_scale, source.logit_scale)


def test_pickled_object_rejected(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects"):
        read_state_dict(path)


def test_random_bytes_not_called_pickle(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(WeightsUnavailableError, match="garbage.pt is not a readable checkpoint"):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("legacy.pt", b"j" + bytes(range(256)) * 4), ("text.safetensors", b"not a header")],
)
def test_unparsable_checkpoint_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsUnavailableError, match=f"{name} is not a readable checkpoint"):
        read_state_dict(path)


def test_local_checkpoint_not_called_random(tmp_path, caplog):
    source = load_clip(ClipConfig(model="repro-tiny-ViT", pretrained="random"), CPU).model
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    caplog.clear()
    load_clip(ClipConfig(model="repro-tiny-ViT", pretrained=str(path)), CPU)
    assert "initialized randomly" not in caplog.text


def test_empty_checkpoint_named(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(WeightsUnavailableError, match="the file is empty or truncated"):
        read_state_dict(path)


def test_checkpoint_of_other_model_rejected(tmp_path):
    source = load_clip(ClipConfig(model="repro-tiny-ViT", pretrained="random"), CPU).model
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(
        WeightsUnavailableError, match="does not match open_clip model repro-tiny-RN"
    ):
        load_clip(ClipConfig(model="repro-tiny-RN", pretrained=str(path)), CPU)


def test_failed_download_names_model_tag_and_ways_out(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        load_clip(ClipConfig(model="RN50x64", pretrained="openai"), CPU)
    message = str(error.value)
    assert "RN50x64" in message
    assert "'openai'" in message
    assert "local path" in message
    assert "clip.pretrained: random" in message
