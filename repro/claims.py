"""The claims registry: reported numbers, how each is measured here, and the verdict.

experiments/claims.yaml lists the claims. This module validates the file, finds each
claim's measured value in the pipeline's metrics, the ablation tables or the collected
experiments, and compares it with the reported one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from repro import io, paths

CLAIMS_FILE = Path("experiments/claims.yaml")
EXPERIMENTS_FILE = Path("experiments/experiments.yaml")

SOURCES = ("cdul_paper", "repro_study", "derived")
CHECKS = ("value", "at_least", "at_most", "direction", "none")
RUN_FILES = {
    "eval": paths.EVAL_METRICS,
    "pseudo_labels": paths.PSEUDO_METRICS,
    "train": paths.TRAIN_METRICS,
}
REQUIRED = (
    "id",
    "claim",
    "source",
    "where",
    "dataset",
    "split",
    "metric",
    "reported",
    "tolerance",
    "check",
    "verification",
)
# Interval keys that sit beside a metric key in the run's metric files.
RUN_INTERVALS = {
    ("eval", "map"): "ci",
    ("pseudo_labels", "map_final"): "ci_final",
    ("pseudo_labels", "map_global"): "ci_global",
    ("pseudo_labels", "map_local"): "ci_local",
}

NOT_RUN = "not run"


class ClaimError(ValueError):
    """An entry of the claims registry is malformed."""


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    source: str
    where: str
    dataset: str
    split: str
    metric: str
    reported: float | None
    tolerance: float
    check: str
    verification: str
    missing: str = ""
    clip_model: str = ""
    classifier: str = ""
    setting: str = ""
    measure: dict | None = None
    better: dict | None = None
    worse: dict | None = None
    requires: dict | None = None  # a run figure the claim needs, e.g. at least one label update


def _check_measure(entry_id: str, name: str, spec, experiments: set[str]) -> None:
    where = f"claim '{entry_id}': {name}"
    if not isinstance(spec, dict):
        raise ClaimError(
            f"{where} must be a mapping such as {{from: run, file: eval, key: map}}, got {spec!r}"
        )
    kind = spec.get("from")
    if kind == "run":
        if spec.get("file") not in RUN_FILES or not isinstance(spec.get("key"), str):
            raise ClaimError(f"{where} needs file (one of {', '.join(RUN_FILES)}) and key")
    elif kind == "table":
        if not isinstance(spec.get("table"), str) or not isinstance(spec.get("column"), str):
            raise ClaimError(f"{where} needs table and column")
        if not isinstance(spec.get("where", {}), dict):
            raise ClaimError(f"{where}: where must map column names to values")
    elif kind == "experiment":
        if spec.get("experiment") not in experiments:
            raise ClaimError(
                f"{where} names experiment {spec.get('experiment')!r}, which {EXPERIMENTS_FILE} does not define"
            )
        if spec.get("file") not in RUN_FILES or not isinstance(spec.get("key"), str):
            raise ClaimError(f"{where} needs file (one of {', '.join(RUN_FILES)}) and key")
    else:
        raise ClaimError(f"{where}: 'from' is {kind!r}; expected run, table or experiment")


def validate_entry(entry, index: int, experiments: set[str]) -> Claim:
    """Check one registry entry and return it as a Claim; the error names the entry."""
    label = f"entry {index}" + (
        f" ('{entry.get('id')}')" if isinstance(entry, dict) and entry.get("id") else ""
    )
    if not isinstance(entry, dict):
        raise ClaimError(f"{label} of {CLAIMS_FILE} must be a mapping, got {entry!r}")
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        raise ClaimError(f"{label} of {CLAIMS_FILE} lacks {', '.join(missing)}")
    known = {f.name for f in Claim.__dataclass_fields__.values()}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ClaimError(
            f"{label} has unknown fields {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
        )

    if entry["source"] not in SOURCES:
        raise ClaimError(f"{label}: source {entry['source']!r} is not one of {', '.join(SOURCES)}")
    if entry["check"] not in CHECKS:
        raise ClaimError(f"{label}: check {entry['check']!r} is not one of {', '.join(CHECKS)}")
    reported = entry["reported"]
    if reported is not None and (
        isinstance(reported, bool) or not isinstance(reported, (int, float))
    ):
        raise ClaimError(f"{label}: reported must be a number or null, got {reported!r}")
    if reported is None and not entry.get("missing"):
        raise ClaimError(f"{label}: reported is null, so 'missing' must say where to fill it from")
    tolerance = entry["tolerance"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ClaimError(f"{label}: tolerance must be a number >= 0, got {tolerance!r}")

    check = entry["check"]
    if check in ("value", "at_least", "at_most"):
        if reported is None:
            raise ClaimError(f"{label}: check {check} needs a reported value")
        _check_measure(entry["id"], "measure", entry.get("measure"), experiments)
    elif check == "direction":
        for side in ("better", "worse"):
            _check_measure(entry["id"], side, entry.get(side), experiments)
    requires = entry.get("requires")
    if requires is not None and not (
        isinstance(requires, dict)
        and requires.get("file") in RUN_FILES
        and isinstance(requires.get("key"), str)
        and isinstance(requires.get("min"), (int, float))
        and isinstance(requires.get("why"), str)
    ):
        raise ClaimError(
            f"{label}: requires must be a mapping with file (one of {', '.join(RUN_FILES)}), "
            f"key, min and why, got {requires!r}"
        )
    return Claim(
        **{
            **entry,
            "reported": None if reported is None else float(reported),
            "tolerance": float(tolerance),
        }
    )


def load_experiments(path: str | Path = EXPERIMENTS_FILE) -> dict[str, dict]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    experiments = data.get("experiments")
    if not isinstance(experiments, dict):
        raise ClaimError(f"{path} must have a mapping 'experiments' of name to definition")
    return experiments


def load_claims(path: str | Path = CLAIMS_FILE, experiments: set[str] | None = None) -> list[Claim]:
    """Read and validate the registry.

    Raises:
        ClaimError: an entry is malformed; the message names the entry and the field.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("claims")
    if not isinstance(entries, list):
        raise ClaimError(f"{path} must have a list 'claims'")
    if experiments is None:
        experiments = set(load_experiments())
    claims = [validate_entry(entry, i, experiments) for i, entry in enumerate(entries)]
    ids = [c.id for c in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ClaimError(f"{path} repeats claim ids: {', '.join(duplicates)}")
    return claims


@dataclass
class Measured:
    value: float | None = None
    ci: tuple[float, float] | None = None
    std: float | None = None  # over seeds, when an experiment ran with several
    runs: int = 0
    dataset: str | None = None
    random_weights: bool = False
    subset: bool = False  # a re-split or capped image set
    missing: str = ""  # why there is no value, with the command that would produce it


@dataclass
class Evidence:
    """Everything a claim can be measured from."""

    run: dict[str, dict] = field(default_factory=dict)  # metric file name -> contents
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    experiments: dict[str, list[dict]] = field(default_factory=dict)  # name -> runs
    dataset: str | None = None
    random_weights: bool = False
    subset: bool = False
    definitions: dict[str, dict] = field(default_factory=dict)


def _experiment_command(name: str, definitions: dict[str, dict]) -> str:
    group = definitions.get(name, {}).get("group")
    extra = " --set dataset.root=<local copy>" if group == "datasets" else ""
    return f"python experiments/run.py --only {name}{extra}"


def _dataset_command(dataset: str, definitions: dict[str, dict]) -> str:
    for name, definition in definitions.items():
        if definition.get("set", {}).get("dataset.name") == dataset:
            return _experiment_command(name, definitions)
    return (
        f"dvc exp run -S dataset.name={dataset} -S dataset.root=<local copy> "
        "-S dataset.train_split=trainval -S dataset.eval_split=test"
    )


def _runs_on_dataset(name: str, evidence: Evidence) -> bool:
    """Tell whether experiment `name` only moves the pipeline to the dataset of this run."""
    changes = evidence.definitions.get(name, {}).get("set") or {}
    return (
        changes.get("dataset.name") == evidence.dataset
        and evidence.dataset is not None
        and all(key.startswith("dataset.") for key in changes)
    )


def measure(spec: dict, claim: Claim, evidence: Evidence) -> Measured:
    """Find the number a measure spec names; `missing` explains why when there is none."""
    kind = spec["from"]
    if (
        kind in ("run", "table")
        and evidence.dataset != claim.dataset
        and claim.check != "direction"
    ):
        return Measured(
            missing=f"{NOT_RUN} on {claim.dataset}: "
            f"{_dataset_command(claim.dataset, evidence.definitions)}"
        )

    if kind == "run":
        data = evidence.run.get(spec["file"])
        if data is None or data.get(spec["key"]) is None:
            return Measured(missing=f"{NOT_RUN}: dvc repro")
        ci = data.get(RUN_INTERVALS.get((spec["file"], spec["key"]), ""))
        return Measured(
            float(data[spec["key"]]),
            tuple(ci) if ci else None,
            None,
            1,
            evidence.dataset,
            evidence.random_weights,
            evidence.subset,
        )

    if kind == "table":
        table = evidence.tables.get(spec["table"])
        if table is None:
            return Measured(missing=f"{NOT_RUN}: dvc repro ablate")
        rows = table
        for column, value in spec.get("where", {}).items():
            rows = rows[rows[column] == value]
        if len(rows) != 1 or pd.isna(rows.iloc[0][spec["column"]]):
            return Measured(
                missing=f"{NOT_RUN}: no single row of {spec['table']} matches {spec.get('where')}"
            )
        row = rows.iloc[0]
        ci = None
        if (
            spec["column"] in ("map_final", "map")
            and "ci_low" in row
            and not pd.isna(row["ci_low"])
        ):
            ci = (float(row["ci_low"]), float(row["ci_high"]))
        return Measured(
            float(row[spec["column"]]),
            ci,
            None,
            1,
            evidence.dataset,
            evidence.random_weights,
            evidence.subset,
        )

    runs = evidence.experiments.get(spec["experiment"], [])
    if not runs and _runs_on_dataset(spec["experiment"], evidence):
        # The pipeline itself ran on the experiment's dataset, so its own metrics measure the claim.
        return measure({"from": "run", "file": spec["file"], "key": spec["key"]}, claim, evidence)
    values = [r["metrics"].get(spec["file"], {}).get(spec["key"]) for r in runs]
    values = [float(v) for v in values if v is not None]
    if not values:
        return Measured(
            missing=f"{NOT_RUN}: {_experiment_command(spec['experiment'], evidence.definitions)}"
        )
    mean = sum(values) / len(values)
    std = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if len(values) > 1
        else None
    )
    first = runs[0]
    return Measured(
        mean,
        None,
        std,
        len(values),
        first.get("dataset"),
        first.get("random_weights", False),
        first.get("subset", False),
    )


def verdict(
    check: str,
    reported: float | None,
    tolerance: float,
    measured: float | None,
    worse: float | None = None,
) -> str:
    """Compare a measured value with the reported one under the claim's check.

    Returns 'reproduced' / 'not reproduced' (value), 'holds' / 'does not hold' (at_least,
    at_most, direction), 'no reported value', 'not run' or 'not checkable'.
    """
    if check == "none":
        return "not checkable"
    if check == "direction":
        if measured is None or worse is None:
            return NOT_RUN
        return "holds" if measured > worse else "does not hold"
    if reported is None:
        return "no reported value"
    if measured is None:
        return NOT_RUN
    # A small epsilon keeps values exactly at the tolerance edge inside despite float rounding.
    epsilon = 1e-9 * max(1.0, abs(reported))
    if check == "value":
        return "reproduced" if abs(measured - reported) <= tolerance + epsilon else "not reproduced"
    if check == "at_least":
        return "holds" if measured >= reported - tolerance - epsilon else "does not hold"
    if check == "at_most":
        return "holds" if measured <= reported + tolerance + epsilon else "does not hold"
    raise ValueError(f"unknown check {check!r}")


def caveats(claim: Claim, *measures: Measured) -> list[str]:
    notes = []
    if any(m.random_weights for m in measures):
        notes.append("random weights")
    if any(m.subset for m in measures):
        notes.append("re-split or capped image set")
    datasets = {m.dataset for m in measures if m.dataset}
    if datasets and datasets != {claim.dataset}:
        notes.append(f"measured on {', '.join(sorted(datasets))}, claim is on {claim.dataset}")
    return notes


def _format(measured: Measured) -> str:
    if measured.value is None:
        return measured.missing
    text = f"{measured.value:.4g}" if abs(measured.value) < 1 else f"{measured.value:.2f}"
    if measured.std is not None:
        text += f" ± {measured.std:.2f} (n={measured.runs})"
    if measured.ci is not None:
        text += f" [{measured.ci[0]:.2f}, {measured.ci[1]:.2f}]"
    return text


def assess(claim: Claim, evidence: Evidence) -> dict:
    """Build one row of the claims table: reported, reproduced, interval, verdict, caveats."""
    if claim.check == "none":
        return _row(claim, claim.missing, "not checkable")
    unmet = _unmet_requirement(claim, evidence)
    if unmet:
        return _row(claim, unmet, "not checkable")
    if claim.check == "direction":
        better, worse = (
            measure(claim.better, claim, evidence),
            measure(claim.worse, claim, evidence),
        )
        result = verdict("direction", claim.reported, claim.tolerance, better.value, worse.value)
        missing = better.missing or worse.missing
        display = missing or f"{_format(better)} vs {_format(worse)}"
        notes = caveats(claim, better, worse) if not missing else []
    else:
        measured = measure(claim.measure, claim, evidence)
        result = verdict(claim.check, claim.reported, claim.tolerance, measured.value)
        display = _format(measured)
        notes = caveats(claim, measured) if measured.value is not None else []
    if notes and "random weights" in notes and result != NOT_RUN:
        result = f"not comparable ({result} on random weights)"
    return _row(claim, display, result, "; ".join(notes))


def _row(claim: Claim, reproduced: str, verdict_text: str, caveats_text: str = "") -> dict:
    """Build one row of the claims table."""
    return {
        "id": claim.id,
        "metric": claim.metric,
        "reported": _reported(claim),
        "reproduced": reproduced,
        "verdict": verdict_text,
        "caveats": caveats_text,
        "source": _source(claim),
    }


def _unmet_requirement(claim: Claim, evidence: Evidence) -> str:
    """Return why this run cannot test the claim, or '' when it can (or cannot tell)."""
    if claim.requires is None:
        return ""
    value = evidence.run.get(claim.requires["file"], {}).get(claim.requires["key"])
    if value is None or value >= claim.requires["min"]:
        return ""
    return f"{claim.requires['why']} ({claim.requires['key']} = {value:g})"


def _reported(claim: Claim) -> str:
    if claim.check == "direction":
        return "direction: first > second"
    if claim.reported is None:
        return f"null ({claim.missing})"
    bound = {"at_least": "≥ ", "at_most": "≤ "}.get(claim.check, "")
    return f"{bound}{claim.reported:g} (tolerance {claim.tolerance:g})"


def _source(claim: Claim) -> str:
    return f"{claim.source}: {claim.where}; {claim.verification}"


def load_evidence(dataset: str | None, random_weights: bool, subset: bool) -> Evidence:
    """Read whatever of the run's metrics, tables and experiments exists."""
    evidence = Evidence(dataset=dataset, random_weights=random_weights, subset=subset)
    for name, path in RUN_FILES.items():
        if path.is_file():
            evidence.run[name] = io.read_json(path)
    if paths.TABLES.is_dir():
        for table in paths.TABLES.glob("*.csv"):
            evidence.tables[table.stem] = pd.read_csv(table)
    if EXPERIMENTS_FILE.is_file():
        evidence.definitions = load_experiments()
    if paths.EXPERIMENTS.is_file():
        collected = io.read_json(paths.EXPERIMENTS).get("experiments", {})
        for name, record in collected.items():
            base = record.get("experiment", name)
            if record.get("status") == "success":
                evidence.experiments.setdefault(base, []).append(record)
    return evidence


def claims_table(claims: list[Claim], evidence: Evidence) -> pd.DataFrame:
    return pd.DataFrame([assess(claim, evidence) for claim in claims])
