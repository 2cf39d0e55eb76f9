import copy

import pandas as pd
import pytest
import yaml

from repro.claims import (
    ClaimError,
    Evidence,
    assess,
    load_claims,
    load_experiments,
    validate_entry,
    verdict,
)
from tests.conftest import PROJECT

EXPERIMENTS = {"fixed_labels", "voc2012"}
VALUE_CLAIM = {
    "id": "example_map",
    "claim": "Reaches 89.0 mAP.",
    "source": "cdul_paper",
    "where": "Table 1",
    "dataset": "voc2007",
    "split": "test",
    "metric": "mAP",
    "reported": 89.0,
    "tolerance": 1.0,
    "check": "value",
    "verification": "secondary_quote",
    "measure": {"from": "run", "file": "eval", "key": "map"},
}


def entry(**changes):
    result = copy.deepcopy(VALUE_CLAIM)
    for key, value in changes.items():
        if value is None and key != "reported":
            result.pop(key, None)
        else:
            result[key] = value
    return result


def test_project_registry_loads():
    claims = load_claims(
        PROJECT / "experiments/claims.yaml",
        set(load_experiments(PROJECT / "experiments/experiments.yaml")),
    )
    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids))
    assert "cdul_voc2007_map" in ids
    assert {c.source for c in claims} <= {"cdul_paper", "repro_study", "derived"}


def test_project_registry_reported_values():
    claims = {
        c.id: c
        for c in load_claims(
            PROJECT / "experiments/claims.yaml",
            set(load_experiments(PROJECT / "experiments/experiments.yaml")),
        )
    }
    assert claims["cdul_voc2007_map"].reported == 89.0
    assert claims["cdul_voc2012_map"].reported == 88.6
    assert claims["cdul_coco2014_map"].reported == 69.2
    assert claims["cdul_nuswide_map"].reported == 44.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"claim": None}, "entry 0 \\('example_map'\\) .* lacks claim"),
        ({"source": "blog"}, "'example_map'.*source 'blog'"),
        ({"check": "roughly"}, "'example_map'.*check 'roughly'"),
        ({"reported": "89"}, "'example_map'.*reported must be a number or null"),
        ({"reported": None}, "'example_map'.*'missing' must say"),
        ({"tolerance": -1}, "'example_map'.*tolerance must be a number >= 0"),
        ({"measure": {"from": "run", "file": "nope", "key": "map"}}, "'example_map'.*file"),
        (
            {
                "measure": {
                    "from": "experiment",
                    "experiment": "ghost",
                    "file": "eval",
                    "key": "map",
                }
            },
            "'example_map'.*experiment 'ghost'",
        ),
        ({"measure": {"from": "somewhere"}}, "'example_map'.*'from' is 'somewhere'"),
        ({"colour": "red"}, "'example_map'.*unknown fields colour"),
        ({"requires": {"file": "train", "key": "x"}}, "'example_map'.*requires must be"),
    ],
)
def test_malformed_entry_named(changes, message):
    with pytest.raises(ClaimError, match=message):
        validate_entry(entry(**changes), 0, EXPERIMENTS)


def test_direction_needs_both_sides():
    bad = entry(
        check="direction", measure=None, better={"from": "run", "file": "eval", "key": "map"}
    )
    with pytest.raises(ClaimError, match="'example_map': worse"):
        validate_entry(bad, 0, EXPERIMENTS)


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [VALUE_CLAIM, VALUE_CLAIM]}))
    with pytest.raises(ClaimError, match="repeats claim ids: example_map"):
        load_claims(path, EXPERIMENTS)


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (88.0, "reproduced"),
        (90.0, "reproduced"),
        (89.0, "reproduced"),
        (87.99, "not reproduced"),
        (90.01, "not reproduced"),
        (None, "not run"),
    ],
)
def test_value_verdict_tolerance_edges(measured, expected):
    assert verdict("value", 89.0, 1.0, measured) == expected


def test_value_verdict_float_edge():
    assert verdict("value", 0.3, 0.1, 0.2) == "reproduced"
    assert verdict("value", 0.3, 0.1, 0.4) == "reproduced"


@pytest.mark.parametrize(
    ("check", "measured", "expected"),
    [
        ("at_least", 0.93, "holds"),
        ("at_least", 0.9299, "does not hold"),
        ("at_most", 0.0526, "holds"),
        ("at_most", 0.0527, "does not hold"),
    ],
)
def test_bound_verdicts(check, measured, expected):
    reported, tolerance = (0.98, 0.05) if check == "at_least" else (0.0516, 0.001)
    assert verdict(check, reported, tolerance, measured) == expected


def test_direction_verdict():
    assert verdict("direction", None, 0.0, 2.0, 1.0) == "holds"
    assert verdict("direction", None, 0.0, 1.0, 1.0) == "does not hold"
    assert verdict("direction", None, 0.0, None, 1.0) == "not run"


def test_missing_reported_value():
    assert verdict("value", None, 1.0, 50.0) == "no reported value"


def test_assess_marks_random_weights():
    claim = validate_entry(entry(), 0, EXPERIMENTS)
    evidence = Evidence(
        run={"eval": {"map": 88.5, "ci": [87.0, 90.0]}}, dataset="voc2007", random_weights=True
    )
    row = assess(claim, evidence)
    assert row["verdict"] == "not comparable (reproduced on random weights)"
    assert row["reproduced"] == "88.50 [87.00, 90.00]"
    assert "random weights" in row["caveats"]


def test_assess_other_dataset_is_not_run():
    claim = validate_entry(entry(dataset="voc2012"), 0, EXPERIMENTS)
    evidence = Evidence(run={"eval": {"map": 88.5}}, dataset="voc2007")
    row = assess(claim, evidence)
    assert row["verdict"] == "not run"
    assert "voc2012" in row["reproduced"]


def test_assess_experiment_mean_and_std():
    claim = validate_entry(
        entry(
            measure={
                "from": "experiment",
                "experiment": "fixed_labels",
                "file": "eval",
                "key": "map",
            }
        ),
        0,
        EXPERIMENTS,
    )
    runs = [{"metrics": {"eval": {"map": m}}, "dataset": "voc2007"} for m in (88.0, 90.0)]
    row = assess(claim, Evidence(experiments={"fixed_labels": runs}, dataset="voc2007"))
    assert row["verdict"] == "reproduced"
    assert row["reproduced"].startswith("89.00 ± 1.41 (n=2)")


def test_assess_table_measure():
    claim = validate_entry(
        entry(
            check="at_least",
            reported=0.98,
            tolerance=0.05,
            measure={
                "from": "table",
                "table": "softmax_stats",
                "where": {"temperature": "learned"},
                "column": "max_probability",
            },
        ),
        0,
        EXPERIMENTS,
    )
    table = pd.DataFrame({"temperature": ["learned", "repro"], "max_probability": [0.97, 0.05]})
    row = assess(claim, Evidence(tables={"softmax_stats": table}, dataset="voc2007"))
    assert row["verdict"] == "holds"


REQUIRES_UPDATES = {
    "file": "train",
    "key": "label_update_epochs",
    "min": 1,
    "why": "this run made no label update",
}


def test_unmet_requirement_not_checkable():
    claim = validate_entry(entry(requires=REQUIRES_UPDATES), 0, EXPERIMENTS)
    evidence = Evidence(
        run={"eval": {"map": 88.5}, "train": {"label_update_epochs": 0}}, dataset="voc2007"
    )
    row = assess(claim, evidence)
    assert row["verdict"] == "not checkable"
    assert row["reproduced"] == "this run made no label update (label_update_epochs = 0)"


def test_met_requirement_assessed():
    claim = validate_entry(entry(requires=REQUIRES_UPDATES), 0, EXPERIMENTS)
    evidence = Evidence(
        run={"eval": {"map": 88.5}, "train": {"label_update_epochs": 3}}, dataset="voc2007"
    )
    assert assess(claim, evidence)["verdict"] == "reproduced"


def test_dataset_experiment_read_from_run():
    measure = {"from": "experiment", "experiment": "voc2012", "file": "eval", "key": "map"}
    claim = validate_entry(entry(dataset="voc2012", measure=measure), 0, EXPERIMENTS)
    evidence = Evidence(
        run={"eval": {"map": 88.2, "ci": [87.0, 89.0]}},
        dataset="voc2012",
        definitions={"voc2012": {"set": {"dataset.name": "voc2012", "dataset.eval_split": "val"}}},
    )
    row = assess(claim, evidence)
    assert row["verdict"] == "reproduced"
    assert row["reproduced"] == "88.20 [87.00, 89.00]"


def test_dataset_experiment_other_run_not_run():
    measure = {"from": "experiment", "experiment": "voc2012", "file": "eval", "key": "map"}
    claim = validate_entry(entry(dataset="voc2012", measure=measure), 0, EXPERIMENTS)
    evidence = Evidence(
        run={"eval": {"map": 88.2}},
        dataset="voc2007",
        definitions={"voc2012": {"group": "datasets", "set": {"dataset.name": "voc2012"}}},
    )
    row = assess(claim, evidence)
    assert row["verdict"] == "not run"
    assert "--only voc2012" in row["reproduced"]
