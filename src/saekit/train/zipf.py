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


def zipf_expectation(densities_F: Tensor, head: float = 0.8) -> Tensor:
    """Each latent's density under a Zipf law fitted to `densities_F` (by its rank), scaled so
    the expectations sum to the observed total (the mean L0).

    The law `p_r = C (r + b)^-a` is fitted on the top `head` of ranks by least squares in log
    space, for every b of a small grid at once (in closed form: a line through the points
    (−log(r + b), log p_r)), keeping the b with the smallest residual. Everything stays on the
    densities' device: nothing is read back to the host, so a GPU never waits on the fit.
    """
    n = len(densities_F)
    sorted_F, order_F = densities_F.double().sort(descending=True)
    ranks_F = torch.arange(1, n + 1, dtype=torch.float64, device=densities_F.device)
    log_ranks_OF = torch.stack([(ranks_F + b).log() for b in _OFFSETS])
    n_head = max(2, int(n * head))
    x_OH = -log_ranks_OF[:, :n_head]
    x_OH = x_OH - x_OH.mean(dim=1, keepdim=True)
    y_H = sorted_F[:n_head].clamp_min(1e-12).log()
    y_H = y_H - y_H.mean()
    a_O = (x_OH * y_H).sum(dim=1) / x_OH.pow(2).sum(dim=1)
    residual_O = (y_H - a_O[:, None] * x_OH).pow(2).sum(dim=1)
    best_1 = residual_O.argmin(dim=0, keepdim=True)  # a tensor index: a 0-d one is read on the host
    law_F = (-a_O[best_1] * log_ranks_OF[best_1]).exp().squeeze(0)
    law_F *= sorted_F.sum() / law_F.sum()
    expected_F = torch.empty_like(law_F)
    expected_F[order_F] = law_F
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
