"""The KL fine-tune's step for one dictionary on one batch of contexts (docs/algorithms.md §15).

The clean model's pass over the batch (`clean_pass`, shared by every dictionary fine-tuned on
it) gives the activations, the clean next-token distributions and, for g-SAEs, the loss
gradients. A dictionary then runs its variant's training forward on the clean sources (positions
1 onwards, in its training space: each hook times its scale), its reconstruction is spliced into
the model in place of its targets (the splice `sae eval` measures, with autograd on), and

    L = ½ (R + α · KL) + the variant's other terms,   α = sg(R / KL), re-set every step,

with R the variant's reconstruction term on the batch and KL the mean over positions 1 to
T − 2 of KL(clean ‖ spliced) — the `kl` of `sae eval`. Only the dictionary's parameters train:
the LM's are frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.evaluate import reconstruction_edits, tail_rows
from saekit.lm import LanguageModel, edited_logits_with_grad, next_token_stats, run_batch
from saekit.train import Block, Dictionary, LossTerm, Member, SAEConfig, Shape

LOSS = "½(R + α·KL(clean ‖ spliced)) + the variant's other terms; α = sg(R / KL), every step"
KL_FLOOR = 1e-9  # below it the KL is rounding noise: α·KL is held at R and passes no gradient


@dataclass(frozen=True)
class Terms:
    """A variant's loss terms as the fine-tune uses them: its reconstruction term (balanced
    against the KL), the terms kept at their full weight (penalty warm-ups are over), and the
    names of those left out (AuxK and aux_zipf: reviving dead latents is training's job)."""

    reconstruction: LossTerm
    kept: tuple[LossTerm, ...]
    left_out: tuple[str, ...]

    @classmethod
    def of(cls, sae: Dictionary) -> Terms:
        """The terms of the dictionary's variant."""
        terms = sae.activation.loss_terms()
        reconstructions = [term for term in terms if term.reconstruction]
        assert len(reconstructions) == 1, "a variant has one reconstruction term"
        kept = tuple(
            dataclasses.replace(term, warmup=0.0)
            for term in terms
            if not term.reconstruction and not term.revives_latents
        )
        left_out = tuple(term.name for term in terms if term.revives_latents)
        return cls(reconstructions[0], kept, left_out)

    @property
    def used(self) -> list[LossTerm]:
        return [self.reconstruction, *self.kept]

    def describe(self) -> dict[str, object]:
        return {
            "reconstruction": self.reconstruction.name,
            "kept": [term.name for term in self.kept],
            "left_out": list(self.left_out),
        }


@dataclass(frozen=True)
class CleanBatch:
    """The clean model's pass over one batch of contexts."""

    tokens_BT: Tensor
    activations: dict[str, Tensor]  # [B, T, D] by hook
    gradients: dict[str, Tensor]  # [B, T, D] by hook, where a g-SAE needs them
    logits_BTV: Tensor
    ce_BT: Tensor  # next-token CE of the predictions at positions 1 to T − 2


def clean_pass(
    model: LanguageModel, tokens_BT: Tensor, hooks: list[str], gradient_hooks: Collection[str]
) -> CleanBatch:
    """The clean forward (and, for `gradient_hooks`, the store's gradient convention)."""
    out = run_batch(model.bridge, tokens_BT, hooks, gradients=gradient_hooks, keep_logits=True)
    assert out.logits is not None
    return CleanBatch(tokens_BT, out.activations, out.gradients, out.logits, out.loss[:, 1:-1])


def balanced_kl(reconstruction: Tensor, kl: Tensor) -> tuple[Tensor, Tensor]:
    """(½(R + α·KL), α) with α = sg(R / KL): the KL rescaled to R's magnitude, weighed equally
    (Karvonen 2025). Its gradient is ½∇R + ½ (R/KL) ∇KL."""
    kl = kl.clamp_min(KL_FLOOR)
    alpha = (reconstruction / kl).detach()
    return 0.5 * (reconstruction + alpha * kl), alpha


def _block_scales(blocks: tuple[Block, ...], cfg: SAEConfig, like: Tensor) -> Tensor:
    """Each element's training scale in a concatenation of hooks' blocks: [Σ d]."""
    return torch.cat([like.new_full((block.d,), cfg.scale_of(block.hook)) for block in blocks])


class Finetuning:
    """One saved dictionary being fine-tuned, in its training space (the saved SAE's folded
    input scales are unfolded, and folded again when it is saved)."""

    def __init__(self, member: Member, cfg: SAEConfig, terms: Terms) -> None:
        self.member, self.cfg, self.terms = member, cfg, terms
        shape = self.shape
        self.source_scale_D = _block_scales(shape.sources, cfg, member.sae.b_dec)
        self.target_scale_E = _block_scales(shape.targets, cfg, member.sae.b_dec)

    @property
    def sae(self) -> Dictionary:
        return self.member.sae

    @property
    def shape(self) -> Shape:
        return self.member.sae.shape

    @property
    def selects_by_gradient(self) -> bool:
        """Whether the variant reads the loss gradient to pick its codes (g-SAE). The loss-aware
        term is not fine-tuned (the KL stands in for it), so it needs none."""
        return self.member.activation.needs_gradients

    @property
    def gradient_hooks(self) -> tuple[str, ...]:
        """Where the clean pass must give loss gradients: a g-SAE's targets."""
        return self.shape.target_hooks if self.selects_by_gradient else ()

    def step(self, model: LanguageModel, clean: CleanBatch, step: int) -> None:
        """One optimiser step of the fine-tune on the batch `clean` was run on."""
        shape, member = self.shape, self.member
        x_ND = tail_rows(clean.activations, shape.source_hooks) * self.source_scale_D
        y_NE = None
        if not shape.reconstructs_its_input:
            y_NE = tail_rows(clean.activations, shape.target_hooks) * self.target_scale_E
        g_NE = None
        if self.selects_by_gradient:
            g_NE = tail_rows(clean.gradients, shape.target_hooks) / self.target_scale_E
        fwd = member.forward(x_ND, g_NE, step, y_NE)
        values = member.term_values(fwd, step)
        kl, ce_spliced = self.spliced_kl(model, clean, fwd.y_hat_BE)
        loss, alpha = balanced_kl(values[self.terms.reconstruction.name], kl)
        progress = member.plan.progress(step)
        for term in self.terms.kept:
            loss = loss + term.weight(progress) * values[term.name]
        logged = {f"loss/{name}": value for name, value in values.items()}
        logged |= {"loss/kl": kl, "alpha": alpha, "loss_added": ce_spliced - clean.ce_BT.mean()}
        member.update(fwd, loss, logged)

    def spliced_kl(
        self, model: LanguageModel, clean: CleanBatch, y_hat_NE: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(mean KL(clean ‖ spliced), mean spliced CE) over positions 1 to T − 2 with the
        reconstruction `y_hat_NE` (training space) spliced in, differentiable w.r.t. it."""
        edits = reconstruction_edits(self.shape, y_hat_NE / self.target_scale_E)
        logits_BTV = edited_logits_with_grad(model.bridge, clean.tokens_BT, edits)
        ce_BT, kl_BT = next_token_stats(logits_BTV, clean.tokens_BT, clean.logits_BTV)
        assert kl_BT is not None
        return kl_BT.mean(), ce_BT.mean()
