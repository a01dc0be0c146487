"""One batch through the LM: activations at the hooks, per-token loss, and loss gradients.

Gradient convention (stored in every store's identity): g_t = ∂(Σ_t' CE_t')/∂x_t — one backward
pass of the **sum** over each sequence of next-token cross-entropy, on the clean model. Model
parameters never require grad: the first hook point reached that needs gradients becomes the leaf
of the graph, so autograd computes activation gradients only, and nothing before that hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
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
    gradients: bool | Collection[str] = True,
    autocast_bf16: bool = False,
    keep_logits: bool = False,
) -> BatchOutput:
    """Forward (and backward where gradients are asked) of one batch, capturing the hooks.

    `gradients`: True (at every hook), False (none: a forward pass under inference mode), or the
    hooks, among `hooks`, that need them. Only those become leaves of the graph and are asked of
    autograd, so the graph starts at the first of them reached; `BatchOutput.gradients` holds
    them alone. Asking for every hook by name computes the same bits as True.
    """
    wanted = _gradient_hooks(hooks, gradients)
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        leaf = name in wanted

        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if leaf and not x.requires_grad:
                x = x.detach().requires_grad_(True)  # the graph starts at the first such hook
            captured[name] = x
            return x

        return hook

    device_type = tokens_BT.device.type
    grad_mode = contextlib.nullcontext() if wanted else torch.inference_mode()
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16)
    with grad_mode, autocast, bridge.hooks(fwd_hooks=[(h, capture(h)) for h in hooks]):
        logits_BTV = bridge(tokens_BT, return_type="logits")
        ce_BT = next_token_loss(logits_BTV, tokens_BT)
    grads: dict[str, torch.Tensor] = {}
    if wanted:
        asked = [h for h in hooks if h in wanted]
        values = torch.autograd.grad(ce_BT.sum(), [captured[h] for h in asked])
        grads = {h: g.float() for h, g in zip(asked, values, strict=True)}
    loss_BT = F.pad(ce_BT.detach(), (0, 1), value=float("nan"))
    return BatchOutput(
        activations={h: captured[h].detach().float() for h in hooks},
        gradients=grads,
        loss=loss_BT,
        logits=logits_BTV.detach().float() if keep_logits else None,
    )


def _gradient_hooks(hooks: list[str], gradients: bool | Collection[str]) -> set[str]:
    """The hooks that need gradients, from `run_batch`'s `gradients` argument."""
    if isinstance(gradients, bool):
        return set(hooks) if gradients else set()
    wanted = set(gradients)
    if not wanted <= set(hooks):
        raise ValueError(f"gradients asked at hooks not captured: {sorted(wanted - set(hooks))}")
    return wanted
