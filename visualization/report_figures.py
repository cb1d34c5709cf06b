"""Figures of the comparison report: validation accuracy of every run against epochs or wall time.

Pure functions: curves in, a matplotlib ``Figure`` out. They never touch pyplot's
global state, so they work without a display, inside tests, and in threads;
the caller saves the figure or logs it to TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from matplotlib.figure import Figure

__all__ = ["Curve", "accuracy_curves"]

# Runs of one config share a colour; seeds within it get these line styles in turn.
_LINE_STYLES = ("-", "--", ":", "-.")


class Curve(NamedTuple):
    """One run's line: ``y`` against ``x``; runs with the same ``group`` share a colour."""

    label: str
    group: str
    x: Sequence[float]
    y: Sequence[float]


def accuracy_curves(
    curves: Sequence[Curve],
    *,
    xlabel: str,
    title: str,
    thresholds: Sequence[float] = (),
) -> Figure:
    """A line per run, coloured by group, with the report's accuracy thresholds as dotted lines.

    Args:
        curves: The runs to draw; a curve without points is listed in the legend only.
        xlabel: Label of the x axis (e.g. ``epoch`` or ``wall time (s)``).
        title: Title of the plot.
        thresholds: Accuracies (fractions) that the report's time-to-accuracy columns refer to.

    Returns:
        The figure; the caller owns it (save, log, or drop it).
    """
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    axes = figure.add_subplot()
    groups = list(dict.fromkeys(curve.group for curve in curves))
    palette = [f"C{index % 10}" for index in range(len(groups))]
    seen_in_group: dict[str, int] = {}
    for curve in curves:
        index = seen_in_group.get(curve.group, 0)
        seen_in_group[curve.group] = index + 1
        axes.plot(
            curve.x,
            curve.y,
            color=palette[groups.index(curve.group)],
            linestyle=_LINE_STYLES[index % len(_LINE_STYLES)],
            marker="o",
            markersize=3,
            label=curve.label,
        )
    for threshold in thresholds:
        axes.axhline(threshold, color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("validation accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small", loc="lower right")
    return figure
