"""The g-SAE recipe (Olmo et al., arXiv 2411.10397): TopK vs g-SAE at equal L0 (Fig. 4), the
latents sweep, dead latents and steering (Fig. 5), plus the β and value-mode sweeps.

Sweep (one training run per seed): TopK and g-SAE (β_eff 0.3, augmented values) at every L0 of
the preset; at the headline L0, g-SAEs for each β_eff with augmented and selection-only values,
and with β tracked during training; on the first seed, both at other widths. Every g-SAE is
evaluated in grad mode (the paper's: the gradient of the clean forward, which sees the next
token), plain mode (no gradients: the learnt per-latent gains) and plain-uncorrected (β = 0 on
the raw pre-activations, what plain mode was before the gains).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from saekit.recipes.base import Analysis, AnalysisContext, Figure, Recipe, Stage, StageContext, spec
from saekit.recipes.claims import Claim, Point
from saekit.recipes.compare import borrow_spread, per_key
from saekit.recipes.figures import Line, bar_figure, line_figure, sweep_line
from saekit.recipes.presets import Preset
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range, percent
from saekit.train.metrics import METRICS_FILE, read_metrics

HEADLINE_BETA_EFF = 0.3  # the g-SAE of the L0 and latents sweeps (the notes' middle value)
TRACKED_BETA_EFFS = (0.3, 1.0)
UNCORRECTED = "plain-uncorrected"
SOURCE = "Olmo et al. 2024, abstract and Fig. 4 [V: abstract]"
GRAD_NOTE = "grad mode sees the next token: its gradient includes the loss of the token predicted"


def gsae_spec(k: int, latents: int, beta_eff: float, **flags: bool) -> str:
    return spec(
        "gsae",
        k=k,
        latents=latents,
        beta_eff=beta_eff,
        beta_tracking=flags.get("beta_tracking", False),
        selection_only=flags.get("selection_only", False),
    )


class GSAERecipe(Recipe):
    name = "gsae"
    title = "g-SAE vs TopK"
    paper = "Olmo et al., Features that Make a Difference (arXiv 2411.10397), Fig. 4 and 5"
    needs_gradients = True
    steered_per_seed = 2  # TopK and g-SAE at the headline L0

    def stages(self, preset: Preset) -> list[Stage]:
        return [Stage("main", self.specs)]

    def specs(self, context: StageContext) -> list[str]:
        preset, d = context.preset, context.d_in
        latents, k0 = preset.latents(d), preset.headline_k
        specs = []
        for k in preset.gsae_k:
            specs += [spec("topk", k=k, latents=latents), gsae_spec(k, latents, HEADLINE_BETA_EFF)]
        for beta_eff in preset.beta_effs:
            for selection_only in (False, True):
                specs.append(gsae_spec(k0, latents, beta_eff, selection_only=selection_only))
        specs += [gsae_spec(k0, latents, b, beta_tracking=True) for b in TRACKED_BETA_EFFS]
        if context.seed == preset.seeds[0]:
            for factor in preset.latents_factors:
                width = preset.latents(d, factor)
                specs += [
                    spec("topk", k=k0, latents=width),
                    gsae_spec(k0, width, HEADLINE_BETA_EFF),
                ]
        return list(dict.fromkeys(specs))

    def extra_modes(self, sae: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if sae.cfg.variant != "gsae":
            return {}
        uncorrected = copy.deepcopy(sae)
        uncorrected.activation.forget_plain_gain_()
        return {UNCORRECTED: uncorrected}

    def steers(self, variant: str, options: dict[str, Any], preset: Preset, d_in: int) -> bool:
        headline = options.get("k") == preset.headline_k and options["latents"] == preset.latents(
            d_in
        )
        if variant == "topk":
            return headline
        return variant == "gsae" and headline and _is_headline_gsae(options)

    def analyse(self, results: Results, context: AnalysisContext) -> Analysis:
        preset = context.preset
        latents, k0 = preset.latents(context.d_in), preset.headline_k
        headline = {"beta_eff": HEADLINE_BETA_EFF, "selection_only": False, "beta_tracking": False}
        topk = Series("TopK", "topk", "inference", {"latents": latents})
        label = f"g-SAE β_eff {HEADLINE_BETA_EFF}"
        grad = Series(f"{label} [grad]", "gsae", "grad", {"latents": latents, **headline})
        plain = Series(f"{label} [plain]", "gsae", "plain", {"latents": latents, **headline})
        raw = Series(
            f"{label} [{UNCORRECTED}]", "gsae", UNCORRECTED, {"latents": latents, **headline}
        )
        analysis = Analysis()
        self._fig4(results, context, analysis, [topk, grad, plain, raw])
        self._modes_table(results, context, analysis, latents, k0)
        self._beta_drift(context, analysis, k0, latents)
        self._steering(results, context, analysis, topk, grad)
        analysis.claims = self._claims(results, topk, grad, plain, k0)
        return analysis

    # -- Fig. 4: L0 sweep, latents sweep, dead latents -------------------------------------------

    def _fig4(
        self, results: Results, context: AnalysisContext, analysis: Analysis, series: list[Series]
    ) -> None:
        topk, grad = series[0], series[1]
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
            f"TopK vs g-SAE, {series[0].options['latents']:,} latents (Fig. 4)",
        )
        k0 = context.preset.headline_k
        width_series = [
            Series("TopK", "topk", "inference", {"k": k0}),
            Series(grad.label, "gsae", "grad", {**_options_without(grad, "latents"), "k": k0}),
            Series(
                grad.label.replace("grad", "plain"),
                "gsae",
                "plain",
                {**_options_without(grad, "latents"), "k": k0},
            ),
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
                for s in (topk, grad)
            },
            "% of latents never firing on held-out tokens",
            "Dead latents",
        )
        rows = []
        for k in ks:
            at_k = {s.label: _values(results, s, k) for s in series}
            rows.append(
                [f"{k}"]
                + [mean_range(at_k[s.label]["loss_added"]) for s in series]
                + [mean_range(at_k[s.label]["nmse"]) for s in series]
                + [
                    percent(at_k[topk.label]["dead_fraction"]),
                    percent(at_k[grad.label]["dead_fraction"]),
                ]
                + [mean_range(at_k[s.label]["relative_reconstruction_bias"]) for s in series[2:]]
            )
        names = ["TopK", "grad", "plain", "uncorr."]
        analysis.sections.append(
            "### L0 sweep (Fig. 4)\n\n"
            f"g-SAE β_eff {HEADLINE_BETA_EFF}, augmented values, β fixed at initialisation; "
            f"{topk.options['latents']:,} latents. {GRAD_NOTE.capitalize()}; plain mode uses no "
            "gradient (each latent's code scaled by its learnt gain); plain-uncorrected is β = 0 "
            "on the raw pre-activations.\n\n"
            + markdown_table(
                ["L0"]
                + [f"loss added {n}" for n in names]
                + [f"NMSE {n}" for n in names]
                + ["dead TopK", "dead g-SAE", "γ plain", "γ uncorr."],
                rows,
            )
        )
        analysis.figures += [
            Figure("gsae_fig4_l0.png", "L0 vs loss added and NMSE, TopK vs g-SAE in each mode"),
            Figure("gsae_fig4_latents.png", f"loss added vs number of latents at L0 = {k0}"),
            Figure("gsae_dead.png", "dead latents on held-out tokens (g-SAE in grad mode)"),
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
        self, context: AnalysisContext, analysis: Analysis, k0: int, latents: int
    ) -> None:
        """β·median(a) over training, from the first seed's metrics, at the headline L0."""
        run = min(context.run_dirs.items())[1]
        records = [r for r in read_metrics(run / METRICS_FILE) if "beta_eff_measured" in r]
        by_sae: dict[str, list[tuple[int, float]]] = {}
        for record in records:
            by_sae.setdefault(record["sae"], []).append(
                (record["tokens"], record["beta_eff_measured"])
            )
        lines, drift = [], {}
        for name, points in sorted(by_sae.items()):
            if f"-k{k0}-" not in name or f"-{latents}" not in name or "selection_only" in name:
                continue
            tokens, values = zip(*points, strict=True)
            lines.append(Line(name, list(tokens), list(values), list(values), list(values)))
            drift[name] = {"first": values[0], "last": values[-1]}
        if not lines:
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
        self, results: Results, topk: Series, grad: Series, plain: Series, k0: int
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
                "fewer dead latents than TopK",
                "Olmo et al. 2024 [S: summaries]",
                f"{grad.label} vs TopK",
                "dead fraction on held-out tokens",
                per_key(results, grad, topk, "dead_fraction", by_k, l0_label),
                digits=2,
            ),
        ]
        width_grad = Series(
            grad.label, "gsae", "grad", {**_options_without(grad, "latents"), "k": k0}
        )
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
            f"g-SAE β_eff {HEADLINE_BETA_EFF} vs TopK at L0 {k0}",
            "mean target-logit gain",
            borrow_spread(points),
            note="probability added to other tokens is in the figure",
        )


def _is_headline_gsae(options: dict[str, Any]) -> bool:
    return (
        options.get("beta_eff") == HEADLINE_BETA_EFF
        and not options.get("selection_only")
        and not options.get("beta_tracking")
    )


def _options_without(series: Series, key: str) -> dict[str, Any]:
    return {k: v for k, v in series.options.items() if k != key}


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
