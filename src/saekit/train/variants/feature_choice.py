"""Feature Choice: each latent j takes at most m_j tokens of the batch (algorithms §4).

Capacities sum to the TopK budget k·B: uniform (k·B/F, integerised exactly) or Zipf
(m_j ∝ (j + b)^-a by fixed latent index, capped at B, surplus redistributed). Per column of
ReLU(z) the m_j largest positive entries are kept. Inference: per-latent thresholds θ_j (EMA of
latent j's smallest selected value per batch), f_j = z_j · 1[z_j > θ_j].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from saekit.train.sparse import SparsePattern
from saekit.train.variants.base import BatchSelection
from saekit.train.variants.options import (
    AuxOptions,
    KOptions,
    SAEOptions,
    ThresholdOptions,
    check,
)
from saekit.train.variants.registry import register
from saekit.train.zipf import capacities, zipf_weights


@dataclass(frozen=True)
class FeatureChoiceOptions(ThresholdOptions, AuxOptions, KOptions, SAEOptions):
    aux: Literal["auxk", "zipf", "none"] = "none"  # no dead latents by construction
    capacities: Literal["uniform", "zipf"] = "uniform"
    zipf_a: float = 1.0  # Zipf capacities m_j ∝ (j + zipf_b)^-zipf_a
    zipf_b: float = 1.0

    HEADLINE: ClassVar[tuple[str, ...]] = ("k",)

    def __post_init__(self) -> None:
        check(self.zipf_a >= 0, "zipf_a must be >= 0")
        check(self.zipf_b > -1, "zipf_b must be > -1")
        super().__post_init__()


@register
class FeatureChoice(BatchSelection):
    """Per latent j, the m_j largest positive activations of the batch; NMSE (+ optional aux)."""

    name = "feature-choice"
    options_type = FeatureChoiceOptions
    per_latent_threshold = True
    options: FeatureChoiceOptions

    def capacities(self, n_rows: int, n_latents: int) -> Tensor:
        """m_j for a batch of `n_rows` tokens: Σ m_j = k · n_rows, each m_j <= n_rows."""
        if self.options.capacities == "uniform":
            weights_F = torch.ones(n_latents, dtype=torch.float64)
        else:
            weights_F = zipf_weights(n_latents, self.options.zipf_a, self.options.zipf_b)
        return capacities(weights_F, self.options.k * n_rows, cap=n_rows)

    def select_batch(self, z_BF: Tensor) -> tuple[SparsePattern, Tensor, Tensor]:
        n_rows, n_latents = z_BF.shape
        capacity_F = self.capacities(n_rows, n_latents).to(z_BF.device)
        top = z_BF.topk(int(capacity_F.max()), dim=0)  # [m_max, F], best first
        rank_M1 = torch.arange(len(top.values), device=z_BF.device)[:, None]
        keep_MF = (rank_M1 < capacity_F) & (top.values > 0)
        flat_MF = top.indices * n_latents + torch.arange(n_latents, device=z_BF.device)
        pattern = SparsePattern.from_flat_indices(flat_MF[keep_MF], n_rows, n_latents)
        smallest_F = top.values.masked_fill(~keep_MF, float("inf")).amin(dim=0)
        return pattern, smallest_F, keep_MF.any(dim=0)
