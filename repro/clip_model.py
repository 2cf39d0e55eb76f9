"""Build open_clip models from params: pretrained tags, local checkpoints or random weights."""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from repro.config import ClipConfig

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_configs_registered = False


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or read."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint contains pickled Python objects instead of plain tensors."""


@dataclass(frozen=True)
class LoadedClip:
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    logit_scale: float  # the stored parameter, log(1 / temperature)
    weights: str  # "random", "tag:<tag>" or "file:<path>"


def _open_clip():
    """Import open_clip once and register this project's tiny test configs with it."""
    global _configs_registered
    import open_clip

    if not _configs_registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True
    return open_clip


def resolve_device(name: str) -> torch.device:
    """Turn a device param ('auto', 'cpu', 'cuda:1') into a torch device.

    Raises:
        ConfigError: the device does not exist on this machine.
    """
    from repro.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was requested but CUDA is not available on this machine; set "
            "clip.device and train.device to 'cpu' or 'auto'."
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} was requested but this machine has {torch.cuda.device_count()} "
            "CUDA device(s); set clip.device and train.device to 'cuda' or 'auto'."
        )
    return device


def check_model_and_weights(clip: ClipConfig, base: Path) -> None:
    """Raise ConfigError unless the model exists in open_clip and the weights spec is usable."""
    from repro.config import RANDOM_WEIGHTS, ConfigError

    open_clip = _open_clip()
    models = open_clip.list_models()
    if clip.model not in models:
        close = difflib.get_close_matches(clip.model, models, n=3, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"clip.model = {clip.model!r} is not an open_clip model.{hint} "
            "`python -c 'import open_clip; print(open_clip.list_models())'` lists them all; "
            "repro-tiny-ViT and repro-tiny-RN are this project's small test models."
        )

    if clip.pretrained == RANDOM_WEIGHTS:
        return
    tags = open_clip.list_pretrained_tags_by_model(clip.model)
    if clip.pretrained in tags:
        return
    path = Path(clip.pretrained)
    if not path.is_absolute():
        path = base / path
    if path.is_file():
        return
    known = ", ".join(tags) if tags else "none"
    raise ConfigError(
        f"clip.pretrained = {clip.pretrained!r} is not a pretrained tag of {clip.model} "
        f"(known tags: {known}) and not an existing file (looked for {path}). Give a tag, the "
        f"path of a local checkpoint, or '{RANDOM_WEIGHTS}' for offline testing."
    )


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist()
        )


class _DropMessage(logging.Filter):
    """A logging filter that drops records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _unreadable(path: Path, reason: str) -> WeightsUnavailableError:
    """Build the error for a file whose bytes no checkpoint loader can parse."""
    return WeightsUnavailableError(
        f"{path} is not a readable checkpoint: {reason}. Copy it again, or give a file "
        "written by torch.save, a TorchScript archive or a .safetensors file."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a TorchScript archive or a tensors-only torch file.

    Plain torch files are read with `weights_only=True`, so a file that pickles arbitrary
    Python objects is rejected instead of executed.

    Raises:
        UnsafeCheckpointError: the file contains pickled objects other than tensors.
        WeightsUnavailableError: the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError
            raise _unreadable(path, f"safetensors cannot parse it ({error})") from error
    elif _is_torchscript_archive(path):
        # OpenAI's original CLIP files are TorchScript archives. TorchScript's loader restores
        # only tensors and TorchScript code, not arbitrary pickled classes.
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch 2.14's restricted unpickler names the class it rejects ("Unsupported global:
            # GLOBAL argparse.Namespace"). Other failures mean the bytes are not a torch file.
            if "Unsupported global" in f"{error} {error.__context__}":
                raise UnsafeCheckpointError(
                    f"{path} contains pickled Python objects, which are not loaded because "
                    "loading them can run arbitrary code. Save only the tensors "
                    "(torch.save(model.state_dict(), path)) or convert the file to .safetensors."
                ) from error
            raise _unreadable(path, "torch.load cannot parse it") from error
        except EOFError as error:
            raise _unreadable(path, "the file is empty or truncated") from error
        except (RuntimeError, OSError) as error:
            raise WeightsUnavailableError(
                f"{path} could not be read as a checkpoint: {error or type(error).__name__}"
            ) from error
        except Exception as error:  # torch's legacy loader fails on random bytes in many ways
            raise _unreadable(path, f"torch.load failed with {type(error).__name__}") from error

    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"{path} does not contain a state dict (a mapping of names to tensors)."
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_local_weights(model: torch.nn.Module, path: Path, model_name: str) -> None:
    state = read_state_dict(path)
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes differ
        raise WeightsUnavailableError(
            f"{path} does not match open_clip model {model_name}: {str(error).splitlines()[-1].strip()} "
            "Check that clip.model names the architecture the checkpoint was trained with."
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"{path} does not match open_clip model {model_name}: "
            f"{len(result.missing_keys)} missing keys (first: {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (first: {result.unexpected_keys[:3]}). "
            "Check that clip.model names the architecture the checkpoint was trained with."
        )


def load_clip(clip: ClipConfig, device: torch.device, base: Path | None = None) -> LoadedClip:
    """Create the open_clip model of `clip.model` with the weights named by `clip.pretrained`.

    Raises:
        WeightsUnavailableError: a pretrained tag could not be downloaded, or a local file
            could not be read; the message lists the ways out.
    """
    from repro.config import RANDOM_WEIGHTS

    open_clip = _open_clip()
    base = Path.cwd() if base is None else base

    if clip.pretrained == RANDOM_WEIGHTS:
        torch.manual_seed(0)
        model = open_clip.create_model(
            clip.model, pretrained=None, force_quick_gelu=clip.quick_gelu
        )
        weights = RANDOM_WEIGHTS
    elif clip.pretrained in open_clip.list_pretrained_tags_by_model(clip.model):
        tag_config = open_clip.get_pretrained_cfg(clip.model, clip.pretrained)
        try:
            model = open_clip.create_model(
                clip.model,
                pretrained=clip.pretrained,
                force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
            )
        except Exception as error:  # open_clip wraps network and hub errors in RuntimeError
            raise WeightsUnavailableError(
                f"could not download the pretrained weights of CLIP model {clip.model} with tag "
                f"{clip.pretrained!r} ({error}). Either download the checkpoint on a machine with "
                "internet access and set clip.pretrained to its local path, or set "
                f"clip.pretrained: {RANDOM_WEIGHTS} for an offline test run (its results are not "
                "comparable with the paper)."
            ) from error
        weights = f"tag:{clip.pretrained}"
    else:
        path = Path(clip.pretrained)
        path = path if path.is_absolute() else base / path
        # open_clip warns that the model is "initialized randomly" when it loads no weights
        # itself, which is wrong here: the local file's weights follow.
        quiet = _DropMessage("No pretrained weights loaded")
        logging.getLogger().addFilter(quiet)
        try:
            model = open_clip.create_model(
                clip.model, pretrained=None, force_quick_gelu=clip.quick_gelu
            )
        finally:
            logging.getLogger().removeFilter(quiet)
        _load_local_weights(model, path, clip.model)
        weights = f"file:{os.fspath(path)}"

    model = model.to(device).eval()
    preprocess = model.visual.preprocess_cfg
    size = preprocess["size"]
    image_size = size if isinstance(size, int) else size[0]
    log.info("CLIP %s with %s weights on %s", clip.model, weights, device)
    return LoadedClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(clip.model),
        image_size=int(image_size),
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
        logit_scale=float(model.logit_scale.detach().float().cpu()),
        weights=weights,
    )


@torch.inference_mode()
def encode_prompts(
    clip: LoadedClip, templates: list[str], class_names: list[str], device: torch.device
) -> torch.Tensor:
    """Encode every template filled with every class name.

    Returns:
        Float32 tensor of shape (templates, classes, dim), each row L2-normalised.
    """
    prompts = [template.format(name) for template in templates for name in class_names]
    tokens = clip.tokenizer(prompts).to(device)
    embeddings = clip.model.encode_text(tokens, normalize=True).float().cpu()
    return embeddings.reshape(len(templates), len(class_names), -1)
