"""Stage report: report/report.md with the run's params, metrics, figures and provenance."""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from repro import io, paths, stage  # noqa: E402
from repro.config import RANDOM_WEIGHTS_NOTE, Config  # noqa: E402

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The checked-out commit, with '+changes' when the work tree differs from it."""
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
    """Render a DataFrame as a GitHub markdown table (no tabulate dependency)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def per_class_figure(per_class: pd.DataFrame, path: Path, title: str) -> None:
    """Horizontal bar chart of AP per class, sorted, with excluded classes left out."""
    data = per_class.dropna(subset=["ap"]).sort_values("ap", ascending=False)
    height = max(3.0, 0.28 * len(data) + 1.0)
    fig, ax = plt.subplots(figsize=(6.5, height))
    sns.barplot(data=data, x="ap", y="class", ax=ax, color="#4C72B0")
    ax.set_xlabel("AP (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def results_section(pseudo: dict, train: dict, evaluation: dict) -> str:
    rows = [
        ("pseudo labels, global view only", "train", pseudo["map_global"], "initial CLIP labels"),
        ("pseudo labels, aggregated snippets", "train", pseudo["map_local"], "initial CLIP labels"),
        (
            "pseudo labels, final (global + snippets)",
            "train",
            pseudo["map_final"],
            "initial CLIP labels",
        ),
        (
            "pseudo labels after gradient alignment",
            "train",
            train["pseudo_labels_map_final"],
            f"after {train['epochs']} epochs",
        ),
        (
            "classifier, last epoch (headline)",
            "eval",
            evaluation["map"],
            "selected without ground truth",
        ),
        (
            "classifier, best epoch",
            "eval",
            train["eval_map_best_epoch"],
            f"epoch {train['best_epoch']}, selected with ground truth",
        ),
    ]
    table = pd.DataFrame(rows, columns=["quantity", "split", "mAP (%)", "note"])
    lines = ["## Results", "", markdown_table(table), ""]
    excluded = evaluation.get("classes_excluded") or []
    if excluded:
        lines += [
            f"AP is undefined for classes without positives in the eval split and they are "
            f"left out of the mAP: {', '.join(excluded)}.",
            "",
        ]
    return "\n".join(lines)


def timing_section() -> str:
    rows = []
    for name in ("prepare", "tile", "embed", "aggregate", "train", "evaluate"):
        path = paths.STAGE_TIMES / f"{name}.json"
        if path.is_file():
            timing = io.read_json(path)
            rows.append(
                (name, timing["wall_s"], timing.get("device", "-"), timing.get("views_per_s"))
            )
    if not rows:
        return ""
    table = pd.DataFrame(rows, columns=["stage", "wall time (s)", "device", "views/s"])
    return "\n".join(["## Cost", "", markdown_table(table), ""])


def build_report(config: Config, folder: Path) -> str:
    """Render the report's markdown and write its figures into `folder`/figures."""
    pseudo = io.read_json(paths.PSEUDO_METRICS)
    train = io.read_json(paths.TRAIN_METRICS)
    evaluation = io.read_json(paths.EVAL_METRICS)
    dataset = io.read_json(paths.DATASET_INFO)
    manifest = io.read_json(paths.EMBEDDINGS / "manifest.json")
    per_class = pd.read_csv(paths.PER_CLASS_AP)

    random_weights = manifest["random_weights"]
    figures = folder / paths.FIGURES.name
    figures.mkdir(parents=True, exist_ok=True)
    figure = figures / "per_class_ap.png"
    title = f"Classifier AP per class, {dataset['name']} eval split"
    per_class_figure(per_class, figure, title + (" (random weights)" if random_weights else ""))

    split_note = (
        f"official splits re-pooled, {dataset['holdout']:.0%} held out for evaluation by a seeded hash "
        "(not the paper's splits)"
        if dataset["holdout"] is not None
        else f"train = {dataset['splits']['train']}, eval = {dataset['splits']['eval']}"
    )
    lines = ["# CDUL reproduction report", ""]
    if random_weights:
        lines += [
            f"> **{RANDOM_WEIGHTS_NOTE}.** CLIP ran with random weights "
            "(`clip.pretrained: random`); every number below only checks the pipeline.",
            "",
        ]
    lines += [
        "## Run",
        "",
        f"- dataset: {dataset['name']} at `{dataset['root']}`; {split_note}; "
        f"{dataset['images']['train']} train and {dataset['images']['eval']} eval images"
        + (f", at most {dataset['max_images']} per split" if dataset["max_images"] else "")
        + (
            f"; {len(dataset['skipped_bad_images'])} undecodable or missing images skipped"
            if dataset["skipped_bad_images"]
            else ""
        ),
        f"- CLIP: {manifest['model']}, weights {manifest['weights']}, {manifest['grid']}x{manifest['grid']} "
        f"snippets + global view, {manifest['image_size']} px ({manifest['fit']})",
        f"- pseudo labels: aggregator {pseudo['aggregator']}, threshold {pseudo['threshold']}, "
        f"lambda {pseudo['lam']}, temperature {pseudo['temperature']} (scale {pseudo['scale']:.3g})",
        f"- classifier: {train['backbone']} ({train['backbone_weights']}), loss {train['loss']}, "
        f"{train['epochs']} epochs",
        f"- seed {config.seed}; git commit {git_commit()}; "
        f"report written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        results_section(pseudo, train, evaluation),
        "## Per-class AP",
        "",
        f"![{title}](figures/{figure.name})",
        "",
        markdown_table(per_class.rename(columns={"ap": "AP (%)"})),
        "",
        timing_section(),
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def report(config: Config) -> dict:
    # The whole folder is built beside report/ and renamed into place, so a killed run never
    # leaves a report.md next to stale or missing figures.
    with io.atomic_dir(paths.REPORT.parent) as folder:
        text = build_report(config, folder)
        (folder / paths.REPORT.name).write_text(text)
    log.info("wrote %s", paths.REPORT)
    return {}


def main() -> None:
    stage.run("report", report)


if __name__ == "__main__":
    main()
