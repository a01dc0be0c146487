"""Where two series are compared (the `Comparison`s a claim declares), and a declared claim
judged on the evaluated rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saekit.recipes.claims import FAILS, HOLDS, Claim, Point
from saekit.recipes.compare import (
    GRID_POINTS,
    at_matched_l0,
    borrow_spread,
    common_seeds,
    l0_ratio_at_matched_metric,
    per_key,
    rank_agreement,
    shared_l0_range,
)
from saekit.recipes.declarations import ClaimSpec, Comparison
from saekit.recipes.pareto import geometric_grid
from saekit.recipes.results import Results, Series


@dataclass(frozen=True)
class PerKey(Comparison):
    """Rows of both series paired by one option (`k`, `latents`), a point per value: `where` is
    formatted with the value (e.g. "L0 {}", "{:,} latents")."""

    key: str
    where: str

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        return per_key(
            results,
            claimed,
            other,
            metric,
            lambda row: row.options[self.key],
            self.where.format,
        )


@dataclass(frozen=True)
class AtMatchedL0(Comparison):
    """Both series' Pareto curves at the same L0s, spread over the range both cover."""

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        return at_matched_l0(results, claimed, other, metric)


@dataclass(frozen=True)
class L0RatioAtMatched(Comparison):
    """At the fidelity `other` reaches at L0s spread over the range both cover, the L0 `claimed`
    needs, as a ratio of `other`'s (below 1: `claimed` needs fewer)."""

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        shared = shared_l0_range(results, claimed, other, metric)
        if shared is None:
            return []
        l0s = geometric_grid(*shared, GRID_POINTS)
        return l0_ratio_at_matched_metric(results, claimed, other, metric, l0s)


@dataclass(frozen=True)
class RankAgreement(Comparison):
    """Whether the claimed series' metric ranks its rows as `reference` does: Spearman's ρ over
    each seed's rows, one point of the seeds' ρs against `threshold` (it holds when their mean
    exceeds the threshold by more than their range, does not hold when it falls short by more).
    The other series is not read."""

    reference: str
    threshold: float

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        by_seed = rank_agreement(results, claimed, metric, self.reference)
        if not by_seed:
            return []
        rhos = [rho for rho, _ in by_seed.values()]
        counts = sorted({n for _, n in by_seed.values()})
        rows = "–".join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts))
        where = f"Spearman ρ over {rows} rows per seed vs {self.threshold:g}"
        return [Point(where, rhos, [self.threshold] * len(rhos), higher_is_better=True)]


@dataclass(frozen=True)
class SteeringAt(Comparison):
    """The steering sweep of both series' SAEs at L0 `k`, a point per strength α; the metric is
    a steering number (higher is better)."""

    k: int

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        curves = [steering_by_seed(results, s, self.k) for s in (claimed, other)]
        if not all(curves):
            return []
        seeds = sorted(set(curves[0]) & set(curves[1]))
        alphas = sorted(next(iter(curves[0].values())))
        points = [
            Point(
                f"α {alpha:g}",
                [curves[0][seed][alpha][metric] for seed in seeds],
                [curves[1][seed][alpha][metric] for seed in seeds],
                higher_is_better=True,
            )
            for alpha in alphas
        ]
        return borrow_spread(points)


@dataclass(frozen=True)
class Within(Comparison):
    """A parity claim ("about as well as"): the points of `at`, where the claimed arm may be
    worse than the other by `relative` of the other's mean (0.05: within 5 %)."""

    at: Comparison
    relative: float

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        points = self.at.points(results, claimed, other, metric)
        for point in points:
            point.slack = self.relative * abs(sum(point.other) / len(point.other))
        return points


@dataclass(frozen=True)
class PrefixVsAlone(Comparison):
    """Each prefix of the claimed Matryoshka series against the other series' SAE of as many
    latents trained alone, a point per width the other series has: the claimed rows'
    `prefix_<metric>:<w>` against the other rows' metric at latents=w."""

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        points = []
        seeds = common_seeds(results, claimed, other)
        full = set(results.swept(claimed, "latents"))  # the whole dictionary is no prefix
        for width in results.swept(other, "latents"):
            if width in full:
                continue
            nested = results.values(claimed, f"prefix_{metric}:{width}")
            alone = results.values(other.at(latents=width), metric)
            shared = [s for s in seeds if s in alone and math.isfinite(nested.get(s, math.nan))]
            if shared:
                points.append(
                    Point(
                        f"{width:,} latents",
                        [nested[s] for s in shared],
                        [alone[s] for s in shared],
                        higher_is_better=False,
                    )
                )
        return borrow_spread(points)


@dataclass(frozen=True)
class NeverAbove(Comparison):
    """No row of the claimed series has a metric above zero (a verdict without a comparison):
    `what` names the rows, `words` the metric, in the claim's note."""

    what: str
    words: str


def steering_by_seed(results: Results, series: Series, k: int) -> dict[int, dict[float, dict]]:
    """seed -> α -> steering numbers of the series' SAE at L0 `k`."""
    out = {}
    for row in series.at(k=k).rows(results.rows):
        if row.steering and row.steering.get("per_alpha"):
            out[row.seed] = {entry["alpha"]: entry for entry in row.steering["per_alpha"]}
    return out


def judge(recipe: str, claim: ClaimSpec, results: Results) -> Claim:
    """The declared claim with its points measured on `results`, and so its verdict."""
    judged = Claim(
        recipe,
        claim.text,
        claim.source,
        claim.arms_text,
        claim.metric_label,
        note=claim.note,
        digits=claim.digits,
    )
    if isinstance(claim.at, NeverAbove):
        rows = claim.claimed.rows(results.rows)
        worst = max((row.metric(claim.metric) for row in rows), default=float("nan"))
        judged.fixed_verdict = HOLDS if worst == 0 else FAILS
        judged.note = (
            f"largest {claim.at.words} of {len(rows)} {claim.at.what}: {100 * worst:.2f} %"
        )
        return judged
    judged.points = claim.at.points(results, claim.claimed, claim.other, claim.metric)
    return judged
