"""Full integrity check of a store's committed rows: every chunk's checksum and its values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.core.sync import sync

from saekit.cache_format import schema
from saekit.cache_format.nonfinite import SCALE_EXPONENTS, finite_rows, named_rows, valid_scales
from saekit.cache_format.reader import ActivationStore, impossible_values, split_mismatch
from saekit.cache_format.schema import StoreSpec


@dataclass(frozen=True)
class Problem:
    """One bad chunk: which array, which chunk, which rows, and what is wrong."""

    array: str
    chunk: int
    start: int
    stop: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.array} chunk {self.chunk} (rows {self.start}-{self.stop - 1}): {self.message}"
        )


def _value_problem(path: str, first_row: int, values: np.ndarray, spec: StoreSpec) -> str | None:
    """What is impossible about a committed chunk's values (how many rows, and which), or None.
    Fill values (NaN, -1) mean rows never written."""
    name = path.rsplit("/", 1)[-1]
    if name == schema.SEQUENCE and not impossible_values(name, values, spec.identity)[0].any():
        bad_R = split_mismatch(values, first_row, spec)
        what = "contexts on the other side of the held-out split (layout.holdout_rows)"
    elif name in (schema.TOKENS, schema.SEQUENCE, schema.POSITION):
        bad_R, what = impossible_values(name, values, spec.identity)
    elif name == schema.LOSS:  # NaN is legitimate: the last position predicts nothing
        bad_R, what = np.isinf(values), "infinite loss values"
    elif name in schema.SCALE_ARRAYS.values():
        bad_R = ~valid_scales(values)
        what = (
            f"{name.replace('_', ' ')}s that are not a power of two from 2^"
            f"{SCALE_EXPONENTS[0]} to 2^{SCALE_EXPONENTS[1]}"
        )
    else:
        element = spec.encoding(name).element
        bad_R, what = ~finite_rows(values, element), "NaN or Inf values (unwritten rows?)"
    rows = first_row + np.flatnonzero(bad_R)
    if not len(rows):
        return None
    return f"{len(rows)} rows with {what}: rows {named_rows(rows)}"


def _chunk_exists(array: zarr.Array, index: int) -> bool:
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    return sync(array.store_path.store.exists(f"{array.path}/{key}"))


def chunks_to_check(store: ActivationStore) -> Iterator[tuple[str, int, int, int]]:
    """(array path, chunk index, first row, end row) of every chunk holding committed rows."""
    chunk = store.spec.layout.rows_per_chunk
    for path in store.array_paths:
        for first, end in store.committed:
            for index in range(first // chunk, -(-end // chunk)):
                yield path, index, max(index * chunk, first), min((index + 1) * chunk, end)


def verify_store(
    store: ActivationStore,
    on_chunk: Callable[[], None] = lambda: None,
    threads: int = 4,
) -> list[Problem]:
    """Read every committed chunk of every array; return the problems found (empty when sound)."""

    def check(job: tuple[str, int, int, int]) -> Problem | None:
        path, index, start, stop = job
        array = store.array(path)
        try:
            if _chunk_exists(array, index):
                message = _value_problem(path, start, array[start:stop], store.spec)
            else:
                message = "chunk is missing"
        except Exception as error:  # a checksum mismatch or an undecodable chunk
            text = str(error)
            message = "checksum mismatch (corrupt data)" if "checksum" in text else text
        on_chunk()
        return Problem(path, index, start, stop, message) if message else None

    with ThreadPoolExecutor(threads) as pool:
        return [p for p in pool.map(check, chunks_to_check(store)) if p is not None]
