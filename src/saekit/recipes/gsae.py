"""The g-SAE recipe (Olmo et al., arXiv 2411.10397): TopK vs g-SAE at equal L0 (Fig. 4), the
latents sweep, dead latents and steering (Fig. 5), plus the β and value-mode sweeps.

Sweep (one training run per seed): at every L0 of the grid, TopK, the headline g-SAE (the
library's default: β_eff 1, selection-only values) and the literal reading of the paper's Fig. 1
(β_eff 0.3, augmented values); at the headline L0, g-SAEs for each β_eff with both value modes,
and both g-SAEs above with β tracked during training; on the first seed, TopK and the headline
g-SAE at other widths; and TopK and the headline g-SAE at every L0 again at each longer training
length of the grid (4× the preset's tokens), for the headline claims at that length. Every g-SAE
is evaluated in grad mode (the paper's: the gradient of the clean forward, which sees the next
token) and plain mode (no gradients: the learnt per-latent gains of augmented values, TopK on z
for selection-only values); augmented g-SAEs also in the diagnostic plain-uncorrected mode (β = 0
on the raw pre-activations, what plain mode was before the gains).
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
from saekit.recipes.figures import Line, bar_figure, line_figure, sweep_line
from saekit.recipes.judge import PerKey, SteeringAt, steering_by_seed
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range, percent
from saekit.train import DEFAULT_BETA_EFF, METRICS_FILE, modes, parse_spec, read_metrics


@dataclass(frozen=True)
class GSAEGrid:
    """The g-SAE recipe's sweep at one preset."""

    k: tuple[int, ...]  # Fig. 4: the L0 grid of TopK and the g-SAE arms
    headline_k: int  # the L0 of the β, value-mode, width and steering sweeps
    width_factors: tuple[float, ...]  # the width sweep, in multiples of the base latents
    beta_effs: tuple[float, ...]
    steering_alphas: tuple[float, ...]  # added α · E‖x‖ · d̂_i, in units of the mean norm
    # training lengths of the headline claims (TopK and the headline g-SAE at every L0), in
    # multiples of the preset's tokens
    lengths: tuple[float, ...] = (1.0, 4.0)


GRIDS = {
    "small": GSAEGrid(
        k=(8, 16, 32),
        headline_k=16,
        width_factors=(0.5, 1.0, 2.0),
        beta_effs=(0.1, 0.3, 1.0),
        steering_alphas=(0.25, 0.5, 1.0, 2.0),
    ),
    "paper": GSAEGrid(
        k=(16, 32, 64, 128),
        headline_k=32,
        width_factors=(0.25, 0.5, 1.0, 2.0),
        beta_effs=(0.1, 0.3, 1.0),
        steering_alphas=(0.25, 0.5, 1.0, 2.0),
    ),
}

SOURCE = "Olmo et al. 2024, abstract and Fig. 4 [V: abstract]"
GRAD_NOTE = "grad mode sees the next token: its gradient includes the loss of the token predicted"
DIAGNOSTIC_MODES = (modes.GRAD, modes.PLAIN, modes.PLAIN_UNCORRECTED)


def g_sae(label: str, beta_eff: float, selection_only: bool, tracking: bool = False) -> Arm:
    """A g-SAE arm (β fixed at initialisation unless `tracking`)."""
    options = {"beta_eff": beta_eff, "beta_tracking": tracking, "selection_only": selection_only}
    return Arm(label, "gsae", options, modes.GRAD)


def in_mode(arm: Arm, mode: str, **filters: object) -> Series:
    """The g-SAE arm's rows in `mode`, labelled with it."""
    return arm.series(mode, f"{arm.label} [{mode}]", **filters)


TOPK = Arm("TopK", "topk")
# The library's default g-SAE (finding 6 of docs/recipes.md), and the paper's Fig. 1 read
# literally (augmented values) at the β_eff of the first measurements.
HEADLINE = g_sae(f"g-SAE β_eff {DEFAULT_BETA_EFF:g}", DEFAULT_BETA_EFF, selection_only=True)
AUGMENTED = g_sae("g-SAE β_eff 0.3 augmented", 0.3, selection_only=False)
ARMS = (HEADLINE, AUGMENTED)


def tracked(arm: Arm) -> Arm:
    return g_sae(arm.label, arm.options["beta_eff"], arm.options["selection_only"], True)


def stages(scope: Scope) -> list[Stage]:
    grid = scope.grid
    k0 = (grid.headline_k,)
    value_modes = tuple(
        g_sae(f"β_eff {b:g}", b, selection_only)
        for b in grid.beta_effs
        for selection_only in (True, False)
    )
    return [
        Stage(
            "main",
            (
                TrainSet((TOPK, *ARMS), "k", grid.k),
                TrainSet(value_modes, "k", k0),
                TrainSet(tuple(tracked(arm) for arm in ARMS), "k", k0),
                TrainSet(
                    (TOPK, HEADLINE),
                    "latents",
                    grid.width_factors,
                    fixed={"k": grid.headline_k},
                    seeds="first",
                ),
            ),
        )
    ]


def longer(scope: Scope) -> tuple[TrainSet, ...]:
    """What the headline claims rest on, trained again at each longer length."""
    return (TrainSet((TOPK, HEADLINE), "k", scope.grid.k),)


def steered(scope: Scope) -> list[Series]:
    """TopK and the headline g-SAE at the headline L0 and the base width."""
    at = {"k": scope.grid.headline_k, "latents": scope.width}
    return [TOPK.series(**at), HEADLINE.series(**at)]


def claims(scope: Scope) -> list[ClaimSpec]:
    latents, k0 = scope.width, scope.grid.headline_k
    topk = TOPK.series(latents=latents)
    grad = in_mode(HEADLINE, modes.GRAD, latents=latents)
    plain = in_mode(HEADLINE, modes.PLAIN, latents=latents)
    augmented = in_mode(AUGMENTED, modes.GRAD, latents=latents)
    per_l0 = PerKey("k", "L0 {}")
    loss = ("loss_added", "loss added (nats/token)")
    return [
        ClaimSpec(
            "lower loss added than TopK at equal L0",
            SOURCE, grad, topk, *loss, per_l0, note=GRAD_NOTE, headline=True,
        ),
        ClaimSpec(
            "lower loss added than TopK at equal L0, without gradients at inference",
            "our fair variant of the claim (plain mode)", plain, topk, *loss, per_l0,
            headline=True,
        ),
        ClaimSpec(
            "lower loss added than TopK at equal L0, with augmented values",
            "Olmo et al. 2024, Fig. 1 read literally (values ReLU(z ∘ (1 + β a))) [R]",
            augmented, topk, *loss, per_l0, note=GRAD_NOTE,
        ),
        ClaimSpec(
            "fewer dead latents than TopK",
            "Olmo et al. 2024 [S: summaries]", grad, topk,
            "dead_fraction", "dead fraction on held-out tokens", per_l0, digits=2,
            headline=True,
        ),
        ClaimSpec(
            "lower loss added than TopK at every number of latents",
            "Olmo et al. 2024, Fig. 4 [R: the figure's content was not retrieved]",
            in_mode(HEADLINE, modes.GRAD, k=k0), TOPK.series(k=k0), *loss,
            PerKey("latents", "{:,} latents"),
            arms=f"{grad.label} vs TopK at L0 {k0}",
            note="single-seed widths borrow the spread of the repeated-seed width",
        ),
        ClaimSpec(
            "latents steer the LM more effectively than TopK's",
            "Olmo et al. 2024, abstract and Fig. 5 [V: abstract; R: protocol]",
            grad, topk, "target_logit_gain", "mean target-logit gain", SteeringAt(k0),
            arms=f"{HEADLINE.label} vs TopK at L0 {k0}",
            note="probability added to other tokens is in the figure",
        ),
    ]  # fmt: skip


# -- report sections ------------------------------------------------------------------------------


def l0_sweep(results: Results, view: View) -> Section:
    """Fig. 4: L0 vs loss added and NMSE, loss added vs width, dead latents, and the table."""
    latents, k0 = view.scope.width, view.scope.grid.headline_k
    topk = TOPK.series(latents=latents)
    series = [
        topk,
        *(in_mode(HEADLINE, mode, latents=latents) for mode in (modes.GRAD, modes.PLAIN)),
        *(in_mode(AUGMENTED, mode, latents=latents) for mode in DIAGNOSTIC_MODES),
    ]
    line_figure(
        view.figures_dir / "gsae_fig4_l0.png",
        [
            ("loss added (nats/token)", "L0 vs loss added", _lines(results, series, "loss_added")),
            ("NMSE", "L0 vs NMSE", _lines(results, series, "nmse")),
        ],
        "L0",
        f"TopK vs g-SAE, {latents:,} latents (Fig. 4)",
    )
    widths = [TOPK.series(k=k0), *(in_mode(HEADLINE, m, k=k0) for m in (modes.GRAD, modes.PLAIN))]
    line_figure(
        view.figures_dir / "gsae_fig4_latents.png",
        [
            (
                "loss added (nats/token)",
                f"L0 = {k0}",
                [sweep_line(results, s, "loss_added", "latents", "latents") for s in widths],
            )
        ],
        "latents",
        "Loss added vs number of latents (Fig. 4)",
    )
    ks = results.swept(topk, "k")
    dead = [topk, in_mode(HEADLINE, modes.GRAD, latents=latents), series[3]]
    bar_figure(
        view.figures_dir / "gsae_dead.png",
        [f"L0 {k}" for k in ks],
        {s.label: [100 * _mean(_values(results, s, k)["dead_fraction"]) for k in ks] for s in dead},
        "% of latents never firing on held-out tokens",
        "Dead latents",
    )
    rows = []
    for k in ks:
        for s in series:
            at_k = _values(results, s, k)
            rows.append(
                [
                    f"{k}",
                    s.label,
                    mean_range(at_k["loss_added"]),
                    mean_range(at_k["nmse"]),
                    percent(at_k["dead_fraction"]),
                    mean_range(at_k["relative_reconstruction_bias"]),
                ]
            )
    text = (
        "### L0 sweep (Fig. 4)\n\n"
        f"{latents:,} latents, β fixed at initialisation. {HEADLINE.label}: "
        "selection-only values (the library's default); "
        f"{AUGMENTED.label}: augmented values (the paper's Fig. 1 read literally). "
        f"{GRAD_NOTE.capitalize()}; plain mode uses no gradient (TopK on the pre-activations "
        "for selection-only values; each latent's code scaled by its learnt gain for augmented "
        f"ones); {modes.PLAIN_UNCORRECTED} is β = 0 on the raw pre-activations.\n\n"
        + markdown_table(["L0", "SAE [mode]", "loss added", "NMSE", "dead", "γ"], rows)
    )
    return Section(
        text,
        [
            Figure("gsae_fig4_l0.png", "L0 vs loss added and NMSE, TopK vs g-SAE in each mode"),
            Figure("gsae_fig4_latents.png", f"loss added vs number of latents at L0 = {k0}"),
            Figure("gsae_dead.png", "dead latents on held-out tokens (g-SAEs in grad mode)"),
        ],
    )


def value_modes(results: Results, view: View) -> Section:
    """β, value mode and β tracking at the headline L0: loss added, NMSE and γ in every mode."""
    latents, k0 = view.scope.width, view.scope.grid.headline_k
    variants = sorted(
        {
            (r.options["beta_eff"], r.options["selection_only"], r.options["beta_tracking"])
            for r in results.select("gsae", k=k0, latents=latents)
        }
    )
    rows, findings = [], []
    for beta_eff, selection_only, tracking in variants:
        options = {"k": k0, "latents": latents, "beta_eff": beta_eff,
                   "selection_only": selection_only, "beta_tracking": tracking}  # fmt: skip
        by_mode = {
            mode: _values(results, Series(mode, "gsae", mode, options), k0)
            for mode in DIAGNOSTIC_MODES
        }
        rows.append(
            [
                f"{beta_eff:g}",
                "selection-only" if selection_only else "augmented",
                "tracked" if tracking else "at init",
                *[mean_range(by_mode[m]["loss_added"]) for m in by_mode],
                *[mean_range(by_mode[m]["nmse"]) for m in by_mode],
                mean_range(by_mode[modes.PLAIN_UNCORRECTED]["relative_reconstruction_bias"]),
                mean_range(by_mode[modes.PLAIN]["relative_reconstruction_bias"]),
            ]
        )
        findings.append({"options": options, **by_mode})
    topk = _values(results, TOPK.series(latents=latents), k0)
    header = [
        "β_eff", "values", "β", "loss added grad", "loss added plain", "loss added uncorr.",
        "NMSE grad", "NMSE plain", "NMSE uncorr.", "γ uncorr.", "γ plain",
    ]  # fmt: skip
    text = (
        f"### β, value mode and β tracking at L0 = {k0}\n\n"
        f"TopK at this L0: loss added {mean_range(topk['loss_added'])}, NMSE "
        f"{mean_range(topk['nmse'])}.\n\n" + markdown_table(header, rows)
    )
    return Section(text, findings={"modes_at_headline_l0": findings})


def beta_drift(results: Results, view: View) -> Section | None:
    """β·median(a) over training, from the first seed's metrics, for every g-SAE at the headline
    L0 (table); the figure draws the two arms of the L0 sweep, fixed and tracked."""
    latents, k0 = view.scope.width, view.scope.grid.headline_k
    at_headline = {r.name for r in results.select("gsae", k=k0, latents=latents)}
    plotted = set()
    for arm in ARMS:
        for drawn in (arm, tracked(arm)):
            text = drawn.spec({"k": k0}, latents, {})
            plotted.add(parse_spec(text).resolve(view.scope.d_in).name)
    run = view.run_dirs.get(f"main-s{view.scope.preset.seeds[0]}")
    if run is None:
        return None
    by_sae: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run / METRICS_FILE):
        if record.get("sae") in at_headline and "beta_eff_measured" in record:
            by_sae.setdefault(record["sae"], []).append(
                (record["tokens"], record["beta_eff_measured"])
            )
    lines, drift = [], {}
    for name, points in sorted(by_sae.items()):
        tokens, values = zip(*points, strict=True)
        drift[name] = {"first": values[0], "last": values[-1]}
        if name in plotted:
            lines.append(Line(name, list(tokens), list(values), list(values), list(values)))
    if not drift:
        return None
    line_figure(
        view.figures_dir / "gsae_beta_drift.png",
        [("β · median(a) over top-k(z)", "g-SAE at the headline L0", lines)],
        "training tokens",
        "Effective β during training (β fixed at init vs tracked)",
        logx=False,
    )
    table = markdown_table(
        ["g-SAE", "β·median(a), first logged steps", "at the end"],
        [[n, f"{d['first']:.3g}", f"{d['last']:.3g}"] for n, d in drift.items()],
    )
    return Section(
        "### β drift (first seed)\n\n" + table,
        [Figure("gsae_beta_drift.png", "β · median(a) during training (first seed)")],
        {"beta_drift": drift},
    )


def steering(results: Results, view: View) -> Section | None:
    """Fig. 5: target-logit gain and off-target probability per steering strength."""
    latents, k0 = view.scope.width, view.scope.grid.headline_k
    series = (TOPK.series(latents=latents), in_mode(HEADLINE, modes.GRAD, latents=latents))
    curves = {s.label: steering_by_seed(results, s, k0) for s in series}
    alphas = view.scope.grid.steering_alphas
    if not all(curves.values()):
        return None
    panels = []
    for key, ylabel in (
        ("target_logit_gain", "mean target-logit gain"),
        ("p_others", "probability added to other tokens"),
    ):
        lines = []
        for label, by_seed in curves.items():
            per_alpha = [[curve[a][key] for curve in by_seed.values()] for a in alphas]
            lines.append(
                Line(
                    label.replace(f" [{modes.GRAD}]", ""),
                    list(alphas),
                    [_mean(v) for v in per_alpha],
                    [min(v) for v in per_alpha],
                    [max(v) for v in per_alpha],
                )
            )
        panels.append((ylabel, ylabel, lines))
    line_figure(
        view.figures_dir / "gsae_fig5_steering.png",
        panels,
        "α (added α · E‖x‖ · d̂_i)",
        f"Steering with single latents at L0 = {k0} (Fig. 5)",
    )
    caption = "steering: target-logit gain and off-target probability"
    return Section(figures=[Figure("gsae_fig5_steering.png", caption)])


def _lines(results: Results, series: list[Series], metric: str) -> list[Line]:
    return [sweep_line(results, s, metric, "k") for s in series]


def _values(results: Results, series: Series, k: int) -> dict[str, list[float]]:
    """Per metric, the values of the series' rows at k, one per seed."""
    metrics = ("loss_added", "nmse", "dead_fraction", "relative_reconstruction_bias", "l0")
    return {m: list(results.values(series.at(k=k), m).values()) for m in metrics}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


RECIPE = Recipe(
    name="gsae",
    title="g-SAE vs TopK",
    paper="Olmo et al., Features that Make a Difference (arXiv 2411.10397), Fig. 4 and 5",
    grids=GRIDS,
    stages=stages,
    claims=claims,
    sections=(l0_sweep, value_modes, beta_drift, steering),
    steered=steered,
    longer=longer,
    needs_gradients=True,
    diagnostic_modes=True,
)
