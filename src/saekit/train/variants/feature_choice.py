"""Feature Choice: each latent j takes at most m_j tokens of the batch (docs/algorithms.md §4).

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

    def __init__(self, options: FeatureChoiceOptions, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        self._slots: _Slots | None = None  # of the last batch size seen

    def capacities(self, n_rows: int, n_latents: int) -> Tensor:
        """m_j for a batch of `n_rows` tokens: Σ m_j = k · n_rows, each m_j <= n_rows."""
        if self.options.capacities == "uniform":
            weights_F = torch.ones(n_latents, dtype=torch.float64)
        else:
            weights_F = zipf_weights(n_latents, self.options.zipf_a, self.options.zipf_b)
        return capacities(weights_F, self.options.k * n_rows, cap=n_rows)

    def slots(self, n_rows: int, n_latents: int, device: torch.device) -> _Slots:
        """The capacities of a batch of `n_rows` as slots on `device`, computed once per batch
        size (on the CPU; a step then reads nothing back from a GPU)."""
        cached = self._slots
        if cached is None or cached.n_rows != n_rows or cached.allowed_MF.device != device:
            capacity_F = self.capacities(n_rows, n_latents)
            allowed_MF = torch.arange(int(capacity_F.max()))[:, None] < capacity_F
            rank_N, latent_N = allowed_MF.nonzero(as_tuple=True)
            self._slots = _Slots(
                n_rows, allowed_MF.to(device), rank_N.to(device), latent_N.to(device)
            )
        return self._slots

    def select_batch(self, z_BF: Tensor) -> tuple[SparsePattern, Tensor, Tensor]:
        """The pattern holds all k·B slots; a slot whose entry is not positive gets code
        ReLU(z) = 0 (a fixed-size pattern: its size never has to be read back from a GPU)."""
        n_rows, n_latents = z_BF.shape
        slots = self.slots(n_rows, n_latents, z_BF.device)
        top = z_BF.topk(len(slots.allowed_MF), dim=0)  # [m_max, F], best first
        rows_N = top.indices[slots.rank_N, slots.latent_N]
        flat_N = rows_N * n_latents + slots.latent_N
        pattern = SparsePattern.from_flat_indices(flat_N, n_rows, n_latents)
        keep_MF = slots.allowed_MF & (top.values > 0)
        smallest_F = top.values.masked_fill(~keep_MF, float("inf")).amin(dim=0)
        return pattern, smallest_F, keep_MF.any(dim=0)


@dataclass(frozen=True)
class _Slots:
    """Where latent j may keep tokens in a batch of `n_rows`: ranks 0..m_j − 1 of its column."""

    n_rows: int
    allowed_MF: Tensor  # [m_max, F]: rank r < m_j
    rank_N: Tensor  # the allowed (rank, latent) pairs, Σ m_j = k · n_rows of them
    latent_N: Tensor
