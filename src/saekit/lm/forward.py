"""One batch through the LM: activations at the hooks, per-token loss, and loss gradients.

Gradient convention (stored in every store's identity): g_t = ∂(Σ_t' CE_t')/∂x_t — one backward
pass of the **sum** over each sequence of next-token cross-entropy, on the clean model. Model
parameters never require grad: the first hook point reached becomes the leaf of the graph, so
autograd computes activation gradients only, and nothing before the first hook.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORED = -100  # target of the last position, which predicts nothing
GRADIENT_CONVENTION = (
    "d(sum over the context of next-token cross-entropy)/d(activation), clean model, one "
    "backward pass; the last position's gradient is 0"
)


@dataclass
class BatchOutput:
    """Per-token results of one batch of contexts, each [B, T, ...], on the model's device."""

    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    loss: torch.Tensor  # [B, T] float32, NaN at the last position
    logits: torch.Tensor | None = None  # [B, T, V], kept on request


def next_token_loss(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 at each position t ([B, T-1], float32).

    The last position gets an ignored target rather than being sliced off, so the logits are
    read in place (a slice of them would be copied whole: one more [B, T, V] tensor). Each
    row's value is the same either way, bit for bit.
    """
    targets_BT = F.pad(tokens_BT[:, 1:], (0, 1), value=IGNORED)
    ce_N = F.cross_entropy(
        logits_BTV.float().flatten(0, 1),
        targets_BT.flatten(),
        ignore_index=IGNORED,
        reduction="none",
    )
    return ce_N.view(tokens_BT.shape)[:, :-1]


def run_batch(
    bridge: Any,
    tokens_BT: torch.Tensor,
    hooks: list[str],
    *,
    gradients: bool = True,
    autocast_bf16: bool = False,
    keep_logits: bool = False,
) -> BatchOutput:
    """Forward (and backward when `gradients`) of one batch, capturing the hooks."""
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if gradients and not x.requires_grad:
                x = x.detach().requires_grad_(True)  # the graph starts at the first hook
            captured[name] = x
            return x

        return hook

    device_type = tokens_BT.device.type
    grad_mode = contextlib.nullcontext() if gradients else torch.inference_mode()
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16)
    with grad_mode, autocast, bridge.hooks(fwd_hooks=[(h, capture(h)) for h in hooks]):
        logits_BTV = bridge(tokens_BT, return_type="logits")
        ce_BT = next_token_loss(logits_BTV, tokens_BT)
    grads: dict[str, torch.Tensor] = {}
    if gradients:
        values = torch.autograd.grad(ce_BT.sum(), [captured[h] for h in hooks])
        grads = {h: g.float() for h, g in zip(hooks, values, strict=True)}
    loss_BT = F.pad(ce_BT.detach(), (0, 1), value=float("nan"))
    return BatchOutput(
        activations={h: captured[h].detach().float() for h in hooks},
        gradients=grads,
        loss=loss_BT,
        logits=logits_BTV.detach().float() if keep_logits else None,
    )
