"""Running the LM with its activations edited at one or several hooks at once, and the
next-token statistics of the edited model.

An *edit* is a function from the activation a hook sees, [B, T, D], to what the model continues
with. Edits at several hooks act in the same forward pass, in the model's order, so an edit may
read what an earlier edit (or an earlier hook) produced in this pass: the replacement of a
crosscoder at all its hooks, or a cross-layer transcoder whose encoders read the edited model's
own stream, are edits whose closures share state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

Edit = Callable[[Tensor], Tensor]  # activation [B, T, D] at a hook -> its replacement
CHUNK_TOKENS = 2048  # positions whose log-probabilities are alive at once in `next_token_stats`


def after_first_position(new_BTD: Tensor) -> Edit:
    """An edit that swaps in `new_BTD` at every position but 0 (position 0 is never replaced:
    dictionaries are trained without it)."""

    def edit(x_BTD: Tensor) -> Tensor:
        return torch.cat([x_BTD[:, :1], new_BTD[:, 1:].to(x_BTD.dtype)], dim=1)

    return edit


def rows_after_first_position(rows_ND: Tensor) -> Edit:
    """An edit that swaps in `rows_ND` at every position but 0: the rows of positions 1 to
    T − 1 of each context, context after context ([B·(T − 1), D], the order of
    `x_BTD[:, 1:].reshape(-1, D)`)."""

    def edit(x_BTD: Tensor) -> Tensor:
        b, t, d = x_BTD.shape
        return torch.cat([x_BTD[:, :1], rows_ND.view(b, t - 1, d).to(x_BTD.dtype)], dim=1)

    return edit


def added_at_last_position(push_D: Tensor) -> Edit:
    """An edit that adds `push_D` to the activation of the last position."""

    def edit(x_BTD: Tensor) -> Tensor:
        x_BTD = x_BTD.clone()
        x_BTD[:, -1] += push_D.to(x_BTD.dtype)
        return x_BTD

    return edit


def edited_logits(bridge: object, tokens_BT: Tensor, edits: Mapping[str, Edit]) -> Tensor:
    """Logits [B, T, V] of the model with `edits` applied at their hooks (none: the clean
    model), without autograd."""
    with torch.inference_mode():
        return _logits_with_edits(bridge, tokens_BT, edits)


def edited_logits_with_grad(bridge: object, tokens_BT: Tensor, edits: Mapping[str, Edit]) -> Tensor:
    """`edited_logits` with autograd on: gradients of the logits reach whatever the edits swap
    in (a dictionary's reconstruction, and through it its parameters). The model's own
    parameters are frozen (`load_model`), so nothing of the model is trained, and the graph
    starts at the first hook whose edit reads a tensor that requires grad."""
    with torch.enable_grad():
        return _logits_with_edits(bridge, tokens_BT, edits)


def _logits_with_edits(bridge: object, tokens_BT: Tensor, edits: Mapping[str, Edit]) -> Tensor:
    """One forward pass with each edit attached to its hook."""

    def as_hook(edit: Edit) -> Callable[[Tensor, object], Tensor]:
        return lambda x_BTD, hook: edit(x_BTD)

    hooks = [(name, as_hook(edit)) for name, edit in edits.items()]
    with bridge.hooks(fwd_hooks=hooks):
        return bridge(tokens_BT, return_type="logits")


def next_token_stats(
    logits_BTV: Tensor, tokens_BT: Tensor, clean_logits_BTV: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Next-token CE of `logits` and, given clean logits, KL(clean ‖ these), both [B, T − 2]:
    the predictions an edit after position 0 can change, made at positions 1 to T − 2.

    Computed a few contexts at a time in float32, so that the memory beyond the logits
    themselves is a few [CHUNK_TOKENS, V] tensors, whatever the batch size (full-vocabulary
    log-probabilities of a whole batch are ~0.2 GB per context of 1024 tokens at V = 50257).
    """
    b, t, _ = logits_BTV.shape
    step = max(1, CHUNK_TOKENS // t)
    ce, kl = [], []
    for first in range(0, b, step):
        rows = slice(first, first + step)
        log_p_BTV = F.log_softmax(logits_BTV[rows, 1:-1].float(), dim=-1)
        ce.append(-log_p_BTV.gather(-1, tokens_BT[rows, 2:, None]).squeeze(-1))
        if clean_logits_BTV is not None:
            log_q_BTV = F.log_softmax(clean_logits_BTV[rows, 1:-1].float(), dim=-1)
            kl_BTV = F.kl_div(log_p_BTV, log_q_BTV, log_target=True, reduction="none")
            kl.append(kl_BTV.sum(dim=-1))
    return torch.cat(ce), torch.cat(kl) if kl else None
