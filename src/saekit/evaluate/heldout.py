"""The store's held-out tokens, as rows (offline metrics) and as contexts (online metrics)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from saekit.base.errors import IntegrityError, SaekitError
from saekit.cache_format import ActivationStore, Batch, Split
from saekit.cache_format.loader import chunk_units
from saekit.cache_format.nonfinite import NonFinitePolicy, nonfinite_index
from saekit.cache_format.reader import ROW_INDEX

MEAN_SAMPLE_ROWS = 1 << 18
SPLIT_ROWS = {"holdout": "held-out rows", "train": "training rows", "all": "rows"}
POSITION = "position"


def check_holdout(store: ActivationStore) -> None:
    if store.n_rows("holdout") == 0:
        raise SaekitError(
            f"store {store.location} has no held-out rows; harvest it with "
            "--holdout-tokens above 0 to evaluate SAEs on it"
        )
    store.check_split()


NONFINITE_ADVICE = (
    "no report was written; run sae verify on the store, or pass --skip-nonfinite to leave such "
    "rows out (the report counts them)"
)


def read_rows(
    store: ActivationStore,
    hook: str,
    fields: tuple[str, ...],
    unit: tuple[int, int],
    policy: NonFinitePolicy,
    what: str,
    advice: str = NONFINITE_ADVICE,
) -> Batch:
    """The rows of `unit` except those at position 0, decoded, after the non-finite policy
    (`what` names the rows in its message, e.g. "held-out rows"). `fields` may include `row`,
    the store row index, and `position`."""
    start, stop = unit
    stored = [name for name in fields if name not in (ROW_INDEX, POSITION)]
    raw = store.read([*stored, POSITION, ROW_INDEX], start, stop, hook)
    positions = raw.pop(POSITION)
    used = positions != 0
    raw = {name: values[used] for name, values in raw.items()}
    rows = raw.pop(ROW_INDEX)
    bad = nonfinite_index(raw, store.spec)
    tensors = store.decode(raw)
    if ROW_INDEX in fields:
        tensors[ROW_INDEX] = torch.from_numpy(rows)
    if POSITION in fields:
        tensors[POSITION] = torch.from_numpy(positions[used].astype(np.int64))
    batch = Batch(tensors, 0, bad, rows[bad])
    return policy.apply(batch, f"{what} of store {store.location}", advice)


def holdout_batches(
    store: ActivationStore,
    hook: str,
    fields: tuple[str, ...],
    max_rows: int | None,
    batch_rows: int,
    policy: NonFinitePolicy,
    split: Split = "holdout",
    advice: str = NONFINITE_ADVICE,
) -> Iterator[dict[str, Tensor]]:
    """Held-out rows (or another split's; position 0 excluded) in store order, in batches of
    `batch_rows` (the last may be shorter), `max_rows` at most; `fields` may include `row`, the
    store row index, and `position`. Rows of a block are stored shuffled, so consecutive rows mix
    many contexts. Rows with NaN or Inf stop the reading (saying `advice`) or are left out
    (`policy`)."""
    budget = max_rows if max_rows is not None else store.n_rows(split)
    pending: dict[str, Tensor] | None = None
    for unit in chunk_units(store.ranges(split), store.spec.layout.rows_per_chunk):
        rows = dict(read_rows(store, hook, fields, unit, policy, SPLIT_ROWS[split], advice))
        pending = rows if pending is None else {k: torch.cat([pending[k], rows[k]]) for k in rows}
        while len(next(iter(pending.values()))) >= min(batch_rows, budget) > 0:
            take = min(batch_rows, budget)
            yield {name: values[:take] for name, values in pending.items()}
            pending = {name: values[take:] for name, values in pending.items()}
            budget -= take
        if budget == 0:
            return
    if pending is not None and budget > 0 and len(next(iter(pending.values()))):
        yield {name: values[:budget] for name, values in pending.items()}


def training_mean(
    store: ActivationStore,
    hook: str,
    policy: NonFinitePolicy,
    max_rows: int = MEAN_SAMPLE_ROWS,
) -> Tensor:
    """Mean activation over a sample of training rows (chunks spread over the split), pos. 0 out;
    rows with NaN or Inf stop it or are left out (`policy`)."""
    units = chunk_units(store.ranges("train"), store.spec.layout.rows_per_chunk)
    if not units:
        raise SaekitError(f"store {store.location} has no training rows to take a mean from")
    n_picks = max(1, max_rows // store.spec.layout.rows_per_chunk)
    picks = np.unique(np.linspace(0, len(units) - 1, n_picks).astype(int))
    total, count = None, 0
    for index in picks:
        rows = read_rows(store, hook, ("activations",), units[index], policy, "training rows")
        x = rows["activations"].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        count += len(x)
    if not count:
        raise SaekitError(f"store {store.location} has no usable training rows for the mean")
    return (total / count).float()


def heldout_contexts(store: ActivationStore, max_tokens: int | None) -> Tensor:
    """The held-out contexts rebuilt from the store's token ids: [n_contexts, T] int64."""
    rows, sequences = _heldout_rows(store, max_tokens)
    return rebuilt_contexts(store, rows, sequences, int(rows["position"].max()) + 1)


def rebuilt_contexts(
    store: ActivationStore,
    rows: Mapping[str, np.ndarray],
    sequences: np.ndarray,
    context_size: int,
) -> Tensor:
    """The contexts `sequences` (sorted global context indices) rebuilt from rows read from
    the store (`tokens`, `sequence`, `position`; rows of other contexts are ignored):
    [len(sequences), context_size] int64. A context missing a token is damage."""
    tokens = np.full((len(sequences), context_size), -1, dtype=np.int64)
    wanted = np.isin(rows["sequence"], sequences)
    slots = np.searchsorted(sequences, rows["sequence"][wanted])
    tokens[slots, rows["position"][wanted]] = rows["tokens"][wanted]
    if (tokens < 0).any():
        raise IntegrityError(
            f"store {store.location} has contexts with missing tokens; the store is damaged, "
            "run sae verify on it"
        )
    return torch.from_numpy(tokens)


def heldout_row_slots(store: ActivationStore, max_tokens: int | None) -> tuple[Tensor, Tensor]:
    """Where each held-out row of `heldout_contexts(store, max_tokens)` sits, in store order and
    without position 0 — the rows and order `holdout_batches` yields: (context index, position),
    two [N] int64 tensors."""
    rows, sequences = _heldout_rows(store, max_tokens)
    keep = np.isin(rows["sequence"], sequences) & (rows["position"] != 0)
    slots = np.searchsorted(sequences, rows["sequence"][keep])
    return torch.from_numpy(slots.astype(np.int64)), torch.from_numpy(
        rows["position"][keep].astype(np.int64)
    )


def _heldout_rows(store: ActivationStore, max_tokens: int | None) -> tuple[dict, np.ndarray]:
    """The held-out rows' tokens, sequences and positions (store order), and the sequences of
    the contexts to use: the first ones, enough for `max_tokens` (all without a limit)."""
    check_holdout(store)
    ((start, stop),) = store.ranges("holdout")
    rows = store.read(["tokens", "sequence", "position"], start, stop)
    context_size = int(rows["position"].max()) + 1
    sequences = np.unique(rows["sequence"])
    if max_tokens is not None:
        sequences = sequences[: max(1, -(-max_tokens // context_size))]
    return rows, sequences
