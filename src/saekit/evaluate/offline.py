"""Offline metrics on the store's held-out rows: reconstruction, sparsity, latent usage, shrinkage.

Definitions (docs/algorithms.md §9), over the same held-out tokens (position 0 excluded) for
every SAE:
- nmse (= FVU) = Σ‖x − x̂‖² / Σ‖x − μ‖², μ the mean of the training rows; variance_explained =
  1 − nmse; nmse_per_token = mean ‖x − x̂‖² / ‖x‖² (OpenAI's variant);
- l0: mean number of non-zero codes per token, with quantiles and the fraction of tokens with none;
- dead_fraction: latents that never fire on these tokens; dense_fraction: latents firing on more
  than 10 % of them; underused_fraction: latents firing on less than a tenth of the mean density
  (L0 / F), dead ones included;
- l0_histogram: how many tokens have 0, 1, 2, ... active latents;
- relative_reconstruction_bias γ = E‖x̂‖² / E[x·x̂] (< 1: shrinkage);
- cosine: mean cos(x, x̂).

For a dictionary that reconstructs other hooks than it reads (a transcoder) x is its target; for
one of several targets (a crosscoder, a cross-layer transcoder) the numbers above are over the
concatenated targets, and `per_hook` gives NMSE, γ and cosine at each target; a cross-layer
transcoder's `l0_per_layer` gives each layer's mean active latents (they add up to L0). A
Matryoshka SAE's `prefix_nmse` gives the NMSE of each prefix on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.cache_format import ActivationStore
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.evaluate.estimate import LossAddedEstimate
from saekit.evaluate.heldout import POSITION, holdout_batches
from saekit.evaluate.targets import Target
from saekit.lm import GRADIENT_CONVENTION

DENSE_THRESHOLD = 0.1
UNDERUSED_SHARE = 0.1  # under-used: firing below a tenth of the mean density L0 / F


class ReconstructionStats:
    """Running sums of one target's reconstruction metrics (float64)."""

    def __init__(self, d_sae: int, mean_D: Tensor) -> None:
        self.mean_D = mean_D.double()
        self.tokens = 0
        self.sq_error = self.sq_deviation = self.relative_error = 0.0
        self.hat_sq = self.dot = self.cosine = 0.0
        self.fires_F = torch.zeros(d_sae, dtype=torch.float64)
        self.l0_counts = np.zeros(d_sae + 1, dtype=np.int64)

    def update(self, x_BD: Tensor, x_hat_BD: Tensor, f_BF: Tensor) -> None:
        # every sum runs over each row first: torch splits a sum of more than 32,768 values
        # between its threads, so a whole batch's sum would end in bits that depend on the
        # machine's thread count (a dask worker's, say); a row's, and a batch of rows', do not
        x, x_hat = x_BD.double(), x_hat_BD.double()
        error_B = (x - x_hat).pow(2).sum(1)
        norm_B = x.pow(2).sum(1)
        self.tokens += len(x)
        self.sq_error += float(error_B.sum())
        self.sq_deviation += float((x - self.mean_D.to(x.device)).pow(2).sum(1).sum())
        self.relative_error += float((error_B / norm_B.clamp_min(1e-30)).sum())
        self.hat_sq += float(x_hat.pow(2).sum(1).sum())
        self.dot += float((x * x_hat).sum(1).sum())
        self.cosine += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=1).sum())
        active_BF = f_BF != 0
        self.fires_F += active_BF.sum(0).double().cpu()
        self.l0_counts += np.bincount(active_BF.sum(1).cpu().numpy(), minlength=len(self.l0_counts))

    def result(self) -> dict[str, float | int | dict[str, float]]:
        n = max(self.tokens, 1)
        nmse = self.sq_error / self.sq_deviation if self.sq_deviation else float("nan")
        l0_values = np.arange(len(self.l0_counts))
        cumulative = np.cumsum(self.l0_counts) / n
        quantile = {
            f"p{q}": float(l0_values[np.searchsorted(cumulative, q / 100)]) for q in (1, 50, 99)
        }
        density_F = self.fires_F / n
        mean_l0 = float((l0_values * self.l0_counts).sum() / n)
        used = np.flatnonzero(self.l0_counts)
        histogram = self.l0_counts[: (used[-1] + 1) if len(used) else 1]
        return {
            "tokens": self.tokens,
            "nmse": nmse,
            "variance_explained": 1 - nmse,
            "nmse_per_token": self.relative_error / n,
            "mse": self.sq_error / n,
            "l0": mean_l0,
            "l0_quantiles": quantile,
            "l0_zero_fraction": float(self.l0_counts[0] / n),
            "l0_histogram": histogram.tolist(),
            "dead_fraction": float((density_F == 0).double().mean()),
            "dense_fraction": float((density_F > DENSE_THRESHOLD).double().mean()),
            "underused_fraction": float(
                (density_F < UNDERUSED_SHARE * mean_l0 / len(density_F)).double().mean()
            ),
            "relative_reconstruction_bias": self.hat_sq / self.dot if self.dot else float("nan"),
            "cosine": self.cosine / n,
        }


PER_HOOK_METRICS = ("nmse", "variance_explained", "mse", "relative_reconstruction_bias", "cosine")


class TargetStats:
    """A target's reconstruction metrics: over all it reconstructs, at each of several target
    hooks, per layer of a cross-layer transcoder, and per prefix of a Matryoshka SAE."""

    def __init__(
        self, target: Target, means: dict[str, Tensor], last_position: int | None = None
    ) -> None:
        shape = target.shape
        self.target = target
        self.whole = ReconstructionStats(target.sae.d_sae, _concatenated_mean(means, shape))
        self.per_hook = (
            {h: ReconstructionStats(target.sae.d_sae, means[h]) for h in shape.target_hooks}
            if len(shape.targets) > 1
            else {}
        )
        self.layer_l0: Tensor | None = None
        widths = getattr(target.sae.activation.options, "widths", None)
        self.prefixes = {
            w: ReconstructionStats(target.sae.d_sae, self.whole.mean_D) for w in widths or ()
        }
        self.loss = LossAddedEstimate(last_position) if last_position is not None else None

    def update(self, x_BD: Tensor, y_BE: Tensor, g_BE: Tensor | None, position_B: Tensor) -> None:
        f_BF, y_hat_BE = self.target.reconstruct(x_BD, g_BE)
        self.whole.update(y_BE, y_hat_BE, f_BF)
        if self.loss is not None and g_BE is not None:
            self.loss.update(g_BE, y_BE, y_hat_BE, position_B.to(g_BE.device))
        if self.per_hook:
            shape = self.target.shape
            pairs = zip(
                shape.split_targets(y_BE).items(),
                shape.split_targets(y_hat_BE).values(),
                strict=True,
            )
            for (hook, y_hook), y_hat_hook in pairs:
                self.per_hook[hook].update(y_hook, y_hat_hook, f_BF)
        if self.target.shape.cross_layer:
            active_BGF = (f_BF != 0).view(len(f_BF), len(self.target.shape.layers), -1)
            counts_G = active_BGF.sum(dim=(0, 2)).double().cpu()
            self.layer_l0 = counts_G if self.layer_l0 is None else self.layer_l0 + counts_G
        for width, stats in self.prefixes.items():
            kept_F = torch.arange(f_BF.shape[1], device=f_BF.device) < width
            stats.update(y_BE, self.target.sae.output(x_BD, f_BF * kept_F), f_BF * kept_F)

    def result(self) -> dict[str, Any]:
        result = self.whole.result()
        if self.per_hook:
            result["per_hook"] = {
                hook: {key: stats.result()[key] for key in PER_HOOK_METRICS}
                for hook, stats in self.per_hook.items()
            }
        if self.layer_l0 is not None:
            result["l0_per_layer"] = (self.layer_l0 / max(self.whole.tokens, 1)).tolist()
        if self.prefixes:
            prefixes = {str(w): s.result() for w, s in self.prefixes.items()}
            result["prefix_nmse"] = {w: r["nmse"] for w, r in prefixes.items()}
            result["prefix_l0"] = {w: r["l0"] for w, r in prefixes.items()}
        if self.loss is not None:
            result.update(self.loss.result())
        return result


def _concatenated_mean(means: dict[str, Tensor], shape) -> Tensor:
    return torch.cat([means[hook].cpu() for hook in shape.target_hooks])


@torch.no_grad()
def offline_metrics(
    store: ActivationStore,
    targets: list[Target],
    means: dict[str, Tensor],
    max_rows: int | None,
    device: torch.device,
    policy: NonFinitePolicy,
) -> dict[str, dict]:
    """Metrics of every target on the store's held-out rows (at most `max_rows` of them); rows
    with NaN or Inf stop the evaluation or are left out (`policy`). Where the store keeps the
    gradients at a target's hooks, the loss it adds is also estimated from them
    (`saekit.evaluate.estimate`).

    Targets that read the same fields in batches of the same size share each read. Targets in
    batch mode see batches of their training batch size; the others see the same rows in batches
    of 4096 (their codes do not depend on the batch).
    """
    results: dict[str, dict] = {}
    last_position = estimable_last_position(store)
    groups: dict[tuple[tuple[str, ...], int, bool], list[Target]] = {}
    for target in targets:
        estimate = last_position is not None and estimable(store, target)
        fields = (*target.fields(gradients=estimate), POSITION)
        groups.setdefault((fields, target.batch_rows, estimate), []).append(target)
    for (fields, batch_rows, estimate), group in groups.items():
        last = last_position if estimate else None
        stats = {t.label: TargetStats(t, means, last) for t in group}
        for batch in holdout_batches(store, None, fields, max_rows, batch_rows, policy):
            for target in group:
                stats[target.label].update(*target.inputs(batch, device), batch[POSITION])
        results.update({label: s.result() for label, s in stats.items()})
    return results


def estimable_last_position(store: ActivationStore) -> int | None:
    """The last position of the store's contexts (T − 1) when its gradients follow saekit's
    convention, so that the loss added can be estimated from them; else None."""
    identity = store.spec.identity
    convention = identity.get("gradient_convention")
    if "context_size" not in identity or convention not in (None, GRADIENT_CONVENTION):
        return None
    return int(identity["context_size"]) - 1


def estimable(store: ActivationStore, target: Target) -> bool:
    """Whether the store keeps gradients at every hook the target reconstructs."""
    return all(store.has_gradients(hook) for hook in target.shape.target_hooks)
