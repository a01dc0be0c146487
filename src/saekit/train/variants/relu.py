"""ReLU + decoder-norm-weighted L1, Anthropic's April-2024 recipe (docs/algorithms.md §8).

f = ReLU(z); loss ‖x − x̂‖² + λ Σ_i f_i ‖d_i‖ with an unconstrained decoder whose columns start
at norm 0.1 (W_enc = W_decᵀ, biases 0); λ warms up over the first 5 % of training.
`decoder=unit` gives the older baseline the Gated paper compares against: unit-norm decoder
columns (projected gradients, renormalised after each step, starting at norm 1), so the penalty
is the plain L1 of the codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from saekit.train import losses
from saekit.train.sae import Dictionary
from saekit.train.sparse import Code, DenseCode
from saekit.train.variants.base import Activation, InferenceForm
from saekit.train.variants.options import PenaltyOptions, SAEOptions, check
from saekit.train.variants.registry import register


@dataclass(frozen=True)
class ReLUOptions(PenaltyOptions, SAEOptions):
    l1: float = 5.0  # λ
    decoder: Literal["free", "unit"] = "free"  # April update, or unit-norm decoder columns

    HEADLINE: ClassVar[tuple[str, ...]] = ("l1",)

    def __post_init__(self) -> None:
        check(self.l1 >= 0, "l1 must be >= 0")
        super().__post_init__()


@register
class ReLU(Activation):
    """f = ReLU(z); ‖x − x̂‖² + λ·Σ f_i‖d_i‖."""

    name = "relu"
    options_type = ReLUOptions
    b_dec_from_data = False
    saelens_architecture = "standard"
    options: ReLUOptions

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.options.decoder == "unit"

    @property
    def decoder_init_norm(self) -> float:  # type: ignore[override]
        return 1.0 if self.unit_norm_decoder else 0.1

    def train_code(
        self, sae: Dictionary, x_cent_BD: Tensor, gradients_BD: Tensor | None
    ) -> tuple[Code, Tensor, dict[str, Tensor]]:
        z_BF = sae.pre_activations_centred(x_cent_BD)
        return DenseCode(z_BF.relu()), z_BF, {}

    def encode(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        return DenseCode(sae.pre_activations(x_BD).relu())

    def loss_terms(self) -> list[losses.LossTerm]:
        penalty = losses.L1Penalty(self.options.l1, self.options.penalty_warmup)
        return [losses.SquaredError(), penalty]

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        return InferenceForm("relu", sae.b_enc.detach())
