"""g-SAE: TopK whose ranking key weighs each latent by its effect on the LM loss (algorithms §5).

    a = |W_decᵀ g|            (g = ∂loss/∂x from the store, W_dec detached)
    s = z ∘ (1 + β a)         (the ranking key)
    I = TopK_k(s)             f_i = ReLU(s_i) on I (augmented values, default)
                              f_i = ReLU(z_i) on I (selection_only=true)

β has the units of 1/a; `beta_eff` sets it scale-free as β = beta_eff / median(a), the median
taken over the (token, latent) pairs in the top-k of z at initialisation. At inference,
`gradients=None` is plain mode (β = 0, TopK on z) and given gradients is grad mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saekit.train.sae import SAE
from saekit.train.sparse import SparsePattern
from saekit.train.variants.base import Mode
from saekit.train.variants.options import SAEOptions, check
from saekit.train.variants.registry import register
from saekit.train.variants.topk import TopK, TopKOptions, top_k_per_row

DEFAULT_BETA_EFF = 1.0


@dataclass(frozen=True)
class GSAEOptions(TopKOptions):
    beta: float | None = None  # β itself (units of 1/|d·g|)
    beta_eff: float | None = None  # or β scale-free: β = beta_eff / median(a); default 1
    selection_only: bool = False  # values ReLU(z) instead of ReLU(s) on the selected latents

    HEADLINE: ClassVar[tuple[str, ...]] = ("k", "beta", "beta_eff")

    def __post_init__(self) -> None:
        check(self.beta is None or self.beta_eff is None, "give beta or beta_eff, not both")
        check(self.beta is None or self.beta >= 0, "beta must be >= 0")
        check(self.beta_eff is None or self.beta_eff >= 0, "beta_eff must be >= 0")
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

    def __init__(self, options: GSAEOptions, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        self.register_buffer("beta", torch.tensor(options.beta or 0.0))

    def select(
        self, sae: SAE, z_BF: Tensor, gradients_BD: Tensor | None, mode: Mode
    ) -> tuple[SparsePattern, Tensor | None]:
        if gradients_BD is None:
            if mode == "train":
                raise ValueError("g-SAE training needs gradients")
            return super().select(sae, z_BF, None, mode)  # plain mode: β = 0
        with torch.no_grad():
            boost_BF = 1 + self.beta * loss_sensitivity(sae, gradients_BD)
            pattern = top_k_per_row(z_BF * boost_BF, self.options.k)
            factor_N = None if self.options.selection_only else pattern.take(boost_BF)
        return pattern, factor_N

    @torch.no_grad()
    def calibrate_(self, sae: SAE, x_BD: Tensor, gradients_BD: Tensor | None) -> dict[str, float]:
        """Resolve β from beta_eff on a sample: β = beta_eff / median of a over top-k(z)."""
        if self.options.beta_eff is not None:
            assert gradients_BD is not None
            beta_eff = self.options.beta_eff
            pattern = top_k_per_row(sae.pre_activations(x_BD), self.options.k)
            median = pattern.take(loss_sensitivity(sae, gradients_BD)).median()
            self.beta.fill_(beta_eff / float(median) if median > 0 else 0.0)
        return {"beta": float(self.beta)}


def loss_sensitivity(sae: SAE, gradients_BD: Tensor) -> Tensor:
    """a = |W_decᵀ g| [B, F]: first-order effect on the loss of each unit decoder direction."""
    return (gradients_BD @ sae.W_dec.detach()).abs()
