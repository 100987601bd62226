"""Figures: the per-tag controllability bar chart (APRON's Figure 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

from common.files import atomic_path

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_tag_deltas(per_tag: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One bar per tag: Δ@k(τ) = NDCG_t^F - NDCG_t^M, sorted, coloured by tag group. Written
    atomically (temp file + rename)."""
    path = Path(path)
    rows = sorted(per_tag, key=lambda row: row["delta"], reverse=True)
    groups = sorted({str(row.get("group", "")) for row in rows})
    palette = plt.get_cmap("tab10")
    colour = {group: palette(i % 10) for i, group in enumerate(groups)}

    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 4.5))
    ax.bar(
        range(len(rows)),
        [row["delta"] for row in rows],
        color=[colour[str(row.get("group", ""))] for row in rows],
    )
    ax.set_xticks(range(len(rows)), [str(row["tag"]) for row in rows], rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("Δ@20 (NDCG_t full − dropped)")
    ax.set_title(title, fontsize=10)
    if len(groups) > 1:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colour[g]) for g in groups]
        ax.legend(handles, groups, fontsize=8, title="tag group")
    fig.tight_layout()

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
