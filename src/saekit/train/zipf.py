"""Zipf laws over latents: fitted to firing densities (aux_zipf), and Feature Choice capacities."""

from __future__ import annotations

import torch
from torch import Tensor

# Offsets b tried when fitting p_r = C (r + b)^-a: a grid, since (a, log C) are linear given b.
_OFFSETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def zipf_weights(
    n: int, a: float | Tensor, b: float | Tensor, device: torch.device | str = "cpu"
) -> Tensor:
    """(r + b)^-a for ranks r = 1..n (b > -1); a and b are numbers or one-element tensors."""
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    return (ranks + b).pow(-a)


def fit_zipf(densities_F: Tensor, head: float = 0.8) -> tuple[Tensor, Tensor]:
    """(a, b) of the Zipf law `p_r = C (r + b)^-a` fitted to the densities sorted by rank, as
    one-element float64 tensors on the densities' device.

    Fitted on the top `head` of ranks by least squares in log space, for every b of a small grid
    at once (in closed form: a line through the points (−log(r + b), log p_r)), keeping the b
    with the smallest residual. Latents that never fired carry no information about the law
    (log 0 is no point on a line) and are left out of the fit (weight 0), unless fewer than two
    latents fired, when every rank counts (the law is then flat). Nothing is read back to the
    host, so a GPU never waits on it.
    """
    n = len(densities_F)
    sorted_F = densities_F.double().sort(descending=True).values
    n_head = max(2, int(n * head))
    head_Z = sorted_F[:n_head]
    fired_Z = (head_Z > 0).double()
    weight_Z = torch.where(fired_Z.sum() >= 2, fired_Z, torch.ones_like(fired_Z))
    total = weight_Z.sum()
    ranks_Z = torch.arange(1, n_head + 1, dtype=torch.float64, device=densities_F.device)
    offsets_O = torch.tensor(_OFFSETS, dtype=torch.float64, device=densities_F.device)
    x_OZ = -(ranks_Z + offsets_O[:, None]).log()
    x_OZ = x_OZ - (x_OZ * weight_Z).sum(dim=1, keepdim=True) / total
    y_Z = head_Z.clamp_min(1e-12).log()
    y_Z = y_Z - (y_Z * weight_Z).sum() / total
    a_O = (weight_Z * x_OZ * y_Z).sum(dim=1) / (weight_Z * x_OZ.pow(2)).sum(dim=1)
    residual_O = (weight_Z * (y_Z - a_O[:, None] * x_OZ).pow(2)).sum(dim=1)
    best_1 = residual_O.argmin(dim=0, keepdim=True)  # a tensor index: a 0-d one is read on the host
    return a_O[best_1], offsets_O[best_1]


def zipf_expectation(densities_F: Tensor, head: float = 0.8) -> Tensor:
    """Each latent's density under a Zipf law fitted to `densities_F` (`fit_zipf`, by its rank),
    scaled so the expectations sum to the observed total (the mean L0)."""
    a_1, b_1 = fit_zipf(densities_F, head)
    sorted_F, order_F = densities_F.double().sort(descending=True)
    law_F = zipf_weights(len(densities_F), a_1, b_1, densities_F.device)
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
