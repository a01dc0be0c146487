"""The Mutual / Feature Choice recipe (Ayonrinde, arXiv 2411.02124): TopK, BatchTopK = Mutual
Choice and Feature Choice at equal L0, each with AuxK and with aux_zipf.

Stage `main` (one run per seed): TopK, MC and FC with uniform capacities at every L0 of the
grid, each with `aux=auxk` and `aux=zipf`. Stage `zipf`: FC with Zipf capacities whose law
(a, b) is fitted to the firing densities of the same seed's TopK + AuxK SAE at that L0 (on
training rows) — the paper sets FC's capacities from a Zipf law [S: reviewer]; fitting it to a
TopK SAE is our reconstruction. The paper's headline FC row is taken to be Zipf capacities with
aux_zipf (its abstract introduces aux_zipf alongside FC; the body was not retrievable).
MC and FC are evaluated with their learnt thresholds (one token at a time) and in batch mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saekit.cache_format import ShuffledLoader
from saekit.recipes.declarations import (
    Arm,
    ClaimSpec,
    Figure,
    Recipe,
    Scope,
    Section,
    Stage,
    StageInputs,
    TrainSet,
    View,
)
from saekit.recipes.figures import bar_figure, histogram_figure, line_figure, sweep_line
from saekit.recipes.judge import AtMatchedL0, NeverAbove, PerKey
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range, percent
from saekit.train import fit_zipf, load_sae, modes, parse_spec


@dataclass(frozen=True)
class ChoiceGrid:
    """The choice recipe's sweep at one preset."""

    k: tuple[int, ...]  # the L0 grid of every arm


GRIDS = {"small": ChoiceGrid(k=(8, 16, 32)), "paper": ChoiceGrid(k=(16, 32, 64))}

AUXES = {"auxk": "AuxK", "zipf": "aux_zipf"}
FIT_ROWS = 32768  # training rows whose densities the Zipf capacities are fitted to
SOURCE = "Ayonrinde 2024, abstract [V] and reviews [S]"


def arms(aux: str) -> dict[str, Arm]:
    """TopK, MC, FC uniform and FC Zipf with one auxiliary loss, by short name."""
    suffix = f" + {AUXES[aux]}"
    base = {"aux": aux}
    return {
        "topk": Arm("TopK" + suffix, "topk", base),
        "mc": Arm("MC" + suffix, "batchtopk", base, modes.THRESHOLD),
        "fc": Arm(
            "FC uniform" + suffix,
            "feature-choice",
            {**base, "capacities": "uniform"},
            modes.THRESHOLD,
        ),
        "fc_zipf": Arm(
            "FC Zipf" + suffix, "feature-choice", {**base, "capacities": "zipf"}, modes.THRESHOLD
        ),
    }


ARMS = {aux: arms(aux) for aux in AUXES}
TOPK_AUXK = ARMS["auxk"]["topk"]


def zipf_law(inputs: StageInputs, k: int) -> Mapping[str, Any]:
    """Zipf (a, b) of the densities of this seed's TopK + AuxK SAE at k, on training rows
    (a = b = 1 before any training, when only counting SAEs)."""
    if inputs.trained is None or inputs.store is None:
        return {"zipf_a": 1.0, "zipf_b": 1.0}
    topk_spec = TOPK_AUXK.spec({"k": k}, inputs.scope.width, {})
    sae = load_sae(inputs.trained[parse_spec(topk_spec).resolve(inputs.scope.d_in).name])
    loader = ShuffledLoader(
        inputs.store,
        hook=inputs.scope.hook,
        fields=("activations",),
        batch_size=FIT_ROWS,
        seed=inputs.seed,
        epochs=1,
        drop_last=False,
    )
    with torch.no_grad():
        sample = next(iter(loader)).without_nonfinite()  # training stops on such rows
        densities_F = (sae.encode(sample["activations"]) != 0).float().mean(0)
    a, b = fit_zipf(densities_F)
    return {"zipf_a": round(float(a), 3), "zipf_b": float(b)}


def stages(scope: Scope) -> list[Stage]:
    k = scope.grid.k
    return [
        Stage(
            "main",
            tuple(
                TrainSet((ARMS[aux]["topk"], ARMS[aux]["mc"], ARMS[aux]["fc"]), "k", k)
                for aux in AUXES
            ),
        ),
        Stage(
            "zipf",
            (TrainSet(tuple(ARMS[aux]["fc_zipf"] for aux in AUXES), "k", k, derive=zipf_law),),
        ),
    ]


def claims(scope: Scope) -> list[ClaimSpec]:
    width = scope.width
    topk = ARMS["auxk"]["topk"].series(latents=width)
    mc = ARMS["auxk"]["mc"].series(latents=width)
    fc = ARMS["zipf"]["fc_zipf"].series(latents=width)
    every_fc = Series("every FC SAE", "feature-choice", modes.THRESHOLD, {"latents": width})
    nmse, per_l0 = ("nmse", "NMSE"), PerKey("k", "L0 {}")
    specs = [
        ClaimSpec(
            "Feature Choice has no dead latents",
            "Ayonrinde 2024, OpenReview TL;DR [V]",
            every_fc, every_fc, "dead_fraction", "dead fraction on held-out tokens",
            NeverAbove("FC SAEs", "dead fraction"),
            arms="every FC SAE (both capacities and auxes, all L0, all seeds), threshold mode",
        ),
        ClaimSpec(
            "Mutual Choice reconstructs better than TopK at equal L0",
            SOURCE, mc, topk, *nmse, AtMatchedL0(),
            arms=f"{mc.label} [{modes.THRESHOLD}] vs {topk.label}",
        ),
        ClaimSpec(
            "Feature Choice reconstructs better than TopK at equal L0",
            SOURCE, fc, topk, *nmse, AtMatchedL0(),
            arms=f"{fc.label} [{modes.THRESHOLD}] vs {topk.label}",
            note="FC: Zipf capacities fitted to TopK's densities, aux_zipf (reconstruction)",
        ),
    ]  # fmt: skip
    for metric, words in (("dead_fraction", "dead"), ("underused_fraction", "under-used")):
        for name in ("topk", "mc"):
            with_zipf = ARMS["zipf"][name].series(latents=width)
            with_auxk = ARMS["auxk"][name].series(latents=width)
            specs.append(
                ClaimSpec(
                    f"aux_zipf leaves fewer {words} latents than AuxK",
                    "Ayonrinde 2024, abstract [V]; aux_zipf is our reconstruction",
                    with_zipf,
                    with_auxk,
                    metric,
                    f"{words} fraction on held-out tokens",
                    per_l0,
                    digits=2,
                )
            )
    return specs


# -- report sections ------------------------------------------------------------------------------


def series(width: int, mode: str) -> list[Series]:
    """Every arm at the base width, MC and FC read in `mode`."""
    return [
        arm.series(arm.mode if arm.variant == "topk" else mode, latents=width)
        for aux in AUXES
        for arm in ARMS[aux].values()
    ]


def l0_curves(results: Results, view: View) -> Section:
    """L0 vs NMSE and loss added of every arm (MC, FC with their thresholds)."""
    lines, width = series(view.scope.width, modes.THRESHOLD), view.scope.width
    line_figure(
        view.figures_dir / "choice_l0.png",
        [
            ("NMSE", "L0 vs NMSE", [sweep_line(results, s, "nmse", "k") for s in lines]),
            (
                "loss added (nats/token)",
                "L0 vs loss added",
                [sweep_line(results, s, "loss_added", "k") for s in lines],
            ),
        ],
        "L0 (threshold mode for MC and FC)",
        f"TopK, Mutual Choice, Feature Choice, {width:,} latents",
    )
    caption = "L0 vs NMSE and loss added (MC, FC: learnt thresholds)"
    return Section(figures=[Figure("choice_l0.png", caption)])


def usage(results: Results, view: View) -> Section:
    """Dead and under-used latents at the middle L0, and active latents per token."""
    grid, width = view.scope.grid, view.scope.width
    k0 = grid.k[len(grid.k) // 2]
    lines = series(width, modes.THRESHOLD)

    def at(s: Series, metric: str) -> float:
        values = results.values(s.at(k=k0), metric)
        return 100 * sum(values.values()) / len(values) if values else float("nan")

    bar_figure(
        view.figures_dir / "choice_usage.png",
        [s.label.replace(" + ", "\n+ ") for s in lines],
        {
            "dead": [at(s, "dead_fraction") for s in lines],
            "under-used (< 1/10 of L0/F)": [at(s, "underused_fraction") for s in lines],
        },
        "% of latents on held-out tokens",
        f"Dead and under-used latents at L0 = {k0}",
    )
    histograms = {}
    for mode in (modes.THRESHOLD, modes.BATCH):
        for s in series(width, mode)[:4]:
            rows = s.at(k=k0).rows(results.rows, seed=min(results.seeds))
            if rows and (s.variant != "topk" or mode == modes.THRESHOLD):
                label = s.label if s.variant == "topk" else f"{s.label} [{mode}]"
                histograms[label] = rows[0].data["offline"]["l0_histogram"]
    histogram_figure(
        view.figures_dir / "choice_l0_per_token.png",
        histograms,
        "active latents per token",
        f"Adaptive computation: active latents per token at L0 = {k0} (first seed)",
    )
    return Section(
        figures=[
            Figure("choice_usage.png", f"dead and under-used latents at L0 = {k0}"),
            Figure("choice_l0_per_token.png", "distribution of active latents per token"),
        ]
    )


def every_sae(results: Results, view: View) -> Section:
    """A table of every arm at every L0, MC and FC in both modes."""
    width = view.scope.width
    table = series(width, modes.THRESHOLD) + [
        s for s in series(width, modes.BATCH) if s.variant != "topk"
    ]
    rows = []
    for s in table:
        for k in results.swept(s, "k"):
            values = {
                m: list(results.values(s.at(k=k), m).values())
                for m in ("l0", "nmse", "loss_added", "dead_fraction", "underused_fraction")
            }
            rows.append(
                [
                    s.label,
                    s.mode,
                    str(k),
                    mean_range(values["l0"]),
                    mean_range(values["nmse"]),
                    mean_range(values["loss_added"]),
                    percent(values["dead_fraction"]),
                    percent(values["underused_fraction"]),
                ]
            )
    header = ["SAE", "mode", "k", "L0", "NMSE", "loss added", "dead", "under-used"]
    return Section("### Every SAE\n\n" + markdown_table(header, rows))


RECIPE = Recipe(
    name="choice",
    title="Mutual Choice and Feature Choice vs TopK",
    paper=(
        "Ayonrinde, Adaptive Sparse Allocation with Mutual Choice & Feature Choice SAEs "
        "(arXiv 2411.02124)"
    ),
    grids=GRIDS,
    stages=stages,
    claims=claims,
    sections=(l0_curves, usage, every_sae),
)
