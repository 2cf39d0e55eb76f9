"""Objectives between classifier logits and soft pseudo labels, each averaged over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def softmax_kl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(q || softmax(logits)) with q the pseudo labels normalised to sum to one per image.

    This is the public reproduction's objective, which treats the label vector as one
    distribution over classes. Its author later called that a mistake for multi-label data.
    """
    q = targets.clamp_min(EPS)
    q = q / q.sum(dim=-1, keepdim=True)
    log_p = F.log_softmax(logits, dim=-1)
    return (q * (q.log() - log_p)).sum(dim=-1).mean()


def sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class binary cross-entropy with soft targets, averaged over classes and images."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def bernoulli_kl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class KL(Bernoulli(y) || Bernoulli(sigmoid(logits))), averaged over classes and images."""
    y = targets.clamp(EPS, 1 - EPS)
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    kl = y * (y.log() - log_p) + (1 - y) * ((1 - y).log() - log_not_p)
    return kl.mean()


LOSSES = {"softmax_kl": softmax_kl, "sigmoid_bce": sigmoid_bce, "bernoulli_kl": bernoulli_kl}
