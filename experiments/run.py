"""Queue the sweeps of experiments/experiments.yaml as DVC experiments, run them, collect them.

    python experiments/run.py                       # training and tiling groups
    python experiments/run.py --only fixed_labels   # one experiment
    python experiments/run.py --group datasets --set dataset.root=/data/VOC2012 --only voc2012
    python experiments/run.py --collect-only        # re-read finished experiments

Each experiment is `dvc exp run --queue -n <name> -S key=value ...` on top of the workspace's
params; `dvc queue start -j <jobs>` runs the queue. The metrics of finished experiments are
read with `dvc exp show --json` into results/experiments.json, and `dvc repro report` then
puts them into the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from repro.config import flatten_params

log = logging.getLogger("experiments")

DEFINITIONS = Path("experiments/experiments.yaml")
OUTPUT = Path("results/experiments.json")
DEFAULT_GROUPS = ("training", "tiling")
METRIC_FILES = {
    "eval": "results/metrics/eval.json",
    "pseudo_labels": "results/metrics/pseudo_labels.json",
    "train": "results/metrics/train.json",
}


def dvc(*args: str, check: bool = True) -> str:
    """Run a DVC command with this interpreter's DVC and return its standard output."""
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def planned_runs(
    definitions: dict, groups: list[str], only: list[str]
) -> list[tuple[str, str, dict]]:
    """(DVC experiment name, definition name, overrides) for every run to queue."""
    unknown = sorted(set(only) - set(definitions))
    if unknown:
        raise SystemExit(
            f"unknown experiments: {', '.join(unknown)}; defined: {', '.join(definitions)}"
        )
    runs = []
    for name, definition in definitions.items():
        if only and name not in only:
            continue
        if not only and definition.get("group") not in groups:
            continue
        overrides = dict(definition.get("set") or {})
        seeds = definition.get("seeds")
        if seeds:
            runs += [(f"{name}_seed{seed}", name, {**overrides, "seed": seed}) for seed in seeds]
        else:
            runs.append((name, name, overrides))
    return runs


def format_value(value) -> str:
    return (
        json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    )


def queue(runs: list[tuple[str, str, dict]], extra: list[str]) -> None:
    for run_name, _, overrides in runs:
        dvc("exp", "remove", run_name, check=False)
        args = ["exp", "run", "--queue", "-n", run_name]
        for key, value in overrides.items():
            args += ["-S", f"{key}={format_value(value)}"]
        for item in extra:
            args += ["-S", item]
        dvc(*args)
        log.info("queued %s", run_name)


def start_queue(jobs: int) -> None:
    """Start `jobs` DVC queue workers in the background.

    The workers inherit the command's output streams. With pipes, as `dvc` above uses, the
    call would only return when the last worker exits, and an idle worker can stay up, so
    the output goes to a temporary file instead.
    """
    command = [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)]
    with tempfile.TemporaryFile(mode="w+") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"`dvc queue start -j {jobs}` failed:\n{output.read()}")


def wait_for_queue(poll_s: float) -> None:
    """Block until the DVC queue has no queued or running task."""
    while True:
        status = dvc("queue", "status")
        active = [
            line
            for line in status.splitlines()
            if " Queued " in f" {line} " or " Running " in f" {line} "
        ]
        if not active:
            return
        log.info("%d experiments queued or running", len(active))
        time.sleep(poll_s)


def collect(runs: dict[str, str]) -> dict:
    """Read params and metrics of the named experiments from `dvc exp show --json`."""
    rows = json.loads(dvc("exp", "show", "--json") or "[]")
    found = {}
    for baseline in rows:
        for experiment in baseline.get("experiments") or []:
            name = experiment.get("name")
            if name not in runs:
                continue
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data") or {}
            params = flatten_params(
                ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            )
            metrics = {}
            for short, path in METRIC_FILES.items():
                content = ((data.get("metrics") or {}).get(path) or {}).get("data")
                if content:
                    metrics[short] = content
            found[name] = {
                "experiment": runs[name],
                "status": "success" if "eval" in metrics else "failed",
                "seed": params.get("seed"),
                "dataset": params.get("dataset.name"),
                "random_weights": params.get("clip.pretrained") == "random",
                "subset": params.get("dataset.holdout") is not None
                or params.get("dataset.max_images") is not None,
                "params": params,
                "metrics": metrics,
            }
    for name in runs:
        if name not in found:
            found[name] = {
                "experiment": runs[name],
                "status": "missing",
                "params": {},
                "metrics": {},
            }
    return found


def write_output(records: dict) -> None:
    previous = json.loads(OUTPUT.read_text()).get("experiments", {}) if OUTPUT.is_file() else {}
    merged = {**previous, **records}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUTPUT.with_suffix(".json.tmp")
    payload = {
        "collected": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "experiments": merged,
    }
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(OUTPUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        help=f"experiment group to run (default: {', '.join(DEFAULT_GROUPS)})",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only this experiment (repeatable)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra `dvc exp run -S` override applied to every experiment",
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel queue workers (default 1)")
    parser.add_argument(
        "--collect-only", action="store_true", help="only collect finished experiments"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not run `dvc repro report` afterwards"
    )
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between queue checks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    definitions = (yaml.safe_load(DEFINITIONS.read_text()) or {}).get("experiments", {})
    only = [name for item in args.only for name in item.split(",") if name]
    runs = planned_runs(definitions, args.group or list(DEFAULT_GROUPS), only)
    if not runs:
        log.error(
            "no experiment selected; groups: %s",
            ", ".join(sorted({d.get("group") for d in definitions.values()})),
        )
        return 2

    if not args.collect_only:
        queue(runs, args.set)
        log.info(
            "running %d experiments; `dvc queue status` in another shell shows progress", len(runs)
        )
        start_queue(args.jobs)
        wait_for_queue(args.poll)
        dvc("queue", "stop", check=False)  # idle workers would otherwise stay up

    records = collect({run_name: name for run_name, name, _ in runs})
    write_output(records)
    failed = [name for name, record in records.items() if record["status"] != "success"]
    log.info("collected %d experiments into %s", len(records) - len(failed), OUTPUT)
    if failed:
        log.warning("no metrics for %s; `dvc queue logs <name>` shows why", ", ".join(failed))
    if not args.no_report:
        dvc("repro", "report")
        log.info("report updated: report/report.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
