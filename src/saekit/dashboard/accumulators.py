"""Streaming per-latent statistics whose memory does not depend on the number of rows.

Every accumulator is fed the *firings* of one batch: the (row, latent, value) triplets of the
codes that are > 0. Latents are addressed by their *slot*, their position in the list of latents
being inspected. What is kept, per latent:

- `Moments`: firing count (density), sum and max of the activation;
- `LogHistogram`: counts in log-spaced bins with fixed edges (`BINS_PER_DECADE` per decade);
- `KeptRows`: the `capacity` firings with the smallest keys, one mechanism for two uses:
  `value_keys` (larger values first) keep the exact top-N activations (ties go to the earlier
  row), and `UniformKeys` (a seeded hash of row and latent) keep a uniform sample without
  replacement of the latent's firings (a reservoir by random priorities). Keys depend only on
  the firing itself, so the result does not depend on batching and equals the brute-force
  selection over all firings.
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
        self.counts_SH = torch.zeros(n_slots, N_BINS, dtype=torch.int64, device=device)

    def add(self, slot_N: Tensor, value_N: Tensor) -> None:
        flat_N = slot_N * N_BINS + log_bin(value_N)
        self.counts_SH.view(-1).index_add_(0, flat_N, torch.ones_like(flat_N))


KEY_BITS = 32
EMPTY_KEY = 1 << KEY_BITS  # above every key: marks an empty place
_MASK32 = EMPTY_KEY - 1


class KeptRows:
    """Per latent (its slot), the `capacity` entries with the smallest keys, sorted by key.

    Keys are integers in [0, 2³²) (`value_keys`, `UniformKeys`). Rows must be offered in
    increasing order (the pass reads the store in order): among equal keys the earlier row wins.
    Empty places have key `EMPTY_KEY` and row −1. Only entries that beat their slot's current
    worst are sorted, so late in a long pass almost nothing is.
    """

    def __init__(self, n_slots: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.key_SK = torch.full((n_slots, capacity), EMPTY_KEY, dtype=torch.int64, device=device)
        self.row_SK = torch.full((n_slots, capacity), -1, dtype=torch.int64, device=device)
        self.value_SK = torch.zeros((n_slots, capacity), dtype=torch.float32, device=device)

    def offer(self, slot_N: Tensor, key_N: Tensor, row_N: Tensor, value_N: Tensor) -> None:
        """Keep whichever of these entries rank among the `capacity` best of their slot."""
        if self.capacity == 0:
            return
        better_N = key_N < self.key_SK[slot_N, -1]
        if not bool(better_N.any()):
            return
        slot_N, key_N, row_N, value_N = (t[better_N] for t in (slot_N, key_N, row_N, value_N))
        # The candidates by slot, best first (stable: equal keys keep their row order) ...
        order = torch.argsort((slot_N << KEY_BITS) | key_N, stable=True)
        slot_N, key_N, row_N, value_N = (t[order] for t in (slot_N, key_N, row_N, value_N))
        touched_U, count_U = torch.unique_consecutive(slot_N, return_counts=True)
        first_N = (count_U.cumsum(0) - count_U).repeat_interleave(count_U)
        rank_N = torch.arange(len(slot_N), device=slot_N.device) - first_N
        keep = rank_N < self.capacity  # ... of which at most `capacity` per slot can make it,
        index_U = torch.arange(len(touched_U), device=slot_N.device)
        place = (index_U.repeat_interleave(count_U)[keep], rank_N[keep])
        shape = (len(touched_U), self.capacity)
        new_key = torch.full(shape, EMPTY_KEY, dtype=torch.int64, device=slot_N.device)
        new_row = torch.full(shape, -1, dtype=torch.int64, device=slot_N.device)
        new_value = torch.zeros(shape, dtype=torch.float32, device=slot_N.device)
        new_key[place], new_row[place], new_value[place] = key_N[keep], row_N[keep], value_N[keep]
        # ... merged with the kept ones (first, so that they win ties: their rows are earlier).
        keys = torch.cat([self.key_SK[touched_U], new_key], dim=1)
        keys, best = keys.sort(dim=1, stable=True)
        best = best[:, : self.capacity]
        self.key_SK[touched_U] = keys[:, : self.capacity]
        self.row_SK[touched_U] = torch.cat([self.row_SK[touched_U], new_row], 1).gather(1, best)
        values = torch.cat([self.value_SK[touched_U], new_value], 1)
        self.value_SK[touched_U] = values.gather(1, best)

    def entries(self, slot: int) -> tuple[list[int], list[float]]:
        """The rows and values kept for one slot, best first."""
        filled = self.row_SK[slot] >= 0
        return self.row_SK[slot][filled].tolist(), self.value_SK[slot][filled].tolist()


def value_keys(value_N: Tensor) -> Tensor:
    """Keys that rank larger positive values first: 2³² − 1 minus the float32 bit pattern (which
    orders positive floats as integers)."""
    return _MASK32 - value_N.float().view(torch.int32).long()


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x · constant) mod 2³² for 32-bit x, without overflowing int64 (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2³²) in which every input bit affects
    every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


class UniformKeys:
    """Pseudo-random keys in [0, 2³²) for (row, latent) pairs, fixed by a seed.

    key = mix(row ⊕ c_latent), c_latent a per-latent constant mixed from the seed: for each latent
    a bijection of the row (rows below 2³² never share a key), so keeping the smallest keys keeps
    a uniform sample without replacement, the same whatever the batching.
    """

    def __init__(self, seed: int, n_latents: int, device: torch.device) -> None:
        seed_mix = int(_mix32(torch.tensor([seed & _MASK32]))[0])
        latents_F = torch.arange(n_latents, device=device)
        self.latent_mix_F = _mix32(_mul32(latents_F, 0x9E3779B9) ^ seed_mix)

    def __call__(self, row_N: Tensor, latent_N: Tensor) -> Tensor:
        keys_N = _mix32((row_N & _MASK32) ^ self.latent_mix_F[latent_N])
        if len(row_N) and int(row_N.max()) > _MASK32:  # rows past 2³²: mix in the high bits
            keys_N = _mix32(keys_N ^ (row_N >> KEY_BITS))
        return keys_N
