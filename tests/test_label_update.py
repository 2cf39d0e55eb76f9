import math

import pytest
import torch

from repro.label_update import PseudoLabels, gaussian_weight, is_update_epoch
from repro.losses import bernoulli_kl, sigmoid_bce, softmax_kl


def test_gaussian_weight_peaks_at_half():
    assert gaussian_weight(torch.tensor(0.5), 1.0).item() == pytest.approx(
        1 / math.sqrt(2 * math.pi)
    )
    assert (
        gaussian_weight(torch.tensor(0.9), 0.1).item()
        < gaussian_weight(torch.tensor(0.5), 0.1).item()
    )


def test_one_update_step_hand_computed():
    # BCE with logit x: dL/dy = -x. From y = 0.5 (z = 0) with x = 2 and sigma = 1:
    # z' = 0 - psi(0.5) * (-2) = 2 / sqrt(2 pi).
    labels = PseudoLabels(torch.tensor([[0.5]]))
    labels.update(torch.tensor([0]), torch.tensor([[2.0]]), sigmoid_bce, sigma=1.0)
    expected_logit = 2 / math.sqrt(2 * math.pi)
    assert labels.logits.item() == pytest.approx(expected_logit, rel=1e-5)
    assert labels.values.item() == pytest.approx(1 / (1 + math.exp(-expected_logit)), rel=1e-5)


def test_update_touches_only_batch_rows():
    labels = PseudoLabels(torch.full((4, 3), 0.5))
    before = labels.logits.clone()
    labels.update(torch.tensor([1, 3]), torch.randn(2, 3), sigmoid_bce, sigma=1.0)
    assert torch.equal(labels.logits[[0, 2]], before[[0, 2]])
    assert not torch.equal(labels.logits[[1, 3]], before[[1, 3]])


@pytest.mark.parametrize("loss", [softmax_kl, sigmoid_bce, bernoulli_kl])
def test_labels_move_towards_confident_prediction(loss):
    labels = PseudoLabels(torch.tensor([[0.5, 0.5]]))
    prediction = torch.tensor([[4.0, -4.0]])
    labels.update(torch.tensor([0]), prediction, loss, sigma=1.0)
    assert labels.values[0, 0] > 0.5
    assert labels.values[0, 1] < 0.5


def test_update_schedule():
    epochs = [e for e in range(30) if is_update_epoch(e, every=10, warmup=0)]
    assert epochs == [9, 19, 29]
    assert [e for e in range(30) if is_update_epoch(e, every=10, warmup=10)] == [19, 29]
    assert not any(is_update_epoch(e, every=0, warmup=0) for e in range(30))


def test_losses_are_zero_at_matching_targets():
    targets = torch.tensor([[0.2, 0.7, 0.1]])
    assert softmax_kl(targets.log(), targets).item() == pytest.approx(0.0, abs=1e-6)
    assert bernoulli_kl(torch.logit(targets), targets).item() == pytest.approx(0.0, abs=1e-6)
