"""The dictionary core shared by every variant and shape: encode, decode, decoder-norm handling.

A dictionary reads its sources x (one hook, or several concatenated) and reconstructs its
targets y (see `shape.py`). How the codes f are obtained from the pre-activations is the job of
the variant's activation strategy (`saekit.train.variants`), held as the submodule `activation`
(it owns the variant's extra parameters and buffers: thresholds, Gated's magnitude path, ...).
The strategy talks to the dictionary only through the methods of `Dictionary`, so every
variant trains every shape: `SAE` here (dense encoder and decoder: SAEs, transcoders, skip
transcoders, crosscoders) and `CrossLayerTranscoder` (`clt.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from saekit.train.sae_config import SAEConfig
from saekit.train.shape import Shape
from saekit.train.sparse import (
    Code,
    DenseCode,
    SparsePattern,
    gather_pre_activations,
    top_k_per_row,
)

if TYPE_CHECKING:
    from saekit.train.variants.base import Activation


@dataclass
class Forward:
    """Everything one training forward pass produced that a loss term may need."""

    x_BD: Tensor  # the input (the sources)
    y_BE: Tensor  # the reconstruction target (the targets; x itself for an SAE)
    x_cent_BD: Tensor  # the centred input, differentiable
    z_BF: Tensor  # pre-activations, detached
    code: Code  # the codes f (differentiable)
    y_hat_BE: Tensor  # the reconstruction
    extras: dict[str, Tensor] = field(default_factory=dict)  # variant-specific tensors
    g_BE: Tensor | None = None  # the loss gradients at the targets, when training reads them


class Dictionary(nn.Module):
    """What every shape of dictionary offers the activation strategies, the losses, training and
    evaluation. Subclasses hold the parameters and implement the products.

    The public methods take the dictionary's input space: a saved dictionary has the input
    scaling folded into its weights (`fold_scales_`), so there they take raw activations and raw
    gradients (at the targets).
    """

    shape: Shape
    d_in: int  # input width (the sources, concatenated)
    d_out: int  # output width (the targets, concatenated)
    d_sae: int  # latents

    def __init__(self, shape: Shape, d_sae: int, activation: Activation) -> None:
        super().__init__()
        self.shape = shape
        self.d_in, self.d_out, self.d_sae = shape.d_in, shape.d_out, d_sae
        self.activation = activation
        self.cfg: SAEConfig | None = None  # set on dictionaries loaded with `load_sae`

    # -- the products (per shape) -----------------------------------------------------------------

    def centre(self, x_BD: Tensor) -> Tensor:
        """The input the encoder reads: x minus the input bias."""
        raise NotImplementedError

    def encoder_product(self, x_cent_BD: Tensor) -> Tensor:
        """W_enc x_cent, without the encoder bias: [B, F]."""
        raise NotImplementedError

    def pre_activations_centred(self, x_cent_BD: Tensor) -> Tensor:
        """z = W_enc x_cent + b_enc: [B, F]."""
        raise NotImplementedError

    def gather_pre_activations(
        self, x_cent_BD: Tensor, z_BF: Tensor, pattern: SparsePattern
    ) -> Tensor:
        """The pre-activations at `pattern`, read from a `z_BF` computed without autograd and
        differentiable w.r.t. the encoder, by sparse products."""
        raise NotImplementedError

    def decode_code(self, code: Code, bias: bool = True) -> Tensor:
        """W_dec f (+ b_dec): [B, E]."""
        raise NotImplementedError

    def decode_frozen(self, f_BF: Tensor) -> Tensor:
        """W_dec f + b_dec with the decoder detached (Gated's auxiliary reconstruction)."""
        raise NotImplementedError

    def skip_path(self, x_BD: Tensor) -> Tensor | None:
        """The linear skip term W_skip x of a skip transcoder, None without one."""
        return None

    def loss_sensitivity(self, gradients_BE: Tensor) -> Tensor:
        """a = |W_decᵀ g| [B, F]: the first-order effect on the loss of each latent's decoder
        direction, for gradients at the targets (the decoder detached)."""
        raise NotImplementedError

    def decoder_columns(self, latent_N: Tensor) -> Tensor:
        """The whole decoder vector of each latent listed (over all targets): [N, E]."""
        raise NotImplementedError

    def decoder_at(self, hook: str) -> Tensor:
        """What every latent writes to target `hook`: [E_hook, F] (zero where it writes none)."""
        raise NotImplementedError

    def decoder_norms(self) -> Tensor:
        """The norm of every latent's whole decoder (all its targets), [F]."""
        raise NotImplementedError

    def sparsity_weights(self) -> Tensor:
        """What an L1 penalty weighs each code by, [F]: its decoder norm, or for a crosscoder the
        sum of its per-hook decoder norms (Lindsey et al.)."""
        return self.decoder_norms()

    def remove_parallel_decoder_grad_(self) -> None:
        raise NotImplementedError

    def normalise_decoder_(self) -> None:
        raise NotImplementedError

    def init_weights_(
        self,
        generator: torch.Generator,
        decoder_norm: float,
        b_dec_E: Tensor | None = None,
        b_in_D: Tensor | None = None,
    ) -> None:
        raise NotImplementedError

    def fold_scales_(self, source_scales: list[float], target_scales: list[float]) -> None:
        """Make a dictionary trained on scaled blocks (source block s times c_s, target block t
        times c_t) take and give raw activations: same codes, reconstruction unscaled."""
        raise NotImplementedError

    def sparse_training(self) -> bool:
        """Whether selection-based training uses the sparse products (they pay per kept entry,
        dense products per matrix entry)."""
        raise NotImplementedError

    def top_k(self, key_BF: Tensor, k: int) -> SparsePattern:
        """The entries a per-token top-k keeps: the k largest of each row (a cross-layer
        transcoder takes k per layer, so that each layer's codes depend on its own input)."""
        return top_k_per_row(key_BF, k)

    # -- built on the products ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the dictionary's parameters are."""
        return self.b_dec.device

    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """z = W_enc (x − b_in) + b_enc."""
        return self.pre_activations_centred(self.centre(x_BD))

    def decode(self, f_BF: Tensor) -> Tensor:
        """ŷ = W_dec f + b_dec for dense codes (without the skip term, which reads x)."""
        return self.decode_code(DenseCode(f_BF))

    def reconstruct(self, x_BD: Tensor, code: Code) -> Tensor:
        """ŷ = W_dec f + b_dec (+ W_skip x), decoding sparse codes sparsely (training)."""
        return self._with_skip(x_BD, self.decode_code(code))

    def output(self, x_BD: Tensor, f_BF: Tensor) -> Tensor:
        """ŷ = W_dec f + b_dec (+ W_skip x) for dense codes (evaluation)."""
        return self._with_skip(x_BD, self.decode(f_BF))

    def _with_skip(self, x_BD: Tensor, y_hat_BE: Tensor) -> Tensor:
        skip_BE = self.skip_path(x_BD)
        return y_hat_BE if skip_BE is None else y_hat_BE + skip_BE

    def encode(self, x_BD: Tensor, gradients_BE: Tensor | None = None) -> Tensor:
        """Codes f [B, F] of each token on its own (thresholds for batch-dependent variants).

        `gradients_BE` (∂loss/∂y at the targets) is used by g-SAE only: given gradients select
        grad mode (the training key); None selects plain mode, which needs no gradient — TopK on
        z for selection-only g-SAEs, and for augmented values TopK on m ∘ z with each latent's
        code scaled by its learnt gain m_i (see `saekit.train.variants.gsae`).
        """
        return self.activation.encode(self, x_BD, gradients_BE).to_dense()

    def encode_batch(self, x_BD: Tensor, gradients_BE: Tensor | None = None) -> Tensor:
        """Codes f [B, F] with the training-time selection over the batch (BatchTopK, Feature
        Choice); the same as `encode` for the other variants."""
        return self.activation.encode_batch(self, x_BD, gradients_BE).to_dense()

    def forward(self, x_BD: Tensor, gradients_BE: Tensor | None = None) -> Tensor:
        """Reconstruction ŷ [B, E] of each token (inference mode, like `encode`)."""
        return self.reconstruct(x_BD, self.activation.encode(self, x_BD, gradients_BE))

    def training_forward(
        self, x_BD: Tensor, gradients_BE: Tensor | None = None, y_BE: Tensor | None = None
    ) -> Forward:
        """The training-mode forward pass (batch selection, EMA updates, loss ingredients);
        `y_BE` is the target (default: x, for a dictionary that reconstructs its input)."""
        x_cent_BD = self.centre(x_BD)
        selecting = gradients_BE if self.activation.needs_gradients else None
        code, z_BF, extras = self.activation.train_code(self, x_cent_BD, selecting)
        y_hat_BE = self.reconstruct(x_BD, code)
        y_BE = x_BD if y_BE is None else y_BE
        return Forward(x_BD, y_BE, x_cent_BD, z_BF.detach(), code, y_hat_BE, extras, gradients_BE)

    def state_for_saving(self) -> dict[str, Tensor]:
        """The state dict with contiguous tensors (safetensors stores only those)."""
        return {name: t.detach().contiguous() for name, t in self.state_dict().items()}

    def extra_repr(self) -> str:
        return f"{self.shape.describe()}, d_in={self.d_in}, d_out={self.d_out}, d_sae={self.d_sae}"


class SAE(Dictionary):
    """`f = activation(W_enc (x − b_in) + b_enc)`, `ŷ = W_dec f + b_dec (+ W_skip x)`.

    Shapes: W_enc [F, D], b_enc [F], W_dec [E, F] (column i is latent i's direction), b_dec [E],
    W_skip [E, D] for a skip transcoder. A dictionary that reconstructs its input (an SAE, a
    crosscoder) centres it by b_dec (b_in = b_dec); one that predicts other hooks (a transcoder)
    has its own input bias b_in [D]. W_dec's columns are contiguous in memory (it is the
    transpose of a row-major [F, E] tensor) so that sparse decoding reads one contiguous row of
    `W_dec.T` per selected latent.
    """

    def __init__(self, shape: Shape | int, d_sae: int, activation: Activation) -> None:
        shape = shape if isinstance(shape, Shape) else Shape.single("", shape)
        super().__init__(shape, d_sae, activation)
        self.W_enc = nn.Parameter(torch.zeros(d_sae, self.d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, self.d_out).T)
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        if not shape.reconstructs_its_input:
            self.b_in = nn.Parameter(torch.zeros(self.d_in))
        if shape.skip:
            self.W_skip = nn.Parameter(torch.zeros(self.d_out, self.d_in))

    def centre(self, x_BD: Tensor) -> Tensor:
        return x_BD - (self.b_dec if self.shape.reconstructs_its_input else self.b_in)

    def encoder_product(self, x_cent_BD: Tensor) -> Tensor:
        return nn.functional.linear(x_cent_BD, self.W_enc)

    def pre_activations_centred(self, x_cent_BD: Tensor) -> Tensor:
        return nn.functional.linear(x_cent_BD, self.W_enc, self.b_enc)

    def gather_pre_activations(
        self, x_cent_BD: Tensor, z_BF: Tensor, pattern: SparsePattern
    ) -> Tensor:
        return gather_pre_activations(x_cent_BD, self.W_enc, self.b_enc, z_BF, pattern)

    def decode_code(self, code: Code, bias: bool = True) -> Tensor:
        return code.decode(self.W_dec, self.b_dec if bias else None)

    def decode_frozen(self, f_BF: Tensor) -> Tensor:
        return nn.functional.linear(f_BF, self.W_dec.detach(), self.b_dec.detach())

    def skip_path(self, x_BD: Tensor) -> Tensor | None:
        return nn.functional.linear(x_BD, self.W_skip) if self.shape.skip else None

    def loss_sensitivity(self, gradients_BE: Tensor) -> Tensor:
        return (gradients_BE @ self.W_dec.detach()).abs()

    def decoder_columns(self, latent_N: Tensor) -> Tensor:
        return self.W_dec.T[latent_N]

    def decoder_at(self, hook: str) -> Tensor:
        blocks = self.W_dec.split([b.d for b in self.shape.targets], dim=0)
        return blocks[self.shape.target_hooks.index(hook)]

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=0)

    def sparsity_weights(self) -> Tensor:
        if len(self.shape.targets) == 1:
            return self.decoder_norms()
        blocks = self.W_dec.split([b.d for b in self.shape.targets], dim=0)
        return torch.stack([block.norm(dim=0) for block in blocks]).sum(dim=0)

    def sparse_training(self) -> bool:
        from saekit.train.sparse import sparse_is_faster

        return sparse_is_faster(getattr(self.activation.options, "k", self.d_sae), self.d_sae)

    @torch.no_grad()
    def init_weights_(
        self,
        generator: torch.Generator,
        decoder_norm: float,
        b_dec_E: Tensor | None = None,
        b_in_D: Tensor | None = None,
    ) -> None:
        """Random decoder columns of norm `decoder_norm`; an encoder tied to them (`W_enc =
        W_decᵀ`) when the dictionary reconstructs its input, else drawn the same way on its own;
        `b_enc = 0`, `W_skip = 0`, the biases as given (else 0). Drawn on the CPU so every device
        gets the same."""
        directions_FE = _random_rows(self.d_sae, self.d_out, decoder_norm, generator)
        self.W_dec.copy_(directions_FE.T)
        if self.shape.reconstructs_its_input:
            self.W_enc.copy_(directions_FE)
        else:
            self.W_enc.copy_(_random_rows(self.d_sae, self.d_in, decoder_norm, generator))
            self.b_in.copy_(b_in_D if b_in_D is not None else torch.zeros(self.d_in))
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec_E if b_dec_E is not None else torch.zeros(self.d_out))
        if self.shape.skip:
            self.W_skip.zero_()

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from each decoder column's gradient its component along the column."""
        if self.W_dec.grad is None:
            return
        unit_EF = self.W_dec / self.decoder_norms().clamp_min(1e-12)
        parallel_F = (self.W_dec.grad * unit_EF).sum(dim=0)
        self.W_dec.grad -= parallel_F * unit_EF

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Rescale every decoder column to unit norm."""
        self.W_dec /= self.decoder_norms().clamp_min(1e-12)

    @torch.no_grad()
    def fold_scales_(self, source_scales: list[float], target_scales: list[float]) -> None:
        """z = W_enc (C x − b_in) + b_enc = (W_enc C)(x − C⁻¹ b_in) + b_enc for the block-diagonal
        source scales C; ŷ = T⁻¹ (W_dec f + b_dec + W_skip C x) for the target scales T. Raw
        gradients at the targets are T times the scaled ones, so the g-SAE key |W_decᵀ g| is
        unchanged too. One scale c for an SAE: W_enc · c, W_dec / c, b_dec / c."""
        if len(set(source_scales)) == 1 and len(set(target_scales)) == 1:
            self._fold_uniform(source_scales[0], target_scales[0])
            return
        c_D = _block_scales(source_scales, self.shape.sources, self.W_enc)
        t_E = _block_scales(target_scales, self.shape.targets, self.W_enc)
        self.W_enc *= c_D
        self.W_dec /= t_E[:, None]
        self.b_dec /= t_E
        if not self.shape.reconstructs_its_input:
            self.b_in /= c_D
        if self.shape.skip:
            self.W_skip *= c_D / t_E[:, None]

    def _fold_uniform(self, c: float, t: float) -> None:
        self.W_enc *= c
        self.W_dec /= t
        self.b_dec /= t
        if not self.shape.reconstructs_its_input:
            self.b_in /= c
        if self.shape.skip:
            self.W_skip *= c / t


def _random_rows(rows: int, width: int, norm: float, generator: torch.Generator) -> Tensor:
    """`rows` random directions of length `norm` (drawn on the CPU)."""
    directions = torch.randn(rows, width, generator=generator)
    return directions * (norm / directions.norm(dim=1, keepdim=True))


def _block_scales(scales: list[float], blocks: tuple, like: Tensor) -> Tensor:
    """Per-element scales of a concatenation of blocks."""
    return torch.cat(
        [torch.full((b.d,), s, dtype=like.dtype) for s, b in zip(scales, blocks, strict=True)]
    ).to(like.device)
