"""Shuffled training batches streamed from a store, with background prefetch.

Two levels of shuffling on top of the harvest-time permutation inside each block:
1. each epoch visits the split's chunks in a seeded random order;
2. the chunks are read in groups of `buffer_rows` rows; every batch is a uniform random draw
   from the rows of one group (a batch straddling two groups takes the last rows of one and the
   first of the next). The next group is read by a thread pool while the current one is served.
Memory stays below two groups plus the batches in flight, whatever the store's size. All arrays
of a row (activations, gradients, ...) are gathered with one index, so they share one
permutation; rows are copied once, from the group buffer into the batch.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from saekit.cache_format import encoding, schema
from saekit.cache_format.nonfinite import nonfinite_index
from saekit.cache_format.reader import ROW_INDEX, ActivationStore, Split

RawRows = dict[str, np.ndarray]
_NO_ROWS = np.empty(0, dtype=np.int64)


class Batch(dict[str, torch.Tensor]):
    """Tensors of one batch by field name (`activations`, `gradients`, ...), plus its epoch and
    its rows holding NaN or Inf (`nonfinite_index` in the batch, `nonfinite_rows` in the store;
    see `nonfinite.NonFinitePolicy`)."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        epoch: int,
        nonfinite_index: np.ndarray = _NO_ROWS,
        nonfinite_rows: np.ndarray = _NO_ROWS,
    ) -> None:
        super().__init__(tensors)
        self.epoch = epoch
        self.nonfinite_index = nonfinite_index
        self.nonfinite_rows = nonfinite_rows

    def without_nonfinite(self) -> Batch:
        """The batch without its non-finite rows."""
        keep_B = np.ones(len(next(iter(self.values()))), dtype=bool)
        keep_B[self.nonfinite_index] = False
        keep = torch.from_numpy(keep_B)
        return Batch({name: v[keep.to(v.device)] for name, v in self.items()}, self.epoch)


def chunk_units(ranges: Sequence[tuple[int, int]], rows_per_chunk: int) -> list[tuple[int, int]]:
    """Cut row ranges at chunk boundaries, so that every unit reads from exactly one chunk."""
    units = []
    for start, stop in ranges:
        edges = range((start // rows_per_chunk + 1) * rows_per_chunk, stop, rows_per_chunk)
        units += list(itertools.pairwise([start, *edges, stop]))
    return units


@dataclass
class _Group:
    """The rows of a group of chunks being read: buffers filled by `reads`, and its epoch."""

    epoch: int
    rows: RawRows
    reads: list[Future[None]]

    def ready(self) -> RawRows:
        for read in self.reads:
            read.result()
        return self.rows


class _Pending:
    """Rows waiting to be served, as (group rows, shuffled row indices) segments, oldest first."""

    def __init__(self) -> None:
        self.segments: list[tuple[RawRows, np.ndarray]] = []
        self.n_rows = 0

    def add(self, rows: RawRows, index: np.ndarray) -> None:
        self.segments.append((rows, index))
        self.n_rows += len(index)

    def take(self, n: int) -> RawRows:
        parts: list[RawRows] = []
        while n:
            rows, index = self.segments[0]
            head, rest = index[:n], index[n:]
            parts.append({name: values[head] for name, values in rows.items()})
            n -= len(head)
            self.n_rows -= len(head)
            if len(rest):
                self.segments[0] = (rows, rest)
            else:
                self.segments.pop(0)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class ShuffledLoader:
    """Iterate over shuffled batches of one hook's rows (deterministic for a seed).

    fields: any of `activations`, `gradients` (float32, descaled), `tokens`, `sequence`,
    `position`, `loss` and `row` (the row's index in the store).
    epochs: passes over the split; None repeats forever. Every row appears once per epoch
    (`drop_last` drops the final partial batch).
    """

    def __init__(
        self,
        store: ActivationStore,
        *,
        hook: str | None = None,
        fields: Sequence[str] = (schema.ACTIVATIONS,),
        split: Split = "train",
        batch_size: int = 4096,
        seed: int = 0,
        epochs: int | None = 1,
        buffer_rows: int = 1 << 18,
        exclude_position_zero: bool = True,
        device: str | torch.device = "cpu",
        read_threads: int = 4,
        prefetch_batches: int = 4,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0 or buffer_rows <= 0:
            raise ValueError("batch_size and buffer_rows must be positive")
        self.store = store
        self.hook = store.resolve_hook(hook)
        self.fields = tuple(fields)
        if schema.GRADIENTS in self.fields:
            store.require_gradients(self.hook)
        self.batch_size = batch_size
        self.seed = seed
        self.epochs = epochs
        self.exclude_position_zero = exclude_position_zero
        self.device = torch.device(device)
        self.read_threads = read_threads
        self.prefetch_batches = prefetch_batches
        self.drop_last = drop_last
        chunk = store.spec.layout.rows_per_chunk
        self.units = chunk_units(store.ranges(split), chunk)
        self.units_per_group = max(1, buffer_rows // chunk)
        read_fields = set(self.fields) | {ROW_INDEX}  # store rows name non-finite rows
        read_fields |= {schema.POSITION} if exclude_position_zero else set()
        self._read_fields = sorted(read_fields)
        self._raw_layout = store.raw_layout(self._read_fields, self.hook)

    def __iter__(self) -> Iterator[Batch]:
        if not self.units:
            return
        batches: queue.Queue[Batch | BaseException | None] = queue.Queue(self.prefetch_batches)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(batches, stop), name="saekit-loader", daemon=True
        )
        producer.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.05)
            producer.join()

    # -- producer thread -----------------------------------------------------------------------

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        def put(item: Batch | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        if self.device.type == "cuda":  # pinning and copies of this thread use the batches' GPU
            torch.cuda.set_device(self.device)
        try:
            for batch in self._batches():
                if not put(batch):
                    return
            put(None)
        except BaseException as error:
            put(error)

    def _unit_groups(self) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """(epoch, units) of every group, in reading order."""
        for epoch in itertools.count() if self.epochs is None else range(self.epochs):
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
            for first in range(0, len(order), self.units_per_group):
                yield epoch, [self.units[i] for i in order[first : first + self.units_per_group]]

    def _batches(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        pending = _Pending()
        epoch = 0
        with ThreadPoolExecutor(self.read_threads, thread_name_prefix="saekit-read") as io:
            groups = (self._start_group(io, epoch, units) for epoch, units in self._unit_groups())
            upcoming = next(groups, None)
            while upcoming is not None:
                group, upcoming = upcoming, next(groups, None)  # read ahead while serving
                rows = group.ready()
                epoch = group.epoch
                pending.add(rows, rng.permutation(self._eligible(rows)))
                while pending.n_rows >= self.batch_size:
                    yield self._to_batch(pending.take(self.batch_size), epoch)
        if pending.n_rows and not self.drop_last:
            yield self._to_batch(pending.take(pending.n_rows), epoch)

    def _start_group(
        self, io: ThreadPoolExecutor, epoch: int, units: list[tuple[int, int]]
    ) -> _Group:
        offsets = np.cumsum([0] + [stop - start for start, stop in units])
        rows = {
            name: np.empty((offsets[-1], *shape), dtype)
            for name, (shape, dtype) in self._raw_layout.items()
        }

        def read(unit: tuple[int, int], offset: int) -> None:
            start, stop = unit
            views = {name: values[offset : offset + stop - start] for name, values in rows.items()}
            got = self.store.read(self._read_fields, start, stop, self.hook, out=views)
            if ROW_INDEX in views:
                views[ROW_INDEX][...] = got[ROW_INDEX]

        reads = [
            io.submit(read, unit, int(offset)) for unit, offset in zip(units, offsets, strict=False)
        ]
        return _Group(epoch, rows, reads)

    def _eligible(self, rows: RawRows) -> np.ndarray:
        """Indices of the group's rows that may be served (position 0 excluded on request)."""
        if not self.exclude_position_zero:
            return np.arange(len(next(iter(rows.values()))))
        eligible = np.flatnonzero(rows[schema.POSITION] != 0)
        if schema.POSITION not in self.fields:
            del rows[schema.POSITION]
        return eligible

    def _to_batch(self, raw: RawRows, epoch: int) -> Batch:
        bad = nonfinite_index(raw, self.store.spec)
        bad_rows = raw[ROW_INDEX][bad]
        if ROW_INDEX not in self.fields:
            raw = {name: values for name, values in raw.items() if name != ROW_INDEX}
        tensors: dict[str, np.ndarray | torch.Tensor] = dict(raw)
        if self.device.type == "cuda":  # pinned host memory makes the copy asynchronous
            tensors = {
                name: encoding.as_torch(v).pin_memory().to(self.device, non_blocking=True)
                for name, v in raw.items()
            }
        return Batch(self.store.decode(tensors, self.device), epoch, bad, bad_rows)
