"""Gated SAE with weight tying (docs/algorithms.md §7).

    π_gate = W_gate x' + b_gate            (the core's W_enc, b_enc; x' = x − b_dec)
    π_mag  = exp(r_mag) ⊙ (W_gate x') + b_mag
    f = 1[π_gate > 0] ⊙ ReLU(π_mag)
    L = ‖x − x̂‖² + λ‖ReLU(π_gate)‖₁ + ‖x − (sg(W_dec) ReLU(π_gate) + sg(b_dec))‖²

The Heaviside gate passes no gradient: b_gate learns through the last two terms only, W_gate
also through π_mag (the tying). Unit-norm decoder, plain L1 on the gate, Adam(0, 0.999).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saekit.train import losses
from saekit.train.sae import Dictionary
from saekit.train.sparse import Code, DenseCode
from saekit.train.variants.base import Activation, InferenceForm
from saekit.train.variants.options import PenaltyOptions, SAEOptions, check
from saekit.train.variants.registry import register


@dataclass(frozen=True)
class GatedOptions(PenaltyOptions, SAEOptions):
    l1: float = 5.0  # λ on ‖ReLU(π_gate)‖₁

    HEADLINE: ClassVar[tuple[str, ...]] = ("l1",)

    def __post_init__(self) -> None:
        check(self.l1 >= 0, "l1 must be >= 0")
        super().__post_init__()


@register
class Gated(Activation):
    """Gate path decides which latents fire, the tied magnitude path how strongly."""

    name = "gated"
    options_type = GatedOptions
    b_dec_from_data = False
    adam_betas = (0.0, 0.999)
    saelens_architecture = "gated"
    options: GatedOptions

    def __init__(self, options: GatedOptions, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    def _paths(self, sae: Dictionary, x_cent_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag) of centred inputs."""
        gate_BF = sae.encoder_product(x_cent_BD)
        return gate_BF + sae.b_enc, self.r_mag.exp() * gate_BF + self.b_mag

    def _code(self, pi_gate_BF: Tensor, pi_mag_BF: Tensor) -> DenseCode:
        return DenseCode((pi_gate_BF > 0) * pi_mag_BF.relu())

    def train_code(
        self, sae: Dictionary, x_cent_BD: Tensor, gradients_BD: Tensor | None
    ) -> tuple[Code, Tensor, dict[str, Tensor]]:
        pi_gate_BF, pi_mag_BF = self._paths(sae, x_cent_BD)
        return self._code(pi_gate_BF, pi_mag_BF), pi_gate_BF, {"gate_BF": pi_gate_BF.relu()}

    def encode(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        return self._code(*self._paths(sae, sae.centre(x_BD)))

    def loss_terms(self) -> list[losses.LossTerm]:
        return [
            losses.SquaredError(),
            losses.L1Penalty(
                self.options.l1, self.options.penalty_warmup, "gate_BF", decoder_weighted=False
            ),
            losses.FrozenDecoderReconstruction(),
        ]

    def saelens_tensors(self, sae: Dictionary) -> dict[str, Tensor]:
        tensors = super().saelens_tensors(sae)
        tensors["b_gate"] = tensors.pop("b_enc")
        return {**tensors, "r_mag": self.r_mag, "b_mag": self.b_mag}

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        """A JumpReLU on the magnitude path h = exp(r_mag) ∘ W x' + b_mag: the gate opens when
        W x' + b_gate > 0, i.e. when h > b_mag − exp(r_mag) ∘ b_gate."""
        scale_F = self.r_mag.exp().detach()
        threshold_F = self.b_mag.detach() - scale_F * sae.b_enc.detach()
        return InferenceForm("jumprelu", self.b_mag.detach(), scale_F, threshold_F)
