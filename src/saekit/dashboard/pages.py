"""The site's data: what the pass, the contexts and the logit effects found, as JSON-ready dicts.

Per SAE, an index (one column per statistic, one entry per inspected latent) and one detail
record per latent; token ids everywhere, their strings once in the site's vocabulary.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from saekit.evaluate import DENSE_THRESHOLD

from .contexts import ContextRequest, Windows
from .scan import DECILES, LatentRecord
from .subjects import Subject

FIRES_ON_TOKENS = 3  # tokens listed in the index: the commonest among a latent's top rows
PROMOTES_TOKENS = 3  # and its strongest logit effects


def rounded(value: float, digits: int = 4) -> float | None:
    """`value` to `digits` significant digits (keeps the JSON small); None for NaN."""
    if value is None or math.isnan(value):
        return None
    if value == 0:
        return 0
    if math.isinf(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


@dataclass
class LogitEffects:
    """Per inspected latent, the tokens its direction promotes and suppresses most: [S, k]."""

    top_ids: torch.Tensor
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor


@dataclass
class SaeData:
    """One SAE's part of the site."""

    summary: dict
    index: dict
    latents: dict[int, dict]  # latent -> detail record
    token_ids: set[int]


def context_request(subject: Subject, record: LatentRecord) -> ContextRequest:
    """The contexts shown for a subject: every kept top row and sampled row of every latent."""
    slots, rows, values = [], [], []
    for kept in (record.top, record.sample):
        filled = kept.row_SK >= 0
        slots.append(filled.nonzero()[:, 0].cpu().numpy())
        rows.append(kept.row_SK[filled].cpu().numpy())
        values.append(kept.value_SK[filled].cpu().numpy())
    return ContextRequest(
        subject, np.concatenate(slots), np.concatenate(rows), np.concatenate(values)
    )


def sae_data(
    subject: Subject,
    record: LatentRecord,
    request: ContextRequest,
    windows: Windows,
    effects: LogitEffects | None,
) -> SaeData:
    """Index and latent records of one SAE."""
    count_S = record.moments.count_S.cpu().numpy()
    mean_S = record.moments.mean_S().cpu().numpy()
    max_S = record.moments.max_S.cpu().numpy()
    density_S = count_S / max(record.rows, 1)
    histogram_SH = record.histogram.counts_SH.cpu().numpy()
    top_rows_SK, sample_rows_SK = (
        record.top.row_SK.cpu().numpy(),
        record.sample.row_SK.cpu().numpy(),
    )
    grad_terms = _grad_terms(record)
    contexts = _contexts_by_key(request, windows)
    token_ids: set[int] = set()
    latents: dict[int, dict] = {}
    fires_on: list[list[int]] = []
    for slot, latent in enumerate(subject.latents_S.tolist()):
        top = [contexts[(slot, row)] for row in top_rows_SK[slot] if row >= 0]
        sample = [contexts[(slot, row)] for row in sample_rows_SK[slot] if row >= 0]
        fires_on.append(_commonest_centre_tokens(top))
        detail = {
            "latent": latent,
            "count": int(count_S[slot]),
            "density": rounded(float(density_S[slot])),
            "mean": rounded(float(mean_S[slot])),
            "max": rounded(float(max_S[slot])),
            "histogram": _histogram(histogram_SH[slot]),
            "grad_term": grad_terms[slot] if grad_terms else None,
            "top": top,
            "bands": _bands(sample),
            "logits": _logits(effects, slot),
        }
        latents[latent] = detail
        for context in top + sample:
            token_ids.update(context["tokens"])
        if detail["logits"]:
            token_ids.update(i for i, _ in detail["logits"]["top"] + detail["logits"]["bottom"])
    promotes = (
        effects.top_ids[:, :PROMOTES_TOKENS].tolist()
        if effects is not None
        else [[] for _ in fires_on]
    )
    token_ids.update(i for ids in fires_on + promotes for i in ids)
    index = {
        "latent": subject.latents_S.tolist(),
        "count": count_S.tolist(),
        "density": [rounded(float(v)) for v in density_S],
        "mean": [rounded(float(v)) for v in mean_S],
        "max": [rounded(float(v)) for v in max_S],
        "fires_on": fires_on,
        "promotes": promotes,
    }
    target = subject.target
    summary = {
        "name": target.name,
        "run": target.run,
        "variant": target.variant,
        "mode": target.mode,
        "hook": target.hook,
        "shape": subject.sae.shape.describe(),
        "d_in": subject.sae.d_in,
        "d_sae": subject.sae.d_sae,
        "k": subject.sae.cfg.k,
        "latents": subject.n_slots,
        "rows": record.rows,
        "dead": int((count_S == 0).sum()),
        "dense": int((density_S > DENSE_THRESHOLD).sum()),
        "logits": effects is not None,
        "grad_term": record.grad_moments is not None,
        "directory": str(subject.directory),
    }
    return SaeData(summary, index, latents, token_ids)


def _contexts_by_key(request: ContextRequest, windows: Windows) -> dict[tuple[int, int], dict]:
    """Each shown context as a record, keyed by (slot, row): tokens of the window (trimmed to its
    sequence), the latent's value on each (None where not encoded) and the centre's place."""
    result = {}
    window_Q = windows.index_of(request.centers_Q)
    keys = zip(request.slot_Q.tolist(), request.centers_Q.tolist(), strict=True)
    for q, (slot, row) in enumerate(keys):
        inside = windows.rows_CW[window_Q[q]] >= 0
        values = request.values_QW[q][inside]
        result[(slot, row)] = {
            "row": row,
            "value": rounded(float(request.value_Q[q])),
            "centre": int(inside[: windows.offset].sum()),
            "tokens": windows.tokens_CW[window_Q[q]][inside].tolist(),
            "values": [None if math.isnan(v) else rounded(float(v), 3) for v in values],
        }
    return result


def _commonest_centre_tokens(contexts: list[dict]) -> list[int]:
    """The tokens a latent fires on most often among its top rows (ties: the stronger first)."""
    counts = Counter(c["tokens"][c["centre"]] for c in contexts)
    return [token for token, _ in counts.most_common(FIRES_ON_TOKENS)]


def _histogram(counts_H: np.ndarray) -> dict:
    """The non-empty range of a latent's log-spaced histogram."""
    nonzero = np.flatnonzero(counts_H)
    if not len(nonzero):
        return {"first_bin": 0, "counts": []}
    first, last = int(nonzero[0]), int(nonzero[-1])
    return {"first_bin": first, "counts": counts_H[first : last + 1].tolist()}


def _grad_terms(record: LatentRecord) -> list[dict] | None:
    """Per latent, the mean, max and histogram of |d_iᵀg| where it fired (g-SAE only)."""
    if record.grad_moments is None or record.grad_histogram is None:
        return None
    mean_S = record.grad_moments.mean_S().cpu().numpy()
    max_S = record.grad_moments.max_S.cpu().numpy()
    histogram_SH = record.grad_histogram.counts_SH.cpu().numpy()
    return [
        {"mean": rounded(float(m)), "max": rounded(float(x)), "histogram": _histogram(h)}
        for m, x, h in zip(mean_S, max_S, histogram_SH, strict=True)
    ]


def _bands(sample: list[dict]) -> list[dict]:
    """The sampled firings in bands by decile of their activation within the sample (the firing
    of rank r of n is in decile ⌊10 r / n⌋ + 1), strongest band and firing first."""
    ordered = sorted(sample, key=lambda c: (c["value"], c["row"]))
    members: dict[int, list[dict]] = {}
    for rank, context in enumerate(ordered):
        members.setdefault(DECILES * rank // len(ordered) + 1, []).append(context)
    return [
        {"decile": decile, "low": chosen[0]["value"], "high": chosen[-1]["value"],
         "contexts": chosen[::-1]}
        for decile, chosen in sorted(members.items(), reverse=True)
    ]  # fmt: skip


def _logits(effects: LogitEffects | None, slot: int) -> dict | None:
    if effects is None:
        return None

    def pairs(ids: torch.Tensor, values: torch.Tensor) -> list[list]:
        return [[int(i), rounded(float(v))] for i, v in zip(ids[slot], values[slot], strict=True)]

    return {
        "top": pairs(effects.top_ids, effects.top_values),
        "bottom": pairs(effects.bottom_ids, effects.bottom_values),
    }
