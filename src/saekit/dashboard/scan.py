"""The streaming pass: one read of the store's rows feeds the accumulators of every SAE.

SAEs on the same hook share each batch read (activations, and gradients when a g-SAE in grad mode
needs them); position 0 is left out, as in training and eval. Memory holds the accumulators only:
O(latents × (bins + kept rows)), independent of the number of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.cache_format import ActivationStore, Split
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.evaluate import holdout_batches
from saekit.train import Dictionary

from .accumulators import Firings, KeptRows, LogHistogram, Moments, UniformKeys, value_keys
from .subjects import Subject

DECILES = 10
NONFINITE_ADVICE = "no site was written (--out is as it was); run sae verify on the store"
GRADIENT_CHUNK = 16384  # firings per gather of gradient rows and decoder columns


@dataclass(frozen=True)
class ScanSettings:
    """How the pass reads and what it keeps per latent."""

    split: Split = "holdout"
    max_rows: int | None = None  # rows to read at most (position 0 excluded)
    batch_rows: int = 4096
    top: int = 20  # exact top activations kept per latent
    per_band: int = 3  # random firings shown per decile band (reservoir = DECILES × per_band)
    seed: int = 0


class LatentRecord:
    """Everything the pass keeps about one subject's latents."""

    def __init__(self, subject: Subject, settings: ScanSettings, device: torch.device) -> None:
        n_slots, grad_term = subject.n_slots, subject.target.needs_gradients
        self.rows = 0
        self.keys = UniformKeys(settings.seed, subject.sae.d_sae, device)
        self.moments = Moments(n_slots, device)
        self.histogram = LogHistogram(n_slots, device)
        self.top = KeptRows(n_slots, settings.top, device)
        self.sample = KeptRows(n_slots, DECILES * settings.per_band, device)
        self.grad_moments = Moments(n_slots, device) if grad_term else None
        self.grad_histogram = LogHistogram(n_slots, device) if grad_term else None

    def add(self, firings: Firings, grad_term_N: Tensor | None = None) -> None:
        slot_N, value_N, row_N = firings.slot_N, firings.value_N, firings.row_N
        self.moments.add(slot_N, value_N)
        self.histogram.add(slot_N, value_N)
        self.top.offer(slot_N, value_keys(value_N), row_N, value_N)
        self.sample.offer(slot_N, self.keys(row_N, firings.latent_N), row_N, value_N)
        if grad_term_N is not None and self.grad_moments is not None:
            self.grad_moments.add(slot_N, grad_term_N)
            self.grad_histogram.add(slot_N, grad_term_N)


def gradient_term(sae: Dictionary, g_BE: Tensor, firings: Firings) -> Tensor:
    """|d_iᵀg| of every firing: the first-order change of the LM loss per unit of latent i's
    activation at that token (d_i its decoder vector over every target, g the store's gradient
    at the targets), the term the g-SAE key weighs."""
    terms = [
        (
            g_BE[firings.index_N[a : a + GRADIENT_CHUNK]]
            * sae.decoder_columns(firings.latent_N[a : a + GRADIENT_CHUNK])
        )
        .sum(1)
        .abs()
        for a in range(0, len(firings), GRADIENT_CHUNK)
    ]
    return torch.cat(terms) if terms else g_BE.new_zeros(0)


def rows_to_scan(store: ActivationStore, subjects: list[Subject], settings: ScanSettings) -> int:
    """Rows the pass reads, over every hook group (an upper bound: position 0 is skipped)."""
    rows = store.n_rows(settings.split)
    rows = rows if settings.max_rows is None else min(rows, settings.max_rows)
    return rows * len(hook_groups(subjects))


def hook_groups(subjects: list[Subject]) -> dict[tuple[str, ...], list[int]]:
    """Subjects that can share each read: the fields they read -> their indices."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, subject in enumerate(subjects):
        groups.setdefault(subject.target.fields(), []).append(index)
    return groups


@torch.no_grad()
def scan(
    store: ActivationStore,
    subjects: list[Subject],
    settings: ScanSettings,
    device: torch.device,
    on_rows: Callable[[int], None] = lambda n: None,
) -> list[LatentRecord]:
    """One pass over the split's rows; the record of every subject."""
    records = [LatentRecord(s, settings, device) for s in subjects]
    for fields, members in hook_groups(subjects).items():
        slots = {i: subjects[i].slot_of_latent(device) for i in members}
        batches = holdout_batches(
            store,
            None,
            ("row", *fields),
            settings.max_rows,
            settings.batch_rows,
            NonFinitePolicy(),
            settings.split,
            NONFINITE_ADVICE,
        )
        for batch in batches:
            row_B = batch["row"].to(device)
            for i in members:
                x_BD, _, g_BE = subjects[i].target.inputs(batch, device)
                firings = subjects[i].firings(x_BD, g_BE, row_B, slots[i])
                term_N = None if g_BE is None else gradient_term(subjects[i].sae, g_BE, firings)
                records[i].add(firings, term_N)
                records[i].rows += len(row_B)
            on_rows(len(row_B))
    return records
