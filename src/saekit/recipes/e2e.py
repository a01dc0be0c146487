"""The loss-aware recipe: SAEs judged by the loss they add to the LM rather than by their
reconstruction error — Braun, Taylor, Goldowsky-Dill, Sharkey (arXiv 2405.12241: end-to-end SAEs
reach a local SAE's loss added at a far lower L0) and Karvonen (arXiv 2503.17272: most of that
from a short KL fine-tune of a local SAE) — and the store-only estimate of the loss added.

One run per seed, every SAE on the same batches: at every L0 of the grid, the local TopK SAE, the
same with the loss-aware objective (`loss_aware=w`: the squared first-order loss change, built
from the store's gradients — our store-only stand-in for end-to-end training) and the default
g-SAE beside them; after training, each local TopK SAE is fine-tuned on the spliced LM's KL to
the clean LM plus its reconstruction loss for a small share of its training tokens (`sae
finetune`, declared by the train set), and the fine-tuned SAEs are new SAEs of the run,
evaluated like the others. Every SAE's row carries the store-only estimate of its loss added
beside the online one, so the recipe also measures how well the estimate ranks the SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.recipes.compare import rank_agreement
from saekit.recipes.declarations import (
    Arm,
    ClaimSpec,
    Figure,
    Finetune,
    Recipe,
    Scope,
    Section,
    Stage,
    TrainSet,
    View,
)
from saekit.recipes.figures import line_figure, sweep_line
from saekit.recipes.gsae import HEADLINE
from saekit.recipes.judge import L0RatioAtMatched, PerKey, RankAgreement
from saekit.recipes.results import Results, Series
from saekit.recipes.tables import markdown_table, mean_range
from saekit.train import modes


@dataclass(frozen=True)
class E2EGrid:
    """The e2e recipe's sweep at one preset."""

    k: tuple[int, ...]  # the L0 grid of every arm
    loss_aware: float  # weight of the loss-aware arm's term (scale-free, docs/variants.md)
    finetune_share: float  # the KL fine-tune's tokens, as a share of the SAE's training tokens
    finetune_contexts: int = 8  # contexts per fine-tune step
    # the estimate "ranks the SAEs as online loss added does" when Spearman's ρ exceeds this
    rank_threshold: float = 0.8


GRIDS = {
    "small": E2EGrid(k=(8, 16, 32), loss_aware=0.3, finetune_share=0.1),
    "paper": E2EGrid(k=(16, 32, 64, 128), loss_aware=0.3, finetune_share=0.05),
}

BRAUN = "Braun et al. 2024, Table 1 (GPT-2 layer 6: L0 27.5 vs 69.4 at equal CE increase) [V]"
KARVONEN = "Karvonen 2025, abstract (the CE-loss gap 20–50 % smaller) [V: abstract]"
ESTIMATE = "issue #22: the first-order + empirical-Fisher estimate, measured before [ours]"
LOSS = ("loss_added", "loss added (nats/token)")
KL = ("kl", "KL(clean ‖ spliced) (nats/token)")
WORDS = {"loss_added": "loss added", "kl": "spliced KL"}

LOCAL = Arm("local TopK", "topk")
GSAE_LABEL = f"default g-SAE [{modes.PLAIN}]"


def loss_aware(scope: Scope) -> Arm:
    """TopK with the loss-aware term at the grid's weight."""
    weight = scope.grid.loss_aware
    return Arm(f"TopK loss-aware {weight:g}", "topk", {"loss_aware": weight})


def finetune(scope: Scope) -> Finetune:
    return Finetune(scope.grid.finetune_share, scope.grid.finetune_contexts)


def finetune_tokens(scope: Scope) -> int:
    """The tokens each fine-tune sees (at the preset's context size)."""
    preset = scope.preset
    return finetune(scope).tokens(preset.train_tokens, preset.context_size)


def stages(scope: Scope) -> list[Stage]:
    k = scope.grid.k
    return [
        Stage(
            "main",
            (
                TrainSet((LOCAL,), "k", k, finetune=finetune(scope)),
                TrainSet((loss_aware(scope), HEADLINE), "k", k),
            ),
        )
    ]


@dataclass(frozen=True)
class AllSeries:
    """Each arm's rows at the base width."""

    local: Series
    loss_aware: Series
    finetuned: Series
    gsae: Series
    gsae_grad: Series
    every: Series  # every SAE of the recipe in every mode it was evaluated in

    @property
    def arms(self) -> tuple[Series, ...]:
        return (self.local, self.loss_aware, self.finetuned, self.gsae, self.gsae_grad)


def series(scope: Scope) -> AllSeries:
    at = {"latents": scope.width}
    local = LOCAL.series(loss_aware=0.0, **at)
    share = f"{scope.grid.finetune_share:.0%}"
    return AllSeries(
        local=local,
        loss_aware=loss_aware(scope).series(**at),
        finetuned=local.fine_tuned(f"local TopK + KL fine-tune ({share} of the tokens)"),
        gsae=HEADLINE.series(modes.PLAIN, GSAE_LABEL, **at),
        gsae_grad=HEADLINE.series(modes.GRAD, f"default g-SAE [{modes.GRAD}]", **at),
        every=Series("every SAE of the recipe, each mode", None, None, {}, finetuned=None),
    )


def claims(scope: Scope) -> list[ClaimSpec]:
    """The papers' two claims on the loss added, the estimate's ranking, then the two claims
    again on the spliced KL."""
    grid = scope.grid
    by_kl = (
        " — by the spliced KL (what end-to-end training and the fine-tune minimise), far less "
        "noisy than the loss added on few tokens"
    )
    return [
        *_paper_claims(scope, *LOSS, ""),
        ClaimSpec(
            "The store-only estimate ranks the SAEs as the online loss added does",
            ESTIMATE, series(scope).every, series(scope).every, "loss_added_estimate",
            "Spearman ρ of the estimate with the online loss added",
            RankAgreement("loss_added", grid.rank_threshold),
            arms="every SAE of the recipe in each evaluated mode",
            note=f"threshold ρ ≥ {grid.rank_threshold:g}: holds when the seeds' mean ρ exceeds "
            "it by more than their range",
        ),
        *_paper_claims(scope, *KL, by_kl),
    ]  # fmt: skip


def _paper_claims(scope: Scope, metric: str, label: str, extra: str) -> list[ClaimSpec]:
    """Braun et al.'s and Karvonen's claims judged on `metric` (`extra` ends their notes)."""
    s, grid = series(scope), scope.grid
    words = WORDS[metric]
    return [
        ClaimSpec(
            f"An SAE trained against the LM's loss reaches the local SAE's {words} at a lower L0",
            BRAUN, s.loss_aware, s.local, metric, label, L0RatioAtMatched(),
            arms=f"{s.loss_aware.label} vs {s.local.label} (L0 ratio at matched {words})",
            note="end-to-end training replaced by the store-only loss-aware objective; a ratio "
            "below 1: the loss-aware SAE needs fewer latents" + extra,
        ),
        ClaimSpec(
            f"A short KL fine-tune of a local SAE lowers its {words} at equal L0",
            KARVONEN, s.finetuned, s.local, metric, label, PerKey("k", "L0 {}"),
            note=f"the fine-tune adds {grid.finetune_share:.0%} of the training tokens "
            f"({finetune_tokens(scope):,} per SAE, {grid.finetune_contexts} contexts per step) "
            "on the spliced LM's KL plus the reconstruction loss" + extra,
        ),
    ]  # fmt: skip


# -- report sections ------------------------------------------------------------------------------


def loss_vs_l0(results: Results, view: View) -> Section:
    """Loss added (online and estimated) against L0 per arm, the table and the ranking."""
    s, scope = series(view.scope), view.scope
    line_figure(
        view.figures_dir / "e2e_loss_l0.png",
        [
            (
                "loss added (nats/token)",
                "online: spliced into the LM",
                [sweep_line(results, arm, "loss_added", "k") for arm in s.arms],
            ),
            (
                "estimated loss added (nats/token)",
                "store-only estimate",
                [sweep_line(results, arm, "loss_added_estimate", "k") for arm in s.arms],
            ),
            (
                "KL(clean ‖ spliced) (nats/token)",
                "online: the spliced KL",
                [sweep_line(results, arm, "kl", "k") for arm in s.arms],
            ),
        ],
        "L0",
        f"Local vs loss-aware vs KL fine-tuned TopK, {scope.width:,} latents (points: k)",
    )
    metrics = ("l0", "loss_added", "loss_added_estimate", "kl", "nmse")
    rows = []
    for k in results.swept(s.local, "k"):
        for arm in s.arms:
            values = [list(results.values(arm.at(k=k), m).values()) for m in metrics]
            if any(values):
                rows.append([str(k), arm.label, *(mean_range(v) for v in values)])
    header = ["k", "SAE", "L0", "loss added", "estimate", "KL", "NMSE"]
    ranking = _ranking(results, s.every)
    text = (
        "### Loss added against L0\n\n"
        f"Every SAE has {scope.width:,} latents and saw the same batches; the KL fine-tune then "
        f"trained each local TopK SAE on {finetune_tokens(scope):,} more tokens "
        f"({scope.grid.finetune_share:.0%} of its training tokens), so its rows are the "
        f"local SAE's after fine-tuning. The loss-aware SAEs weigh the squared first-order loss "
        f"change at {scope.grid.loss_aware:g} (store-only: no LM in training). The g-SAE "
        f"is shown in {modes.PLAIN} mode (no gradients, as deployed) and in {modes.GRAD} mode "
        "(which sees the next token). 'estimate' is the store-only loss added (first order + "
        "½·mean squared first-order change), 'loss added' and 'KL' are measured online.\n\n"
        + markdown_table(header, rows)
        + "\n\n"
        + ranking[0]
    )
    return Section(
        text,
        [Figure("e2e_loss_l0.png", "online and estimated loss added, and the KL, against L0")],
        {"rank_correlation": ranking[1]},
    )


def _ranking(results: Results, every: Series) -> tuple[str, dict]:
    """How well the estimate (and its first-order term alone) ranks the SAEs, per seed."""
    found = {
        metric: rank_agreement(results, every, metric, "loss_added")
        for metric in ("loss_added_estimate", "loss_added_first_order")
    }
    rows = [
        [f"{seed}", str(found["loss_added_estimate"][seed][1])]
        + [f"{found[m][seed][0]:.3f}" if seed in found[m] else "–" for m in found]
        for seed in sorted(found["loss_added_estimate"])
    ]
    header = ["seed", "rows", "ρ estimate", "ρ first order alone"]
    findings = {m: {str(seed): rho for seed, (rho, _) in by.items()} for m, by in found.items()}
    return "Rank correlation with the online loss added:\n\n" + markdown_table(
        header, rows
    ), findings


RECIPE = Recipe(
    name="e2e",
    title="Loss-aware SAEs, the short KL fine-tune and the store-only loss estimate",
    paper=(
        "Braun et al., Identifying Functionally Important Features with End-to-End Sparse "
        "Dictionary Learning (arXiv 2405.12241); Karvonen, the short KL fine-tune of a "
        "locally trained SAE (arXiv 2503.17272)"
    ),
    grids=GRIDS,
    stages=stages,
    claims=claims,
    sections=(loss_vs_l0,),
    needs_gradients=True,
)
