"""Contexts from the store, not from the LM: the tokens around a row, and a latent's activation
on each of them.

A row's context is rebuilt from the store's `sequence` and `position` arrays: the rows of the same
sequence at positions p − before … p + after. Rows of a block are stored shuffled, so two passes
over the small metadata arrays (16 bytes a row, ~1 % of what the activation pass reads) find them:
the first reads (sequence, position) of the chosen rows, the second finds the rows of every
window. The latent's value on each window token then comes from one batched SAE encode of the
window rows' stored activations; the LM is not run. Position 0 (BOS) is shown but not encoded,
as SAEs are trained and evaluated without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from saekit.cache_format import ActivationStore, Split
from saekit.cache_format.loader import chunk_units

from .scan import hook_groups
from .subjects import Subject

KEY_STRIDE = 1 << 24  # key of a (sequence, position) pair: sequence · KEY_STRIDE + position


@dataclass
class Windows:
    """The context window of every chosen row (`centers`, sorted and distinct)."""

    centers_C: np.ndarray  # int64 store rows
    offset: int  # index of the centre within a window (= tokens before it)
    rows_CW: np.ndarray  # int64 store row of each window place, −1 outside the sequence
    tokens_CW: np.ndarray  # int64 token ids, −1 outside the sequence
    positions_CW: np.ndarray  # int64 position in the context, −1 outside the sequence

    @property
    def encoded_CW(self) -> np.ndarray:
        """The window places whose activation is encoded: inside the sequence, not position 0."""
        return (self.rows_CW >= 0) & (self.positions_CW > 0)

    @property
    def rows_to_encode(self) -> int:
        return len(np.unique(self.rows_CW[self.encoded_CW]))

    def index_of(self, rows: np.ndarray) -> np.ndarray:
        """The window index of each of `rows` (they must be centres)."""
        return np.searchsorted(self.centers_C, rows)


def _units_in(store: ActivationStore, split: Split, last_row: int) -> list[tuple[int, int]]:
    ranges = [(a, min(b, last_row)) for a, b in store.ranges(split) if a < last_row]
    return chunk_units(ranges, store.spec.layout.rows_per_chunk)


def find_windows(
    store: ActivationStore, split: Split, rows: np.ndarray, before: int, after: int
) -> Windows:
    """The windows of `rows` (rows of `split`), from two passes over the metadata arrays."""
    centers = np.unique(rows.astype(np.int64))
    sequence_C = np.full(len(centers), -1, dtype=np.int64)
    position_C = np.full(len(centers), -1, dtype=np.int64)
    # A context lies within the block of its rows (or, if a block boundary cuts it, the next):
    # the second pass need not go past the block after the last chosen row's.
    block = store.spec.layout.rows_per_block
    last_row = (int(centers[-1]) // block + 2) * block if len(centers) else 0
    units = _units_in(store, split, last_row)
    for start, stop in units:
        low, high = np.searchsorted(centers, [start, stop])
        if low == high:
            continue
        meta = store.read(["sequence", "position"], start, stop)
        inside = centers[low:high] - start
        sequence_C[low:high] = meta["sequence"][inside]
        position_C[low:high] = meta["position"][inside]
    positions_CW = position_C[:, None] + np.arange(-before, after + 1)
    keys_CW = np.where(positions_CW >= 0, sequence_C[:, None] * KEY_STRIDE + positions_CW, -1)
    wanted = np.unique(keys_CW[keys_CW >= 0])
    found_keys, found_rows, found_tokens = [np.array([-2])], [np.array([-1])], [np.array([-1])]
    for start, stop in units:  # (the entries above: a key that never matches, so none is empty)
        meta = store.read(["sequence", "position", "tokens"], start, stop)
        keys = meta["sequence"].astype(np.int64) * KEY_STRIDE + meta["position"]
        hit = np.isin(keys, wanted)
        found_keys.append(keys[hit])
        found_rows.append(np.arange(start, stop, dtype=np.int64)[hit])
        found_tokens.append(meta["tokens"][hit].astype(np.int64))
    order = np.argsort(np.concatenate(found_keys))
    keys, rows, tokens = (np.concatenate(f)[order] for f in (found_keys, found_rows, found_tokens))
    place_CW = np.minimum(np.searchsorted(keys, keys_CW), len(keys) - 1)
    present_CW = (keys_CW >= 0) & (keys[place_CW] == keys_CW)
    return Windows(
        centers,
        before,
        np.where(present_CW, rows[place_CW], -1),
        np.where(present_CW, tokens[place_CW], -1),
        np.where(present_CW, positions_CW, -1),
    )


@dataclass
class ContextRequest:
    """The contexts wanted for one subject: context q is the latent in slot `slot_Q[q]` around
    row `centers_Q[q]`, where the pass recorded the value `value_Q[q]`; `values_QW` receives the
    latent's activation on every window token (NaN outside the sequence and at position 0)."""

    subject: Subject
    slot_Q: np.ndarray
    centers_Q: np.ndarray
    value_Q: np.ndarray
    values_QW: np.ndarray | None = None

    @property
    def latents_Q(self) -> np.ndarray:
        return self.subject.latents_S.numpy()[self.slot_Q]


@torch.no_grad()
def encode_windows(
    store: ActivationStore,
    windows: Windows,
    requests: list[ContextRequest],
    device: torch.device,
    batch_rows: int,
    on_rows: Callable[[int], None] = lambda n: None,
) -> None:
    """Fill every request's `values_QW` from one batched encode of the window rows per hook."""
    encoded = windows.encoded_CW
    rows_U = np.unique(windows.rows_CW[encoded])
    for request in requests:
        request.values_QW = np.full(
            (len(request.centers_Q), windows.rows_CW.shape[1]), np.nan, np.float32
        )
    for fields, indices in hook_groups([r.subject for r in requests]).items():
        members = [requests[i] for i in indices]
        pairs = [_pairs(request, windows, encoded, rows_U) for request in members]
        for first, batch in _read_rows(store, list(fields), rows_U, batch_rows):
            n_rows = len(next(iter(batch.values())))
            for request, (u_P, latent_P, flat_P) in zip(members, pairs, strict=True):
                low, high = np.searchsorted(u_P, [first, first + n_rows])
                if low == high:
                    continue
                x_BD, _, g_BE = request.subject.target.inputs(batch, device)
                f_BF = request.subject.target.code(x_BD, g_BE).to_dense()
                taken = f_BF[
                    torch.from_numpy(u_P[low:high] - first).to(device),
                    torch.from_numpy(latent_P[low:high]).to(device),
                ]
                request.values_QW.reshape(-1)[flat_P[low:high]] = taken.cpu().numpy()
            on_rows(n_rows)


def _pairs(
    request: ContextRequest, windows: Windows, encoded_CW: np.ndarray, rows_U: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index into rows_U, latent, flat index into values_QW) of every value a request needs,
    sorted by the index into rows_U."""
    window_Q = windows.index_of(request.centers_Q)
    wanted_QW = encoded_CW[window_Q]
    u_QW = np.searchsorted(rows_U, windows.rows_CW[window_Q])
    latent_QW = np.broadcast_to(request.latents_Q[:, None], wanted_QW.shape)
    flat_QW = np.arange(wanted_QW.size).reshape(wanted_QW.shape)
    u_P, latent_P, flat_P = u_QW[wanted_QW], latent_QW[wanted_QW], flat_QW[wanted_QW]
    order = np.argsort(u_P, kind="stable")
    return u_P[order], latent_P[order].astype(np.int64), flat_P[order]


def _read_rows(
    store: ActivationStore, fields: list[str], rows_U: np.ndarray, batch_rows: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(index in rows_U of the batch's first row, the decoded rows) in batches of `batch_rows`;
    each chunk holding some of the rows is read once, whole."""
    chunk_of_U = rows_U // store.spec.layout.rows_per_chunk
    groups = np.split(np.arange(len(rows_U)), np.flatnonzero(np.diff(chunk_of_U)) + 1)
    pending: dict[str, torch.Tensor] | None = None
    first = 0
    for group in groups:
        if not len(group):
            continue
        start, stop = int(rows_U[group[0]]), int(rows_U[group[-1]]) + 1
        rows = store.read_tensors(fields, start, stop)
        take = torch.from_numpy(rows_U[group] - start)
        rows = {name: values[take] for name, values in rows.items()}
        pending = rows if pending is None else {k: torch.cat([pending[k], rows[k]]) for k in rows}
        while len(next(iter(pending.values()))) >= batch_rows:
            yield first, {name: values[:batch_rows] for name, values in pending.items()}
            pending = {name: values[batch_rows:] for name, values in pending.items()}
            first += batch_rows
    if pending is not None and len(next(iter(pending.values()))):
        yield first, pending
