"""Streaming per-latent statistics whose memory does not depend on the number of rows.

Every accumulator is fed the *firings* of one batch: the (row, latent, value) triplets of the
codes that are > 0. Latents are addressed by their *slot*, their position in the list of latents
being inspected. What is kept, per latent:

- `Moments`: firing count (density), sum and max of the activation;
- `LogHistogram`: counts in log-spaced bins with fixed edges (`BINS_PER_DECADE` per decade);
- `KeptRows`: the `capacity` firings with the smallest (key, row), one mechanism for two uses:
  `key = −value` keeps the exact top-N activations (ties go to the earlier row), and
  `key = uniform_key(seed, row, latent)` keeps a uniform sample without replacement of the
  latent's firings (a reservoir by random priorities). Keys depend only on the firing itself, so
  the result does not depend on batching and equals the brute-force selection over all firings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BINS_PER_DECADE = 10
LOWEST_DECADE, HIGHEST_DECADE = -6, 6  # bins cover [1e-6, 1e6); outside values go to the ends
N_BINS = BINS_PER_DECADE * (HIGHEST_DECADE - LOWEST_DECADE)


@dataclass
class Firings:
    """The non-zero codes of a batch for the inspected latents, one entry per (row, latent)."""

    row_N: Tensor  # int64 store row index
    index_N: Tensor  # int64 position of the row in its batch
    slot_N: Tensor  # int64 position of the latent among the inspected latents
    latent_N: Tensor  # int64 latent index in the SAE
    value_N: Tensor  # float32, > 0

    def __len__(self) -> int:
        return len(self.row_N)


class Moments:
    """Per latent: how many rows it fired on, and the sum and max of its activation there."""

    def __init__(self, n_slots: int, device: torch.device) -> None:
        self.count_S = torch.zeros(n_slots, dtype=torch.int64, device=device)
        self.sum_S = torch.zeros(n_slots, dtype=torch.float64, device=device)
        self.max_S = torch.zeros(n_slots, dtype=torch.float32, device=device)

    def add(self, slot_N: Tensor, value_N: Tensor) -> None:
        self.count_S.index_add_(0, slot_N, torch.ones_like(slot_N))
        self.sum_S.index_add_(0, slot_N, value_N.double())
        self.max_S.scatter_reduce_(0, slot_N, value_N.float(), reduce="amax")

    def mean_S(self) -> Tensor:
        """Mean activation over the rows where the latent fired (0 where it never did)."""
        return self.sum_S / self.count_S.clamp_min(1)


def log_bin(value_N: Tensor) -> Tensor:
    """The log-spaced bin of each positive value: bin b holds [10^(b/10 − 6), 10^((b+1)/10 − 6))
    (with `BINS_PER_DECADE` = 10); values outside [1e-6, 1e6) go to the first or last bin."""
    position_N = (value_N.double().log10() - LOWEST_DECADE) * BINS_PER_DECADE
    return position_N.floor().clamp(0, N_BINS - 1).long()


def bin_edges() -> list[float]:
    """The N_BINS + 1 edges of the log-spaced bins."""
    return [10 ** (LOWEST_DECADE + b / BINS_PER_DECADE) for b in range(N_BINS + 1)]


class LogHistogram:
    """Per latent, counts of its activations in the log-spaced bins of `log_bin`."""

    def __init__(self, n_slots: int, device: torch.device) -> None:
        self.counts_SB = torch.zeros(n_slots, N_BINS, dtype=torch.int64, device=device)

    def add(self, slot_N: Tensor, value_N: Tensor) -> None:
        flat_N = slot_N * N_BINS + log_bin(value_N)
        self.counts_SB.view(-1).index_add_(0, flat_N, torch.ones_like(flat_N))


class KeptRows:
    """Per latent ("cell"), the `capacity` entries with the smallest (key, row), sorted.

    Empty places have key +inf and row −1. `offer` only touches the cells of entries that beat
    the cell's current worst kept entry, so late in a long pass almost nothing is sorted.
    """

    def __init__(self, n_cells: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.key_CR = torch.full((n_cells, capacity), torch.inf, dtype=torch.float64, device=device)
        self.row_CR = torch.full((n_cells, capacity), -1, dtype=torch.int64, device=device)
        self.value_CR = torch.zeros((n_cells, capacity), dtype=torch.float32, device=device)

    def offer(self, cell_N: Tensor, key_N: Tensor, row_N: Tensor, value_N: Tensor) -> None:
        """Keep whichever of these entries rank among the `capacity` best of their cell."""
        worst_key_N, worst_row_N = self.key_CR[cell_N, -1], self.row_CR[cell_N, -1]
        better_N = (key_N < worst_key_N) | ((key_N == worst_key_N) & (row_N < worst_row_N))
        if not bool(better_N.any()):
            return
        cell_N, key_N, row_N, value_N = (t[better_N] for t in (cell_N, key_N, row_N, value_N))
        touched_T = torch.unique(cell_N)
        cells = torch.cat([touched_T.repeat_interleave(self.capacity), cell_N])
        keys = torch.cat([self.key_CR[touched_T].reshape(-1), key_N])
        rows = torch.cat([self.row_CR[touched_T].reshape(-1), row_N])
        values = torch.cat([self.value_CR[touched_T].reshape(-1), value_N.float()])
        order = _lexsort(cells, keys, rows)
        cells, keys, rows, values = cells[order], keys[order], rows[order], values[order]
        first_of_cell = torch.searchsorted(cells, cells)
        rank = torch.arange(len(cells), device=cells.device) - first_of_cell
        keep = rank < self.capacity
        place = (cells[keep], rank[keep])
        self.key_CR[place] = keys[keep]
        self.row_CR[place] = rows[keep]
        self.value_CR[place] = values[keep]

    def entries(self, cell: int) -> tuple[list[int], list[float]]:
        """The rows and values kept for one cell, best first."""
        filled = self.row_CR[cell] >= 0
        return self.row_CR[cell][filled].tolist(), self.value_CR[cell][filled].tolist()


def _lexsort(primary: Tensor, secondary: Tensor, tertiary: Tensor) -> Tensor:
    """The permutation sorting by (primary, secondary, tertiary): stable sorts, last key first."""
    order = torch.argsort(tertiary, stable=True)
    order = order[torch.argsort(secondary[order], stable=True)]
    return order[torch.argsort(primary[order], stable=True)]


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x · constant) mod 2³² for 32-bit x, without overflowing int64 (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniform_key(seed: int, row_N: Tensor, latent_N: Tensor) -> Tensor:
    """A pseudo-random key in [0, 1) for each (row, latent), fixed by the seed (float64)."""
    seed_mix = int(_mix32(torch.tensor([seed & _MASK32]))[0])
    h = _mix32((row_N & _MASK32) ^ seed_mix)
    h = _mix32(h ^ ((row_N >> 32) & _MASK32))
    h = _mix32(h ^ _mul32(latent_N & _MASK32, 0x9E3779B9))
    return h.double() / 2.0**32
