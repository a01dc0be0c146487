"""The cross-layer transcoder (Ameisen et al. 2025, *Circuit Tracing*): one group of latents per
layer; layer l's latents read its source (the stream before the MLP) and write to the targets
(the MLP outputs) of every layer ≥ l:

    z_l = W_enc_l (x_l − b_in_l) + b_enc_l          f = activation(z) over all groups at once
    ŷ_t = Σ_{l ≤ t} W_dec_{l→t} f_l + b_dec_t

Latent j belongs to group j // F_l. Each group's decoder to all its targets is one matrix
(`W_dec[l]`, [(L − l)·d, F_l]: the rows of target l, then l + 1, ...), so a latent's decoder norm
is that of its whole column: the concatenation of its per-target vectors, as in the paper's
sparsity penalty and as circuit-tracer stores it (source-major). The products go group by group
through the same sparse machinery as an SAE's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from saekit.train.sae import Dictionary, _random_rows
from saekit.train.shape import Shape
from saekit.train.sparse import (
    Code,
    DenseCode,
    SparseCode,
    SparsePattern,
    gather_pre_activations,
    sparse_is_faster,
)

if TYPE_CHECKING:
    from saekit.train.variants.base import Activation


class CrossLayerTranscoder(Dictionary):
    """Parameters: W_enc [L, F_l, d], b_enc [L·F_l], b_in [L·d] (the sources' bias), a decoder per
    group `W_dec[l]` [(L − l)·d, F_l] (contiguous columns), b_dec [L·d] (one per target)."""

    def __init__(self, shape: Shape, d_sae: int, activation: Activation) -> None:
        super().__init__(shape, d_sae, activation)
        assert shape.layers is not None
        self.n_layers = len(shape.layers)
        self.d = shape.sources[0].d
        self.group = d_sae // self.n_layers  # latents per layer
        self.W_enc = nn.Parameter(torch.zeros(self.n_layers, self.group, self.d))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_in = nn.Parameter(torch.zeros(self.d_in))
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.zeros(self.group, (self.n_layers - layer) * self.d).T)
            for layer in range(self.n_layers)
        )
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))

    # -- encoder ---------------------------------------------------------------------------------

    def centre(self, x_BD: Tensor) -> Tensor:
        return x_BD - self.b_in

    def encoder_product(self, x_cent_BD: Tensor) -> Tensor:
        x_BGD = x_cent_BD.view(len(x_cent_BD), self.n_layers, self.d)
        return torch.einsum("bgd,gfd->bgf", x_BGD, self.W_enc).reshape(len(x_cent_BD), -1)

    def pre_activations_centred(self, x_cent_BD: Tensor) -> Tensor:
        return self.encoder_product(x_cent_BD) + self.b_enc

    def gather_pre_activations(
        self, x_cent_BD: Tensor, z_BF: Tensor, pattern: SparsePattern
    ) -> Tensor:
        parts, order = [], []
        for layer, sub, index_N in self._groups(pattern):
            columns = slice(layer * self.group, (layer + 1) * self.group)
            x_cent_Bd = x_cent_BD[:, layer * self.d : (layer + 1) * self.d]
            parts.append(
                gather_pre_activations(
                    x_cent_Bd, self.W_enc[layer], self.b_enc[columns], z_BF[:, columns], sub
                )
            )
            order.append(index_N)
        values_N = torch.cat(parts)
        return values_N.new_zeros(pattern.nnz).index_put((torch.cat(order),), values_N)

    # -- decoder ---------------------------------------------------------------------------------

    def decode_code(self, code: Code, bias: bool = True) -> Tensor:
        y_BE = self._decode(code, lambda layer: self.W_dec[layer])
        return y_BE + self.b_dec if bias else y_BE

    def decode_frozen(self, f_BF: Tensor) -> Tensor:
        y_BE = self._decode(DenseCode(f_BF), lambda layer: self.W_dec[layer].detach())
        return y_BE + self.b_dec.detach()

    def _decode(self, code: Code, decoder) -> Tensor:
        """Σ over groups of each group's codes decoded into its targets (no bias)."""
        n_rows = code.pattern.n_rows if isinstance(code, SparseCode) else len(code.f_BF)
        y_BE = self.b_dec.new_zeros(n_rows, self.d_out)
        for layer, group_code in self._group_codes(code):
            out = group_code.decode(decoder(layer), None)
            y_BE = y_BE.index_add(1, self._target_columns(layer), out)
        return y_BE

    def loss_sensitivity(self, gradients_BE: Tensor) -> Tensor:
        return torch.cat(
            [
                (gradients_BE[:, layer * self.d :] @ self.W_dec[layer].detach()).abs()
                for layer in range(self.n_layers)
            ],
            dim=1,
        )

    def decoder_columns(self, latent_N: Tensor) -> Tensor:
        columns_NE = self.b_dec.new_zeros(len(latent_N), self.d_out)
        layer_N = torch.div(latent_N, self.group, rounding_mode="floor")
        for layer in range(self.n_layers):
            index_N = (layer_N == layer).nonzero().squeeze(1)
            local_N = latent_N[index_N] - layer * self.group
            columns_NE[index_N, layer * self.d :] = self.W_dec[layer].T[local_N]
        return columns_NE

    def decoder_at(self, hook: str) -> Tensor:
        target = self.shape.target_hooks.index(hook)
        blocks = [
            self.W_dec[layer][(target - layer) * self.d : (target - layer + 1) * self.d]
            if layer <= target
            else self.b_dec.new_zeros(self.d, self.group)
            for layer in range(self.n_layers)
        ]
        return torch.cat(blocks, dim=1)

    def decoder_norms(self) -> Tensor:
        return torch.cat([W.norm(dim=0) for W in self.W_dec])

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        for W in self.W_dec:
            if W.grad is not None:
                unit = W / W.norm(dim=0).clamp_min(1e-12)
                W.grad -= (W.grad * unit).sum(dim=0) * unit

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        for W in self.W_dec:
            W /= W.norm(dim=0).clamp_min(1e-12)

    def sparse_training(self) -> bool:
        k = getattr(self.activation.options, "k", self.group)
        return sparse_is_faster(k * self.n_layers, self.d_sae)

    def top_k(self, key_BF: Tensor, k: int) -> SparsePattern:
        """k per layer: each layer's latents keep their k largest entries, so a layer's codes
        depend only on its own input (the replacement model computes them layer by layer)."""
        n_rows = len(key_BF)
        local_BGK = key_BF.view(n_rows, self.n_layers, self.group).topk(k, dim=2, sorted=False)
        offsets_G1 = torch.arange(self.n_layers, device=key_BF.device)[:, None] * self.group
        indices_BK = (local_BGK.indices + offsets_G1).reshape(n_rows, -1)
        return SparsePattern.from_row_indices(indices_BK, self.d_sae)

    # -- initialisation and scales -----------------------------------------------------------------

    @torch.no_grad()
    def init_weights_(
        self,
        generator: torch.Generator,
        decoder_norm: float,
        b_dec_E: Tensor | None = None,
        b_in_D: Tensor | None = None,
    ) -> None:
        """Each group's decoder columns random with norm `decoder_norm` over all its targets, its
        encoder rows drawn the same way; b_enc = 0; the biases as given (else 0)."""
        for layer in range(self.n_layers):
            width = (self.n_layers - layer) * self.d
            self.W_dec[layer].copy_(_random_rows(self.group, width, decoder_norm, generator).T)
            self.W_enc[layer].copy_(_random_rows(self.group, self.d, decoder_norm, generator))
        self.b_enc.zero_()
        self.b_in.copy_(b_in_D if b_in_D is not None else torch.zeros(self.d_in))
        self.b_dec.copy_(b_dec_E if b_dec_E is not None else torch.zeros(self.d_out))

    @torch.no_grad()
    def fold_scales_(self, source_scales: list[float], target_scales: list[float]) -> None:
        """Layer l's encoder takes c_l x_l; target t's output is divided by t_t."""
        t_E = torch.cat([torch.full((self.d,), t) for t in target_scales]).to(self.b_dec)
        for layer, c in enumerate(source_scales):
            self.W_enc[layer] *= c
            self.b_in[layer * self.d : (layer + 1) * self.d] /= c
            self.W_dec[layer] /= t_E[layer * self.d :, None]
        self.b_dec /= t_E

    # -- groups ----------------------------------------------------------------------------------

    def _target_columns(self, layer: int) -> Tensor:
        return torch.arange(layer * self.d, self.d_out, device=self.b_dec.device)

    def _groups(self, pattern: SparsePattern):
        """(layer, the pattern of its entries with group-local latents, their positions in the
        pattern) for every group with entries; each group's entries keep the pattern's order."""
        group_N = torch.div(pattern.latent_N, self.group, rounding_mode="floor")
        for layer in range(self.n_layers):
            index_N = (group_N == layer).nonzero().squeeze(1)
            local_N = pattern.latent_N[index_N] - layer * self.group
            flat_N = pattern.row_N[index_N] * self.group + local_N
            yield (
                layer,
                SparsePattern.from_flat_indices(flat_N, pattern.n_rows, self.group),
                index_N,
            )

    def _group_codes(self, code: Code):
        """(layer, the group's codes with group-local latents) for every group."""
        if isinstance(code, DenseCode):
            for layer in range(self.n_layers):
                columns = slice(layer * self.group, (layer + 1) * self.group)
                yield layer, DenseCode(code.f_BF[:, columns])
            return
        for layer, sub, index_N in self._groups(code.pattern):
            yield layer, SparseCode(sub, code.values_N[index_N])
