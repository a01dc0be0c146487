"""BatchTopK = Mutual Choice: keep the k·B largest positive pre-activations of the whole batch
(algorithms §3). Inference: one global threshold θ, f = z · 1[z > θ]."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saekit.train.sparse import SparsePattern
from saekit.train.variants.base import BatchSelection
from saekit.train.variants.options import ThresholdOptions
from saekit.train.variants.registry import register
from saekit.train.variants.topk import TopKOptions


@dataclass(frozen=True)
class BatchTopKOptions(TopKOptions, ThresholdOptions):
    pass


@register
class BatchTopK(BatchSelection):
    """Top k·B of ReLU(z) over the batch; NMSE + α·AuxK (or aux_zipf)."""

    name = "batchtopk"
    aliases = ("mutual-choice",)
    options_type = BatchTopKOptions
    summary = "BatchTopK / Mutual Choice: the k·B largest activations of the batch; NMSE + AuxK"
    per_latent_threshold = False
    options: BatchTopKOptions

    def select_batch(self, z_BF: Tensor) -> tuple[SparsePattern, Tensor, Tensor]:
        n_rows, n_latents = z_BF.shape
        top = z_BF.flatten().topk(min(self.options.k * n_rows, z_BF.numel()), sorted=False)
        positive = top.values > 0
        pattern = SparsePattern.from_flat_indices(top.indices[positive], n_rows, n_latents)
        smallest = top.values.masked_fill(~positive, float("inf")).min()
        return pattern, smallest, positive.any()
