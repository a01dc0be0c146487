"""Claim points from evaluated rows: two series compared at matched L0, per key, or per value;
and how well one metric ranks a series' rows as another does."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from saekit.recipes.claims import Point
from saekit.recipes.pareto import geometric_grid, l0_at, overlap, value_at
from saekit.recipes.results import HIGHER_IS_BETTER, Results, Row, Series

GRID_POINTS = 3  # matched-L0 comparisons over the shared L0 range: its ends and middle


def common_seeds(results: Results, *series: Series) -> list[int]:
    seeds = set(results.seeds)
    for s in series:
        seeds &= set(results.seeds_of(s))
    return sorted(seeds)


def shared_l0_range(results: Results, a: Series, b: Series, metric: str) -> tuple | None:
    """The L0 range every seed's curves of both series cover."""
    ranges = [
        overlap(results.curve(a, metric, seed), results.curve(b, metric, seed))
        for seed in common_seeds(results, a, b)
    ]
    if not ranges or any(r is None for r in ranges):
        return None
    return max(r[0] for r in ranges), min(r[1] for r in ranges)


def at_matched_l0(
    results: Results, claimed: Series, other: Series, metric: str, l0s: list[float] | None = None
) -> list[Point]:
    """The metric of both series' Pareto curves at the same L0, per seed: at `l0s`, or at
    `GRID_POINTS` L0s spread over the range both cover."""
    if l0s is None:
        shared = shared_l0_range(results, claimed, other, metric)
        l0s = (
            [] if shared is None or shared[0] > shared[1] else geometric_grid(*shared, GRID_POINTS)
        )
    points = []
    for l0 in l0s:
        pairs = [
            (
                value_at(results.curve(claimed, metric, seed), l0),
                value_at(results.curve(other, metric, seed), l0),
            )
            for seed in common_seeds(results, claimed, other)
        ]
        if pairs and all(a is not None and b is not None for a, b in pairs):
            higher = HIGHER_IS_BETTER.get(metric, False)
            points.append(Point(f"L0 {l0:.3g}", *map(list, zip(*pairs, strict=True)), higher))
    return borrow_spread(points)


def l0_ratio_at_matched_metric(
    results: Results, claimed: Series, other: Series, metric: str, l0s: list[float]
) -> list[Point]:
    """At the fidelity `other` reaches at each of `l0s`: the L0 `claimed` needs, as a ratio of
    `other`'s L0 (claimed wins below 1). Points are ratios per seed against 1."""
    higher = HIGHER_IS_BETTER.get(metric, False)
    points = []
    for l0 in l0s:
        ratios = []
        for seed in common_seeds(results, claimed, other):
            target = value_at(results.curve(other, metric, seed), l0)
            needed = (
                None
                if target is None
                else l0_at(results.curve(claimed, metric, seed), target, higher)
            )
            ratios.append(None if needed is None else needed / l0)
        if ratios and all(r is not None for r in ratios):
            where = f"at the L0 {l0:.3g} of the other arm"
            points.append(Point(where, ratios, [1.0] * len(ratios), False))
    return borrow_spread(points)


def per_key(
    results: Results,
    claimed: Series,
    other: Series,
    metric: str,
    key: Callable[[Row], Any],
    label: Callable[[Any], str],
    higher_is_better: bool | None = None,
) -> list[Point]:
    """Rows of both series paired by `key` (e.g. k, latents), per seed that has both."""
    higher = HIGHER_IS_BETTER.get(metric, False) if higher_is_better is None else higher_is_better
    keys = sorted(
        {key(r) for r in claimed.rows(results.rows)} & {key(r) for r in other.rows(results.rows)}
    )
    points = []
    for value in keys:
        a = results.values(claimed, metric, lambda r, v=value: key(r) == v)
        b = results.values(other, metric, lambda r, v=value: key(r) == v)
        seeds = sorted(set(a) & set(b))
        if seeds:
            points.append(Point(label(value), [a[s] for s in seeds], [b[s] for s in seeds], higher))
    return borrow_spread(points)


def borrow_spread(points: list[Point]) -> list[Point]:
    """Single-seed points take the largest spread of the repeated-seed points."""
    repeated = [p.spread for p in points if min(len(p.claimed), len(p.other)) > 1]
    for point in points:
        point.borrowed_spread = max(repeated) if repeated else None
    return points


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks); NaN with fewer than 3 pairs or a
    constant side."""
    if len(a) != len(b) or len(a) < 3:
        return math.nan
    x, y = ranks(a), ranks(b)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((u - mx) * (v - my) for u, v in zip(x, y, strict=True))
    sxx = sum((u - mx) ** 2 for u in x)
    syy = sum((v - my) ** 2 for v in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def rank_agreement(
    results: Results, series: Series, metric: str, reference: str
) -> dict[int, tuple[float, int]]:
    """Per seed: Spearman's ρ between `metric` and `reference` over the series' rows where both
    are measured, and the number of those rows."""
    out = {}
    for seed in results.seeds_of(series):
        pairs = [(r.metric(metric), r.metric(reference)) for r in series.rows(results.rows, seed)]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        if math.isfinite(rho):
            out[seed] = (rho, len(pairs))
    return out
