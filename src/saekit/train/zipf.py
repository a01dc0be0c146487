"""Zipf laws over latents: fitted to firing densities (aux_zipf), and Feature Choice capacities."""

from __future__ import annotations

import torch
from torch import Tensor

# Offsets b tried when fitting p_r = C (r + b)^-a: a grid, since (a, log C) are linear given b.
_OFFSETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def zipf_weights(n: int, a: float, b: float, device: torch.device | str = "cpu") -> Tensor:
    """(r + b)^-a for ranks r = 1..n (b > -1)."""
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    return (ranks + b).pow(-a)


def fit_zipf(densities_F: Tensor, head: float = 0.8) -> tuple[float, float]:
    """Fit `p_r = C (r + b)^-a` to the densities sorted by rank, on the top `head` of ranks.

    Least squares in log space for every b of a small grid; returns the best (a, b).
    """
    sorted_R = densities_F.double().sort(descending=True).values
    n = max(2, int(len(sorted_R) * head))
    log_p = sorted_R[:n].clamp_min(1e-12).log()
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=densities_F.device)
    best: tuple[float, float, float] | None = None
    for b in _OFFSETS:
        log_r = (ranks + b).log()
        design = torch.stack([torch.ones_like(log_r), -log_r], dim=1)
        solution = torch.linalg.lstsq(design, log_p[:, None]).solution[:, 0]
        residual = float((design @ solution - log_p).pow(2).sum())
        if best is None or residual < best[0]:
            best = (residual, float(solution[1]), b)
    assert best is not None
    return best[1], best[2]


def zipf_expectation(densities_F: Tensor, head: float = 0.8) -> Tensor:
    """Each latent's density under the Zipf law fitted to `densities_F` (by its rank), scaled so
    the expectations sum to the observed total (the mean L0)."""
    a, b = fit_zipf(densities_F, head)
    order_F = densities_F.argsort(descending=True)
    law_R = zipf_weights(len(densities_F), a, b, densities_F.device)
    law_R *= densities_F.double().sum() / law_R.sum()
    expected_F = torch.empty_like(law_R)
    expected_F[order_F] = law_R
    return expected_F.to(densities_F.dtype)


def capacities(weights_F: Tensor, budget: int, cap: int) -> Tensor:
    """Integer capacities proportional to `weights_F`, each at most `cap`, summing to `budget`.

    Capped features give their surplus to the others in proportion to their weights; rounding
    keeps the floors and hands the remaining units to the largest remainders (ties: lowest
    index), so the sum is exact. Requires budget <= cap · len(weights).
    """
    n = len(weights_F)
    if budget > cap * n:
        raise ValueError(f"a budget of {budget} does not fit {n} capacities of at most {cap}")
    weights = weights_F.double()
    capped = torch.zeros(n, dtype=torch.bool, device=weights.device)
    while True:  # water-filling: at most n rounds, usually one or two
        free_budget = budget - cap * int(capped.sum())
        share = torch.where(capped, 0.0, weights)
        exact = torch.where(capped, float(cap), share * free_budget / share.sum())
        newly = ~capped & (exact > cap)
        if not newly.any():
            break
        capped |= newly
    floors = exact.floor().long()
    remainder = budget - int(floors.sum())
    order = torch.sort(exact - floors, descending=True, stable=True).indices
    floors[order[:remainder]] += 1
    return floors
