"""The transcoders recipe: an SAE on an MLP's output, a transcoder and a skip transcoder of that MLP
at equal L0 (Dunefsky, Chlenski, Nanda, arXiv 2406.11944; Paulo, Shabalin, Belrose, arXiv
2501.18823), and a Matryoshka BatchTopK SAE against BatchTopK SAEs of each of its prefix widths
(Bussmann, Nabeshima, Karvonen, Nanda, arXiv 2503.17547).

One run per seed, at the preset's layer L, reading two hooks of the same rows: the MLP's input
(`blocks.L.mlp.hook_in`, what the MLP reads) and its output (`blocks.L.hook_mlp_out`). TopK SAE,
transcoder and skip transcoder at every k of the grid all predict the MLP output, so their NMSE and
the loss added when their output is spliced in place of the MLP's are directly comparable. The
Matryoshka SAE and the BatchTopK SAEs read the MLP output too, all at one k, and are compared
with their learnt thresholds (their inference mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.recipes.declarations import (
    Arm,
    ClaimSpec,
    Figure,
    Recipe,
    Scope,
    Section,
    Stage,
    TrainSet,
    View,
)
from saekit.recipes.figures import Line, line_figure, sweep_line
from saekit.recipes.judge import PerKey, PrefixVsAlone, Within
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range, percent
from saekit.train import modes


@dataclass(frozen=True)
class TranscodersGrid:
    """The transcoders recipe's sweep at one preset."""

    k: tuple[int, ...]  # L0s of the SAE, the transcoder and the skip transcoder
    matryoshka_k: int  # L0 of the Matryoshka SAE and the BatchTopK SAEs it is compared with
    prefixes: tuple[float, ...]  # Matryoshka prefix widths as fractions of its latents, last 1


GRIDS = {
    "small": TranscodersGrid(k=(8, 16, 32), matryoshka_k=16, prefixes=(1 / 8, 1 / 4, 1 / 2, 1.0)),
    "paper": TranscodersGrid(
        k=(16, 32, 64), matryoshka_k=32, prefixes=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    ),
}

# How much worse "about as well" and "within a few percent" allow, relative to the other arm
PREFIX_TOLERANCE = 0.10
FULL_WIDTH_TOLERANCE = 0.05
PARITY_TOLERANCE = 0.10  # "transcoders reach the SAE's fidelity"
PAULO = "Paulo, Shabalin, Belrose 2025, abstract [V]"
DUNEFSKY = "Dunefsky, Chlenski, Nanda 2024, abstract [V]"
BUSSMANN = "Bussmann et al. 2025, abstract and the authors' post [S]"


def mlp_hooks(layer: int) -> tuple[str, ...]:
    """The MLP's output (the hook every SAE of the recipe reads or predicts) and its input."""
    return (f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_in")


@dataclass(frozen=True)
class Arms:
    """The recipe's arms at one scope (the transcoders name the scope's hooks)."""

    sae: Arm
    transcoder: Arm
    skip: Arm
    matryoshka: Arm
    batchtopk: Arm


def arms(scope: Scope) -> Arms:
    mlp_out, mlp_in = scope.hooks
    transcode = {"hooks": mlp_in, "target": mlp_out}
    widths = prefix_widths(scope)
    groups = "+".join(str(b - a) for a, b in zip((0, *widths), widths, strict=False))
    return Arms(
        sae=Arm("TopK SAE on the MLP output", "topk"),
        transcoder=Arm("TopK transcoder", "topk", transcode),
        skip=Arm("TopK skip transcoder", "topk", {**transcode, "skip": True}),
        matryoshka=Arm("Matryoshka BatchTopK", "matryoshka", {"groups": groups}, modes.THRESHOLD),
        batchtopk=Arm("BatchTopK", "batchtopk", mode=modes.THRESHOLD),
    )


def prefix_widths(scope: Scope) -> tuple[int, ...]:
    """The Matryoshka SAE's prefix widths (the BatchTopK SAEs' widths), the last its latents."""
    return tuple(scope.latents(fraction) for fraction in scope.grid.prefixes)


def stages(scope: Scope) -> list[Stage]:
    a, grid = arms(scope), scope.grid
    return [
        Stage(
            "main",
            (
                TrainSet((a.sae, a.transcoder, a.skip), "k", grid.k),
                TrainSet((a.matryoshka,), "k", (grid.matryoshka_k,)),
                TrainSet((a.batchtopk,), "latents", grid.prefixes, {"k": grid.matryoshka_k}),
            ),
        )
    ]


@dataclass(frozen=True)
class AllSeries:
    """Each arm's rows (the shape keys pin the MLP-output SAE and the plain transcoder)."""

    sae: Series
    transcoder: Series
    skip: Series
    matryoshka: Series
    batchtopk: Series

    @property
    def shapes(self) -> tuple[Series, Series, Series]:
        return (self.sae, self.transcoder, self.skip)


def series(scope: Scope) -> AllSeries:
    a = arms(scope)
    return AllSeries(
        sae=a.sae.series(hooks=None, target=None),
        transcoder=a.transcoder.series(skip=False),
        skip=a.skip.series(),
        matryoshka=a.matryoshka.series(),
        batchtopk=a.batchtopk.series(),
    )


def claims(scope: Scope) -> list[ClaimSpec]:
    s, full = series(scope), scope.width
    at_k = PerKey("k", "k {}")
    return [
        ClaimSpec(
            "Skip transcoders beat transcoders: lower NMSE at equal L0",
            PAULO, s.skip, s.transcoder, "nmse", "NMSE of the MLP output", at_k,
        ),
        ClaimSpec(
            "Skip transcoders beat transcoders: less loss added when spliced, at equal L0",
            PAULO, s.skip, s.transcoder, "loss_added", "loss added (nats/token)", at_k,
        ),
        ClaimSpec(
            "Transcoders reach the fidelity of an SAE on the MLP output when spliced",
            DUNEFSKY, s.transcoder, s.sae, "loss_added", "loss added (nats/token)",
            Within(at_k, PARITY_TOLERANCE),
            note=f"parity: holds unless the transcoder adds more than "
            f"{PARITY_TOLERANCE:.0%} more loss, beyond seed noise",
        ),
        ClaimSpec(
            "Each Matryoshka prefix of m latents reconstructs about as well as a BatchTopK SAE "
            "of m latents trained alone",
            BUSSMANN, s.matryoshka, s.batchtopk, "nmse", "NMSE of the MLP output",
            Within(PrefixVsAlone(), PREFIX_TOLERANCE),
            arms="Matryoshka prefix of m latents vs BatchTopK of m latents",
            note=f"parity within {PREFIX_TOLERANCE:.0%}; a prefix decodes only the latents of the "
            "shared selection that fall in it, so its L0 is below k (see the prefix table)",
        ),
        ClaimSpec(
            "The full Matryoshka dictionary stays within a few percent of a full-width "
            "BatchTopK SAE",
            BUSSMANN, s.matryoshka.at(latents=full), s.batchtopk.at(latents=full),
            "nmse", "NMSE of the MLP output", Within(at_k, FULL_WIDTH_TOLERANCE),
            note=f"parity within {FULL_WIDTH_TOLERANCE:.0%}",
        ),
    ]  # fmt: skip


def shapes_section(results: Results, view: View) -> Section:
    """SAE vs transcoder vs skip transcoder over k: curves and a table."""
    s = series(view.scope)
    panels = [
        (label, label, [sweep_line(results, arm, metric, "k") for arm in s.shapes])
        for metric, label in (
            ("nmse", "NMSE of the MLP output"),
            ("loss_added", "loss added (nats/token)"),
        )
    ]
    line_figure(
        view.figures_dir / "transcoders_shapes.png",
        panels,
        "L0",
        "SAE on the MLP output vs transcoder vs skip transcoder (points: k)",
    )
    metrics = ("l0", "nmse", "loss_added", "ce_recovered_zero")
    rows = []
    for arm in s.shapes:
        for k in results.swept(arm, "k"):
            values = [list(results.values(arm.at(k=k), m).values()) for m in metrics]
            dead = list(results.values(arm.at(k=k), "dead_fraction").values())
            rows.append([arm.label, str(k), *(mean_range(v) for v in values), percent(dead)])
    header = ["dictionary", "k", "L0", "NMSE", "loss added", "CE recovered", "dead"]
    return Section(
        "### SAE, transcoder and skip transcoder of the MLP\n\n"
        "Every dictionary predicts the MLP output; the transcoders read the MLP input. Online, "
        "each replaces the MLP's output in the LM.\n\n" + markdown_table(header, rows),
        [Figure("transcoders_shapes.png", "NMSE and loss added against L0, per k")],
    )


def prefixes_section(results: Results, view: View) -> Section:
    """Each Matryoshka prefix against the BatchTopK SAE of its width."""
    s, widths = series(view.scope), prefix_widths(view.scope)
    nested = [results.values(s.matryoshka, f"prefix_nmse:{w}") for w in widths]
    nested_l0 = [results.values(s.matryoshka, f"prefix_l0:{w}") for w in widths]
    alone = [results.values(s.batchtopk.at(latents=w), "nmse") for w in widths]
    line_figure(
        view.figures_dir / "transcoders_matryoshka.png",
        [
            (
                "NMSE of the MLP output",
                "prefix vs alone",
                [
                    _line("Matryoshka prefix", widths, nested),
                    sweep_line(results, s.batchtopk, "nmse", "latents", x_metric="latents"),
                ],
            )
        ],
        "latents",
        "Matryoshka prefixes vs BatchTopK SAEs of the same width "
        f"(k {view.scope.grid.matryoshka_k})",
    )
    rows = [
        [
            f"{w:,}",
            mean_range(list(n.values())),
            mean_range(list(l0.values())),
            mean_range(list(a.values())),
        ]
        for w, n, l0, a in zip(widths, nested, nested_l0, alone, strict=True)
    ]
    header = ["latents m", "Matryoshka prefix NMSE", "prefix L0", "BatchTopK (m latents) NMSE"]
    return Section(
        "### Matryoshka prefixes\n\n" + markdown_table(header, rows),
        [Figure("transcoders_matryoshka.png", "NMSE of each prefix and of BatchTopK alone")],
    )


def _line(label: str, widths: tuple[int, ...], by_seed: list[dict[int, float]]) -> Line:
    x, y, low, high = [], [], [], []
    for width, values in zip(widths, by_seed, strict=True):
        if values:
            x.append(float(width))
            y.append(sum(values.values()) / len(values))
            low.append(min(values.values()))
            high.append(max(values.values()))
    return Line(label, x, y, low, high)


RECIPE = Recipe(
    name="transcoders",
    title="Transcoders, skip transcoders and Matryoshka SAEs",
    paper=(
        "Dunefsky et al., Transcoders Find Interpretable LLM Feature Circuits (arXiv 2406.11944); "
        "Paulo et al., Transcoders Beat Sparse Autoencoders for Interpretability (arXiv "
        "2501.18823); Bussmann et al., Learning Multi-Level Features with Matryoshka SAEs (arXiv "
        "2503.17547)"
    ),
    grids=GRIDS,
    stages=stages,
    claims=claims,
    sections=(shapes_section, prefixes_section),
    hooks=mlp_hooks,
)
