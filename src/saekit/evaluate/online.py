"""Online metrics: the LM re-run on the held-out contexts with each SAE spliced in.

For every context (token ids rebuilt from the store) the clean forward gives the next-token
cross-entropy `CE_clean`; then the activation at the SAE's hook is replaced, at every position
except 0, by the SAE's reconstruction (`CE_spliced`), by zeros (`CE_zero`) and by the training
mean (`CE_mean`). Token-weighted over the predictions the splice can change — those made at
positions 1 to T−2 (position 0 is never replaced, so its prediction is the clean one; the last
position predicts nothing):
- loss_added = CE_spliced − CE_clean (nats per token);
- ce_recovered_zero = (CE_zero − CE_spliced) / (CE_zero − CE_clean), likewise against the mean;
- kl = KL(clean ‖ spliced) of the next-token distributions.
g-SAE in grad mode selects latents with the gradient of the clean forward on the same text
(the store's convention: the summed next-token CE), which sees the next token; plain mode does not.
Batch-dependent targets in batch mode select over the held-out rows in the store's (shuffled)
order, in batches of their training batch size — the batches offline batch mode uses — not over
one LM batch; their reconstructions of every row are computed before splicing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.evaluate.targets import Target
from saekit.lm import (
    LanguageModel,
    after_first_position,
    edited_logits,
    next_token_stats,
    run_batch,
)


@dataclass
class _Sums:
    """Token-weighted sums for one spliced variant of the model."""

    ce: float = 0.0
    kl: float = 0.0
    tokens: int = 0

    def add(self, ce_BT: Tensor, kl_BT: Tensor | None = None) -> None:
        self.ce += float(ce_BT.double().sum())
        self.kl += 0.0 if kl_BT is None else float(kl_BT.double().sum())
        self.tokens += ce_BT.numel()

    @property
    def mean_ce(self) -> float:
        return self.ce / max(self.tokens, 1)

    @property
    def mean_kl(self) -> float:
        return self.kl / max(self.tokens, 1)


@dataclass
class OnlineResult:
    clean: _Sums = field(default_factory=_Sums)
    zero: dict[str, _Sums] = field(default_factory=dict)  # by hook
    mean: dict[str, _Sums] = field(default_factory=dict)
    spliced: dict[str, _Sums] = field(default_factory=dict)  # by target label

    def metrics(self, targets: list[Target]) -> dict[str, dict]:
        out = {}
        clean = self.clean.mean_ce
        for target in targets:
            spliced = self.spliced[target.label].mean_ce
            zero, mean = self.zero[target.hook].mean_ce, self.mean[target.hook].mean_ce
            out[target.label] = {
                "tokens": self.clean.tokens,
                "ce_clean": clean,
                "ce_spliced": spliced,
                "loss_added": spliced - clean,
                "ce_zero": zero,
                "ce_mean": mean,
                "ce_recovered_zero": (zero - spliced) / (zero - clean),
                "ce_recovered_mean": (mean - spliced) / (mean - clean),
                "kl": self.spliced[target.label].mean_kl,
            }
        return out


def _reconstruction(target: Target, x_BTD: Tensor, g_BTD: Tensor | None) -> Tensor:
    """x with every position but 0 replaced by the target's reconstruction (position 0 is never
    encoded: SAEs are trained without it)."""
    b, t, d = x_BTD.shape
    tail = x_BTD[:, 1:].reshape(-1, d)
    g_tail = g_BTD[:, 1:].reshape(-1, d) if g_BTD is not None and target.needs_gradients else None
    _, x_hat = target.reconstruct(tail, g_tail)
    return torch.cat([x_BTD[:, :1], x_hat.view(b, t - 1, d)], dim=1)


@torch.no_grad()
def batch_mode_reconstructions(
    model: LanguageModel,
    contexts: Tensor,
    targets: list[Target],
    row_slots: tuple[Tensor, Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Spliced activations [n_contexts, T, D] of every batch-mode target, by label.

    The clean activations of the rows at `row_slots` (context index, position; store order,
    position 0 excluded) are encoded with the training-time selection in consecutive batches of
    the target's training batch size, exactly as offline batch mode batches the same rows.
    """
    batch_targets = [t for t in targets if t.batch_dependent]
    hooks = sorted({t.hook for t in batch_targets})
    clean = {hook: [] for hook in hooks}
    for first in range(0, len(contexts), batch_size):
        tokens_BT = contexts[first : first + batch_size].to(device)
        out = run_batch(model.bridge, tokens_BT, hooks, gradients=False)
        for hook in hooks:
            clean[hook].append(out.activations[hook])
    activations = {hook: torch.cat(parts) for hook, parts in clean.items()}
    context_N, position_N = (slot.to(device) for slot in row_slots)
    spliced = {}
    for target in batch_targets:
        x_CTD = activations[target.hook]
        rows_ND = x_CTD[context_N, position_N]
        x_hat_ND = torch.empty_like(rows_ND)
        for first in range(0, len(rows_ND), target.batch_rows):
            chunk = slice(first, first + target.batch_rows)
            x_hat_ND[chunk] = target.reconstruct(rows_ND[chunk])[1]
        spliced_CTD = x_CTD.clone()
        spliced_CTD[context_N, position_N] = x_hat_ND
        spliced[target.label] = spliced_CTD
    return spliced


def online_metrics(
    model: LanguageModel,
    contexts: Tensor,
    targets: list[Target],
    means: dict[str, Tensor],
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] = lambda n: None,
    row_slots: tuple[Tensor, Tensor] | None = None,
) -> dict[str, dict]:
    """Splice every target into the LM on every held-out context; metrics by target label.

    `row_slots` (`heldout_row_slots` of the same contexts) is needed for batch-mode targets.
    """
    hooks = sorted({t.hook for t in targets})
    gradients = any(t.needs_gradients for t in targets)
    result = OnlineResult(
        zero={h: _Sums() for h in hooks},
        mean={h: _Sums() for h in hooks},
        spliced={t.label: _Sums() for t in targets},
    )
    precomputed = {}
    if any(t.batch_dependent for t in targets):
        if row_slots is None:
            raise ValueError("batch-mode targets need the held-out rows' slots (row_slots)")
        precomputed = batch_mode_reconstructions(
            model, contexts, targets, row_slots, batch_size, device
        )
    for first in range(0, len(contexts), batch_size):
        tokens_BT = contexts[first : first + batch_size].to(device)
        clean = run_batch(model.bridge, tokens_BT, hooks, gradients=gradients, keep_logits=True)
        clean_logits_BTV, clean.logits = clean.logits, None
        result.clean.add(clean.loss[:, 1:-1])
        for hook in hooks:
            x_BTD = clean.activations[hook]
            for sums, replacement in (
                (result.zero[hook], torch.zeros_like(x_BTD)),
                (result.mean[hook], means[hook].to(device).expand_as(x_BTD)),
            ):
                edits = {hook: after_first_position(replacement)}
                logits_BTV = edited_logits(model.bridge, tokens_BT, edits)
                sums.add(next_token_stats(logits_BTV, tokens_BT)[0])
                del logits_BTV
        with torch.no_grad():
            for target in targets:
                if target.label in precomputed:
                    spliced_BTD = precomputed[target.label][first : first + len(tokens_BT)]
                else:
                    spliced_BTD = _reconstruction(
                        target, clean.activations[target.hook], clean.gradients.get(target.hook)
                    )
                edits = {target.hook: after_first_position(spliced_BTD)}
                logits_BTV = edited_logits(model.bridge, tokens_BT, edits)
                ce_BT, kl_BT = next_token_stats(logits_BTV, tokens_BT, clean_logits_BTV)
                del logits_BTV
                result.spliced[target.label].add(ce_BT, kl_BT)
        del clean, clean_logits_BTV
        on_batch(len(tokens_BT))
    return result.metrics(targets)
