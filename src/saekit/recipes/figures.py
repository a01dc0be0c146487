"""Figures of a recipe report, laid out like the papers' (lines over a sweep, bars, histograms).

Every point of a line is the mean over seeds of the SAEs at one sweep value; its error bar spans
the seeds' minimum to maximum.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)
from matplotlib.figure import Figure

from saekit.base.atomic import write_atomically
from saekit.recipes.results import Results, Series

STYLES = ("-o", "--s", ":^", "-.v", "-D", "--P", ":X", "-.*")


@dataclass
class Line:
    """One curve: x, y (mean over seeds) and the seeds' range of y."""

    label: str
    x: list[float]
    y: list[float]
    low: list[float]
    high: list[float]


def sweep_line(
    results: Results, series: Series, metric: str, sweep: str, x_metric: str = "l0"
) -> Line:
    """The series' mean `metric` at each value of its `sweep` option (k, l1, latents), plotted
    against the mean `x_metric` there (or the sweep value itself when `x_metric` is the key)."""
    groups: dict[float, list] = {}
    for row in series.rows(results.rows):
        groups.setdefault(row.options[sweep], []).append(row)
    x, y, low, high = [], [], [], []
    for value in sorted(groups):
        rows = groups[value]
        values = [r.metric(metric) for r in rows]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            continue
        xs = [r.metric(x_metric) for r in rows] if x_metric != sweep else [float(value)]
        x.append(sum(xs) / len(xs))
        y.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
    return Line(series.label, x, y, low, high)


def line_figure(
    path: Path,
    panels: Sequence[tuple[str, str, list[Line]]],
    xlabel: str,
    title: str,
    logx: bool = True,
) -> None:
    """Side-by-side panels (y label, panel title, lines) sharing an x axis label."""
    figure, axes_list = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.2), dpi=120, squeeze=False
    )
    for axes, (ylabel, panel_title, lines) in zip(axes_list[0], panels, strict=True):
        for style, line in zip(STYLES * 4, lines, strict=False):
            if not line.x:
                continue
            error = [
                [m - lo for m, lo in zip(line.y, line.low, strict=True)],
                [hi - m for m, hi in zip(line.y, line.high, strict=True)],
            ]
            axes.errorbar(line.x, line.y, yerr=error, fmt=style, label=line.label, capsize=3)
        if logx:
            axes.set_xscale("log")
        if _spans_decades([y for line in lines for y in line.low + line.high]):
            axes.set_yscale("log")  # NMSE of FC uniform vs TopK: 100x apart
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(panel_title, fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    _save(figure, path)


def _spans_decades(values: list[float]) -> bool:
    """Whether positive values span more than a factor of 30 (a log axis shows them all)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) > 30 * min(finite)


def bar_figure(
    path: Path, groups: list[str], bars: dict[str, list[float]], ylabel: str, title: str
) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per key of `bars`."""
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 3), 4.2), dpi=120)
    width = 0.8 / max(len(bars), 1)
    for i, (label, values) in enumerate(bars.items()):
        positions = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(positions, values, width=width, label=label)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    _save(figure, path)


def histogram_figure(path: Path, histograms: dict[str, list[int]], xlabel: str, title: str) -> None:
    """Step histograms of counts (index = value), normalised to fractions."""
    figure, axes = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    for label, counts in histograms.items():
        total = sum(counts) or 1
        axes.step(range(len(counts)), [c / total for c in counts], where="mid", label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of tokens")
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    """PNG bytes written atomically: a link planted at `path` is replaced, never followed."""
    image = io.BytesIO()
    figure.savefig(image, format="png")
    plt.close(figure)
    write_atomically(path, lambda file: file.write(image.getvalue()))
