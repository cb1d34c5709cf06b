"""The report's statistics against values worked out by hand or by exact enumeration."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from report_statistics import mcnemar_exact, paired_bootstrap, t_interval, t_quantile


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


def test_paired_bootstrap_resamples_each_configs_seeds():
    # Images do not matter here (every run scores all alike); only which seeds are drawn:
    # the first config's mean over two draws from {100 %, 0 %} minus the second's 100 %
    # is -1, -0.5 or 0 with probabilities 1/4, 1/2, 1/4.
    first = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)
    second = np.ones((1, 4), bool)
    result = paired_bootstrap(first, second, resamples=20_000, seed=1)
    assert result.difference == -0.5
    assert (result.low, result.high) == (-1.0, 0.0)
    assert result.p_value == pytest.approx(2 * 0.25, abs=0.02)  # P*(d >= 0) = 1/4, standard error 0.003


def test_paired_bootstrap_refuses_mismatched_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(np.ones((2, 5), bool), np.ones((1, 6), bool))
