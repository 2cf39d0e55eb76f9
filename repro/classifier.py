"""The multi-label classifier: a torchvision ResNet with a new head, its inputs and inference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from repro.clip_model import WeightsUnavailableError, read_state_dict
from repro.images import load_rgb_tensor

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V2 ResNet recipe resizes to 232 before a 224 crop; other
# sizes keep that ratio.
RESIZE_RATIO = 232 / 224


def build_classifier(backbone: str, weights: str, num_classes: int) -> tuple[torch.nn.Module, str]:
    """Create a ResNet with a `num_classes` head and the backbone weights named by `weights`.

    `weights` is 'imagenet' (torchvision's default ImageNet weights, downloaded on first use),
    'none' (random initialisation) or a local state-dict file. Returns the model and a
    description of its weights for the report.

    Raises:
        WeightsUnavailableError: the ImageNet weights could not be downloaded, or the file
            does not fit the backbone.
    """
    builder = getattr(torchvision.models, backbone)
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(backbone).DEFAULT
        try:
            model = builder(weights=enum)
        except Exception as error:  # urllib and hub errors vary by torchvision version
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights of {backbone} ({enum}) ({error}). "
                "Set train.weights to a local state-dict file of the same backbone, or to "
                "'none' to train from random initialisation (not comparable with the paper)."
            ) from error
        description = f"imagenet:{enum}"
    else:
        model = builder(weights=None)
        description = "none"
        if weights != "none":
            state = read_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            result = model.load_state_dict(state, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("fc.")]
            if missing or result.unexpected_keys:
                raise WeightsUnavailableError(
                    f"{weights} does not fit {backbone}: missing {missing[:3]}, unexpected "
                    f"{result.unexpected_keys[:3]}. Check train.backbone."
                )
            description = f"file:{weights}"
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model, description


def classifier_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side (ratio 232/224 of `size`), centre-crop `size`, normalise: float (3, size, size)."""
    resized = TF.resize(
        image, round(size * RESIZE_RATIO), interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    cropped = TF.center_crop(resized, [size, size])
    return TF.normalize(cropped.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


class ImageDataset(Dataset):
    """Item i: (i, classifier input of image i)."""

    def __init__(self, image_paths: list[str], size: int):
        self.image_paths = image_paths
        self.size = size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, classifier_input(load_rgb_tensor(self.image_paths[index]), self.size)


def activation(loss: str):
    """Map logits to class scores the way the loss reads them: softmax for softmax_kl, else sigmoid."""
    return (lambda x: torch.softmax(x, dim=-1)) if loss == "softmax_kl" else torch.sigmoid


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    image_paths: list[str],
    size: int,
    loss: str,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    desc: str = "predict",
) -> np.ndarray:
    """Class scores (images, classes) of `model` on the images, in order."""
    model.eval()
    to_scores = activation(loss)
    loader = DataLoader(
        ImageDataset(image_paths, size), batch_size=batch_size, num_workers=num_workers
    )
    outputs = []
    for _, images in tqdm(loader, desc=desc, unit="batch", leave=False):
        outputs.append(to_scores(model(images.to(device)).float()).cpu())
    return torch.cat(outputs).numpy()


def load_trained(checkpoint: Path, info: dict, device: torch.device) -> torch.nn.Module:
    """Rebuild the trained classifier from its state dict (read with weights_only=True)."""
    model, _ = build_classifier(info["backbone"], "none", len(info["classes"]))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.to(device).eval()
