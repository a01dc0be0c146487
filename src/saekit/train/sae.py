"""The SAE core shared by every variant: parameters, encode/decode and decoder-norm handling.

How the codes f are obtained from the pre-activations is the job of the variant's activation
strategy (`saekit.train.variants`), held as the submodule `activation` (it owns the variant's
extra parameters and buffers: thresholds, Gated's magnitude path, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from saekit.train.sae_config import SAEConfig
from saekit.train.sparse import Code, DenseCode

if TYPE_CHECKING:
    from saekit.train.variants.base import Activation


@dataclass
class Forward:
    """Everything one training forward pass produced that a loss term may need."""

    x_BD: Tensor  # the input (the reconstruction target)
    x_cent_BD: Tensor  # x - b_dec, differentiable
    z_BF: Tensor  # pre-activations W_enc x_cent + b_enc, detached
    code: Code  # the codes f (differentiable)
    x_hat_BD: Tensor  # the reconstruction
    extras: dict[str, Tensor] = field(default_factory=dict)  # variant-specific tensors


class SAE(nn.Module):
    """`f = activation(W_enc (x − b_dec) + b_enc)`, `x̂ = W_dec f + b_dec`.

    Shapes: W_enc [F, D], b_enc [F], W_dec [D, F] (column i is latent i's direction), b_dec [D].
    W_dec's columns are contiguous in memory (it is the transpose of a row-major [F, D] tensor) so
    that sparse decoding reads one contiguous row of `W_dec.T` per selected latent.

    The public methods take the SAE's input space: a saved SAE has the input scaling folded into
    its weights (`fold_input_scale_`), so there they take raw activations and raw gradients.
    """

    def __init__(self, d_in: int, d_sae: int, activation: Activation) -> None:
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in).T)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.activation = activation
        self.cfg: SAEConfig | None = None  # set on SAEs loaded with `load_sae`

    # -- building blocks --------------------------------------------------------------------------

    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """z = W_enc (x − b_dec) + b_enc."""
        return self.pre_activations_centred(x_BD - self.b_dec)

    def pre_activations_centred(self, x_cent_BD: Tensor) -> Tensor:
        """z = W_enc x_cent + b_enc, for x_cent = x − b_dec."""
        return nn.functional.linear(x_cent_BD, self.W_enc, self.b_enc)

    def decode(self, f_BF: Tensor) -> Tensor:
        """x̂ = W_dec f + b_dec for dense codes."""
        return DenseCode(f_BF).decode(self.W_dec, self.b_dec)

    def decoder_norms(self) -> Tensor:
        """‖d_i‖ of every latent's decoder column, [F]."""
        return self.W_dec.norm(dim=0)

    # -- inference (what eval uses) ---------------------------------------------------------------

    def encode(self, x_BD: Tensor, gradients_BD: Tensor | None = None) -> Tensor:
        """Codes f [B, F] of each token on its own (thresholds for batch-dependent variants).

        `gradients_BD` (∂loss/∂x, same space as x) is used by g-SAE only: given gradients select
        grad mode (the training key); None selects plain mode, which needs no gradient — TopK on
        z for selection-only g-SAEs, and for augmented values TopK on m ∘ z with each latent's
        code scaled by its learnt gain m_i (see `saekit.train.variants.gsae`).
        """
        return self.activation.encode(self, x_BD, gradients_BD).to_dense()

    def encode_batch(self, x_BD: Tensor, gradients_BD: Tensor | None = None) -> Tensor:
        """Codes f [B, F] with the training-time selection over the batch (BatchTopK, Feature
        Choice); the same as `encode` for the other variants."""
        return self.activation.encode_batch(self, x_BD, gradients_BD).to_dense()

    def forward(self, x_BD: Tensor, gradients_BD: Tensor | None = None) -> Tensor:
        """Reconstruction x̂ [B, D] of each token (inference mode, like `encode`)."""
        code = self.activation.encode(self, x_BD, gradients_BD)
        return code.decode(self.W_dec, self.b_dec)

    # -- training ----------------------------------------------------------------------------------

    def training_forward(self, x_BD: Tensor, gradients_BD: Tensor | None = None) -> Forward:
        """The training-mode forward pass (batch selection, EMA updates, loss ingredients)."""
        x_cent_BD = x_BD - self.b_dec
        code, z_BF, extras = self.activation.train_code(self, x_cent_BD, gradients_BD)
        x_hat_BD = code.decode(self.W_dec, self.b_dec)
        return Forward(x_BD, x_cent_BD, z_BF.detach(), code, x_hat_BD, extras)

    @torch.no_grad()
    def init_weights_(
        self, generator: torch.Generator, decoder_norm: float, b_dec_D: Tensor | None
    ) -> None:
        """Random decoder columns of norm `decoder_norm`, tied encoder `W_enc = W_decᵀ`,
        `b_enc = 0`, `b_dec` as given (else 0). Drawn on the CPU so every device gets the same."""
        directions_FD = torch.randn(self.d_sae, self.d_in, generator=generator)
        directions_FD *= decoder_norm / directions_FD.norm(dim=1, keepdim=True)
        self.W_dec.copy_(directions_FD.T)
        self.W_enc.copy_(directions_FD)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec_D if b_dec_D is not None else torch.zeros(self.d_in))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from each decoder column's gradient its component along the column."""
        if self.W_dec.grad is None:
            return
        unit_DF = self.W_dec / self.decoder_norms().clamp_min(1e-12)
        parallel_F = (self.W_dec.grad * unit_DF).sum(dim=0)
        self.W_dec.grad -= parallel_F * unit_DF

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Rescale every decoder column to unit norm."""
        self.W_dec /= self.decoder_norms().clamp_min(1e-12)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make an SAE trained on `scale · x` take raw `x`: same codes, reconstruction / scale.

        z = W_enc (c x − b_dec) + b_enc = (c W_enc)(x − b_dec / c) + b_enc, and
        x̂ / c = (W_dec / c) f + b_dec / c. Raw gradients g = c · g_scaled, so the g-SAE key
        |W_decᵀ g_scaled| = |(W_dec / c)ᵀ g| is unchanged too.
        """
        self.W_enc *= scale
        self.W_dec /= scale
        self.b_dec /= scale

    def state_for_saving(self) -> dict[str, Tensor]:
        """The state dict with contiguous tensors (safetensors stores only those)."""
        return {name: t.detach().contiguous() for name, t in self.state_dict().items()}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}"
