import numpy as np
import pandas as pd
import pytest
import torch

from repro import metrics, paths
from repro.ablate import ablate, normalise_only
from repro.aggregate import aggregate
from repro.metrics import bootstrap_interval, mean_average_precision
from repro.prepare import prepare
from repro.tiling import tile


def test_normalise_only_hand_computed():
    cosines = torch.tensor([[0.1, 0.3], [0.2, 0.6]])
    # Per image, both rows become (-0.7071, 0.7071). Per class the two images are then
    # equal, so every score is 0.
    rows = normalise_only(cosines)
    assert torch.allclose(rows, torch.zeros(2, 2), atol=1e-6)
    cosines = torch.tensor([[0.1, 0.3, 0.2], [0.4, 0.1, 0.1], [0.0, 0.0, 0.3]])
    result = normalise_only(cosines)
    assert torch.allclose(result.mean(dim=0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(result.std(dim=0), torch.ones(3), atol=1e-5)


def informative_scores(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 5)) < 0.3).astype(np.int8)
    scores = labels + rng.normal(0, 0.8, (n, 5))
    return scores, labels


def test_bootstrap_interval_contains_point_estimate():
    scores, labels = informative_scores(300)
    point = mean_average_precision(scores, labels, list("abcde")).map
    low, high = bootstrap_interval(scores, labels, 500, seed=1)
    assert low < point < high


def test_bootstrap_interval_narrows_with_more_images():
    small = bootstrap_interval(*informative_scores(100), 500, seed=1)
    large = bootstrap_interval(*informative_scores(1600), 500, seed=1)
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def test_bootstrap_interval_widened_to_estimate(monkeypatch, caplog):
    scores, labels = informative_scores(40)
    point = mean_average_precision(scores, labels, list("abcde")).map
    # Every resample below the estimate, as with few positives per class.
    shifted = np.linspace(point - 9.0, point - 5.0, 200)
    monkeypatch.setattr(metrics, "bootstrap_maps", lambda *args: shifted)
    low, high = bootstrap_interval(scores, labels, 200, seed=1)
    assert low == pytest.approx(shifted.max(), abs=0.2)
    assert high == pytest.approx(point)
    assert "widened to include it" in caplog.text


def test_bootstrap_interval_off():
    assert bootstrap_interval(*informative_scores(50), 0) is None


@pytest.fixture
def ablated(workdir):
    from repro.embed import embed

    config = workdir(dataset={"max_images": 12})
    prepare(config)
    tile(config)
    embed(config)
    aggregate(config)
    ablate(config)
    return config


def test_ablate_writes_every_table(ablated):
    names = {p.stem for p in paths.TABLES.glob("*.csv")}
    assert names == {
        "threshold_sweep",
        "aggregators",
        "prompts",
        "normalisation",
        "per_class_ap",
        "softmax_stats",
    }
    for name in names:
        table = pd.read_csv(paths.TABLES / f"{name}.csv")
        assert (table["weights"] == "random").all(), name


def test_threshold_sweep_covers_grid(ablated):
    sweep = pd.read_csv(paths.TABLES / "threshold_sweep.csv")
    assert len(sweep) == 2 * len(ablated.ablation.thresholds)
    learned = sweep[sweep["temperature"] == "learned"]
    assert learned["share_max"].iloc[0] == 1.0
    assert learned["share_max"].is_monotonic_decreasing


def test_ablate_matches_aggregate_stage(ablated):
    import json

    pseudo = json.loads(paths.PSEUDO_METRICS.read_text())
    sweep = pd.read_csv(paths.TABLES / "threshold_sweep.csv")
    row = sweep[(sweep["temperature"] == "learned") & (sweep["threshold"] == ablated.threshold)]
    assert row["map_final"].iloc[0] == pytest.approx(pseudo["map_final"], abs=1e-3)
    assert row["map_global"].iloc[0] == pytest.approx(pseudo["map_global"], abs=1e-3)


def test_repro_temperature_row_is_flat(ablated):
    stats = pd.read_csv(paths.TABLES / "softmax_stats.csv").set_index("temperature")
    assert stats.loc["repro", "max_probability"] < 0.06
    assert stats.loc["learned", "max_probability"] > stats.loc["repro", "max_probability"]


def test_ablate_does_not_load_clip(ablated, monkeypatch):
    import repro.clip_model

    def forbidden(*args, **kwargs):
        raise AssertionError("ablate must not load CLIP")

    monkeypatch.setattr(repro.clip_model, "load_clip", forbidden)
    ablate(ablated)
