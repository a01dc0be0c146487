"""Pareto curves of (L0, metric) points and comparisons at matched L0 or matched metric.

A sweep (over k or λ) gives one point per SAE. Its Pareto curve keeps the points no other point
beats at an equal or lower L0; between them the curve is linear in log L0 (sweeps are geometric,
and papers plot L0 on a log axis). Two curves are compared where both are defined: the metric of
each at the same L0 (`value_at`), or the L0 each needs to reach the same metric (`l0_at`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

Point = tuple[float, float]  # (L0, metric)


def frontier(points: Iterable[Point], higher_is_better: bool) -> list[Point]:
    """The points no other point beats at an equal or lower L0, sorted by L0."""
    sign = 1.0 if higher_is_better else -1.0
    kept: list[Point] = []
    best = -math.inf
    for l0, value in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if math.isfinite(value) and sign * value > best:
            kept.append((l0, value))
            best = sign * value
    return kept


def value_at(curve: list[Point], l0: float) -> float | None:
    """The curve's metric at `l0` (linear in log L0 between its points); None outside it."""
    if not curve or l0 < curve[0][0] or l0 > curve[-1][0]:
        return None
    for (l0_a, v_a), (l0_b, v_b) in itertools.pairwise(curve):
        if l0_a <= l0 <= l0_b:
            if l0_b == l0_a:
                return v_a
            t = (math.log(l0) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return v_a + t * (v_b - v_a)
    return curve[0][1]  # a curve of one point, at exactly that L0


def l0_at(curve: list[Point], value: float, higher_is_better: bool) -> float | None:
    """The lowest L0 at which the curve reaches `value` (log-linear between points); None when
    it never does or already beats it at its first point."""
    sign = 1.0 if higher_is_better else -1.0
    if not curve or sign * curve[0][1] > sign * value:
        return None
    for (l0_a, v_a), (l0_b, v_b) in itertools.pairwise(curve):
        if sign * v_b >= sign * value >= sign * v_a:
            t = 0.0 if v_b == v_a else (value - v_a) / (v_b - v_a)
            return math.exp(math.log(l0_a) + t * (math.log(l0_b) - math.log(l0_a)))
    return curve[0][0] if curve[0][1] == value else None


def overlap(a: list[Point], b: list[Point]) -> tuple[float, float] | None:
    """The L0 range both curves cover, or None."""
    if not a or not b:
        return None
    low, high = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    return (low, high) if low <= high else None


def geometric_grid(low: float, high: float, n: int) -> list[float]:
    """n L0 values spaced evenly in log between low and high (both included)."""
    if n == 1 or low == high:
        return [math.sqrt(low * high)]
    step = (math.log(high) - math.log(low)) / (n - 1)
    return [math.exp(math.log(low) + i * step) for i in range(n)]
