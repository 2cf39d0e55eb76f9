import math

import numpy as np
import pytest
import torch

from repro.aggregate import (
    aggregate_snippets,
    class_embeddings,
    combine,
    pseudo_labels,
    softmax_scale,
    view_probabilities,
)

# One image, a global view and 3 snippets over 2 classes.
GLOBAL = [0.5, 0.5]
SNIPPETS = [[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]


def probabilities(global_, snippets):
    return torch.tensor([[global_, *snippets]], dtype=torch.float32)


def test_cdul_rule_takes_max_only_above_threshold():
    local = torch.tensor([SNIPPETS])
    result = aggregate_snippets(local, threshold=0.75, aggregator="cdul")
    # class 0: best snippet 0.7 < 0.75, so its worst snippet 0.2; class 1: 0.8 >= 0.75.
    assert result[0].tolist() == pytest.approx([0.2, 0.8])


def test_cdul_rule_threshold_is_inclusive():
    local = torch.tensor([SNIPPETS])
    result = aggregate_snippets(local, threshold=0.7, aggregator="cdul")
    assert result[0].tolist() == pytest.approx([0.7, 0.8])


def test_threshold_zero_is_max_and_one_is_min():
    local = torch.tensor([SNIPPETS])
    assert aggregate_snippets(local, 0.0, "cdul")[0].tolist() == pytest.approx([0.7, 0.8])
    assert aggregate_snippets(local, 1.0, "cdul")[0].tolist() == pytest.approx([0.2, 0.3])


def test_other_aggregators():
    local = torch.tensor([SNIPPETS])
    assert aggregate_snippets(local, 0.5, "max")[0].tolist() == pytest.approx([0.7, 0.8])
    assert aggregate_snippets(local, 0.5, "mean")[0].tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize(
    ("lam", "expected"),
    [(0.0, [0.35, 0.65]), (1.0, [0.5, 0.8]), (-1.0, [0.2, 0.5]), (0.5, [0.425, 0.725])],
)
def test_final_label_mixing(lam, expected):
    result = pseudo_labels(
        probabilities(GLOBAL, SNIPPETS), threshold=0.75, aggregator="cdul", lam=lam
    )
    assert result["local"][0].tolist() == pytest.approx([0.2, 0.8])
    assert result["final"][0].tolist() == pytest.approx(expected)


def test_global_aggregator_ignores_snippets():
    result = pseudo_labels(probabilities(GLOBAL, SNIPPETS), 0.75, "global", 0.0)
    assert result["final"][0].tolist() == pytest.approx(GLOBAL)


def test_batch_of_two_images_aggregates_per_image():
    other = [[0.1, 0.9], [0.05, 0.95], [0.3, 0.7]]
    batch = torch.tensor([[GLOBAL, *SNIPPETS], [[0.9, 0.1], *other]])
    result = pseudo_labels(batch, threshold=0.75, aggregator="cdul", lam=0.0)
    assert result["local"][0].tolist() == pytest.approx([0.2, 0.8])
    assert result["local"][1].tolist() == pytest.approx([0.05, 0.95])
    assert result["final"][1].tolist() == pytest.approx([0.475, 0.525])

    swapped = pseudo_labels(batch.flip(0), threshold=0.75, aggregator="cdul", lam=0.0)
    assert torch.equal(swapped["final"].flip(0), result["final"])


def test_combine_is_symmetric():
    g, a = torch.rand(4, 5), torch.rand(4, 5)
    assert torch.allclose(combine(g, a, 0.3), combine(a, g, 0.3))


def test_learned_temperature_known_softmax():
    # cosines 1.0 and 0.99: CLIP's scale 100 turns the gap into a logit gap of 1.
    image = np.array([[[1.0, 0.0]]])
    classes = torch.tensor([[1.0, 0.0], [0.99, math.sqrt(1 - 0.99**2)]])
    scale = softmax_scale(math.log(100.0), "learned")
    assert scale == pytest.approx(100.0)
    result = view_probabilities(image, classes, scale)[0, 0]
    assert result.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.e)], abs=1e-5)


def test_repro_temperature_is_nearly_uniform():
    image = np.array([[[1.0, 0.0]]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = softmax_scale(math.log(100.0), "repro")
    assert scale == pytest.approx(1 / math.log(100.0))
    result = view_probabilities(image, classes, scale)[0, 0]
    expected = 1 / (1 + math.exp(-1 / math.log(100.0)))
    assert result[0].item() == pytest.approx(expected, abs=1e-6)
    assert result[0].item() < 0.56
    learned = view_probabilities(image, classes, softmax_scale(math.log(100.0), "learned"))[0, 0]
    assert learned[0].item() > 0.99


def test_template_ensemble_is_normalised_mean():
    text = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 templates, 1 class
    result = class_embeddings(text)
    assert result[0].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
