"""The recipe report: `report.md` (settings, each recipe's tables and figures, then every claim
with its verdict) and `report.json` (every number, the rows included)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saekit import __version__
from saekit.base.atomic import write_text
from saekit.recipes.analysis import Analysis
from saekit.recipes.claims import Claim
from saekit.recipes.cost import Estimate
from saekit.recipes.tables import markdown_table

RECONSTRUCTIONS = (
    "The papers' exact procedures are partly unknown (docs/algorithms.md §11 lists what is "
    "reconstructed and how reliable each source is); these are the recipes' reconstructions: "
    "g-SAE's β_eff scale, its eval modes and the steering protocol "
    "(targets through the final norm and unembedding, strength α · E‖x‖); the gradient as the "
    "sum of next-token CE over the context; aux_zipf; Feature Choice's Zipf capacities fitted to "
    "a TopK SAE's densities, and aux_zipf as the paper's headline FC row; the compute-matched "
    "ReLU baseline at 1.5× latents; the loss-aware objective (store gradients) standing in for "
    "end-to-end training, and the KL fine-tune added to the training tokens rather than "
    "replacing their end; interpolation along Pareto curves linear in log L0."
)
VERDICTS = (
    "Verdicts: a claim is checked at each point (an L0, a width, a strength) with every seed; "
    "a point holds when the claimed winner's mean advantage exceeds the seeds' spread (the "
    "larger range of either arm), does not hold when it is worse by more than the spread, and "
    "is inconclusive otherwise; single-seed points borrow the spread of the repeated-seed "
    "points. A claim holds when every point holds and does not hold when any point does not."
)


def write_report(
    out: Path,
    record: dict[str, Any],
    analyses: list[Analysis],
    estimate: Estimate,
    warnings: list[str] | None = None,
) -> None:
    """Write `report.md` and `report.json` into `out` (figures are already in `figures/`);
    `warnings` say what a reader of the numbers must know (another model, --allow-other-model)."""
    warnings = warnings or []
    claims = [c for analysis in analyses for c in analysis.claims]
    write_text(out / "report.md", _markdown(record, analyses, claims, estimate, warnings))
    report = {
        "warnings": warnings,
        "saekit_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in record.items() if k != "timings"},
        "timings_s": record.get("timings", {}),
        "estimate": {"gpu_hours": estimate.gpu_hours, "description": estimate.describe()},
        "recipes": {
            analysis.recipe.name: {
                "title": analysis.recipe.title,
                "paper": analysis.recipe.paper,
                "claims": [c.to_json() for c in analysis.claims],
                "findings": analysis.findings,
                "figures": [f.file for f in analysis.figures],
                "rows": [row.data for row in analysis.rows],
            }
            for analysis in analyses
        },
        "claims": [c.to_json() for c in claims],
    }
    write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=True))


def spliced_tokens(analyses: list[Analysis]) -> int:
    """The predicted tokens the rows were spliced into the LM on (the preset's number is an
    upper bound: a store may hold fewer held-out tokens)."""
    return max(
        (
            int((row.data.get("online") or {}).get("tokens", 0))
            for analysis in analyses
            for row in analysis.rows
        ),
        default=0,
    )


def _markdown(
    record: dict[str, Any],
    analyses: list[Analysis],
    claims: list[Claim],
    estimate: Estimate,
    warnings: list[str],
) -> str:
    preset = record["preset"]
    timings = record.get("timings", {})
    lines = [
        f"# SAE recipes: {', '.join(analysis.recipe.name for analysis in analyses)}",
        "",
        f"Model `{record['model']}`, hook `{record['hook']}`, preset `{preset['name']}`: "
        f"{preset['train_tokens']:,} training tokens per SAE in batches of "
        f"{preset['batch_size']:,}, {preset['expansion']}·d latents, seeds "
        f"{', '.join(map(str, preset['seeds']))}; evaluation on the store's held-out tokens "
        f"(offline: all; spliced into the LM: {spliced_tokens(analyses):,} predicted tokens, "
        f"the preset asking for up to {preset['online_tokens']:,}).",
        "",
        *[f"- **Warning**: {warning}" for warning in warnings],
        *([""] if warnings else []),
        f"Cost: {estimate.describe()}. Measured wall time: "
        + ", ".join(f"{key} {_duration(value)}" for key, value in _flat(timings).items())
        + ".",
        "",
        RECONSTRUCTIONS,
        "",
    ]
    for analysis in analyses:
        recipe = analysis.recipe
        lines += [f"## {recipe.name}: {recipe.title}", "", f"{recipe.paper}.", ""]
        for section in analysis.sections:
            lines += [section.text, ""] if section.text else []
            for figure in section.figures:
                caption = figure.caption
                lines += [f"![{caption}](figures/{figure.file})", "", f"*{caption}.*", ""]
    lines += [
        "## Claims",
        "",
        VERDICTS,
        "",
        markdown_table(
            [
                "recipe",
                "claim",
                "source",
                "compared",
                "measured (claimed winner vs other)",
                "verdict",
            ],
            [
                [
                    c.recipe,
                    c.text,
                    c.source,
                    f"{c.arms}; {c.metric}",
                    c.measured(),
                    f"**{c.verdict}**",
                ]
                for c in claims
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def _flat(timings: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in timings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key} "))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
