"""The statistics behind the report's intervals and comparisons: plain ``math`` and NumPy, no SciPy.

Three tools, each small enough to check by hand (``tests/test_report_statistics.py`` does):

- :func:`t_interval`: mean over seeds and its 95 % Student-t interval, for a config's test accuracy.
  Seeds are few (2-3), so the normal 1.96 would be far too narrow; the t quantile with n - 1
  degrees of freedom is computed here (:func:`t_quantile`) rather than typed from a table.
- :func:`paired_bootstrap`: the difference in test accuracy between two configs, with a
  percentile interval and a p-value, from predictions on the same test images.
- :func:`mcnemar_exact`: McNemar's exact test for two runs on the same images.

SciPy would give the t quantile and the binomial test, but it is not a dependency of this
project, and the two functions that need it are a dozen lines each.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapResult", "mcnemar_exact", "paired_bootstrap", "t_interval", "t_quantile"]

CONFIDENCE = 0.95
RESAMPLES = 10_000  # bootstrap replicates: a p-value resolves to 1/10,000, a 95 % bound to about 0.05 points


def _t_density(x: float, dof: int) -> float:
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_norm - (dof + 1) / 2 * math.log1p(x * x / dof))


def _t_mass(t: float, dof: int, panels: int = 2000) -> float:
    """P(0 <= T <= t) for Student's t, by Simpson's rule after substituting x = sqrt(dof) tan(angle).

    The substitution turns the density's long tail into ``cos(angle) ** (dof - 1)`` on a bounded
    range, smooth for every t, so the rule's error stays far below 1e-9 however far out t lies.
    """
    scale = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(math.pi)
    h = math.atan(t / math.sqrt(dof)) / panels
    weights = [1, *((4 if i % 2 else 2) for i in range(1, panels)), 1]
    return scale * h / 3 * sum(w * math.cos(i * h) ** (dof - 1) for i, w in enumerate(weights))


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile (above 0.5) of Student's t with ``dof`` degrees of freedom.

    Newton's method on the CDF from t = 0: the CDF is concave for t > 0, so every step stays
    below the root and the iterates rise to it.
    """
    if not 0.5 <= probability < 1 or dof < 1:
        raise ValueError(f"t_quantile needs 0.5 <= probability < 1 and dof >= 1, got {probability} and {dof}.")
    target, t = probability - 0.5, 0.0
    for _ in range(100):
        step = (target - _t_mass(t, dof)) / _t_density(t, dof)
        t += step
        if abs(step) < 1e-10 * max(1.0, t):
            break
    return t


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t interval, ``t(n-1) * s / sqrt(n)``.

    The interval says where the mean over all seeds would lie if seeds are a random sample of
    training runs; with one value there is no spread to estimate, and the half-width is ``None``.
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    spread = statistics.stdev(values) / math.sqrt(len(values))
    return mean, t_quantile((1 + confidence) / 2, len(values) - 1) * spread


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``only_first``: images the first run got right and the second wrong; ``only_second`` the
    reverse. Under no difference each discordant image goes either way with probability 1/2,
    so the p-value is twice the smaller binomial tail, at most 1. Exact integers throughout.
    """
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class BootstrapResult:
    """``first - second`` accuracy (fractions), its percentile interval, and the bootstrap p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    resamples: int
    images: int


def paired_bootstrap(
    first: np.ndarray,
    second: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> BootstrapResult:
    """Mean accuracy of ``first``'s runs minus ``second``'s, resampling images and seeds.

    Each replicate draws the test images with replacement, the same draw for both configs
    (that is the pairing: an easy image is easy for both), and, independently for each config,
    its runs with replacement. Seeds are not paired across configs: seed 0 of two different
    networks starts from unrelated weights, so pairing them would cancel nothing. Resampling
    them puts the seed-to-seed spread, as large as the effects sought, into the interval;
    with one run per config the interval covers the images alone.

    Images that every run scored alike are pooled by their pattern of right and wrong over
    the runs, so a replicate is one multinomial draw over at most ``2 ** runs`` patterns,
    the same distribution as drawing the images one by one.

    Args:
        first: ``[runs, images]`` booleans, True where a run of the first config was right.
        second: The same for the second config, on the same images in the same order.
        resamples: Replicates drawn.
        seed: Seed of the NumPy generator: the same inputs give the same interval.
        confidence: Coverage of the percentile interval.

    Returns:
        The observed difference, the percentile interval, and the two-sided p-value
        ``2 * min(P*(d <= 0), P*(d >= 0))`` (at most 1): the smallest level at which the
        percentile interval would leave out zero. A p-value of 0 means below ``1 / resamples``.

    Raises:
        ValueError: if either holds no run, or they cover different numbers of images.
    """
    first, second = np.atleast_2d(np.asarray(first, bool)), np.atleast_2d(np.asarray(second, bool))
    if not first.size or not second.size or first.shape[1] != second.shape[1]:
        raise ValueError(f"Need runs of both configs on the same images, got shapes {first.shape} and {second.shape}.")
    runs = np.vstack([first, second])
    images = runs.shape[1]
    codes = (runs.T.astype(np.int64) << np.arange(len(runs))).sum(axis=1)
    patterns, counts = np.unique(codes, return_counts=True)
    right = (patterns[:, None] >> np.arange(len(runs))) & 1  # [pattern, run]
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(images, counts / images, size=resamples)  # images per pattern, per replicate
    accuracy = drawn @ right / images  # [replicate, run]

    def resampled_mean(columns: np.ndarray) -> np.ndarray:
        picks = rng.integers(0, columns.shape[1], size=(resamples, columns.shape[1]))
        return np.take_along_axis(columns, picks, axis=1).mean(axis=1)

    differences = resampled_mean(accuracy[:, : len(first)]) - resampled_mean(accuracy[:, len(first):])
    low, high = np.quantile(differences, [(1 - confidence) / 2, (1 + confidence) / 2])
    p_value = min(1.0, 2 * min(float(np.mean(differences <= 0)), float(np.mean(differences >= 0))))
    return BootstrapResult(float(first.mean() - second.mean()), float(low), float(high), p_value, resamples, images)
