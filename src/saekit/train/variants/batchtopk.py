"""BatchTopK = Mutual Choice: keep the k·B largest positive pre-activations of the whole batch
(docs/algorithms.md §3). Inference: one global threshold θ, f = z · 1[z > θ]."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saekit.base import devices
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
        """The pattern holds all k·B entries; those that are not positive get code ReLU(z) = 0
        (a fixed-size pattern: its size never has to be read back from a GPU)."""
        n_rows, n_latents = z_BF.shape
        values_N, flat_N = top_of_batch(z_BF, min(self.options.k * n_rows, z_BF.numel()))
        positive_N = values_N > 0
        pattern = SparsePattern.from_flat_indices(flat_N, n_rows, n_latents)
        smallest = values_N.masked_fill(~positive_N, float("inf")).min()
        return pattern, smallest, positive_N.any()


def top_of_batch(z_BF: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n largest entries of z_BF: values and flat indices (row * F + latent).

    On a GPU, one top-n of the flattened matrix (a radix selection that never waits on the
    host). On the CPU, exact without sorting the whole matrix: the n-th largest of each row's
    top CANDIDATES_PER_K·k entries is a lower bound τ on the n-th largest overall (a subset's
    n-th largest is no larger), so the answer is the top n of the few entries ≥ τ (their number
    is read on the host, which is free there).
    """
    if not devices.host_reads_are_free(z_BF.device):
        top = z_BF.flatten().topk(n, sorted=False)
        return top.values, top.indices
    n_rows, n_latents = z_BF.shape
    per_row = min(n_latents, CANDIDATES_PER_K * -(-n // n_rows))
    candidates_N = z_BF.topk(per_row, dim=1, sorted=False).values.flatten()
    bound = candidates_N.kthvalue(len(candidates_N) - n + 1).values
    flat_N = (z_BF.flatten() >= bound).nonzero().squeeze(1)
    top = z_BF.flatten()[flat_N].topk(n, sorted=False)
    return top.values, flat_N[top.indices]
