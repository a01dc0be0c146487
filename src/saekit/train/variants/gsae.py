"""g-SAE: TopK whose ranking key weighs each latent by its effect on the LM loss
(docs/algorithms.md §5).

    a = |W_decᵀ g|            (g = ∂loss/∂x from the store, W_dec detached)
    s = z ∘ (1 + β a)         (the ranking key)
    I = TopK_k(s)             f_i = ReLU(z_i) on I (selection-only values, default)
                              f_i = ReLU(s_i) on I (augmented values: selection_only=false)

β has the units of 1/a; `beta_eff` sets it scale-free as β = beta_eff / median(a), the median
taken over the (token, latent) pairs in the top-k of z: once at initialisation, or — with
`beta_tracking` — from a moving average of that median over training batches, so that
β · median(a) stays beta_eff while the decoder learns (a grows as decoder columns align with
gradient directions). Every training step logs the measured β · median(a) as `beta_eff_measured`.

Selection-only values are the default: with augmented values (the literal reading of the paper's
Fig. 1) the g-SAE adds several times TopK's loss on a held-out LM, while selection-only values beat
TopK (docs/recipes.md, finding 6).

Inference with gradients (grad mode) is the training key. Without gradients (plain mode) the
gradient factor of augmented values is replaced by its expectation: each latent's code is scaled
by a gain m_i = Σ z_i f_i / Σ z_i² over the training batches where i was selected (a moving
average), the least-squares factor from the plain pre-activation to the code training gave; the
key is m ∘ z, the values ReLU(m ∘ z). With selection-only values m = 1 (plain mode is TopK on
z). The SAELens export folds m into the encoder rows, so it computes exactly plain mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saekit.train.sae import Dictionary
from saekit.train.sparse import Code, SparseCode, SparsePattern
from saekit.train.thresholds import WindowedEMA
from saekit.train.variants import modes
from saekit.train.variants.base import InferenceForm, Mode
from saekit.train.variants.options import SAEOptions, check
from saekit.train.variants.registry import register
from saekit.train.variants.topk import TopK, TopKOptions

DEFAULT_BETA_EFF = 1.0
EMA_DECAY = 0.999  # the window of the moving averages (see saekit.train.thresholds)


@dataclass(frozen=True)
class GSAEOptions(TopKOptions):
    beta: float | None = None  # β itself (units of 1/|d·g|)
    beta_eff: float | None = None  # or β scale-free: β = beta_eff / median(a); default 1
    beta_tracking: bool = False  # keep β·median(a) at beta_eff during training (needs beta_eff)
    selection_only: bool = True  # values ReLU(z); false: augmented values ReLU(s)

    HEADLINE: ClassVar[tuple[str, ...]] = ("k", "beta", "beta_eff")

    def __post_init__(self) -> None:
        check(self.beta is None or self.beta_eff is None, "give beta or beta_eff, not both")
        check(self.beta is None or self.beta >= 0, "beta must be >= 0")
        check(self.beta_eff is None or self.beta_eff >= 0, "beta_eff must be >= 0")
        check(
            self.beta is None or not self.beta_tracking,
            "beta_tracking keeps beta_eff fixed; give beta_eff instead of beta",
        )
        super().__post_init__()

    def resolve(self, d_in: int, default_lr: float | None) -> SAEOptions:
        resolved = super().resolve(d_in, default_lr)
        if self.beta is None and self.beta_eff is None:
            resolved = dataclasses.replace(resolved, beta_eff=DEFAULT_BETA_EFF)
        return resolved


@register
class GradientTopK(TopK):
    """TopK on the key z ∘ (1 + β|W_decᵀ g|); NMSE + α·AuxK ("fired" = selected by this key)."""

    name = "gsae"
    options_type = GSAEOptions
    needs_gradients = True
    options: GSAEOptions
    # saekit before the plain-mode gain: no gain (plain mode = TopK on z), no measured median
    later_state = ("median_sensitivity", "code_moment", "plain_moment")

    def __init__(self, options: GSAEOptions, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        self.register_buffer("beta", torch.tensor(options.beta or 0.0))
        self.median_sensitivity = WindowedEMA((), EMA_DECAY)  # median a over top-k(z)
        self.code_moment = WindowedEMA((d_sae,), EMA_DECAY)  # Σ z f per row, where selected
        self.plain_moment = WindowedEMA((d_sae,), EMA_DECAY)  # Σ z² per row, where selected
        self.register_buffer("last_beta_eff", torch.tensor(float("nan")), persistent=False)

    def select(
        self, sae: Dictionary, z_BF: Tensor, gradients_BD: Tensor | None, mode: Mode
    ) -> tuple[SparsePattern, Tensor | None]:
        if gradients_BD is None:
            if mode == "train":
                raise ValueError("g-SAE training needs gradients")
            gain_F = self.plain_gain()
            pattern = sae.top_k(z_BF * gain_F, self.options.k)
            return pattern, gain_F[pattern.latent_N]
        with torch.no_grad():
            sensitivity_BF = sae.loss_sensitivity(gradients_BD)
            if mode == "train":
                self._follow_sensitivity(sae, z_BF, sensitivity_BF)
            boost_BF = 1 + self.beta * sensitivity_BF
            pattern = sae.top_k(z_BF * boost_BF, self.options.k)
            if self.options.selection_only:
                return pattern, None  # plain mode needs no gain: the codes are z
            factor_N = pattern.take(boost_BF)
            if mode == "train":
                self._record_gain(pattern, z_BF, factor_N)
        return pattern, factor_N

    def _follow_sensitivity(self, sae: Dictionary, z_BF: Tensor, sensitivity_BF: Tensor) -> None:
        """Measure median(a) over top-k(z); with tracking, re-set β so β·median(a) = beta_eff."""
        median = sae.top_k(z_BF, self.options.k).take(sensitivity_BF).median()
        self.median_sensitivity.update(
            median, torch.ones((), dtype=torch.bool, device=median.device)
        )
        if self.options.beta_tracking:
            self.beta.copy_(beta_for(self.options.beta_eff, self.median_sensitivity.value))
        self.last_beta_eff.copy_(self.beta * median)

    def _record_gain(self, pattern: SparsePattern, z_BF: Tensor, factor_N: Tensor) -> None:
        """Fold this batch's Σ z·f and Σ z² per selected latent into the plain-mode gain."""
        z_N = pattern.take(z_BF).clamp_min(0)
        code_N = z_N * factor_N
        n_rows = z_BF.shape[0]
        code_F = pattern.sum_by_latent(z_N * code_N)
        plain_F = pattern.sum_by_latent(z_N * z_N)
        observed_F = plain_F > 0
        self.code_moment.update(code_F / n_rows, observed_F)
        self.plain_moment.update(plain_F / n_rows, observed_F)

    def plain_gain(self) -> Tensor:
        """m_i [F]: the plain-mode gain of each latent (1 for latents never selected)."""
        plain_F = self.plain_moment.value
        known_F = torch.isfinite(plain_F) & (plain_F > 0)
        ratio_F = self.code_moment.value / torch.where(known_F, plain_F, 1.0)
        return torch.where(known_F, ratio_F, 1.0)

    @classmethod
    def modes(cls, options: GSAEOptions, diagnostic: bool = False) -> tuple[str, ...]:
        """grad and plain; with `diagnostic`, augmented g-SAEs also without their plain-mode
        gains (selection-only ones have none)."""
        uncorrected = diagnostic and not options.selection_only
        return (modes.GRAD, modes.PLAIN, *((modes.PLAIN_UNCORRECTED,) if uncorrected else ()))

    def code_in(
        self, mode: str, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None
    ) -> Code:
        self._check_mode(mode)
        if mode == modes.GRAD:
            return self.encode(sae, x_BD, gradients_BD)
        if mode == modes.PLAIN:
            return self.encode(sae, x_BD, None)
        z_BF = sae.pre_activations(x_BD)  # plain-uncorrected: TopK on z (β = 0)
        pattern = sae.top_k(z_BF, self.options.k)
        return SparseCode(pattern, pattern.take(z_BF).relu())

    def step_metrics(self) -> dict[str, Tensor]:
        return {"beta_eff_measured": self.last_beta_eff}

    @torch.no_grad()
    def calibrate_(
        self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None
    ) -> dict[str, float]:
        """Resolve β from beta_eff on a sample: β = beta_eff / median of a over top-k(z)."""
        if self.options.beta_eff is not None:
            assert gradients_BD is not None
            pattern = sae.top_k(sae.pre_activations(x_BD), self.options.k)
            median = pattern.take(sae.loss_sensitivity(gradients_BD)).median()
            self.beta.copy_(beta_for(self.options.beta_eff, median))
        return {"beta": float(self.beta)}

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        """Plain mode: TopK of m ∘ z (the gains m folded into the rows and the bias)."""
        gain_F = self.plain_gain().detach()
        return InferenceForm("topk", sae.b_enc.detach() * gain_F, gain_F, k=self.options.k)

    def saelens_tensors(self, sae: Dictionary) -> dict[str, Tensor]:
        """TopK tensors computing plain mode: the gains folded into the encoder rows."""
        gain_F = self.plain_gain()
        return {
            **super().saelens_tensors(sae),
            "W_enc": (sae.W_enc * gain_F[:, None]).T,
            "b_enc": sae.b_enc * gain_F,
        }


def beta_for(beta_eff: float | None, median_sensitivity: Tensor) -> Tensor:
    """β = beta_eff / median(a) (0 when the median is 0)."""
    assert beta_eff is not None
    return torch.where(median_sensitivity > 0, beta_eff / median_sensitivity, 0.0)
