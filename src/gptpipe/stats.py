"""Welch's t-test, without scipy: is the difference between two groups' means
larger than their spread explains?

The two-sided p-value is P(|T| >= |t|) for Student's t with Welch–Satterthwaite
degrees of freedom, from the regularized incomplete beta function
I_x(a, b) (Numerical Recipes' betai, its continued fraction by modified Lentz):
p = I_{df / (df + t^2)}(df / 2, 1 / 2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15     # relative accuracy of the continued fraction
_TINY = 1e-300   # Lentz: stands in for a zero denominator
_MAX_TERMS = 10_000


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float     # two-sided


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); NaN below 2 values."""
    if len(values) < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's unequal-variances t-test of mean(a) == mean(b). t, df and p are NaN
    when either side has fewer than 2 values, or neither varies (no spread to
    measure the difference against)."""
    diff = mean(a) - mean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, math.nan, math.nan, math.nan)
    va, vb = sd(a) ** 2 / len(a), sd(b) ** 2 / len(b)
    if va + vb == 0:
        return Welch(diff, math.nan, math.nan, math.nan)
    t = diff / math.sqrt(va + vb)
    df = welch_df(va, len(a), vb, len(b))
    return Welch(diff, t, df, t_two_sided_p(t, df))


def welch_df(va: float, na: int, vb: float, nb: int) -> float:
    """Welch–Satterthwaite: `va`, `vb` are each mean's variance (s^2 / n)."""
    return (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|), T ~ Student's t with `df` (> 0, not necessarily whole)
    degrees of freedom."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betai(df / 2, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t)."""
    tail = t_two_sided_p(t, df) / 2
    return 1 - tail if t > 0 else tail


def betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betai: x={x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); else
    # use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1) / (a + b + 2):
        return front * betacf(a, b, x) / a
    return 1.0 - front * betacf(b, a, 1.0 - x) / b


def betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),          # even step
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):  # odd step
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"betacf({a}, {b}, {x}): no convergence in {_MAX_TERMS} terms")
