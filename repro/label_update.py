"""Gradient alignment: pseudo labels refined by gradient steps while the classifier trains.

Each label is held as a logit z with y = sigmoid(z). With the classifier's output fixed, the
gradient g = dL/dy of the training loss moves z by -psi(y) * g, where psi is the density of a
normal distribution N(0.5, sigma) at y: uncertain labels near 0.5 move most. This follows the
public reproduction's reading of CDUL's Eq. 7-8 (cs-mshah/CDUL, src/train.py); it uses no step
size beyond psi.
"""

from __future__ import annotations

import math

import torch

from repro.losses import EPS


def gaussian_weight(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Density of N(0.5, sigma^2) at y."""
    return torch.exp(-0.5 * ((y - 0.5) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def is_update_epoch(epoch: int, every: int, warmup: int) -> bool:
    """Return whether labels move in 0-based `epoch`: each `every`-th epoch after `warmup`."""
    number = epoch + 1
    return every > 0 and number > warmup and number % every == 0


class PseudoLabels:
    """Soft pseudo labels of the training images, stored as logits for the update."""

    def __init__(self, initial: torch.Tensor):
        y = torch.as_tensor(initial, dtype=torch.float32).clamp(EPS, 1 - EPS)
        self.logits = torch.logit(y)

    @property
    def values(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def targets(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits[rows])

    def update(self, rows: torch.Tensor, logits: torch.Tensor, loss_fn, sigma: float) -> None:
        """Take one Gaussian-weighted gradient step on the labels of `rows`.

        `logits` are the classifier's outputs for those rows; they are held fixed.
        """
        y = torch.sigmoid(self.logits[rows]).requires_grad_(True)
        loss = loss_fn(logits.detach().float().cpu(), y)
        (gradient,) = torch.autograd.grad(loss, y)
        with torch.no_grad():
            self.logits[rows] -= gaussian_weight(y, sigma) * gradient
