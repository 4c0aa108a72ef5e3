"""The statistics of the monitoring figures, as plain functions (no store, no numpy).

- :func:`wilson`: the Wilson score interval of a proportion (95 % by default), which stays
  inside [0, 1] and is usable for the small daily counts a department has (5 of 6, 0 of 3);
- :func:`quantile`: a sample quantile with linear interpolation (numpy's default method);
- :func:`two_proportion_z`: the two-proportion z statistic with the pooled proportion;
- :func:`psi`: the population stability index of two samples over fixed bins;
- :func:`ks_statistic`: the two-sample Kolmogorov-Smirnov statistic (largest gap between the
  two empirical distribution functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n``, with its Wilson interval (None, None, None when ``n`` is 0)."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"k": self.k, "n": self.n, "value": self.value, "low": self.low, "high": self.high}


def wilson(k: int, n: int, z: float = Z95) -> Proportion:
    """``k`` successes in ``n`` trials: the proportion and its Wilson score interval,
    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Proportion(k, n, None, None, None)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Proportion(k, n, p, max(0.0, centre - half), min(1.0, centre + half))


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation between order statistics; None for
    no values."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def two_proportion_z(k1: int, n1: int, k0: int, n0: int) -> float | None:
    """z of ``k1/n1`` against ``k0/n0`` with the pooled proportion (positive: the first is
    higher); None when either sample is empty or the pooled proportion is 0 or 1 (no spread:
    then both samples agree exactly, or the test says nothing)."""
    if n1 <= 0 or n0 <= 0:
        return None
    pooled = (k1 + k0) / (n1 + n0)
    if pooled <= 0.0 or pooled >= 1.0:
        return None
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    return (k1 / n1 - k0 / n0) / se


def shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """The share of ``values`` in each bin ``[edges[i], edges[i+1])`` (the last bin closed);
    values outside the edges fall in the first or last bin."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = 0
        while i < len(counts) - 1 and v >= edges[i + 1]:
            i += 1
        counts[i] += 1
    n = len(values)
    return [c / n for c in counts] if n else [0.0] * len(counts)


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = 1e-3) -> float | None:
    """Population stability index of two share vectors (each summing to 1):
    ``sum((a - e) * ln(a / e))``, each share floored at ``floor`` (an empty bin would make it
    infinite). None when either is empty."""
    if not expected or not actual or len(expected) != len(actual):
        return None
    if sum(expected) <= 0 or sum(actual) <= 0:
        return None
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total


def category_shares(values: Sequence[str], categories: Sequence[str]) -> list[float]:
    """The share of each of ``categories`` in ``values`` (a value not listed counts in no
    category; give an "other" category to keep it)."""
    n = len(values)
    if not n:
        return [0.0] * len(categories)
    return [sum(1 for v in values if v == c) / n for c in categories]


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sample Kolmogorov-Smirnov statistic sup|F_a - F_b| (None for an empty one)."""
    if not a or not b:
        return None
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    gap = 0.0
    while i < len(xs) and j < len(ys):
        x = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= x:
            i += 1
        while j < len(ys) and ys[j] <= x:
            j += 1
        gap = max(gap, abs(i / len(xs) - j / len(ys)))
    return gap
