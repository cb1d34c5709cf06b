"""The report's statistics against values worked out by hand or by exact enumeration."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from reporting.statistics import mcnemar_exact, paired_bootstrap, t_interval, t_quantile


def test_t_quantile_matches_the_closed_forms():
    # One degree of freedom is the Cauchy law: F(t) = 1/2 + atan(t) / pi.
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)  # 12.7062
    assert t_quantile(0.9995, 1) == pytest.approx(math.tan(0.4995 * math.pi), rel=1e-9)  # 636.6: far in the tail
    # Two: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t = a sqrt(2 / (1 - a^2)) with a = 2F - 1.
    assert t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), rel=1e-9)  # 4.3027
    assert t_quantile(0.9, 2) == pytest.approx(0.8 * math.sqrt(2 / (1 - 0.8**2)), rel=1e-9)
    # Many: the normal quantile, 1.959964 (to 1e-5 at 10^6 degrees of freedom).
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-5)


def test_t_interval_by_hand():
    # Three seeds at 80, 82, 84 %: mean 82 %, sample std 2 points, half-width t(2) * 2 / sqrt(3).
    mean, half = t_interval([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert half == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)) * 0.02 / math.sqrt(3))  # 0.0497
    # Two seeds: t(1) = 12.706 times |a - b| / 2.
    assert t_interval([0.81, 0.82])[1] == pytest.approx(math.tan(0.475 * math.pi) * 0.005)
    assert t_interval([0.8135]) == (0.8135, None)  # one seed: no interval at all


@pytest.mark.parametrize(
    ("only_first", "only_second", "expected"),
    [
        (1, 5, 2 * (1 + 6) / 2**6),  # 0.21875
        (5, 1, 2 * (1 + 6) / 2**6),
        (0, 6, 2 * 1 / 2**6),  # 0.03125
        (2, 8, 2 * (1 + 10 + 45) / 2**10),  # 0.109375
        (3, 3, 1.0),  # the doubled tail is above 1: capped
        (0, 0, 1.0),  # no discordant image: no evidence either way
    ],
)
def test_mcnemar_exact_by_hand(only_first, only_second, expected):
    assert mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-12)


def _exact_difference_distribution(first: list[int], second: list[int]) -> dict[Fraction, Fraction]:
    """P(D = d) for one run each, D the accuracy difference on n images drawn with replacement.

    Each draw is an image only the first got right (+1/n), only the second (-1/n), or neither
    or both (0): D is a trinomial count, summed here over every (a, b, c) with a + b + c = n.
    """
    n = len(first)
    p = [Fraction(sum(f and not s for f, s in zip(first, second)), n),
         Fraction(sum(s and not f for f, s in zip(first, second)), n)]
    p.append(1 - p[0] - p[1])
    law: dict[Fraction, Fraction] = {}
    for a in range(n + 1):
        for b in range(n + 1 - a):
            c = n - a - b
            ways = Fraction(math.factorial(n), math.factorial(a) * math.factorial(b) * math.factorial(c))
            d = Fraction(a - b, n)
            law[d] = law.get(d, Fraction(0)) + ways * p[0] ** a * p[1] ** b * p[2] ** c
    return law


def test_paired_bootstrap_over_images_matches_exact_enumeration():
    first = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    second = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]  # 4 images only the first got, 1 only the second
    law = _exact_difference_distribution(first, second)
    cumulative, quantiles = Fraction(0), {}
    for d in sorted(law):
        cumulative += law[d]
        for q in (0.025, 0.975):
            if q not in quantiles and cumulative >= q:
                quantiles[q] = d
                # The bounds sit on atoms with room on both sides, so 20,000 draws find them exactly.
                assert cumulative - law[d] < q - 0.01 and cumulative > q + 0.01
    assert quantiles == {0.025: Fraction(-1, 10), 0.975: Fraction(7, 10)}
    exact_p = 2 * min(sum(v for d, v in law.items() if d <= 0), sum(v for d, v in law.items() if d >= 0))

    result = paired_bootstrap(np.array([first]), np.array([second]), resamples=20_000, seed=3)
    assert result.difference == pytest.approx(0.3)  # 70 % - 40 %
    assert (result.low, result.high) == (pytest.approx(-0.1), pytest.approx(0.7))
    # 0.2183 exactly; 20,000 draws estimate it to a standard error of 0.0044.
    assert result.p_value == pytest.approx(float(exact_p), abs=0.015)
    assert (result.resamples, result.images) == (20_000, 10)


def test_paired_bootstrap_draws_the_same_images_for_both_configs():
    rng = np.random.default_rng(0)
    run = rng.random((1, 50)) < 0.7
    # Identical predictions differ by exactly 0 in every replicate only if both sides see one draw.
    result = paired_bootstrap(run, run.copy(), resamples=500)
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def _nested(accuracies: list[float], images: int = 10) -> np.ndarray:
    """One run per accuracy, each right on the first ``accuracy * images`` images."""
    return np.array([[i < round(a * images) for i in range(images)] for a in accuracies])


def test_paired_bootstrap_adds_the_seeds_as_a_pooled_student_t():
    # Runs right on the first 5/6/7 and 4/5/6 of 10 images: every disagreement between two runs of a config
    # is one image's noise, and the image draw holds no more than that noise, so it narrows to nothing and the
    # interval is the seeds' alone: 0.1 +- t(4) * sqrt(s2 * (1/3 + 1/3)), s2 = 0.01 pooled over 2 + 2 dof.
    result = paired_bootstrap(_nested([0.5, 0.6, 0.7]), _nested([0.4, 0.5, 0.6]), resamples=40_000, seed=2)
    half_width = t_quantile(0.975, 4) * math.sqrt(0.01 * 2 / 3)
    assert result.difference == pytest.approx(0.1)
    expected = (pytest.approx(0.1 - half_width, abs=0.006), pytest.approx(0.1 + half_width, abs=0.006))
    assert (result.low, result.high) == expected
    assert result.about_configs and result.caveat is None


def test_one_run_per_config_covers_the_runs_and_says_so():
    one_each = paired_bootstrap(_nested([0.6]), _nested([0.4]), resamples=200)
    assert not one_each.about_configs
    assert "one run per config" in one_each.caveat and "not the configs" in one_each.caveat
    # One run on one side only: the other config's seeds stand in for its spread.
    assert paired_bootstrap(_nested([0.6]), _nested([0.4, 0.5]), resamples=200).about_configs


def _coverage(runs: tuple[int, int], seed_sd: float, trials: int, rng: np.random.Generator) -> tuple[float, float]:
    """How often the 95 % interval holds the configs' difference, and the two runs' own (one run a side).

    CIFAR-like test sets of 10,000 images at about 88 %: 80 % of the images are right with chance 0.98 for
    both configs; the rest with chance p (uniform in [0.12, 0.86]) for the first and p + g for the second,
    g uniform in [-0.10, 0.08], so the configs differ by 0.2 points on the images' population. Each run
    shifts its config's chances by a seed effect drawn with sd ``seed_sd``.
    """
    configs = runs_own = 0
    hard = np.arange(10_000) < 2_000
    for trial in range(trials):
        p = np.where(hard, rng.uniform(0.12, 0.86, hard.size), 0.98)
        chances = (p, p + hard * rng.uniform(-0.10, 0.08, hard.size))
        shifts = [rng.normal(0.0, seed_sd, n) for n in runs]
        right = [rng.random((n, p.size)) < q + s[:, None] for n, q, s in zip(runs, chances, shifts)]
        result = paired_bootstrap(*right, resamples=400, seed=trial)
        configs += result.low <= 0.002 <= result.high
        runs_own += result.low <= 0.002 + shifts[0].mean() - shifts[1].mean() <= result.high
    return configs / trials, runs_own / trials


@pytest.mark.parametrize(
    ("runs", "seed_sd", "covers"),
    [
        ((3, 3), 0.0, "configs"),  # the check's 100 %: each run's image noise was counted twice
        ((3, 3), 0.006, "configs"),  # its 92 %: 3 resampled seeds spread too little
        ((1, 1), 0.003, "runs"),  # its 80.5 % for the configs: with one seed a side, a claim about the runs only
    ],
)
def test_paired_bootstrap_covers_95_percent_in_simulation(runs, seed_sd, covers):
    configs, runs_own = _coverage(runs, seed_sd, trials=600, rng=np.random.default_rng(7))
    assert 0.93 <= (configs if covers == "configs" else runs_own) <= 0.97, (configs, runs_own)


def test_paired_bootstrap_refuses_mismatched_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(np.ones((2, 5), bool), np.ones((1, 6), bool))
