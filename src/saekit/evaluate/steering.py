"""Steering (the g-SAE paper's Fig. 5, protocol as reconstructed in algorithms §9).

For a sample of alive latents of an SAE: the targets of latent i are the 10 tokens its decoder
direction promotes most through the unembedding (logit lens, `W_U` applied to `d_i`); adding the
latent's typical contribution — the 90th percentile of its non-zero code on held-out tokens times
its decoder column — to the hook's activation at the last position of held-out contexts should
raise the probability of those targets. Per latent, averaged over contexts:
- P_T: probability added to the targets, Σ_{t∈T} (p'_t − p_t);
- P_O: probability added to other tokens, Σ_{t∉T} max(0, p'_t − p_t);
- precision: P_T / (P_T + P_O).
Reported as medians (and means) over the sampled latents.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TARGET_TOKENS = 10


@torch.no_grad()
def steering_metrics(
    bridge: object,
    sae: torch.nn.Module,
    sample_x_ND: Tensor,
    contexts: Tensor,
    n_latents: int = 64,
    seed: int = 0,
) -> dict[str, float | int] | None:
    """Steering statistics of one SAE, or None when its hook is not in the residual stream."""
    W_U = bridge.W_U.float()  # [d_model, vocab]
    if W_U.shape[0] != sae.d_in:
        return None
    device = W_U.device
    f_NF = sae.encode(sample_x_ND.to(device))
    alive = torch.nonzero((f_NF != 0).any(0)).flatten().cpu().numpy()
    if len(alive) == 0:
        return {"latents": 0}
    rng = np.random.default_rng(seed)
    latents = rng.choice(alive, size=min(n_latents, len(alive)), replace=False)
    tokens_BT = contexts.to(device)
    with torch.inference_mode():
        p_clean_BV = F.softmax(bridge(tokens_BT, return_type="logits")[:, -1].float(), dim=-1)
    p_targets, p_others = [], []
    for latent in latents.tolist():
        values = f_NF[:, latent]
        strength = torch.quantile(values[values != 0], 0.9)
        direction_D = sae.W_dec[:, latent]
        targets = torch.topk(direction_D @ W_U, TARGET_TOKENS).indices
        push_D = strength * direction_D

        def add_at_last(x_BTD: Tensor, hook: object, push_D: Tensor = push_D) -> Tensor:
            x_BTD = x_BTD.clone()
            x_BTD[:, -1] += push_D.to(x_BTD.dtype)
            return x_BTD

        with torch.inference_mode(), bridge.hooks(fwd_hooks=[(sae.cfg.hook, add_at_last)]):
            p_BV = F.softmax(bridge(tokens_BT, return_type="logits")[:, -1].float(), dim=-1)
        delta_BV = p_BV - p_clean_BV
        on_target = torch.zeros_like(delta_BV, dtype=torch.bool)
        on_target[:, targets] = True
        p_targets.append(float(delta_BV[on_target].view(len(delta_BV), -1).sum(1).mean()))
        p_others.append(float(delta_BV.clamp_min(0).masked_fill(on_target, 0).sum(1).mean()))
    p_t, p_o = np.array(p_targets), np.array(p_others)
    precision = p_t / np.maximum(p_t + p_o, 1e-12)
    return {
        "latents": len(latents),
        "contexts": len(contexts),
        "p_targets_median": float(np.median(p_t)),
        "p_others_median": float(np.median(p_o)),
        "precision_median": float(np.median(precision)),
        "p_targets_mean": float(p_t.mean()),
        "precision_mean": float(precision.mean()),
    }
