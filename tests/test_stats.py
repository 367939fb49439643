"""gptpipe.stats: Welch's t-test and Student's t distribution without scipy, against
reference values computed once with mpmath at 40 digits (the two-sided tail as
2 * the integral of the t density from |t| to infinity, mpmath.quad) and pinned."""
from __future__ import annotations

import math

import pytest

from gptpipe import stats

# (t, df, two-sided p): mpmath.quad of the t density, 40 digits
T_TAILS = [(2.0, 10, 0.0733880347707404), (1.0, 5, 0.363217467649123),
           (0.5, 1, 0.704832764699133), (3.5, 2.5, 0.0523455469603203),
           (10.0, 3, 0.00212839905841415), (-2.2, 30.7, 0.0354646679014167),
           (0.0, 7, 1.0)]


@pytest.mark.parametrize("t, df, p", T_TAILS)
def test_two_sided_p_matches_the_integrated_density(t, df, p):
    assert stats.t_two_sided_p(t, df) == pytest.approx(p, rel=1e-10, abs=1e-14)


def test_cdf_is_the_tail_on_each_side():
    assert stats.t_cdf(2.0, 10) == pytest.approx(1 - 0.0733880347707404 / 2, rel=1e-12)
    assert stats.t_cdf(-2.0, 10) == pytest.approx(0.0733880347707404 / 2, rel=1e-10)
    assert stats.t_cdf(0.0, 4) == pytest.approx(0.5)


def test_betai_edges_and_symmetry():
    assert stats.betai(2.0, 3.0, 0.0) == 0.0 and stats.betai(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a)
    assert stats.betai(1.0, 1.0, 0.3) == pytest.approx(0.3, rel=1e-12)
    assert stats.betai(2.5, 0.5, 0.7) == pytest.approx(1 - stats.betai(0.5, 2.5, 0.3),
                                                       rel=1e-12)
    with pytest.raises(ValueError):
        stats.betai(1.0, 1.0, 1.5)


def test_welch_on_a_worked_example():
    """Unequal sizes and variances. mpmath (40 digits): t = -3.01899374939232,
    Welch–Satterthwaite df = 2.70200310035564, p = 0.0649245668019758."""
    a, b = [2.1, 2.4, 2.2, 2.6, 2.3], [2.9, 3.4, 2.7]
    test = stats.welch(a, b)
    assert test.diff == pytest.approx(-0.68, rel=1e-12)
    assert test.t == pytest.approx(-3.01899374939232, rel=1e-12)
    assert test.df == pytest.approx(2.70200310035564, rel=1e-12)
    assert test.p == pytest.approx(0.0649245668019758, rel=1e-10)
    assert stats.welch(b, a).p == pytest.approx(test.p, rel=1e-12)  # two-sided


def test_mean_and_sample_sd():
    assert stats.mean([1.0, 2.0, 6.0]) == 3.0
    assert stats.sd([1.0, 2.0, 6.0]) == pytest.approx(math.sqrt(7.0))  # (4+1+9)/2
    assert math.isnan(stats.sd([5.0]))


def test_too_few_values_or_no_spread_gives_nan():
    assert math.isnan(stats.welch([1.0], [2.0, 3.0]).p)
    assert stats.welch([1.0], [2.0, 3.0]).diff == -1.5
    assert math.isnan(stats.welch([1.0, 1.0], [2.0, 2.0]).p)
