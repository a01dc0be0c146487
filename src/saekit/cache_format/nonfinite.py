"""Rows whose stored values are not finite, and the one policy every consumer applies to them.

A harvest never writes NaN or Inf, so such rows mean a damaged store (a flipped bit, a chunk
deleted or never written, a store produced elsewhere). They are found where rows are read, on
the CPU, from the raw stored bits (no decoding, no device sync), and travel with the batch as
`Batch.nonfinite_index` (positions in the batch) and `Batch.nonfinite_rows` (store rows).
Consumers (training, offline and online evaluation) apply `NonFinitePolicy`: stop with one line
naming the rows, or, when asked (`--skip-nonfinite`), leave them out and count them, so that
they are never averaged in silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from saekit.base.errors import IntegrityError
from saekit.cache_format import encoding, schema

if TYPE_CHECKING:
    from saekit.cache_format.loader import Batch

MAX_ROWS_NAMED = 10
SCALE_EXPONENTS = (-126, 126)  # a row scale is 2^e for e in this range (`encoding.row_scale`)


def finite_rows(values_RD: np.ndarray, element: str) -> np.ndarray:
    """[R] bool: which rows of stored values (any storage dtype, e.g. bfloat16 or float8 bits)
    are all finite; `element` is the encoding's value type. Reads the bits only: the largest
    magnitude bits of a row (sign cleared) against the smallest non-finite pattern (0.17 µs
    per row of 768 float16 on the 2-core machine, 1.5x less than comparing every value with
    the pattern and 7x less than `np.isfinite`)."""
    unsigned, threshold = encoding.nonfinite_threshold(element)
    magnitude = values_RD.view(unsigned) & unsigned.type(np.iinfo(unsigned).max >> 1)
    return magnitude.max(axis=tuple(range(1, values_RD.ndim)), initial=0) < threshold


def valid_scales(scale_R: np.ndarray) -> np.ndarray:
    """[R] bool: which row scales are what a writer stores, a power of two from 2^-126 to
    2^126 (`encoding.row_scale`); anything else (zero, negative, NaN, Inf, 1e-30) is damage
    that would decode the row to wrong values. Reads the float32 bits: sign and mantissa zero,
    exponent in range."""
    bits = np.ascontiguousarray(scale_R, dtype=np.float32).view(np.uint32)
    exponent = (bits >> np.uint32(23)) & np.uint32(0xFF)
    low, high = 127 + SCALE_EXPONENTS[0], 127 + SCALE_EXPONENTS[1]
    return ((bits & np.uint32(0x807FFFFF)) == 0) & (exponent >= low) & (exponent <= high)


def nonfinite_index(raw: Mapping[str, np.ndarray], spec: schema.StoreSpec) -> np.ndarray:
    """Positions of the rows of raw stored values (named as `ActivationStore.read` names them)
    with NaN or Inf in their activations or gradients, or a scale that is not one a writer
    stores (`valid_scales`)."""
    good: np.ndarray | None = None
    for name, values in raw.items():
        base, _ = schema.split_field(name)
        if base in schema.SCALE_ARRAYS:
            ok = finite_rows(values, spec.encoding(base).element)
        elif base in schema.SCALE_ARRAYS.values():
            ok = valid_scales(values)
        else:
            continue
        good = ok if good is None else good & ok
    return np.empty(0, np.int64) if good is None else np.flatnonzero(~good)


def named_rows(rows: np.ndarray | list[int]) -> str:
    """`12, 40, 77 and 5 more`: the first store rows of a list, for one-line messages."""
    ordered = sorted(int(r) for r in rows)
    shown = ", ".join(map(str, ordered[:MAX_ROWS_NAMED]))
    more = len(ordered) - MAX_ROWS_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


class NonFiniteRows(IntegrityError):
    """Rows holding NaN or Inf were met and the policy is to stop."""

    def __init__(self, rows: np.ndarray, context: str, advice: str) -> None:
        self.rows = rows
        super().__init__(
            f"{context} holds NaN or Inf (or a damaged row scale) in store rows "
            f"{named_rows(rows)}; {advice}"
        )


@dataclass
class NonFinitePolicy:
    """Stop on rows with NaN or Inf (the default), or leave them out and count them (`skip`)."""

    skip: bool = False
    skipped: int = 0  # rows left out so far (a row met twice counts twice)
    rows: set[int] = field(default_factory=set)  # the store rows left out

    def apply(self, batch: Batch, context: str, advice: str) -> Batch:
        """The batch, without its non-finite rows when skipping; raise `NonFiniteRows` naming
        them when stopping (`context` says where, `advice` what to do)."""
        if not len(batch.nonfinite_index):
            return batch
        if not self.skip:
            raise NonFiniteRows(batch.nonfinite_rows, context, advice)
        self.skipped += len(batch.nonfinite_index)
        self.rows.update(int(row) for row in batch.nonfinite_rows)
        return batch.without_nonfinite()
