"""The g-SAE recipe (Olmo et al., arXiv 2411.10397): TopK vs g-SAE at equal L0 (Fig. 4), the
latents sweep, dead latents and steering (Fig. 5), plus the β and value-mode sweeps.

Sweep (one training run per seed): at every L0 of the preset, TopK, the headline g-SAE (the
library's default: β_eff 1, selection-only values) and the literal reading of the paper's Fig. 1
(β_eff 0.3, augmented values); at the headline L0, g-SAEs for each β_eff with both value modes,
and both g-SAEs above with β tracked during training; on the first seed, TopK and the headline
g-SAE at other widths. Every g-SAE is evaluated in grad mode (the paper's: the gradient of the
clean forward, which sees the next token) and plain mode (no gradients: the learnt per-latent
gains of augmented values, TopK on z for selection-only values); augmented g-SAEs also in
plain-uncorrected mode (β = 0 on the raw pre-activations, what plain mode was before the gains).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saekit.recipes.base import Analysis, AnalysisContext, Figure, Recipe, Stage, StageContext, spec
from saekit.recipes.claims import Claim, Point
from saekit.recipes.compare import borrow_spread, per_key
from saekit.recipes.figures import Line, bar_figure, line_figure, sweep_line
from saekit.recipes.presets import Preset
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range, percent
from saekit.train.metrics import METRICS_FILE, read_metrics
from saekit.train.spec import parse_spec
from saekit.train.variants.gsae import DEFAULT_BETA_EFF

UNCORRECTED = "plain-uncorrected"
SOURCE = "Olmo et al. 2024, abstract and Fig. 4 [V: abstract]"
GRAD_NOTE = "grad mode sees the next token: its gradient includes the loss of the token predicted"


@dataclass(frozen=True)
class GSAEArm:
    """One g-SAE of the L0 sweep: its β_eff and value mode (β fixed at initialisation)."""

    label: str
    beta_eff: float
    selection_only: bool

    def spec(self, k: int, latents: int, beta_tracking: bool = False) -> str:
        return gsae_spec(k, latents, self.beta_eff, self.selection_only, beta_tracking)

    def options(self) -> dict[str, Any]:
        """The options that single out this arm's rows (any k and width)."""
        return {
            "beta_eff": self.beta_eff,
            "selection_only": self.selection_only,
            "beta_tracking": False,
        }

    def matches(self, options: dict[str, Any]) -> bool:
        """Whether an SAE with these options is this arm (at some k and width)."""
        return all(options.get(key) == value for key, value in self.options().items())

    def series(self, mode: str, **options: Any) -> Series:
        return Series(f"{self.label} [{mode}]", "gsae", mode, {**self.options(), **options})


# The library's default g-SAE (finding 6 of docs/recipes.md), and the paper's Fig. 1 read
# literally (augmented values) at the β_eff of the first measurements.
HEADLINE = GSAEArm(f"g-SAE β_eff {DEFAULT_BETA_EFF:g}", DEFAULT_BETA_EFF, selection_only=True)
AUGMENTED = GSAEArm("g-SAE β_eff 0.3 augmented", 0.3, selection_only=False)
ARMS = (HEADLINE, AUGMENTED)


def gsae_spec(
    k: int, latents: int, beta_eff: float, selection_only: bool, beta_tracking: bool = False
) -> str:
    return spec(
        "gsae",
        k=k,
        latents=latents,
        beta_eff=beta_eff,
        beta_tracking=beta_tracking,
        selection_only=selection_only,
    )


class GSAERecipe(Recipe):
    name = "gsae"
    title = "g-SAE vs TopK"
    paper = "Olmo et al., Features that Make a Difference (arXiv 2411.10397), Fig. 4 and 5"
    needs_gradients = True
    steered_per_seed = 2  # TopK and g-SAE at the headline L0
    diagnostic_modes = True  # augmented g-SAEs also without their plain-mode gains

    def stages(self, preset: Preset) -> list[Stage]:
        return [Stage("main", self.specs)]

    def specs(self, context: StageContext) -> list[str]:
        preset, d = context.preset, context.d_in
        latents, k0 = preset.latents(d), preset.headline_k
        specs = []
        for k in preset.gsae_k:
            specs += [spec("topk", k=k, latents=latents), *(arm.spec(k, latents) for arm in ARMS)]
        for beta_eff in preset.beta_effs:
            for selection_only in (True, False):
                specs.append(gsae_spec(k0, latents, beta_eff, selection_only))
        specs += [arm.spec(k0, latents, beta_tracking=True) for arm in ARMS]
        if context.seed == preset.seeds[0]:
            for factor in preset.latents_factors:
                width = preset.latents(d, factor)
                specs += [spec("topk", k=k0, latents=width), HEADLINE.spec(k0, width)]
        return list(dict.fromkeys(specs))

    def steers(self, variant: str, options: dict[str, Any], preset: Preset, d_in: int) -> bool:
        headline = options.get("k") == preset.headline_k and options["latents"] == preset.latents(
            d_in
        )
        if variant == "topk":
            return headline
        return variant == "gsae" and headline and HEADLINE.matches(options)

    def analyse(self, results: Results, context: AnalysisContext) -> Analysis:
        preset = context.preset
        latents, k0 = preset.latents(context.d_in), preset.headline_k
        topk = Series("TopK", "topk", "inference", {"latents": latents})
        grad = HEADLINE.series("grad", latents=latents)
        plain = HEADLINE.series("plain", latents=latents)
        augmented = [AUGMENTED.series(m, latents=latents) for m in ("grad", "plain", UNCORRECTED)]
        analysis = Analysis()
        self._fig4(
            results, context, analysis, topk, [grad, plain, *augmented], [topk, grad, augmented[0]]
        )
        self._modes_table(results, context, analysis, latents, k0)
        self._beta_drift(results, context, analysis, k0, latents)
        self._steering(results, context, analysis, topk, grad)
        analysis.claims = self._claims(results, topk, grad, plain, augmented[0], k0)
        return analysis

    # -- Fig. 4: L0 sweep, latents sweep, dead latents -------------------------------------------

    def _fig4(
        self,
        results: Results,
        context: AnalysisContext,
        analysis: Analysis,
        topk: Series,
        g_saes: list[Series],
        dead: list[Series],
    ) -> None:
        """L0 sweep of TopK and each g-SAE series; `dead`: the series of the dead-latents bars."""
        series = [topk, *g_saes]
        line_figure(
            context.figures_dir / "gsae_fig4_l0.png",
            [
                (
                    "loss added (nats/token)",
                    "L0 vs loss added",
                    _lines(results, series, "loss_added"),
                ),
                ("NMSE", "L0 vs NMSE", _lines(results, series, "nmse")),
            ],
            "L0",
            f"TopK vs g-SAE, {topk.options['latents']:,} latents (Fig. 4)",
        )
        k0 = context.preset.headline_k
        width_series = [
            Series("TopK", "topk", "inference", {"k": k0}),
            HEADLINE.series("grad", k=k0),
            HEADLINE.series("plain", k=k0),
        ]
        line_figure(
            context.figures_dir / "gsae_fig4_latents.png",
            [
                (
                    "loss added (nats/token)",
                    f"L0 = {k0}",
                    [
                        sweep_line(results, s, "loss_added", "latents", "latents")
                        for s in width_series
                    ],
                )
            ],
            "latents",
            "Loss added vs number of latents (Fig. 4)",
        )
        ks = sorted({r.options["k"] for r in topk.rows(results.rows)})
        bar_figure(
            context.figures_dir / "gsae_dead.png",
            [f"L0 {k}" for k in ks],
            {
                s.label: [
                    100
                    * _mean(results.values(s, "dead_fraction", lambda r, k=k: r.options["k"] == k))
                    for k in ks
                ]
                for s in dead
            },
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
        analysis.sections.append(
            "### L0 sweep (Fig. 4)\n\n"
            f"{topk.options['latents']:,} latents, β fixed at initialisation. {HEADLINE.label}: "
            "selection-only values (the library's default); "
            f"{AUGMENTED.label}: augmented values (the paper's Fig. 1 read literally). "
            f"{GRAD_NOTE.capitalize()}; plain mode uses no gradient (TopK on the pre-activations "
            "for selection-only values; each latent's code scaled by its learnt gain for augmented "
            "ones); plain-uncorrected is β = 0 on the raw pre-activations.\n\n"
            + markdown_table(["L0", "SAE [mode]", "loss added", "NMSE", "dead", "γ"], rows)
        )
        analysis.figures += [
            Figure("gsae_fig4_l0.png", "L0 vs loss added and NMSE, TopK vs g-SAE in each mode"),
            Figure("gsae_fig4_latents.png", f"loss added vs number of latents at L0 = {k0}"),
            Figure("gsae_dead.png", "dead latents on held-out tokens (g-SAEs in grad mode)"),
        ]

    # -- β and value modes at the headline L0 ------------------------------------------------------

    def _modes_table(
        self, results: Results, context: AnalysisContext, analysis: Analysis, latents: int, k0: int
    ) -> None:
        variants = sorted(
            {
                (r.options["beta_eff"], r.options["selection_only"], r.options["beta_tracking"])
                for r in results.select("gsae", k=k0, latents=latents)
            }
        )
        rows, findings = [], []
        for beta_eff, selection_only, tracking in variants:
            options = {
                "k": k0,
                "latents": latents,
                "beta_eff": beta_eff,
                "selection_only": selection_only,
                "beta_tracking": tracking,
            }
            by_mode = {
                mode: _values(results, Series(mode, "gsae", mode, options), k0)
                for mode in ("grad", "plain", UNCORRECTED)
            }
            rows.append(
                [
                    f"{beta_eff:g}",
                    "selection-only" if selection_only else "augmented",
                    "tracked" if tracking else "at init",
                    *[mean_range(by_mode[m]["loss_added"]) for m in by_mode],
                    *[mean_range(by_mode[m]["nmse"]) for m in by_mode],
                    mean_range(by_mode[UNCORRECTED]["relative_reconstruction_bias"]),
                    mean_range(by_mode["plain"]["relative_reconstruction_bias"]),
                ]
            )
            findings.append(
                {
                    "options": options,
                    **{
                        mode: {key: values for key, values in by_mode[mode].items()}
                        for mode in by_mode
                    },
                }
            )
        topk = _values(results, Series("TopK", "topk", "inference", {"latents": latents}), k0)
        analysis.sections.append(
            f"### β, value mode and β tracking at L0 = {k0}\n\n"
            f"TopK at this L0: loss added {mean_range(topk['loss_added'])}, NMSE "
            f"{mean_range(topk['nmse'])}.\n\n"
            + markdown_table(
                [
                    "β_eff",
                    "values",
                    "β",
                    "loss added grad",
                    "loss added plain",
                    "loss added uncorr.",
                    "NMSE grad",
                    "NMSE plain",
                    "NMSE uncorr.",
                    "γ uncorr.",
                    "γ plain",
                ],
                rows,
            )
        )
        analysis.findings["modes_at_headline_l0"] = findings

    def _beta_drift(
        self,
        results: Results,
        context: AnalysisContext,
        analysis: Analysis,
        k0: int,
        latents: int,
    ) -> None:
        """β·median(a) over training, from the first seed's metrics, for every g-SAE at the
        headline L0 (table); the figure draws the two arms of the L0 sweep, fixed and tracked."""
        at_headline = {r.name for r in results.select("gsae", k=k0, latents=latents)}
        plotted = {
            parse_spec(arm.spec(k0, latents, tracking)).resolve(context.d_in).name
            for arm in ARMS
            for tracking in (False, True)
        }
        run = min(context.run_dirs.items())[1]
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
            return
        line_figure(
            context.figures_dir / "gsae_beta_drift.png",
            [("β · median(a) over top-k(z)", "g-SAE at the headline L0", lines)],
            "training tokens",
            "Effective β during training (β fixed at init vs tracked)",
            logx=False,
        )
        analysis.figures.append(
            Figure("gsae_beta_drift.png", "β · median(a) during training (first seed)")
        )
        analysis.sections.append(
            "### β drift (first seed)\n\n"
            + markdown_table(
                ["g-SAE", "β·median(a), first logged steps", "at the end"],
                [[n, f"{d['first']:.3g}", f"{d['last']:.3g}"] for n, d in drift.items()],
            )
        )
        analysis.findings["beta_drift"] = drift

    # -- Fig. 5: steering --------------------------------------------------------------------------

    def _steering(
        self,
        results: Results,
        context: AnalysisContext,
        analysis: Analysis,
        topk: Series,
        grad: Series,
    ) -> None:
        curves = {
            s.label: _steering_by_seed(results, s, context.preset.headline_k) for s in (topk, grad)
        }
        alphas = context.preset.steering_alphas
        if not all(curves.values()):
            return
        panels = []
        for key, ylabel in (
            ("target_logit_gain", "mean target-logit gain"),
            ("p_others", "probability added to other tokens"),
        ):
            lines = []
            for label, by_seed in curves.items():
                per_alpha = [
                    [seed_curve[a][key] for seed_curve in by_seed.values()] for a in alphas
                ]
                lines.append(
                    Line(
                        label.replace(" [grad]", ""),
                        list(alphas),
                        [_mean(v) for v in per_alpha],
                        [min(v) for v in per_alpha],
                        [max(v) for v in per_alpha],
                    )
                )
            panels.append((ylabel, ylabel, lines))
        line_figure(
            context.figures_dir / "gsae_fig5_steering.png",
            panels,
            "α (added α · E‖x‖ · d̂_i)",
            f"Steering with single latents at L0 = {context.preset.headline_k} (Fig. 5)",
        )
        analysis.figures.append(
            Figure(
                "gsae_fig5_steering.png", "steering: target-logit gain and off-target probability"
            )
        )

    # -- claims ------------------------------------------------------------------------------------

    def _claims(
        self,
        results: Results,
        topk: Series,
        grad: Series,
        plain: Series,
        augmented_grad: Series,
        k0: int,
    ) -> list[Claim]:
        def by_k(row):
            return row.options["k"]

        def l0_label(k):
            return f"L0 {k}"

        claims = [
            Claim(
                "gsae",
                "lower loss added than TopK at equal L0",
                SOURCE,
                f"{grad.label} vs TopK",
                "loss added (nats/token)",
                per_key(results, grad, topk, "loss_added", by_k, l0_label),
                note=GRAD_NOTE,
            ),
            Claim(
                "gsae",
                "lower loss added than TopK at equal L0, without gradients at inference",
                "our fair variant of the claim (plain mode)",
                f"{plain.label} vs TopK",
                "loss added (nats/token)",
                per_key(results, plain, topk, "loss_added", by_k, l0_label),
            ),
            Claim(
                "gsae",
                "lower loss added than TopK at equal L0, with augmented values",
                "Olmo et al. 2024, Fig. 1 read literally (values ReLU(z ∘ (1 + β a))) [R]",
                f"{augmented_grad.label} vs TopK",
                "loss added (nats/token)",
                per_key(results, augmented_grad, topk, "loss_added", by_k, l0_label),
                note=GRAD_NOTE,
            ),
            Claim(
                "gsae",
                "fewer dead latents than TopK",
                "Olmo et al. 2024 [S: summaries]",
                f"{grad.label} vs TopK",
                "dead fraction on held-out tokens",
                per_key(results, grad, topk, "dead_fraction", by_k, l0_label),
                digits=2,
            ),
        ]
        width_grad = HEADLINE.series("grad", k=k0)
        width_topk = Series("TopK", "topk", "inference", {"k": k0})
        claims.append(
            Claim(
                "gsae",
                "lower loss added than TopK at every number of latents",
                "Olmo et al. 2024, Fig. 4 [R: the figure's content was not retrieved]",
                f"{grad.label} vs TopK at L0 {k0}",
                "loss added (nats/token)",
                per_key(
                    results,
                    width_grad,
                    width_topk,
                    "loss_added",
                    lambda r: r.options["latents"],
                    lambda w: f"{w:,} latents",
                ),
                note="single-seed widths borrow the spread of the repeated-seed width",
            )
        )
        claims.append(self._steering_claim(results, topk, grad, k0))
        return claims

    def _steering_claim(self, results: Results, topk: Series, grad: Series, k0: int) -> Claim:
        curves = {s.label: _steering_by_seed(results, s, k0) for s in (topk, grad)}
        points = []
        if all(curves.values()):
            seeds = sorted(set(curves[topk.label]) & set(curves[grad.label]))
            alphas = sorted(next(iter(curves[grad.label].values())))
            for alpha in alphas:
                points.append(
                    Point(
                        f"α {alpha:g}",
                        [curves[grad.label][s][alpha]["target_logit_gain"] for s in seeds],
                        [curves[topk.label][s][alpha]["target_logit_gain"] for s in seeds],
                        higher_is_better=True,
                    )
                )
        return Claim(
            "gsae",
            "latents steer the LM more effectively than TopK's",
            "Olmo et al. 2024, abstract and Fig. 5 [V: abstract; R: protocol]",
            f"{HEADLINE.label} vs TopK at L0 {k0}",
            "mean target-logit gain",
            borrow_spread(points),
            note="probability added to other tokens is in the figure",
        )


def _lines(results: Results, series: list[Series], metric: str) -> list[Line]:
    return [sweep_line(results, s, metric, "k") for s in series]


def _values(results: Results, series: Series, k: int) -> dict[str, list[float]]:
    """Per metric, the values of the series' rows at k, one per seed."""
    metrics = ("loss_added", "nmse", "dead_fraction", "relative_reconstruction_bias", "l0")
    return {
        m: list(results.values(series, m, lambda r: r.options["k"] == k).values()) for m in metrics
    }


def _steering_by_seed(results: Results, series: Series, k: int) -> dict[int, dict[float, dict]]:
    """seed -> α -> steering numbers of the series' SAE at k (and its base width)."""
    out = {}
    for row in series.rows(results.rows):
        if row.options["k"] == k and row.steering and row.steering.get("per_alpha"):
            out[row.seed] = {entry["alpha"]: entry for entry in row.steering["per_alpha"]}
    return out


def _mean(values) -> float:
    values = list(values.values()) if isinstance(values, dict) else list(values)
    return sum(values) / len(values) if values else float("nan")
