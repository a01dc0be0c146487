"""Claims of a paper, the numbers measured for them, and verdicts that respect seed noise.

A claim is checked at one or more points (an L0, a width, a steering strength). At each point the
arm the paper says wins and the other arm are measured once per seed; the point's *margin* is the
mean advantage of the claimed winner (positive: as the paper says) and its *spread* the larger
range of either arm's values across seeds. A point:
- holds when margin > spread,
- does not hold when margin < −spread,
- is inconclusive otherwise (the difference is within seed noise).
A parity claim ("about as well as") gives each point a *slack*, how much worse the claimed arm may
be: the point holds when margin + slack > spread and does not hold when margin + slack < −spread.
A point measured with one seed borrows the spread of the claim's repeated-seed points. A claim
over several points (the papers claim "at equal L0", i.e. at every L0) does not hold if any point
does not hold, holds if every point holds, and is inconclusive otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
# a compared claim without a point: the rows of an arm are missing, or the two curves share no
# L0 range or never reach each other's values there
NO_POINT = "no point where both arms could be compared"


@dataclass
class Point:
    """One comparison: per-seed values of the claimed winner and of the other arm."""

    where: str  # e.g. "L0 16"
    claimed: list[float]
    other: list[float]
    higher_is_better: bool
    borrowed_spread: float | None = None  # for single-seed points
    slack: float = 0.0  # a parity claim: how much worse the claimed arm may be

    @property
    def margin(self) -> float:
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * (_mean(self.claimed) - _mean(self.other))

    @property
    def spread(self) -> float:
        if min(len(self.claimed), len(self.other)) < 2 and self.borrowed_spread is not None:
            return self.borrowed_spread
        return max(_range(self.claimed), _range(self.other))

    @property
    def verdict(self) -> str:
        if self.margin + self.slack > self.spread:
            return HOLDS
        if self.margin + self.slack < -self.spread:
            return FAILS
        return INCONCLUSIVE

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "claimed": self.claimed,
            "other": self.other,
            "higher_is_better": self.higher_is_better,
            "margin": self.margin,
            "spread": self.spread,
            "slack": self.slack,
            "verdict": self.verdict,
        }


@dataclass
class Claim:
    """A paper's claim, the points it was checked at and the overall verdict."""

    recipe: str
    text: str  # the claim, as the paper makes it
    source: str  # where it comes from (and how reliable that is)
    arms: str  # what was compared, e.g. "g-SAE β_eff 0.3 [grad] vs TopK"
    metric: str  # e.g. "loss added (nats/token)"
    points: list[Point] = field(default_factory=list)
    note: str = ""  # e.g. the mode's caveat, or a fixed verdict's reason
    fixed_verdict: str | None = None  # claims that need no comparison (e.g. "no dead latents")
    digits: int = 3

    @property
    def verdict(self) -> str:
        if self.fixed_verdict is not None:
            return self.fixed_verdict
        verdicts = [p.verdict for p in self.points]
        if not verdicts:
            return INCONCLUSIVE
        if FAILS in verdicts:
            return FAILS
        return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE

    def measured(self) -> str:
        """The numbers behind the verdict, one clause per point."""
        if not self.points:
            if self.fixed_verdict is not None:
                return self.note
            return f"{NO_POINT}. {self.note}" if self.note else NO_POINT
        parts = []
        for p in self.points:
            parts.append(
                f"{p.where}: {_number(_mean(p.claimed), self.digits)} vs "
                f"{_number(_mean(p.other), self.digits)} (±{_number(p.spread, 2)}, {p.verdict})"
            )
        return "; ".join(parts) + (f". {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "claim": self.text,
            "source": self.source,
            "arms": self.arms,
            "metric": self.metric,
            "verdict": self.verdict,
            "measured": self.measured(),
            "note": self.note,
            "points": [p.to_json() for p in self.points],
        }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _range(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"
