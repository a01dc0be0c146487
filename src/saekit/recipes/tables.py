"""Markdown tables of a recipe report: values as mean ± half the seeds' range."""

from __future__ import annotations

import math


def mean_range(values: list[float], digits: int = 3) -> str:
    """`m ± r` (r: half the range over seeds), `m` for one value, `–` for none."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {(max(values) - min(values)) / 2:.2g}"


def percent(values: list[float]) -> str:
    """Fractions as a mean percentage (and the seeds' half range)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    mean = 100 * sum(values) / len(values)
    half = 50 * (max(values) - min(values))
    return f"{mean:.1f} %" if len(values) == 1 else f"{mean:.1f} ± {half:.1f} %"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
