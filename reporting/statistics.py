"""The statistics behind the report's intervals and comparisons: plain ``math`` and NumPy, no SciPy.

Three tools, each small enough to check by hand (``tests/test_statistics.py`` does):

- :func:`t_interval`: mean over seeds and its 95 % Student-t interval, for a config's test accuracy.
  Seeds are few (2-3), so the normal 1.96 would be far too narrow; the t quantile with n - 1
  degrees of freedom is computed here (:func:`t_quantile`) rather than typed from a table.
- :func:`paired_bootstrap`: the difference in test accuracy between two configs, with a
  percentile interval and a p-value, from predictions on the same test images. A simulation
  (``tests/test_statistics.py``) checks that its 95 % interval covers 93-97 % of the time.
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

__all__ = ["BootstrapResult", "bootstrap_mean_interval", "mcnemar_exact", "paired_bootstrap", "t_interval",
           "t_quantile"]

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
    """``first - second`` accuracy (fractions), its percentile interval, and the bootstrap p-value.

    ``about_configs`` is False when each config has one run: the seed-to-seed spread is then
    unknown, and the interval covers the difference between these two runs (on new test
    images), not between the configs; :attr:`caveat` says so in words a report can print.
    """

    difference: float
    low: float
    high: float
    p_value: float
    resamples: int
    images: int
    about_configs: bool = True

    @property
    def caveat(self) -> str | None:
        """None, or why the interval supports no claim about the configs."""
        if self.about_configs:
            return None
        return (
            "one run per config: the interval covers these two runs, not the configs "
            "(a second seed of either config would show how far seeds move the difference)"
        )


def paired_bootstrap(
    first: np.ndarray,
    second: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> BootstrapResult:
    """Mean accuracy of ``first``'s runs minus ``second``'s, with what images and seeds add to its error.

    The difference varies with the test images (shared by both configs: an easy image is easy
    for both) and with the seeds (each config's runs; seed 0 of two networks starts from
    unrelated weights, so seeds are not paired). Each replicate adds two draws:

    - Images: the test images drawn with replacement, the same draw for both configs (that is
      the pairing), each config's runs averaged on them. This spread also holds each run's own
      image-by-image noise (which images a run happens to get right), and that noise is again in
      the run-to-run spread below; counted twice, it made the interval about 44 % too wide. So the
      image draw is narrowed by the noise that the runs' disagreement per image measures.
    - Seeds: the run-to-run variance of accuracy, pooled over both configs (``n - 1`` weighted;
      the configs' seeds are taken to vary alike), times ``1/n_first + 1/n_second``, drawn as a
      Student-t with the pooled degrees of freedom: with 3 seeds a side that t has 4 degrees of
      freedom, where resampling 3 runs would have drawn from 3 values and been too narrow.

    With one run per config the seeds' spread cannot be estimated: the interval then covers
    the images alone, a statement about these two runs, and ``about_configs`` is False. With one
    run on one side, that config's runs are taken to vary as the other's.

    Images that every run scored alike are pooled by their pattern of right and wrong over
    the runs, so an image draw is one multinomial draw over at most ``2 ** runs`` patterns,
    the same distribution as drawing the images one by one.

    Args:
        first: ``[runs, images]`` booleans, True where a run of the first config was right.
        second: The same for the second config, on the same images in the same order.
        resamples: Replicates drawn.
        seed: Seed of the NumPy generator: the same inputs give the same interval.
        confidence: Coverage of the percentile interval.

    Returns:
        The observed difference, the percentile interval (within -1 and 1), and the two-sided
        p-value ``2 * min(P*(d <= 0), P*(d >= 0))`` (at most 1): the smallest level at which the
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
    difference = float(first.mean() - second.mean())
    differences = accuracy[:, : len(first)].mean(axis=1) - accuracy[:, len(first) :].mean(axis=1)
    spread = _run_spread(first, second)
    if spread is not None:
        run_variance, noise_variance, dof = spread
        share = 1 / len(first) + 1 / len(second)
        # The image draw's variance is that of the per-image differences over the images; narrow it by the noise.
        image_variance = float(np.var(first.mean(axis=0) - second.mean(axis=0))) / images
        narrowing = math.sqrt(max(0.0, 1 - noise_variance * share / image_variance)) if image_variance > 0 else 0.0
        differences = difference + narrowing * (differences - difference)
        differences = differences + math.sqrt(run_variance * share) * rng.standard_t(dof, size=resamples)
    differences = np.clip(differences, -1.0, 1.0)
    low, high = np.quantile(differences, [(1 - confidence) / 2, (1 + confidence) / 2])
    p_value = min(1.0, 2 * min(float(np.mean(differences <= 0)), float(np.mean(differences >= 0))))
    return BootstrapResult(difference, float(low), float(high), p_value, resamples, images, spread is not None)


def _run_spread(first: np.ndarray, second: np.ndarray) -> tuple[float, float, int] | None:
    """Pooled run-to-run variance of accuracy, the part of it that is image noise, and its degrees of freedom.

    The noise part is what the runs of one config would disagree by if their seeds did not
    matter: per image, the unbiased variance of right/wrong over the runs, averaged over the
    images and divided by their number. None when no config has two runs.
    """
    dof = sum(len(runs) - 1 for runs in (first, second))
    if dof == 0:
        return None
    run_variance = noise_variance = 0.0
    for runs in (first, second):
        if len(runs) > 1:
            per_image = runs.mean(axis=0)
            run_variance += (len(runs) - 1) * float(np.var(runs.mean(axis=1), ddof=1))
            noise = len(runs) / (len(runs) - 1) * float(np.mean(per_image * (1 - per_image))) / runs.shape[1]
            noise_variance += (len(runs) - 1) * noise
    return run_variance / dof, noise_variance / dof, dof


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over images (NaNs dropped), e.g. a faithfulness score's.

    Raises:
        ValueError: Fewer than 2 values: there is no spread to resample.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size < 2:
        raise ValueError(f"A bootstrap interval needs at least 2 values, got {values.size}.")
    picks = np.random.default_rng(seed).integers(values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
