"""The explanation methods ranked on their faithfulness scores, with bootstrap intervals over the images.

:func:`summary_rows` gives every score of every method with its interval and
its paired difference to the random map; :func:`leaderboard_rows` ranks the
methods on each score of :data:`~visualization.faithfulness.RANKED`: methods
whose intervals overlap share a rank (:func:`shared_ranks`), and a method that
fails the randomisation check is never ranked. :mod:`visualization.faithfulness_tables`
writes them as Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from reporting.statistics import bootstrap_mean_interval
from visualization.faithfulness import (
    BASELINES,
    CHECKS,
    CURVES,
    RANKED,
    FaithfulnessResult,
    method_and_layer,
)

__all__ = ["bootstrap_interval", "leaderboard_rows", "shared_ranks", "summary_rows"]


def summary_rows(result: FaithfulnessResult, confidence: float = 0.95, seed: int = 0) -> list[dict[str, object]]:
    """One row per method: each metric's mean over images and its bootstrap interval, for a table.

    Besides the metrics, ``deletion_vs_random``, ``insertion_vs_random`` and
    ``road_vs_random`` are the mean paired difference to the random map on the
    same images, with its interval: an interval that excludes 0 says the map beats chance on these
    images. ``flagged`` marks a map that survives randomisation (see
    :data:`visualization.faithfulness.SANITY_LIMIT`) or is constant.

    Returns:
        ``[{"method": ..., "<metric>": mean, "<metric>_low": ..., "<metric>_high": ..., ...}]``
        with the model's maps first, then the baselines; NaN where a value does not apply.
    """
    methods = list(next(iter(result.scores.values())))
    flagged = set(result.flagged())
    rows = []
    for method in methods:
        row: dict[str, object] = {"method": method}
        for metric, by_method in result.scores.items():
            row.update(_mean_and_interval(metric, by_method.get(method), confidence, seed))
        for curve in (c for c in CURVES if f"{c}_auc" in result.scores):
            values = result.scores[f"{curve}_auc"]
            difference = values[method] - values["random"] if method != "random" else None
            row.update(_mean_and_interval(f"{curve}_vs_random", difference, confidence, seed))
        row["flagged"] = method in flagged if method not in BASELINES else ""
        rows.append(row)
    return rows


def _mean_and_interval(name: str, values: Tensor | None, confidence: float, seed: int) -> dict[str, float]:
    """``{name, name_low, name_high}``: the mean and its bootstrap interval (NaN where not computable)."""
    if values is None or int((~values.isnan()).sum()) < 2:
        mean = math.nan if values is None else float(values.nanmean())
        return {name: mean, f"{name}_low": math.nan, f"{name}_high": math.nan}
    low, high = bootstrap_interval(values, confidence, seed=seed)
    return {name: float(values.nanmean()), f"{name}_low": low, f"{name}_high": high}


def bootstrap_interval(
    values: Tensor, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over images: ``reporting.statistics``'s, for a tensor.

    ``values``: ``[N]`` per-image values (e.g. Grad-CAM's deletion AUC minus the random map's on the
    same image: a paired difference). NaNs are dropped.

    Raises:
        ValueError: Fewer than 2 values: there is no spread to resample.
    """
    return bootstrap_mean_interval(values.detach().double().flatten().cpu().numpy(), confidence, resamples, seed)


def shared_ranks(intervals: Sequence[tuple[float, float, float]], higher_is_better: bool) -> list[int]:
    """Ranks ``1, 1, 3, ...`` of ``(mean, low, high)`` scores where overlapping intervals share a rank.

    The scores are taken best mean first; one whose interval overlaps those of
    the group before it (directly, or through a chain of overlaps) joins that
    group and its rank; one that does not starts a new group, ranked by how many
    scores come before it. So every method of rank ``r`` is separated from every
    method of a later rank by its interval, and no two methods whose intervals
    overlap get different ranks. A missing interval (NaN) counts as the mean alone.

    Args:
        intervals: ``(mean, low, high)`` per method; means must not be NaN.
        higher_is_better: Direction of the score.

    Returns:
        The rank of each method, in the order given.
    """
    sign = 1 if higher_is_better else -1
    order = sorted(range(len(intervals)), key=lambda i: -sign * intervals[i][0])
    ranks = [0] * len(intervals)
    group_low = group_high = math.nan
    group_rank = 0
    for position, i in enumerate(order, start=1):
        mean, low, high = intervals[i]
        low, high = (mean, mean) if math.isnan(low) else (low, high)
        if high < group_low or low > group_high or math.isnan(group_low):  # apart from the group so far
            group_rank, group_low, group_high = position, low, high
        else:
            group_low, group_high = min(group_low, low), max(group_high, high)
        ranks[i] = group_rank
    return ranks


def leaderboard_rows(result: FaithfulnessResult, confidence: float = 0.95, seed: int = 0) -> list[dict[str, object]]:
    """The methods ranked on each score of :data:`RANKED`, one row per method and layer, best first.

    Each score gets its mean over images, its bootstrap interval and a rank from
    :func:`shared_ranks` among the methods that pass the randomisation check.
    A method that fails it (see :meth:`FaithfulnessResult.flagged`) keeps its
    scores but gets no rank, so it is never ranked first; nor do the baselines,
    which know nothing of the model. Rows: the ranked methods by their rank on
    the first score present (``road_combined``), then the flagged ones, then
    the baselines.

    Returns:
        ``[{"method", "layer", "flagged", "rank", "<score>", "<score>_low",
        "<score>_high", "<score>_rank", ...}]``; ranks are ``None`` where not ranked.
    """
    scores = [metric for metric in RANKED if metric in result.scores]
    names = list(next(iter(result.scores.values())))
    flagged = set(result.flagged())
    rows = []
    for name in names:
        method, layer = method_and_layer(name)
        row: dict[str, object] = {"method": method, "layer": layer, "flagged": name in flagged}
        for metric in [*scores, "randomization_spearman", *(c for c in CHECKS if c in result.scores)]:
            row.update(_mean_and_interval(metric, result.scores.get(metric, {}).get(name), confidence, seed))
        rows.append(row)
    ranked = [row for row, name in zip(rows, names) if name not in BASELINES and not row["flagged"]]
    for metric in scores:
        usable = [row for row in ranked if not math.isnan(row[metric])]
        intervals = [(row[metric], row[f"{metric}_low"], row[f"{metric}_high"]) for row in usable]
        for row in rows:
            row[f"{metric}_rank"] = None
        for row, rank in zip(usable, shared_ranks(intervals, RANKED[metric] > 0)):
            row[f"{metric}_rank"] = rank
    first = scores[0] if scores else None
    for row in rows:
        row["rank"] = row.get(f"{first}_rank")

    def position(row: dict[str, object]) -> tuple:
        unranked = row["rank"] is None
        group = 2 if row["method"] in BASELINES else int(unranked)
        mean = row.get(first, math.nan) if first else math.nan
        return group, row["rank"] or 0, -RANKED.get(first, 1) * (mean if not math.isnan(mean) else -math.inf)

    return sorted(rows, key=position)
