"""Steering (the g-SAE paper's Fig. 5; the protocol is a reconstruction, docs/algorithms.md §9).

For a sample of alive latents of an SAE: the targets of latent i are the 10 tokens its decoder
direction promotes most, read through the final layer norm and the unembedding as the LM applies
them (the norm's centring and weight, then `W_U`; its division by the token's scale is a positive
factor that keeps the ranking). Adding a multiple of the direction to the hook's activation at
the last position of held-out contexts should raise the probability of those targets. Per latent,
averaged over contexts:
- target_logit_gain: mean change of the targets' logits minus the mean change of all logits;
- P_T: probability added to the targets, Σ_{t∈T} (p'_t − p_t);
- P_O: probability added to other tokens, Σ_{t∉T} max(0, p'_t − p_t);
- precision: P_T / (P_T + P_O).

`steering_metrics` adds each latent's typical contribution (the 90th percentile of its non-zero
code times its decoder column) and reports medians over latents. `steering_sweep` adds
α · E‖x‖ · d̂_i for each α of a sweep (d̂_i the unit direction, E‖x‖ the mean norm of the hook's
activations), the same intervention size for every SAE, and reports means over latents per α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.lm import (
    LanguageModel,
    added_at_last_position,
    direction_logits,
    edited_logits,
    reads_residual_stream,
)
from saekit.train import SAE

TARGET_TOKENS = 10


@dataclass
class Effects:
    """Per-latent steering effects, each averaged over contexts."""

    target_logit_gain: float
    p_targets: float
    p_others: float

    @property
    def precision(self) -> float:
        return self.p_targets / max(self.p_targets + self.p_others, 1e-12)


def target_tokens(model: LanguageModel, directions_LD: Tensor) -> Tensor:
    """The TARGET_TOKENS tokens each direction promotes most: [L, TARGET_TOKENS]."""
    return torch.topk(direction_logits(model.bridge, directions_LD), TARGET_TOKENS, dim=1).indices


def _last_logits(
    model: LanguageModel, tokens_BT: Tensor, hook: str, push_D: Tensor | None
) -> Tensor:
    edits = {} if push_D is None else {hook: added_at_last_position(push_D)}
    return edited_logits(model.bridge, tokens_BT, edits)[:, -1].float()


def steered_hook(model: LanguageModel, sae: SAE) -> str | None:
    """Where a dictionary's decoder directions are added: its one target hook, when that lives
    in the residual stream (the unembedding reads its width); None for dictionaries of several
    targets."""
    shape = sae.shape
    if len(shape.targets) != 1 or not reads_residual_stream(model.bridge, shape.d_out):
        return None
    return shape.target_hooks[0]


def _effects(clean_BV: Tensor, steered_BV: Tensor, targets_K: Tensor) -> Effects:
    delta_logits_BV = steered_BV - clean_BV
    gain_B = delta_logits_BV[:, targets_K].mean(1) - delta_logits_BV.mean(1)
    delta_p_BV = F.softmax(steered_BV, dim=-1) - F.softmax(clean_BV, dim=-1)
    on_target_V = torch.zeros(delta_p_BV.shape[1], dtype=torch.bool, device=delta_p_BV.device)
    on_target_V[targets_K] = True
    return Effects(
        target_logit_gain=float(gain_B.mean()),
        p_targets=float(delta_p_BV[:, on_target_V].sum(1).mean()),
        p_others=float(delta_p_BV.clamp_min(0)[:, ~on_target_V].sum(1).mean()),
    )


def _alive_sample(
    sae: SAE, sample_x_BD: Tensor, n_latents: int, seed: int
) -> tuple[Tensor, np.ndarray]:
    """(codes of the sample, a random sample of the latents that fire on it)."""
    f_BF = sae.encode(sample_x_BD)
    alive = torch.nonzero((f_BF != 0).any(0)).flatten().cpu().numpy()
    rng = np.random.default_rng(seed)
    return f_BF, rng.choice(alive, size=min(n_latents, len(alive)), replace=False)


@torch.no_grad()
def steering_metrics(
    model: LanguageModel,
    sae: SAE,
    sample_x_BD: Tensor,
    contexts: Tensor,
    n_latents: int = 64,
    seed: int = 0,
) -> dict[str, float | int] | None:
    """Steering statistics of one SAE, or None when it writes no single hook of the residual
    stream (`steered_hook`)."""
    hook = steered_hook(model, sae)
    if hook is None:
        return None
    device = model.device
    f_BF, latents = _alive_sample(sae, sample_x_BD.to(device), n_latents, seed)
    if len(latents) == 0:
        return {"latents": 0}
    tokens_BT = contexts.to(device)
    clean_BV = _last_logits(model, tokens_BT, hook, None)
    targets_LK = target_tokens(model, sae.W_dec[:, latents].T)
    effects = []
    for latent, targets_K in zip(latents.tolist(), targets_LK, strict=True):
        values = f_BF[:, latent]
        push_D = torch.quantile(values[values != 0], 0.9) * sae.W_dec[:, latent]
        steered_BV = _last_logits(model, tokens_BT, hook, push_D)
        effects.append(_effects(clean_BV, steered_BV, targets_K))
    p_t = np.array([e.p_targets for e in effects])
    precision = np.array([e.precision for e in effects])
    return {
        "latents": len(latents),
        "contexts": len(contexts),
        "p_targets_median": float(np.median(p_t)),
        "p_others_median": float(np.median([e.p_others for e in effects])),
        "precision_median": float(np.median(precision)),
        "p_targets_mean": float(p_t.mean()),
        "precision_mean": float(precision.mean()),
    }


@torch.no_grad()
def steering_sweep(
    model: LanguageModel,
    sae: SAE,
    sample_x_BD: Tensor,
    contexts: Tensor,
    alphas: tuple[float, ...],
    n_latents: int,
    seed: int = 0,
) -> dict | None:
    """Per α: mean effects of adding α · E‖x‖ · d̂_i over a sample of alive latents (None as
    for `steering_metrics`); E‖x‖ is the mean norm of the sample (the dictionary's input)."""
    hook = steered_hook(model, sae)
    if hook is None:
        return None
    device = model.device
    sample_x_BD = sample_x_BD.to(device)
    _, latents = _alive_sample(sae, sample_x_BD, n_latents, seed)
    if len(latents) == 0:
        return {"latents": 0, "contexts": len(contexts), "per_alpha": []}
    norm = float(sample_x_BD.norm(dim=1).mean())
    tokens_BT = contexts.to(device)
    clean_BV = _last_logits(model, tokens_BT, hook, None)
    units_LD = (sae.W_dec[:, latents] / sae.W_dec[:, latents].norm(dim=0)).T
    targets_LK = target_tokens(model, units_LD)
    per_alpha = []
    for alpha in alphas:
        effects = [
            _effects(clean_BV, _last_logits(model, tokens_BT, hook, alpha * norm * unit_D), t)
            for unit_D, t in zip(units_LD, targets_LK, strict=True)
        ]
        per_alpha.append(
            {
                "alpha": alpha,
                "target_logit_gain": float(np.mean([e.target_logit_gain for e in effects])),
                "p_targets": float(np.mean([e.p_targets for e in effects])),
                "p_others": float(np.mean([e.p_others for e in effects])),
                "precision": float(np.mean([e.precision for e in effects])),
            }
        )
    return {
        "latents": len(latents),
        "contexts": len(contexts),
        "residual_norm": norm,
        "per_alpha": per_alpha,
    }
