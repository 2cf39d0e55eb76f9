"""Typed, validated configuration read once from params.yaml.

Every stage calls `load_config()` before doing any work. Each key is checked for type and
range, unknown keys are rejected with the nearest known key, and the errors name the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"

DATASETS = ("voc2007", "voc2012", "coco2014", "nuswide")
RANDOM_WEIGHTS = "random"
RANDOM_WEIGHTS_NOTE = "random weights: not comparable with the paper"


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def spec(default: Any = None, *, choices=None, low=None, high=None, low_open=False, doc=""):
    """Declare a config field with its default and the values it accepts."""
    metadata = {"choices": choices, "low": low, "high": high, "low_open": low_open, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DatasetConfig:
    name: str = spec("voc2007", choices=DATASETS, doc="which dataset prepare reads")
    root: str | None = spec(None, doc="local copy of the dataset; null downloads it")
    download_dir: str = spec("data/downloads", doc="where downloaded archives are kept")
    train_split: str = spec("trainval", doc="split whose images get pseudo labels and train")
    eval_split: str = spec("test", doc="split the classifier is evaluated on")
    holdout: float | None = spec(
        None,
        low=0.0,
        high=1.0,
        low_open=True,
        doc="re-split all listed images, holding out this share for evaluation",
    )
    max_images: int | None = spec(None, low=1, doc="keep at most this many images per split")
    difficult: str = spec(
        "positive",
        choices=("positive", "negative", "ignore"),
        doc="how an image whose only instances of a class are 'difficult' is labelled",
    )
    on_bad_image: str = spec("fail", choices=("fail", "skip"), doc="undecodable image handling")


@dataclass(frozen=True)
class TilingConfig:
    grid: int = spec(3, low=1, high=16, doc="snippets per side of the grid")
    overlap: float = spec(
        0.0, low=0.0, high=0.9, doc="share of a snippet that overlaps its neighbour"
    )
    fit: str = spec(
        "crop",
        choices=("crop", "squash"),
        doc="how a non-square view becomes CLIP's square input: centre crop or resize",
    )


@dataclass(frozen=True)
class ClipConfig:
    model: str = spec("RN50x64", doc="open_clip model name")
    pretrained: str = spec("openai", doc="open_clip tag, a local checkpoint path, or 'random'")
    quick_gelu: bool = spec(True, doc="QuickGELU activations, as in OpenAI's weights (local files)")
    temperature: str = spec(
        "learned",
        choices=("learned", "repro"),
        doc="learned: cosine x logit_scale.exp(); repro: cosine / logit_scale",
    )
    batch_size: int = spec(64, low=1, doc="views per forward pass")
    num_workers: int = spec(2, low=0, doc="DataLoader worker processes that decode images")
    device: str = spec("auto", doc="auto, cpu, cuda or cuda:N")
    precision: str = spec("auto", choices=("auto", "fp32", "fp16", "bf16"), doc="autocast dtype")
    processes: int = spec(
        1, low=1, doc="embed processes on this machine, one per GPU, started through torchrun"
    )


# "a photo of a {}." first (the public reproduction's only template), then the 7-template
# ImageNet ensemble from OpenAI's CLIP prompt-engineering notebook.
DEFAULT_TEMPLATES = [
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


@dataclass(frozen=True)
class PromptsConfig:
    templates: list = spec(
        DEFAULT_TEMPLATES, doc="prompt templates, each with one '{}'; embed encodes them all"
    )
    ensemble: bool = spec(
        False, doc="average all templates per class; false uses only the first template"
    )
    class_names: str = spec(
        "natural",
        choices=("natural", "raw"),
        doc="natural ('dining table') or the dataset's raw names ('diningtable')",
    )


@dataclass(frozen=True)
class AggregationConfig:
    aggregator: str = spec(
        "cdul", choices=("cdul", "global", "max", "mean"), doc="how snippet scores are combined"
    )
    lam: float = spec(
        0.0,
        low=-1.0,
        high=1.0,
        doc="global/local mixing weight in (g + a + lam * |g - a|) / 2",
    )


@dataclass(frozen=True)
class LabelUpdateConfig:
    every: int = spec(10, low=0, doc="update pseudo labels in every k-th epoch; 0 never")
    warmup: int = spec(0, low=0, doc="epochs before the first pseudo-label update")
    sigma: float = spec(1.0, low=0.0, low_open=True, doc="std of the Gaussian step weight")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = spec(
        "resnet101",
        choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
        doc="torchvision ResNet",
    )
    weights: str = spec("imagenet", doc="imagenet, none, or a local state-dict path")
    image_size: int = spec(224, low=32, doc="centre-crop side in pixels")
    epochs: int = spec(100, low=1)
    batch_size: int = spec(8, low=1)
    lr: float = spec(1e-5, low=0.0, low_open=True)
    weight_decay: float = spec(0.0, low=0.0)
    loss: str = spec(
        "softmax_kl",
        choices=("softmax_kl", "sigmoid_bce", "bernoulli_kl"),
        doc="classifier objective against the soft pseudo labels",
    )
    label_update: LabelUpdateConfig = field(default_factory=LabelUpdateConfig)
    eval_every: int = spec(1, low=0, doc="classifier mAP on the eval split every k epochs; 0 never")
    num_workers: int = spec(2, low=0)
    device: str = spec("auto", doc="auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = spec(32, low=1)
    num_workers: int = spec(2, low=0)
    bootstrap: int = spec(
        1000, low=0, doc="resamples of the images for 95% intervals on every mAP; 0 turns them off"
    )


@dataclass(frozen=True)
class AblationConfig:
    thresholds: list = spec(
        [round(0.05 * i, 2) for i in range(21)], doc="thresholds swept by the ablate stage"
    )
    lams: list = spec([-1.0, -0.5, 0.0, 0.5, 1.0], doc="global/local mixing weights swept")
    bootstrap: int = spec(
        200, low=0, doc="image resamples for the 95% interval of each ablation row"
    )


@dataclass(frozen=True)
class Config:
    threshold: float = spec(0.2, low=0.0, high=1.0, doc="CDUL's threshold on the best snippet")
    seed: int = spec(0, low=0)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)

    @property
    def random_clip_weights(self) -> bool:
        return self.clip.pretrained == RANDOM_WEIGHTS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flatten_params(data: dict, prefix: str = "") -> dict:
    """Flatten nested params into dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def known_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """List every dotted key of a config dataclass, sections included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        dotted = prefix + item.name
        keys.append(dotted)
        if dataclasses.is_dataclass(hints[item.name]):
            keys.extend(known_keys(hints[item.name], dotted + "."))
    return keys


def _unknown_key_error(dotted: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, known_keys(), n=1, cutoff=0.5)
    if not close:
        # A misspelt leaf under a correct section: compare the last part alone.
        section, _, leaf = dotted.rpartition(".")
        siblings = [k for k in known_keys() if k.rpartition(".")[0] == section]
        leaves = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1)
        close = [f"{section}.{leaves[0]}" if section else leaves[0]] if leaves else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown parameter '{dotted}'{hint} Remove it or fix the name in {PARAMS_FILE}."
    )


def _describe(meta: dict, kind: type) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    name = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list",
    }.get(kind, kind.__name__)
    if low is not None and high is not None:
        left = "(" if meta.get("low_open") else "["
        return f"{name} in {left}{low}, {high}]"
    if low is not None:
        return f"{name} {'>' if meta.get('low_open') else '>='} {low}"
    return name


def _split_optional(annotation: Any) -> tuple[type, bool]:
    """Return the base type of an annotation and whether None is allowed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    origin = typing.get_origin(annotation)
    return (origin or annotation), False


def _check_value(dotted: str, value: Any, annotation: Any, meta: dict) -> Any:
    kind, optional = _split_optional(annotation)
    allowed = _describe(meta, kind) + (" or null" if optional else "")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{dotted} is null; expected {allowed}.")

    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif kind is list:
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{dotted} = {value!r} has the wrong type; expected {allowed}.")

    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices and value not in choices:
        raise ConfigError(f"{dotted} = {value!r} is not allowed; expected {allowed}.")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ConfigError(f"{dotted} = {value!r} is out of range; expected {allowed}.")
    return value


def _build(cls: type, raw: Any, prefix: str = ""):
    section = prefix.rstrip(".") or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {raw!r}.")

    names = {item.name for item in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown_key_error(prefix + str(key))

    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in raw:
            continue
        dotted = prefix + item.name
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            values[item.name] = _build(annotation, raw[item.name], dotted + ".")
        else:
            values[item.name] = _check_value(dotted, raw[item.name], annotation, item.metadata)
    return cls(**values)


def _check_templates(templates: list) -> None:
    if not templates:
        raise ConfigError(
            "prompts.templates is empty; give at least one template such as 'a photo of a {}.'."
        )
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(
                f"prompts.templates contains {template!r}; each template must be a string with "
                "exactly one '{}' where the class name goes."
            )


def _check_number_list(key: str, values: list, low: float, high: float) -> None:
    if not values:
        raise ConfigError(f"{key} is empty; give at least one number in [{low}, {high}].")
    for value in values:
        number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number_ok or not low <= value <= high:
            raise ConfigError(
                f"{key} contains {value!r}; every entry must be a number in [{low}, {high}]."
            )


def _check_device(key: str, device: str) -> None:
    if device in ("auto", "cpu", "cuda", "mps") or (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        return
    raise ConfigError(
        f"{key} = {device!r} is not allowed; expected auto, cpu, cuda, cuda:N or mps."
    )


def _check_path_or_keyword(key: str, value: str, keywords: tuple[str, ...], base: Path) -> None:
    if value in keywords:
        return
    path = Path(value) if os.path.isabs(value) else base / value
    if not path.is_file():
        raise ConfigError(
            f"{key} = {value!r} is neither one of {', '.join(keywords)} nor an existing file "
            f"(looked for {path}). Give a checkpoint path that exists or one of those keywords."
        )


def validate(config: Config, base: Path | None = None) -> Config:
    """Check the rules that span several keys or the file system; return the config."""
    base = Path.cwd() if base is None else base
    _check_templates(config.prompts.templates)
    _check_number_list("ablation.thresholds", config.ablation.thresholds, 0.0, 1.0)
    _check_number_list("ablation.lams", config.ablation.lams, -1.0, 1.0)
    _check_device("clip.device", config.clip.device)
    _check_device("train.device", config.train.device)
    _check_path_or_keyword("train.weights", config.train.weights, ("imagenet", "none"), base)

    data = config.dataset
    if data.root is not None:
        root = Path(data.root) if os.path.isabs(data.root) else base / data.root
        if not root.is_dir():
            raise ConfigError(
                f"dataset.root = {data.root!r} does not exist (looked for {root}). Point it at a "
                f"local copy of {data.name}, or set dataset.root: null to download it."
            )
    if data.holdout is None and data.train_split == data.eval_split:
        raise ConfigError(
            f"dataset.train_split and dataset.eval_split are both {data.train_split!r}; the "
            "classifier would be evaluated on its own training images. Choose two splits, or "
            "set dataset.holdout to carve an evaluation split out of the listed images."
        )

    _check_clip_once(config.clip, base)
    return config


def _check_clip_once(clip: ClipConfig, base: Path) -> None:
    """Check the CLIP model and weights, skipping combinations that passed before.

    Importing open_clip takes seconds, and every stage validates the params, so a passed
    check is remembered in .repro-tmp/ under a key of the model, the weights (with the
    file's size and time when it is a path) and the open_clip version.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip_version = "unknown"
    path = Path(clip.pretrained) if os.path.isabs(clip.pretrained) else base / clip.pretrained
    stat = path.stat() if clip.pretrained != RANDOM_WEIGHTS and path.is_file() else None
    key = json.dumps(
        [
            clip.model,
            clip.pretrained,
            open_clip_version,
            [stat.st_size, stat.st_mtime_ns] if stat else None,
        ]
    )
    stamp = base / ".repro-tmp" / "clip-checks.json"
    try:
        passed = json.loads(stamp.read_text())
    except (OSError, ValueError):
        passed = []
    if key in passed:
        return

    # Deferred import: open_clip is heavy and only this check needs it here.
    from repro.clip_model import check_model_and_weights

    check_model_and_weights(clip, base)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps([*passed[-20:], key]))
    except OSError:
        pass  # a read-only project only loses the shortcut


def load_config(path: str | Path = PARAMS_FILE, check: bool = True) -> Config:
    """Read params.yaml, check every key, and return the config.

    Raises:
        ConfigError: a key is unknown, has the wrong type or value, or names a missing path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run the stage from the project folder that holds it.")
    try:
        with path.open() as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    config = _build(Config, raw)
    if check:
        validate(config, base=path.resolve().parent)
    return config


def config_from_dict(raw: dict, check: bool = False, base: Path | None = None) -> Config:
    """Build a config from a nested dict, as if it were params.yaml (used by tests)."""
    config = _build(Config, raw)
    return validate(config, base) if check else config


def describe_keys(current: Config | None = None) -> str:
    """Render every key with its value in `current`, its default and its allowed values."""
    lines = []

    def walk(cls: type, prefix: str, defaults: Any, values: Any) -> None:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            dotted = prefix + item.name
            default = getattr(defaults, item.name)
            value = getattr(values, item.name)
            if dataclasses.is_dataclass(hints[item.name]):
                walk(hints[item.name], dotted + ".", default, value)
                continue
            kind, optional = _split_optional(hints[item.name])
            allowed = _describe(item.metadata, kind) + (" or null" if optional else "")
            doc = item.metadata.get("doc", "")
            value_text = f"{value!r}" if value == default else f"{value!r} (default {default!r})"
            lines.append(f"{dotted} = {value_text}: {allowed}. {doc}".rstrip(". ") + ".")

    walk(Config, "", Config(), current or Config())
    return "\n".join(lines)


USAGE = """usage: python -m repro.config

Lists every param: its value in params.yaml (with the default where they differ), the
values it accepts and what it does. It does not check the params; every stage does."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(USAGE)
        return
    try:
        current = load_config(check=False)
    except ConfigError as error:
        print(f"# params.yaml not read ({error}); showing the defaults.")
        current = None
    print(describe_keys(current))


if __name__ == "__main__":
    main()
