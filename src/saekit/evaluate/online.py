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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.evaluate.targets import Target
from saekit.lm import (
    BatchOutput,
    Edit,
    LanguageModel,
    after_first_position,
    edited_logits,
    next_token_stats,
    rows_after_first_position,
    run_batch,
)
from saekit.train import DenseCode, Shape, concatenated


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
    zero: dict[tuple[str, ...], _Sums] = field(default_factory=dict)  # by ablated hooks
    mean: dict[tuple[str, ...], _Sums] = field(default_factory=dict)
    spliced: dict[str, _Sums] = field(default_factory=dict)  # by target label

    def metrics(self, targets: list[Target]) -> dict[str, dict]:
        out = {}
        clean = self.clean.mean_ce
        for target in targets:
            if target.label not in self.spliced:
                continue
            spliced = self.spliced[target.label].mean_ce
            ablated = target.shape.target_hooks
            zero, mean = self.zero[ablated].mean_ce, self.mean[ablated].mean_ce
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


def spliced_online(target: Target) -> bool:
    """Whether the target is spliced into the LM: all but a cross-layer transcoder in a
    batch-dependent mode (its replacement model computes codes layer by layer, token by token)."""
    return not (target.shape.cross_layer and target.batch_dependent)


def tail_rows(by_hook: Mapping[str, Tensor], hooks: tuple[str, ...]) -> Tensor:
    """Positions 1 onwards of the hooks' [B, T, D_h] activations (or gradients), as rows
    [B·(T − 1), Σ D_h]: what a dictionary reads, or must reconstruct, in a spliced pass
    (position 0 is never encoded: dictionaries are trained without it)."""
    return concatenated(
        {h: by_hook[h][:, 1:].reshape(-1, by_hook[h].shape[-1]) for h in hooks}, hooks
    )


def reconstruction_edits(shape: Shape, y_hat_NE: Tensor) -> dict[str, Edit]:
    """The edits that splice a dictionary's reconstruction into the LM: at each of its target
    hooks, every position but 0 replaced by its part of `y_hat_NE` (rows in `tail_rows`
    order). With gradients on (`edited_logits_with_grad`), the LM's output is differentiable
    with respect to the reconstruction, so a dictionary can be trained through the splice."""
    return {
        hook: rows_after_first_position(y_hat_hook)
        for hook, y_hat_hook in shape.split_targets(y_hat_NE).items()
    }


def _reconstruction_edits(target: Target, clean: BatchOutput) -> dict[str, Edit]:
    """The target's reconstruction of its target hooks from the clean sources, spliced."""
    shape, activations = target.shape, clean.activations
    g_tail = tail_rows(clean.gradients, shape.target_hooks) if target.needs_gradients else None
    _, y_hat = target.reconstruct(tail_rows(activations, shape.source_hooks), g_tail)
    return reconstruction_edits(shape, y_hat)


def replacement_edits(target: Target, clean: BatchOutput) -> dict[str, Edit]:
    """The edits that make a cross-layer transcoder's replacement model: at each layer's source
    the (replaced) stream is read and that layer's latents are coded from it; at each layer's
    target the MLP output is overwritten with the sum of the decoders of the layers ≤ it. Every
    position but 0; gradients (grad mode) are the clean model's."""
    sae, shape = target.sae, target.shape
    n_layers, d = len(shape.targets), shape.targets[0].d
    group = sae.d_sae // n_layers
    g_tail = tail_rows(clean.gradients, shape.target_hooks) if target.needs_gradients else None
    state: dict[str, Tensor] = {}

    def read(layer: int) -> Edit:
        def edit(x_BTD: Tensor) -> Tensor:
            b, t, _ = x_BTD.shape
            if layer == 0:
                state["x"] = x_BTD.new_zeros(b * (t - 1), n_layers * d)
                state["y"] = x_BTD.new_zeros(b * (t - 1), n_layers * d)
            state["x"][:, layer * d : (layer + 1) * d] = x_BTD[:, 1:].reshape(-1, d)
            f_NF = target.code(state["x"], g_tail).to_dense()
            own_F = torch.zeros(sae.d_sae, dtype=torch.bool, device=f_NF.device)
            own_F[layer * group : (layer + 1) * group] = True
            state["y"] += sae.decode_code(DenseCode(f_NF * own_F), bias=False)
            return x_BTD

        return edit

    def write(layer: int) -> Edit:
        def edit(x_BTD: Tensor) -> Tensor:
            b, t, _ = x_BTD.shape
            columns = slice(layer * d, (layer + 1) * d)
            y_ND = state["y"][:, columns] + sae.b_dec[columns]
            return torch.cat([x_BTD[:, :1], y_ND.view(b, t - 1, d).to(x_BTD.dtype)], dim=1)

        return edit

    edits = {}
    for layer in range(n_layers):
        edits[shape.source_hooks[layer]] = read(layer)
        edits[shape.target_hooks[layer]] = write(layer)
    return edits


@torch.no_grad()
def batch_mode_reconstructions(
    model: LanguageModel,
    contexts: Tensor,
    targets: list[Target],
    row_slots: tuple[Tensor, Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, dict[str, Tensor]]:
    """Spliced activations [n_contexts, T, D] of every batch-mode target, by label and hook.

    The clean activations of the rows at `row_slots` (context index, position; store order,
    position 0 excluded) are encoded with the training-time selection in consecutive batches of
    the target's training batch size, exactly as offline batch mode batches the same rows.
    """
    batch_targets = [t for t in targets if t.batch_dependent and spliced_online(t)]
    hooks = sorted({h for t in batch_targets for h in t.shape.hooks})
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
        shape = target.shape
        rows = {h: activations[h][context_N, position_N] for h in shape.hooks}
        x_ND = concatenated(rows, shape.source_hooks)
        y_hat_NE = x_ND.new_empty(len(x_ND), shape.d_out)
        for first in range(0, len(x_ND), target.batch_rows):
            chunk = slice(first, first + target.batch_rows)
            y_hat_NE[chunk] = target.reconstruct(x_ND[chunk])[1]
        spliced[target.label] = {}
        for hook, y_hat_hook in shape.split_targets(y_hat_NE).items():
            spliced_CTD = activations[hook].clone()
            spliced_CTD[context_N, position_N] = y_hat_hook
            spliced[target.label][hook] = spliced_CTD
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
    spliced_targets = [t for t in targets if spliced_online(t)]
    hooks = sorted({h for t in spliced_targets for h in t.shape.hooks})
    ablated = sorted({t.shape.target_hooks for t in spliced_targets})
    gradients = any(t.needs_gradients for t in spliced_targets)
    result = OnlineResult(
        zero={hooks_: _Sums() for hooks_ in ablated},
        mean={hooks_: _Sums() for hooks_ in ablated},
        spliced={t.label: _Sums() for t in spliced_targets},
    )
    precomputed = {}
    if any(t.batch_dependent for t in spliced_targets):
        if row_slots is None:
            raise ValueError("batch-mode targets need the held-out rows' slots (row_slots)")
        precomputed = batch_mode_reconstructions(
            model, contexts, spliced_targets, row_slots, batch_size, device
        )
    for first in range(0, len(contexts), batch_size):
        tokens_BT = contexts[first : first + batch_size].to(device)
        clean = run_batch(model.bridge, tokens_BT, hooks, gradients=gradients, keep_logits=True)
        clean_logits_BTV, clean.logits = clean.logits, None
        result.clean.add(clean.loss[:, 1:-1])
        for hooks_ in ablated:
            x = {h: clean.activations[h] for h in hooks_}
            zero = {h: after_first_position(torch.zeros_like(x[h])) for h in hooks_}
            mean = {h: after_first_position(means[h].to(device).expand_as(x[h])) for h in hooks_}
            for sums, edits in ((result.zero[hooks_], zero), (result.mean[hooks_], mean)):
                logits_BTV = edited_logits(model.bridge, tokens_BT, edits)
                sums.add(next_token_stats(logits_BTV, tokens_BT)[0])
                del logits_BTV
        with torch.no_grad():
            for target in spliced_targets:
                if target.label in precomputed:
                    window = slice(first, first + len(tokens_BT))
                    replaced = {h: s[window] for h, s in precomputed[target.label].items()}
                    edits = {h: after_first_position(s) for h, s in replaced.items()}
                elif target.shape.cross_layer:
                    edits = replacement_edits(target, clean)
                else:
                    edits = _reconstruction_edits(target, clean)
                logits_BTV = edited_logits(model.bridge, tokens_BT, edits)
                ce_BT, kl_BT = next_token_stats(logits_BTV, tokens_BT, clean_logits_BTV)
                del logits_BTV
                result.spliced[target.label].add(ce_BT, kl_BT)
        del clean, clean_logits_BTV
        on_batch(len(tokens_BT))
    return result.metrics(targets)
