"""BatchTopK = Mutual Choice: keep the k·B largest positive pre-activations of the whole batch
(algorithms §3). Inference: one global threshold θ, f = z · 1[z > θ]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.train.sparse import SparsePattern
from saekit.train.variants.base import BatchSelection
from saekit.train.variants.options import ThresholdOptions
from saekit.train.variants.registry import register
from saekit.train.variants.topk import TopKOptions

CANDIDATES_PER_K = 4  # candidates per row, in multiples of the mean budget per row (k)


@dataclass(frozen=True)
class BatchTopKOptions(ThresholdOptions, TopKOptions):
    pass


@register
class BatchTopK(BatchSelection):
    """Top k·B of ReLU(z) over the batch; NMSE + α·AuxK (or aux_zipf)."""

    name = "batchtopk"
    aliases = ("mutual-choice",)
    options_type = BatchTopKOptions
    per_latent_threshold = False
    options: BatchTopKOptions

    def select_batch(self, z_BF: Tensor) -> tuple[SparsePattern, Tensor, Tensor]:
        n_rows, n_latents = z_BF.shape
        values_N, flat_N = top_of_batch(z_BF, min(self.options.k * n_rows, z_BF.numel()))
        positive_N = values_N > 0
        pattern = SparsePattern.from_flat_indices(flat_N[positive_N], n_rows, n_latents)
        smallest = values_N.masked_fill(~positive_N, float("inf")).min()
        return pattern, smallest, positive_N.any()


def top_of_batch(z_BF: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n largest entries of z_BF: values and flat indices (row * F + latent).

    Shortcut: the n largest among each row's top CANDIDATES_PER_K·k candidates. That is exact
    unless some row has all its candidates among them (a kept entry outside the candidates would
    be smaller than every candidate of its row); then the whole matrix is searched.
    """
    n_rows, n_latents = z_BF.shape
    per_row = min(n_latents, CANDIDATES_PER_K * -(-n // n_rows))
    candidates = z_BF.topk(per_row, dim=1, sorted=False)
    top = candidates.values.flatten().topk(n, sorted=False)
    rows_N = torch.div(top.indices, per_row, rounding_mode="floor")
    if per_row == n_latents or torch.bincount(rows_N, minlength=n_rows).max() < per_row:
        return top.values, rows_N * n_latents + candidates.indices.flatten()[top.indices]
    top = z_BF.flatten().topk(n, sorted=False)
    return top.values, top.indices
