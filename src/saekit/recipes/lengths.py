"""Training length: a recipe's headline SAEs trained again at longer lengths, their rows told
apart by their training tokens, and whether their training curves had flattened."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from saekit.recipes.declarations import Figure, Section, View, length_stage
from saekit.recipes.figures import Line, line_figure
from saekit.recipes.results import Row
from saekit.recipes.tables import markdown_table
from saekit.train import METRICS_FILE, read_metrics

# The curve counts as flat when its last quarter improves NMSE by less than this, relative
FLAT = 0.02


def length_of(row: Row, train_tokens: int) -> float:
    """The row's training tokens in multiples of the preset's."""
    return row.data["training"]["tokens"] / train_tokens


def rows_at(rows: Iterable[Row], length: float, train_tokens: int) -> list[Row]:
    return [row for row in rows if abs(length_of(row, train_tokens) - length) < 1e-9]


def last_quarter_gain(curve: list[tuple[int, float]]) -> float | None:
    """How much the mean NMSE of the last quarter of training is below that of the quarter
    before, relative to it (0: flat; 0.1: still falling by 10 % a quarter)."""
    if not curve:
        return None
    end = curve[-1][0]
    before = [v for t, v in curve if 0.5 * end <= t < 0.75 * end]
    last = [v for t, v in curve if t >= 0.75 * end]
    if not before or not last:
        return None
    early, late = sum(before) / len(before), sum(last) / len(last)
    return (early - late) / early if early else None


def nmse_curves(run_dir: Path, names: set[str]) -> dict[str, list[tuple[int, float]]]:
    """The logged (training tokens, NMSE) of the named SAEs of a run."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run_dir / METRICS_FILE):
        if record.get("sae") in names and "nmse" in record:
            curves.setdefault(record["sae"], []).append((record["tokens"], record["nmse"]))
    return curves


def convergence_section(recipe: str, view: View, lengths: tuple[float, ...]) -> Section | None:
    """For the SAEs trained at several lengths (first seed): the NMSE gain of their last
    quarter at each length, a table and their curves."""
    seed = view.scope.preset.seeds[0]
    runs = {
        length: [view.run_dirs.get(f"{length_stage(length)}-s{seed}")] for length in lengths[1:]
    }
    runs[lengths[0]] = [
        path
        for name, path in view.run_dirs.items()
        if name.endswith(f"-s{seed}") and not name.startswith("length")
    ]
    longest = runs[lengths[-1]][0]
    if longest is None or not (longest / METRICS_FILE).exists():
        return None
    names = {record["sae"] for record in read_metrics(longest / METRICS_FILE)}
    curves: dict[float, dict[str, list[tuple[int, float]]]] = {}
    for length in lengths:
        curves[length] = {}
        for run in runs[length]:
            if run is not None and (run / METRICS_FILE).exists():
                curves[length].update(nmse_curves(run, names))
    header = (
        ["SAE"]
        + [f"last-quarter gain at {length:g}×" for length in lengths]
        + [f"final NMSE at {length:g}×" for length in lengths]
    )
    table = []
    for name in sorted(names):
        by_length = [curves[length].get(name, []) for length in lengths]
        table.append(
            [name]
            + [_gain(last_quarter_gain(curve)) for curve in by_length]
            + [f"{curve[-1][1]:.4g}" if curve else "–" for curve in by_length]
        )
    lines = [
        _line(f"{name} ({length:g}×)", curve)
        for length in lengths
        for name, curve in sorted(curves[length].items())
    ]
    file = f"{recipe}_training_length.png"
    line_figure(
        view.figures_dir / file,
        [("training NMSE", "every training length (first seed)", lines)],
        "training tokens",
        "Training curves of the SAEs trained at several lengths",
    )
    text = (
        "### Training length\n\n"
        "The SAEs the headline claims rest on, trained at each length; the last-quarter gain is "
        "how much their training NMSE fell over the last quarter of training, relative to the "
        f"quarter before (below {FLAT:.0%}: flat, marked ✓). Claims marked '— at N× the "
        "training tokens' are judged on the longer runs.\n\n" + markdown_table(header, table)
    )
    gains = {
        name: {f"{length:g}": last_quarter_gain(curves[length].get(name, [])) for length in lengths}
        for name in sorted(names)
    }
    figure = Figure(file, "training NMSE at every training length (first seed)")
    return Section(text, [figure], {"last_quarter_gain": gains})


def _gain(gain: float | None) -> str:
    if gain is None:
        return "–"
    return f"{100 * gain:.1f} %" + (" ✓" if gain < FLAT else "")


def _line(label: str, curve: list[tuple[int, float]]) -> Line:
    x, y = [float(t) for t, _ in curve], [v for _, v in curve]
    return Line(label, x, y, y, y)
