"""Figures of the report, each saved as a PNG by seaborn and matplotlib (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

RANDOM_SUFFIX = " (random weights)"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def per_class_bars(per_class: pd.DataFrame, path: Path, title: str) -> None:
    """Plot AP per class as horizontal bars, best first, leaving out classes without an AP."""
    data = per_class.dropna(subset=["ap"]).sort_values("ap", ascending=False)
    fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.28 * len(data) + 1.0)))
    sns.barplot(data=data, x="ap", y="class", ax=ax, color="#4C72B0")
    ax.set_xlabel("AP (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def threshold_curves(
    sweep: pd.DataFrame, aggregators: pd.DataFrame, path: Path, title: str
) -> None:
    """Plot the final pseudo-label mAP against the threshold, one panel per temperature.

    The band is the bootstrap 95% interval. Dashed lines mark the global view alone and the
    max and mean snippet aggregators at lambda 0, which use no threshold.
    """
    temperatures = list(dict.fromkeys(sweep["temperature"]))
    fig, axes = plt.subplots(
        1, len(temperatures), figsize=(5.2 * len(temperatures), 3.8), squeeze=False
    )
    for ax, temperature in zip(axes[0], temperatures):
        rows = sweep[sweep["temperature"] == temperature]
        ax.plot(
            rows["threshold"], rows["map_final"], marker="o", color="#C44E52", label="CDUL final"
        )
        ax.plot(
            rows["threshold"],
            rows["map_local"],
            marker=".",
            color="#DD8452",
            label="CDUL snippets only",
        )
        if rows["ci_low"].notna().any():
            ax.fill_between(
                rows["threshold"], rows["ci_low"], rows["ci_high"], color="#C44E52", alpha=0.15
            )
        references = {"global view": rows["map_global"].iloc[0]}
        others = aggregators[
            (aggregators["temperature"] == temperature) & (aggregators["lam"] == 0.0)
        ]
        for name in ("max", "mean"):
            match = others[others["aggregator"] == name]
            if len(match):
                references[f"{name} over snippets"] = match["map_final"].iloc[0]
        for (name, value), colour in zip(references.items(), ("#4C72B0", "#55A868", "#8172B3")):
            ax.axhline(value, linestyle="--", color=colour, label=name, linewidth=1)
        ax.set_title(f"temperature: {temperature}", fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_ylabel("pseudo-label mAP (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def per_class_heatmap(per_class: pd.DataFrame, path: Path, title: str) -> None:
    """Plot AP per class (rows) and configuration (columns) as a heatmap."""
    table = per_class.pivot(index="class", columns="configuration", values="ap")
    table = table[list(dict.fromkeys(per_class["configuration"]))]
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * table.shape[1], max(3.0, 0.3 * len(table) + 1.5)))
    sns.heatmap(
        table,
        annot=True,
        fmt=".0f",
        cmap="viridis",
        vmin=0,
        vmax=100,
        ax=ax,
        cbar_kws={"label": "AP (%)"},
    )
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_xticklabels(
        [label.get_text().replace(" (", "\n(") for label in ax.get_xticklabels()],
        rotation=0,
        fontsize=8,
    )
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def training_curves(history: pd.DataFrame, path: Path, title: str) -> None:
    """Plot pseudo-label mAP (train split), classifier mAP (eval split) and the loss per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if "pseudo_labels/map" in history:
        left.plot(
            history["epoch"],
            history["pseudo_labels/map"],
            marker="o",
            label="pseudo labels (train)",
        )
    if "eval/map" in history:
        evaluated = history.dropna(subset=["eval/map"])
        left.plot(evaluated["epoch"], evaluated["eval/map"], marker="s", label="classifier (eval)")
    updated = []
    if "train/labels_updated" in history:
        updated = history.loc[history["train/labels_updated"] > 0, "epoch"].tolist()
    for epoch in updated:
        left.axvline(epoch, color="grey", alpha=0.2, linewidth=3)
    left.set_xlabel("epoch")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("mAP (%)")
    left.legend(fontsize=8)
    left.set_title(
        "mAP per epoch " + ("(grey: label-update epochs)" if updated else "(no label update)"),
        fontsize=10,
    )
    if "train/loss" in history:
        right.plot(history["epoch"], history["train/loss"], marker="o", color="#C44E52")
    right.set_xlabel("epoch")
    right.set_ylabel("training loss")
    right.set_title("loss", fontsize=10)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
