"""The evaluation report: report.json (every number), report.md (a table) and PNG plots."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)
from matplotlib.figure import Figure

from saekit import __version__
from saekit.base.atomic import write_atomically, write_text
from saekit.base.errors import write_error
from saekit.base.outputs import EVAL_REPORT, write_marker
from saekit.cache_format import ActivationStore
from saekit.train import modes

INSPECT_SITE = "inspect/index.html"  # where `sae eval --inspect` builds the latent dashboards
PLOTS = {
    "l0_vs_nmse": "l0_vs_nmse.png",
    "l0_vs_loss_added": "l0_vs_loss_added.png",
    "dead_latents": "dead_latents.png",
}
MARKERS = {
    modes.INFERENCE: "o",
    modes.THRESHOLD: "o",
    modes.GRAD: "^",
    modes.PLAIN: "v",
    modes.PLAIN_UNCORRECTED: "D",
    modes.BATCH: "s",
}


def report_head(store: ActivationStore) -> dict:
    """The head of a report (eval's, inspect's): which saekit wrote it, when, from which store."""
    return {
        "saekit_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": {
            "location": store.location,
            "identity": store.spec.identity,
            "holdout_rows": store.n_rows("holdout"),
            "rows": store.n_rows_committed,
        },
    }


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(report: dict) -> str:
    """A table a person can read, with the definitions and the token counts."""
    store = report["store"]
    lines = [
        "# SAE evaluation",
        "",
        f"Store `{store['location']}` — model `{store['identity'].get('model')}`, "
        f"{report['tokens']['offline']:,} held-out tokens offline (position 0 excluded)"
        + (
            f", {report['tokens']['online']:,} predicted tokens online with `{report['model']}`"
            if report["tokens"]["online"]
            else ", no online evaluation"
        )
        + ".",
        "",
        *[f"- **Warning**: {warning}" for warning in report.get("warnings", [])],
        *([""] if report.get("warnings") else []),
        *(
            [f"Latent dashboards (`sae inspect`): [{report['inspect']}]({report['inspect']})", ""]
            if report.get("inspect")
            else []
        ),
        "| SAE | variant | mode | L0 | NMSE | var. expl. | dead | dense | γ | cos "
        "| est. loss added | CE clean | CE spliced | loss added | CE rec. (zero) "
        "| CE rec. (mean) | KL |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        off, on = row["offline"], row["online"] or {}
        lines.append(
            f"| {row['name']} | {row['variant']} | {row['mode']} | {_number(off['l0'], 3)} "
            f"| {_number(off['nmse'])} | {_number(off['variance_explained'])} "
            f"| {off['dead_fraction']:.1%} | {off['dense_fraction']:.1%} "
            f"| {_number(off['relative_reconstruction_bias'])} | {_number(off['cosine'])} "
            f"| {_number(off.get('loss_added_estimate'))} | {_number(on.get('ce_clean'))} "
            f"| {_number(on.get('ce_spliced'))} "
            f"| {_number(on.get('loss_added'))} | {_number(on.get('ce_recovered_zero'))} "
            f"| {_number(on.get('ce_recovered_mean'))} | {_number(on.get('kl'))} |"
        )
    lines += _shape_sections(report["rows"])
    steered = list({row["name"]: row for row in report["rows"] if row.get("steering")}.values())
    if steered:
        lines += [
            "",
            "## Steering",
            "",
            "| SAE | latents | P(targets) median | P(others) median | precision median |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in steered:
            s = row["steering"]
            lines.append(
                f"| {row['name']} | {s['latents']} | {_number(s['p_targets_median'])} "
                f"| {_number(s['p_others_median'])} | {_number(s['precision_median'])} |"
            )
    lines += [
        "",
        "Definitions: NMSE = Σ‖x − x̂‖² / Σ‖x − μ‖² (μ: mean of training rows); dead: latents that "
        "never fire on these tokens; dense: firing on more than 10 % of them; γ = E‖x̂‖² / E[x·x̂] "
        "(< 1: shrinkage); est. loss added: estimated from the store's gradients without the LM, "
        "gᵀ(x̂ − x) + ½ (gᵀ(x̂ − x))² per predicted token (docs/cli.md says when to trust it); "
        "loss added = CE spliced − CE clean (nats per predicted token); CE "
        "recovered = (CE ablated − CE spliced) / (CE ablated − CE clean), ablating with zeros or "
        "the training mean. Modes: "
        + "; ".join(
            f"`{mode}` = {modes.DESCRIPTIONS[mode]}"
            for mode in dict.fromkeys(row["mode"] for row in report["rows"])
        )
        + ".",
        "",
        *[f"![{name}]({file})" for name, file in PLOTS.items()],
        "",
    ]
    return "\n".join(lines)


def _shape_sections(rows: list[dict]) -> list[str]:
    """Tables for dictionaries of several targets (each target's reconstruction), cross-layer
    transcoders (active latents per layer) and Matryoshka SAEs (each prefix's NMSE)."""
    lines = []
    per_hook = [row for row in rows if row["offline"].get("per_hook")]
    if per_hook:
        lines += [
            "",
            "## Each target hook",
            "",
            "| SAE [mode] | target hook | NMSE | var. expl. | γ | cos |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in per_hook:
            for hook, m in row["offline"]["per_hook"].items():
                lines.append(
                    f"| {row['label']} | {hook} | {_number(m['nmse'])} "
                    f"| {_number(m['variance_explained'])} "
                    f"| {_number(m['relative_reconstruction_bias'])} | {_number(m['cosine'])} |"
                )
    layered = [row for row in rows if row["offline"].get("l0_per_layer")]
    if layered:
        lines += ["", "## Active latents per layer (cross-layer transcoders)", ""]
        lines += [
            f"- {row['label']}: L0 {_number(row['offline']['l0'], 3)} = "
            + " + ".join(_number(v, 3) for v in row["offline"]["l0_per_layer"])
            for row in layered
        ]
    nested = [row for row in rows if row["offline"].get("prefix_nmse")]
    if nested:
        lines += ["", "## Matryoshka prefixes (NMSE of the first w latents alone)", ""]
        lines += [
            f"- {row['label']}: "
            + ", ".join(f"w {w}: {_number(v)}" for w, v in row["offline"]["prefix_nmse"].items())
            for row in nested
        ]
    return lines


def _label_points(axes, points: list[tuple[float, float, str]]) -> None:
    """Annotate points, nudging a label down while it would overlap one already placed."""
    axes.figure.canvas.draw()
    placed: list[tuple[float, float]] = []
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        px, py = axes.transData.transform((x, y))
        offset = 4
        while any(abs(px - qx) < 110 and abs(py + offset - qy) < 10 for qx, qy in placed):
            offset -= 10
        placed.append((px, py + offset))
        axes.annotate(
            text, (x, y), textcoords="offset points", xytext=(6, offset * 72 / 120), fontsize=7
        )


def _scatter(rows: list[dict], y_key: str, y_source: str, y_label: str, title: str, path: Path):
    figure, axes = plt.subplots(figsize=(7.5, 5), dpi=120)
    variants = sorted({row["variant"] for row in rows})
    colours = dict(zip(variants, plt.cm.tab10.colors, strict=False))
    points = []
    for row in rows:
        source = row[y_source] or {}
        y = source.get(y_key)
        if y is None or math.isnan(y):
            continue
        x = row["offline"]["l0"]
        axes.scatter(
            x,
            y,
            color=colours[row["variant"]],
            marker=MARKERS.get(row["mode"], "o"),
            s=60,
            edgecolor="black",
            linewidth=0.5,
        )
        points.append((x, y, row["label"]))
    plotted = bool(points)
    for variant in variants:
        axes.scatter(
            [], [], color=colours[variant], label=variant, edgecolor="black", linewidth=0.5
        )
    for mode in sorted({row["mode"] for row in rows} - {"inference", "threshold"}):
        axes.scatter(
            [], [], color="white", edgecolor="black", marker=MARKERS[mode], label=f"mode: {mode}"
        )
    axes.margins(x=0.25, y=0.1)  # room for the labels right of the points
    axes.set_xlabel("L0 (mean active latents per token)")
    axes.set_ylabel(y_label)
    axes.set_title(title if plotted else f"{title} (no data)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    _label_points(axes, points)
    _save_figure(figure, path)


def _dead_bars(rows: list[dict], path: Path) -> None:
    labels = [row["label"] for row in rows]
    dead = [100 * row["offline"]["dead_fraction"] for row in rows]
    dense = [100 * row["offline"]["dense_fraction"] for row in rows]
    figure, axes = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.5), dpi=120)
    positions = range(len(rows))
    axes.barh([p - 0.2 for p in positions], dead, height=0.4, label="dead (never fire)")
    axes.barh([p + 0.2 for p in positions], dense, height=0.4, label="dense (fire on > 10 %)")
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    tokens = rows[0]["offline"]["tokens"] if rows else 0
    axes.set_xlabel(f"% of latents, on {tokens:,} held-out tokens")
    axes.set_title("Dead and dense latents")
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    _save_figure(figure, path)


def _save_figure(figure: Figure, path: Path) -> None:
    """PNG bytes written atomically: a link planted at `path` is replaced, never followed."""
    image = io.BytesIO()
    figure.savefig(image, format="png")
    plt.close(figure)
    write_atomically(path, lambda file: file.write(image.getvalue()))


def inspect_link(out: Path) -> str | None:
    """The report-relative link to latent dashboards built into the report, if there are any."""
    return INSPECT_SITE if (out / INSPECT_SITE).is_file() else None


def link_inspect_site(out: Path) -> None:
    """Point the report in `out` at the dashboards just built beside it (`sae eval --inspect`)."""
    report = json.loads((out / "report.json").read_text())
    report["inspect"] = inspect_link(out)
    write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    write_text(out / "report.md", markdown(report))


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots into `out`; return the files written. The
    report links to latent dashboards in `out/inspect/` when they exist."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out, error, "create") from None
    write_marker(out, EVAL_REPORT)
    report = {**report, "inspect": inspect_link(out)}
    files = {"json": out / "report.json", "markdown": out / "report.md"}
    write_text(files["json"], json.dumps(report, indent=2, allow_nan=True))
    write_text(files["markdown"], markdown(report))
    rows = report["rows"]
    _scatter(
        rows,
        "nmse",
        "offline",
        "NMSE (fraction of variance unexplained)",
        "Reconstruction error vs sparsity",
        out / PLOTS["l0_vs_nmse"],
    )
    _scatter(
        rows,
        "loss_added",
        "online",
        "loss added (nats per token)",
        "LM loss added by splicing the SAE in vs sparsity",
        out / PLOTS["l0_vs_loss_added"],
    )
    _dead_bars(rows, out / PLOTS["dead_latents"])
    files.update({name: out / file for name, file in PLOTS.items()})
    return files
