"""Quantities estimated from a sample of the store before training: the input scale c (so that
E‖c·x‖ = √d) and the geometric median used to initialise b_dec."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saekit.base.errors import SaekitError


def input_scale(x_BD: Tensor) -> float:
    """c with E‖c·x‖ = √d over the sample."""
    mean_norm = float(x_BD.double().norm(dim=1).mean())
    if not mean_norm > 0:
        raise SaekitError("the store's activations are all zero; they cannot train an SAE")
    return math.sqrt(x_BD.shape[1]) / mean_norm


@torch.no_grad()
def geometric_median(x_BD: Tensor, iterations: int = 100, tolerance: float = 1e-6) -> Tensor:
    """The point minimising Σ‖x_b − y‖ (Weiszfeld's algorithm, started at the mean)."""
    points = x_BD.double()
    median = points.mean(dim=0)
    scale = float(points.norm(dim=1).mean()) or 1.0
    for _ in range(iterations):
        distances = (points - median).norm(dim=1).clamp_min(1e-12 * scale)
        weights = 1 / distances
        updated = (weights[:, None] * points).sum(dim=0) / weights.sum()
        moved = float((updated - median).norm())
        median = updated
        if moved <= tolerance * scale:
            break
    return median.to(x_BD.dtype)
