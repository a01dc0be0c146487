"""Inference thresholds learnt during training (BatchTopK: one global θ, Feature Choice: θ_j).

θ is an exponential moving average of the smallest value selected per training batch, bias-
corrected like Adam's moments: θ = m / (1 − decay^n) after n observations, so early batches are
not over-weighted. A threshold with no observation is +inf (that latent never fires at inference,
as it never fired in training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ThresholdEMA(nn.Module):
    """`shape` thresholds (() for one global θ, (F,) for one per latent)."""

    def __init__(self, shape: tuple[int, ...], decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("moment", torch.zeros(shape))
        self.register_buffer("observations", torch.zeros(shape, dtype=torch.long))

    @torch.no_grad()
    def update(self, smallest: Tensor, observed: Tensor) -> None:
        """Fold in this batch's smallest selected values where `observed` is True."""
        blended = self.decay * self.moment + (1 - self.decay) * smallest
        self.moment.copy_(torch.where(observed, blended, self.moment))
        self.observations += observed.long()

    @property
    def value(self) -> Tensor:
        correction = 1 - torch.pow(self.decay, self.observations.double())
        theta = (self.moment.double() / correction).to(self.moment.dtype)
        return torch.where(self.observations > 0, theta, torch.full_like(theta, float("inf")))
