"""Stage report: report/report.md with claims and verdicts, ablations, figures and provenance.

Every section reads files the other stages wrote; a section whose inputs do not exist says
which command produces them. Runs with random CLIP weights are marked on every table.
"""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from repro import io, paths, stage
from repro import report_figures as figures
from repro.claims import claims_table, load_claims, load_evidence
from repro.config import RANDOM_WEIGHTS_NOTE, Config, flatten_params

log = logging.getLogger(__name__)

PAPER_SETTING = Path("experiments/paper_setting.yaml")
STAGES = ("prepare", "tile", "embed", "aggregate", "ablate", "train", "evaluate")


def git_commit() -> str:
    """Return the checked-out commit, with '+changes' when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+changes" if dirty else "")


def markdown_table(frame: pd.DataFrame) -> str:
    """Render a DataFrame as a GitHub markdown table."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def interval(low, high) -> str:
    if low is None or pd.isna(low):
        return "n/a"
    return f"[{low:.2f}, {high:.2f}]"


class Report:
    """Collects the report's sections and figures while it is built into `folder`."""

    def __init__(self, config: Config, folder: Path):
        self.config = config
        self.folder = folder
        self.figures = folder / paths.FIGURES.name
        self.figures.mkdir(parents=True, exist_ok=True)
        self.dataset = io.read_json(paths.DATASET_INFO)
        self.manifest = io.read_json(paths.EMBEDDINGS / "manifest.json")
        self.random = bool(self.manifest["random_weights"])
        self.subset = self.dataset["holdout"] is not None or self.dataset["max_images"] is not None
        self.lines: list[str] = []

    def caption(self, text: str) -> str:
        """Format a table or figure caption, marked when CLIP had random weights."""
        return f"*{text}*" + (f" **({RANDOM_WEIGHTS_NOTE})**" if self.random else "")

    def figure(self, name: str) -> Path:
        return self.figures / name

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def file_hash(fingerprint: Path) -> str:
    """Return ' (SHA-256 <first 12 digits>)' for a local weight file, else ''."""
    if not fingerprint.is_file():
        return ""
    digest = io.read_json(fingerprint).get("sha256")
    return f" (SHA-256 {digest[:12]})" if digest else ""


def run_section(report: Report, pseudo: dict, train: dict) -> None:
    dataset, manifest = report.dataset, report.manifest
    if dataset["holdout"] is not None:
        pooled = list(dict.fromkeys([dataset["splits"]["train"], dataset["splits"]["eval"]]))
        split = (
            f"split{'s' if len(pooled) > 1 else ''} {' and '.join(pooled)} pooled, "
            f"{dataset['holdout']:.0%} held out for evaluation by a seeded hash (not the paper's "
            "splits)"
        )
    else:
        split = f"train = {dataset['splits']['train']}, eval = {dataset['splits']['eval']}"
    extras = []
    if dataset["max_images"]:
        extras.append(f"at most {dataset['max_images']} images per split")
    if dataset.get("skipped_bad_images"):
        extras.append(f"{len(dataset['skipped_bad_images'])} undecodable or missing images skipped")
    if dataset.get("missing_images"):
        extras.append(f"{dataset['missing_images']} listed images missing on disk")
    backbone_weights = train["backbone_weights"]
    if backbone_weights == "none":
        backbone_weights = "random initialisation, no pretrained weights"
    backbone_weights += file_hash(paths.CLASSIFIER_WEIGHTS)
    report.add(
        "## Run",
        "",
        f"- dataset: {dataset['name']} at `{dataset['root']}`; {split}; {dataset['images']['train']} "
        f"train and {dataset['images']['eval']} eval images" + "".join(f"; {e}" for e in extras),
        f"- CLIP: {manifest['model']}, weights {manifest['weights']}"
        f"{file_hash(paths.CLIP_WEIGHTS)}, {manifest['grid']}x{manifest['grid']} "
        f"snippets and the global view, {manifest['image_size']} px ({manifest['fit']})",
        f"- pseudo labels: aggregator {pseudo['aggregator']}, threshold {pseudo['threshold']}, lambda "
        f"{pseudo['lam']}, temperature {pseudo['temperature']} (scale {pseudo['scale']:.3g})",
        f"- classifier: {train['backbone']} ({backbone_weights}), loss "
        f"{train['loss']}, {train['epochs']} epochs"
        + (
            f", {train['label_update_epochs']} label-update epochs"
            if "label_update_epochs" in train
            else ""
        ),
        f"- seed {report.config.seed}; git commit {git_commit()}; report written "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
    )


def claims_section(report: Report) -> None:
    claims = load_claims()
    evidence = load_evidence(report.dataset["name"], report.random, report.subset)
    table = claims_table(claims, evidence)
    report.add(
        "## Claims",
        "",
        report.caption(
            "Each reported number beside its reproduction. Reproduced values show the "
            "bootstrap 95% interval in brackets, or ± the standard deviation over seeds. "
            "Sources and checks: experiments/claims.yaml."
        ),
        "",
        markdown_table(table),
        "",
    )


def results_section(report: Report, pseudo: dict, train: dict, evaluation: dict) -> None:
    ci_eval = evaluation.get("ci") or [None, None]
    rows = [
        (
            "pseudo labels, global view only",
            "train",
            pseudo["map_global"],
            interval(*(pseudo.get("ci_global") or [None, None])),
            "initial CLIP labels",
        ),
        (
            "pseudo labels, aggregated snippets",
            "train",
            pseudo["map_local"],
            interval(*(pseudo.get("ci_local") or [None, None])),
            "initial CLIP labels",
        ),
        (
            "pseudo labels, final (global + snippets)",
            "train",
            pseudo["map_final"],
            interval(*(pseudo.get("ci_final") or [None, None])),
            "initial CLIP labels",
        ),
        (
            "pseudo labels after gradient alignment",
            "train",
            train["pseudo_labels_map_final"],
            "n/a",
            f"after {train['epochs']} epochs"
            + (
                f", {train['label_update_epochs']} of them updating the labels"
                if "label_update_epochs" in train
                else ""
            ),
        ),
        (
            "classifier, last epoch (headline)",
            "eval",
            evaluation["map"],
            interval(*ci_eval),
            "selected without ground truth",
        ),
        (
            "classifier, best epoch",
            "eval",
            train["eval_map_best_epoch"],
            "n/a",
            f"epoch {train['best_epoch']}, selected with ground truth",
        ),
    ]
    table = pd.DataFrame(rows, columns=["quantity", "split", "mAP (%)", "95% interval", "note"])
    report.add(
        "## Results",
        "",
        report.caption(
            "mAP of this run. 95% intervals: bias-corrected bootstrap over images. Where "
            "nearly all resamples fall on one side of the estimate (few images per class), "
            "the interval is widened to reach it and the stage logs a warning."
        ),
        "",
        markdown_table(table),
        "",
    )
    excluded = evaluation.get("classes_excluded") or []
    if excluded:
        report.add(
            f"AP is undefined for classes without positives in the eval split, so they are left "
            f"out of the mAP: {', '.join(excluded)}.",
            "",
        )


def ablation_section(report: Report) -> None:
    tables = (
        {p.stem: pd.read_csv(p) for p in paths.TABLES.glob("*.csv")}
        if paths.TABLES.is_dir()
        else {}
    )
    report.add("## Ablations of the pseudo labels", "")
    if not tables:
        report.add("Not run: `dvc repro ablate` computes them from the CLIP cache.", "")
        return
    title = f"Pseudo-label mAP against the threshold, {report.dataset['name']} train split"
    path = report.figure("threshold_sweep.png")
    figures.threshold_curves(
        tables["threshold_sweep"],
        tables["aggregators"],
        path,
        title + (figures.RANDOM_SUFFIX if report.random else ""),
    )
    stats = tables["softmax_stats"].drop(columns=["weights"])
    report.add(
        "### Threshold and temperature",
        "",
        f"![{title}](figures/{path.name})",
        "",
        report.caption(
            "How peaked each temperature's softmax is: a threshold can only select snippets "
            "whose best probability reaches it."
        ),
        "",
        markdown_table(stats),
        "",
    )

    aggregators = tables["aggregators"]
    report.add("### Aggregator and lambda", "")
    for temperature, rows in aggregators.groupby("temperature", sort=False):
        lam = rows["lam"].astype(object).where(rows["lam"].notna(), "-")
        pivot = rows.assign(lam=lam).pivot_table(
            index="aggregator", columns="lam", values="map_final", aggfunc="first", sort=False
        )
        pivot.columns = [f"λ = {c}" if c != "-" else "no snippets" for c in pivot.columns]
        report.add(
            report.caption(
                f"Final pseudo-label mAP, temperature {temperature}, threshold "
                f"{report.config.threshold} for cdul."
            ),
            "",
            markdown_table(pivot.reset_index()),
            "",
        )

    prompts = tables["prompts"].drop(columns=["weights"])
    prompts["95% interval"] = [
        interval(lo, hi) for lo, hi in zip(prompts.pop("ci_low"), prompts.pop("ci_high"))
    ]
    normalisation = tables["normalisation"].drop(columns=["weights"])
    normalisation["95% interval"] = [
        interval(lo, hi)
        for lo, hi in zip(normalisation.pop("ci_low"), normalisation.pop("ci_high"))
    ]
    report.add(
        "### Prompts",
        "",
        report.caption(
            "Class names and templates. Intervals here come from "
            f"{report.config.ablation.bootstrap} image resamples, those of the Results table "
            f"from {report.config.eval.bootstrap}, so the two can differ for the same row."
        ),
        "",
        markdown_table(prompts),
        "",
        "### Normalisation baseline",
        "",
        report.caption(
            "SPARC's training-free 'normalise only' scores (z-scored per image, then "
            "per class) against CLIP's softmax."
        ),
        "",
        markdown_table(normalisation),
        "",
    )

    title = "AP per class across configurations (train split)"
    path = report.figure("per_class_configurations.png")
    figures.per_class_heatmap(
        tables["per_class_ap"], path, title + (figures.RANDOM_SUFFIX if report.random else "")
    )
    report.add("### Per-class AP across configurations", "", f"![{title}](figures/{path.name})", "")


def training_section(report: Report) -> None:
    folder = paths.TRAIN_LOG / "plots" / "metrics"
    series = {}
    for name in ("pseudo_labels/map", "eval/map", "train/loss", "train/labels_updated"):
        tsv = folder / f"{name}.tsv"
        if tsv.is_file():
            data = pd.read_csv(tsv, sep="\t")
            series[name] = data.set_index("step")[data.columns[-1]]
    report.add("## Training", "")
    if not series:
        report.add("No per-epoch log: `dvc repro train` writes it.", "")
        return
    history = pd.DataFrame(series).reset_index(names="step")
    history["epoch"] = history["step"] + 1
    title = "Gradient alignment: mAP and loss per epoch"
    path = report.figure("training_curves.png")
    figures.training_curves(history, path, title + (figures.RANDOM_SUFFIX if report.random else ""))
    report.add(f"![{title}](figures/{path.name})", "")


def experiments_section(report: Report, evaluation: dict, pseudo: dict) -> None:
    collected = (
        io.read_json(paths.EXPERIMENTS).get("experiments", {})
        if paths.EXPERIMENTS.is_file()
        else {}
    )
    definitions = (yaml.safe_load(Path("experiments/experiments.yaml").read_text()) or {}).get(
        "experiments", {}
    )
    report.add("## Experiments", "")
    rows = []
    for name, definition in definitions.items():
        runs = [
            r
            for r in collected.values()
            if r.get("experiment") == name and r.get("status") == "success"
        ]
        if name == "seeds" and runs:
            runs = [{"metrics": {"eval": evaluation, "pseudo_labels": pseudo}}, *runs]
        changes = ", ".join(f"{k}={v}" for k, v in (definition.get("set") or {}).items()) or "none"
        if not runs:
            extra = (
                " --set dataset.root=<local copy>" if definition.get("group") == "datasets" else ""
            )
            rows.append(
                (
                    name,
                    definition.get("description", ""),
                    changes,
                    f"not run: `python experiments/run.py --only {name}{extra}`",
                    "",
                    0,
                )
            )
            continue
        eval_maps = pd.Series([r["metrics"].get("eval", {}).get("map") for r in runs], dtype=float)
        pseudo_maps = pd.Series(
            [r["metrics"].get("pseudo_labels", {}).get("map_final") for r in runs], dtype=float
        )
        rows.append(
            (
                name,
                definition.get("description", ""),
                changes,
                _mean_std(eval_maps),
                _mean_std(pseudo_maps),
                len(runs),
            )
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "experiment",
            "description",
            "params changed",
            "classifier mAP (eval)",
            "initial pseudo-label mAP (train)",
            "runs",
        ],
    )
    report.add(
        report.caption(
            "DVC experiments queued by experiments/run.py; mean ± standard deviation where "
            "an experiment ran with several seeds. Once the seeds experiment has run, its row "
            "also counts this run's seed."
        ),
        "",
        markdown_table(table),
        "",
    )


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def per_class_section(report: Report) -> None:
    per_class = pd.read_csv(paths.PER_CLASS_AP)
    title = f"Classifier AP per class, {report.dataset['name']} eval split"
    path = report.figure("per_class_ap.png")
    figures.per_class_bars(
        per_class, path, title + (figures.RANDOM_SUFFIX if report.random else "")
    )
    report.add(
        "## Per-class AP of the classifier",
        "",
        f"![{title}](figures/{path.name})",
        "",
        report.caption("AP per class on the eval split."),
        "",
        markdown_table(per_class.rename(columns={"ap": "AP (%)"})),
        "",
    )


def cost_section(report: Report) -> None:
    rows = []
    for name in STAGES:
        path = paths.STAGE_TIMES / f"{name}.json"
        if not path.is_file():
            continue
        timing = io.read_json(path)
        device = timing.get("device", "-")
        gpu_hours = timing["wall_s"] / 3600 if str(device).startswith("cuda") else None
        rows.append((name, timing["wall_s"], device, timing.get("views_per_s"), gpu_hours))
    if not rows:
        return
    table = pd.DataFrame(rows, columns=["stage", "wall time (s)", "device", "views/s", "GPU-hours"])
    machine = (
        io.read_json(paths.STAGE_TIMES / "embed.json").get("machine", {})
        if (paths.STAGE_TIMES / "embed.json").is_file()
        else {}
    )
    described = ", ".join(f"{k} {v}" for k, v in machine.items())
    report.add(
        "## Cost",
        "",
        report.caption(f"Wall time of each stage's last run ({described})."),
        "",
        markdown_table(table),
        "",
    )


def as_yaml(value) -> str:
    """Spell a param value as params.yaml does: null, false, 0.5, RN50x64."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def deviations_section(report: Report) -> None:
    """List the params that differ from CDUL's known setting, and those CDUL does not state."""
    paper = yaml.safe_load(PAPER_SETTING.read_text()) if PAPER_SETTING.is_file() else {}
    flat = flatten_params(report.config.to_dict())
    flat["prompts.templates.0"] = report.config.prompts.templates[0]
    differs, unknown = [], []
    for key, entry in (paper.get("settings") or {}).items():
        value = flat.get(key)
        source = entry.get("source", "")
        if entry.get("cdul") is not None:
            if value != entry["cdul"]:
                differs.append(
                    f"- `{key}` is {as_yaml(value)}; CDUL used {as_yaml(entry['cdul'])}. "
                    f"Source: {source}."
                )
        else:
            repro = entry.get("repro")
            same = (
                ", as in the reproduction"
                if repro == value
                else f"; the reproduction used {as_yaml(repro)}"
            )
            unknown.append(f"- `{key}` is {as_yaml(value)}{same}. Source: {source}.")
    report.add(
        "## Deviations from the paper",
        "",
        "Generated from this run's params and experiments/paper_setting.yaml.",
        "",
    )
    report.add(
        "### Params that differ from CDUL's known setting",
        "",
        *(differs or ["- none"]),
        "",
        "### Params CDUL's readable text does not state",
        "",
        *(unknown or ["- none"]),
        "",
        "### Differences that are not params",
        "",
        *[f"- {item}" for item in (paper.get("fixed") or [])],
        "",
    )


def build_report(config: Config, folder: Path) -> str:
    """Render the report's markdown and write its figures into `folder`/figures."""
    report = Report(config, folder)
    pseudo = io.read_json(paths.PSEUDO_METRICS)
    train = io.read_json(paths.TRAIN_METRICS)
    evaluation = io.read_json(paths.EVAL_METRICS)

    report.add("# CDUL reproduction report", "")
    if report.random:
        report.add(
            f"> **{RANDOM_WEIGHTS_NOTE}.** CLIP ran with random weights (`clip.pretrained: random`); "
            "every number below only checks the pipeline.",
            "",
        )
    run_section(report, pseudo, train)
    claims_section(report)
    results_section(report, pseudo, train, evaluation)
    ablation_section(report)
    training_section(report)
    experiments_section(report, evaluation, pseudo)
    per_class_section(report)
    cost_section(report)
    deviations_section(report)
    report.add(
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(),
        "```",
    )
    return report.text()


def report(config: Config) -> dict:
    # The folder is built beside report/ and renamed into place, so a killed run never leaves
    # a report.md next to stale or missing figures.
    with io.atomic_dir(paths.REPORT.parent) as folder:
        text = build_report(config, folder)
        (folder / paths.REPORT.name).write_text(text)
    log.info("wrote %s", paths.REPORT)
    return {}


def main() -> None:
    stage.run("report", report)


if __name__ == "__main__":
    main()
