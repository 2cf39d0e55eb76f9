import json
import sys

import pytest

from tests.conftest import PROJECT

sys.path.insert(0, str(PROJECT / "experiments"))
import run as experiments_run  # noqa: E402  (experiments/run.py is a script, not a package)

DEFINITIONS = {
    "fixed_labels": {"group": "training", "set": {"train.label_update.every": 0}},
    "seeds": {"group": "training", "set": {}, "seeds": [1, 2]},
    "grid_2": {"group": "tiling", "set": {"tiling.grid": 2}},
    "voc2012": {"group": "datasets", "set": {"dataset.name": "voc2012"}},
}


def test_default_groups_skip_datasets():
    names = [
        name for name, _, _ in experiments_run.planned_runs(DEFINITIONS, ["training", "tiling"], [])
    ]
    assert names == ["fixed_labels", "seeds_seed1", "seeds_seed2", "grid_2"]


def test_seeds_become_overrides():
    runs = experiments_run.planned_runs(DEFINITIONS, [], ["seeds"])
    assert runs == [("seeds_seed1", "seeds", {"seed": 1}), ("seeds_seed2", "seeds", {"seed": 2})]


def test_only_selects_any_group():
    runs = experiments_run.planned_runs(DEFINITIONS, ["training"], ["voc2012"])
    assert [name for name, _, _ in runs] == ["voc2012"]


def test_unknown_experiment_rejected():
    with pytest.raises(SystemExit, match="unknown experiments: ghost"):
        experiments_run.planned_runs(DEFINITIONS, [], ["ghost"])


def test_override_values_formatted_for_dvc():
    assert experiments_run.format_value(0) == "0"
    assert experiments_run.format_value(None) == "null"
    assert experiments_run.format_value(True) == "true"
    assert experiments_run.format_value([0.1, 0.2]) == "[0.1, 0.2]"


def test_collect_reads_exp_show_json(monkeypatch):
    shown = [
        {"rev": "workspace", "experiments": None},
        {
            "rev": "abc",
            "experiments": [
                {
                    "name": "fixed_labels",
                    "revs": [
                        {
                            "data": {
                                "params": {
                                    "params.yaml": {
                                        "data": {
                                            "seed": 0,
                                            "dataset": {"name": "voc2007", "holdout": 0.5},
                                            "clip": {"pretrained": "random"},
                                            "train": {"label_update": {"every": 0}},
                                        }
                                    }
                                },
                                "metrics": {
                                    "results/metrics/eval.json": {"data": {"map": 40.0}},
                                    "results/metrics/pseudo_labels.json": {
                                        "data": {"map_final": 35.0}
                                    },
                                },
                            }
                        }
                    ],
                },
                {"name": "other", "revs": [{"data": {}}]},
            ],
        },
    ]
    monkeypatch.setattr(experiments_run, "dvc", lambda *args, **kwargs: json.dumps(shown))
    records = experiments_run.collect({"fixed_labels": "fixed_labels", "grid_2": "grid_2"})
    assert records["fixed_labels"]["status"] == "success"
    assert records["fixed_labels"]["params"]["train.label_update.every"] == 0
    assert records["fixed_labels"]["metrics"]["eval"]["map"] == 40.0
    assert records["fixed_labels"]["random_weights"] is True
    assert records["fixed_labels"]["subset"] is True
    assert records["grid_2"]["status"] == "missing"
    assert "other" not in records
