"""The faithfulness rows of :mod:`visualization.ranking` as Markdown, with the one table writer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from visualization import tables
from visualization.faithfulness import BASELINES, CHECKS, CURVES, METRICS, RANKED

__all__ = ["leaderboard_table", "summary_table"]


def summary_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows of :func:`visualization.ranking.summary_rows` as a Markdown table, ``mean [low, high]`` per cell."""
    columns = [*(m for m in (*METRICS, *CHECKS) if m in rows[0]),
               *(f"{c}_vs_random" for c in CURVES if f"{c}_vs_random" in rows[0])]
    cells = [
        [row["method"], *(_cell(row, column) for column in columns), {True: "yes", False: "no"}.get(row["flagged"], "")]
        for row in rows
    ]
    return tables.markdown_table(["method", *columns, "flagged"], cells) + "\n"


def leaderboard_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows of :func:`visualization.ranking.leaderboard_rows` as Markdown: ``mean [low, high] (rank)`` per score."""
    scores = [metric for metric in RANKED if metric in rows[0]]
    checks = [check for check in CHECKS if check in rows[0]]
    columns = ["rank", "method", "layer", *scores, "randomization_spearman", *checks, "flagged"]
    cells = []
    for row in rows:
        baseline = row["method"] in BASELINES
        rank = "baseline" if baseline else "-" if row["rank"] is None else str(row["rank"])
        ranked = [_cell(row, m) + ("" if row[f"{m}_rank"] is None else f" ({row[f'{m}_rank']})") for m in scores]
        flag = "" if baseline else {True: "yes", False: "no"}[bool(row["flagged"])]
        shown = [_cell(row, m) for m in ("randomization_spearman", *checks)]
        cells.append([rank, row["method"], row["layer"] or "-", *ranked, *shown, flag])
    return tables.markdown_table(columns, cells) + "\n"


def _cell(row: Mapping[str, object], column: str) -> str:
    mean, low, high = (float(row[k]) for k in (column, f"{column}_low", f"{column}_high"))
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
