import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from repro.metrics import average_precision, mean_average_precision


def test_ap_hand_computed():
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_ap_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = np.round(rng.random(200), 1)  # many ties
        labels = (rng.random(200) < 0.3).astype(int)
        expected = average_precision_score(labels, scores)
        assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_map_matches_sklearn_macro_average():
    rng = np.random.default_rng(1)
    scores = rng.random((300, 6))
    labels = (rng.random((300, 6)) < 0.25).astype(np.int8)
    result = mean_average_precision(scores, labels, [f"c{i}" for i in range(6)])
    expected = average_precision_score(labels, scores, average="macro") * 100
    assert result.map == pytest.approx(expected, abs=1e-9)
    assert result.excluded == []


def test_ignored_entries_are_left_out():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, -1, 0, 1])
    expected = average_precision_score([1, 0, 1], [0.9, 0.7, 0.6])
    assert average_precision(scores, labels) == pytest.approx(expected)


def test_class_without_positives_is_excluded_not_nan():
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.4, 0.8]])
    labels = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.int8)
    result = mean_average_precision(scores, labels, ["cat", "dog"])
    assert result.map == pytest.approx(100.0)
    assert result.excluded == ["dog"]
    assert np.isnan(result.per_class[1])
    summary = result.as_dict(["cat", "dog"])
    assert summary["per_class_ap"]["dog"] is None
    assert summary["classes_in_map"] == 1


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b", "c"])
