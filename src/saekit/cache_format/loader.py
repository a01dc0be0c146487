"""Shuffled training batches streamed from a store, with background prefetch.

Two levels of shuffling on top of the harvest-time permutation inside each block:
1. each epoch visits the split's chunks in a seeded random order;
2. the chunks are read in groups of `buffer_rows` rows; every batch is a uniform random draw
   from the rows of one group (a batch straddling two groups takes the last rows of one and the
   first of the next). The next group is read by a thread pool while the current one is served.

A row's fields (activations, gradients, their scales, ...) sit side by side in one *row record*
of bytes, in the store's encoding. Chunks are read straight into the records of a group buffer;
a batch is one vectorised gather of whole records from the group buffer into a batch buffer, so
every field of a row shares one permutation and each row is copied once. The batch is handed out
as it is (`EncodedBatch`, in a buffer of its own, pinned on request: one copy to a device moves
all of it, and the device decodes it) or decoded to float32 on the loader's thread (`Batch`,
from one reused buffer). Reads, gathers and decoding all run off the consumer's thread. Memory
stays below two group buffers, one batch of carried-over rows and the batches in flight,
whatever the store's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from saekit.base.locations import is_local
from saekit.cache_format import encoding, schema
from saekit.cache_format.nonfinite import nonfinite_index
from saekit.cache_format.reader import ROW_INDEX, ActivationStore, Split
from saekit.cache_format.schema import StoreSpec

REMOTE_READ_THREADS = 16
RECORD_ALIGNMENT = 8  # bytes: every field of every record is aligned to its own item size
_NO_ROWS = np.empty(0, dtype=np.int64)


class Batch(dict[str, torch.Tensor]):
    """Tensors of one batch by field name (`activations`, `gradients`, ...; activations and
    gradients float32), plus its epoch and its rows holding NaN or Inf (`nonfinite_index` in the
    batch, `nonfinite_rows` in the store; see `nonfinite.NonFinitePolicy`)."""

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

    def on(self, device: str | torch.device) -> Batch:
        """The batch on `device` (its tensors themselves when they are there already)."""
        tensors = {name: t.to(device) for name, t in self.items()}
        return Batch(tensors, self.epoch, self.nonfinite_index, self.nonfinite_rows)


@dataclass(frozen=True)
class RecordField:
    """Where a field lives in a row record: byte offset, storage dtype and the shape of a row."""

    offset: int
    dtype: np.dtype
    row_shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))


@dataclass(frozen=True)
class RecordLayout:
    """The row record of a set of raw fields: fields side by side, widest items first, so that
    each is aligned to its item size and the record length is a multiple of 8 bytes."""

    fields: dict[str, RecordField]
    row_bytes: int

    @classmethod
    def of(cls, raw_layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> RecordLayout:
        """The layout of the raw fields `ActivationStore.raw_layout` describes."""
        fields, offset = {}, 0
        by_width = sorted(raw_layout.items(), key=lambda item: -np.dtype(item[1][1]).itemsize)
        for name, (row_shape, dtype) in by_width:
            fields[name] = RecordField(offset, np.dtype(dtype), tuple(row_shape))
            offset += fields[name].nbytes
        return cls(fields, -(-offset // RECORD_ALIGNMENT) * RECORD_ALIGNMENT)

    def numpy_fields(self, records_RY: np.ndarray) -> dict[str, np.ndarray]:
        """Views of every field of `[rows, row_bytes]` uint8 records, in storage dtypes."""
        n = len(records_RY)
        return {
            name: records_RY[:, f.offset : f.offset + f.nbytes]
            .view(f.dtype)
            .reshape(n, *f.row_shape)
            for name, f in self.fields.items()
        }

    def tensor_fields(self, records_RY: torch.Tensor) -> dict[str, torch.Tensor]:
        """`numpy_fields` for a uint8 tensor on any device (bfloat16 bits come as int16)."""
        n = len(records_RY)
        return {
            name: records_RY[:, f.offset : f.offset + f.nbytes]
            .view(encoding.torch_dtype(f.dtype))
            .reshape(n, *f.row_shape)
            for name, f in self.fields.items()
        }


@dataclass(frozen=True)
class EncodedBatch:
    """One batch still in the store's encoding: `[B, row_bytes]` uint8 row records (pinned when
    the loader pins), their layout, the store spec that says how to decode them, the fields asked
    for, the batch's epoch and its rows holding NaN or Inf (as in `Batch`). `on(device)` copies
    it in one non-blocking copy and decodes it there; decoding on the CPU gives exactly the
    loader's float32 batches."""

    records_RY: torch.Tensor
    layout: RecordLayout
    spec: StoreSpec
    fields: tuple[str, ...]
    epoch: int
    nonfinite_index: np.ndarray = dataclasses.field(default_factory=lambda: _NO_ROWS)
    nonfinite_rows: np.ndarray = dataclasses.field(default_factory=lambda: _NO_ROWS)

    def __len__(self) -> int:
        return len(self.records_RY)

    def raw(self) -> dict[str, torch.Tensor]:
        """Views of the stored fields (storage dtypes, scales included, gradients not descaled)."""
        return self.layout.tensor_fields(self.records_RY)

    def to(self, device: str | torch.device) -> EncodedBatch:
        """The records on `device`; asynchronous from pinned memory."""
        records = self.records_RY.to(device, non_blocking=True)
        return dataclasses.replace(self, records_RY=records)

    def decode(self) -> Batch:
        """The fields asked for, where the records are: activations and gradients as float32.
        Every tensor is new: the batch shares no memory with the records."""
        decoded = encoding.decode_fields(self.raw(), self.spec)  # floats: new tensors
        return Batch(
            {
                name: decoded[name]
                if schema.split_field(name)[0] in schema.SCALE_ARRAYS
                else decoded[name].clone(memory_format=torch.contiguous_format)
                for name in self.fields
            },
            self.epoch,
            self.nonfinite_index,
            self.nonfinite_rows,
        )

    def on(self, device: str | torch.device) -> Batch:
        """The decoded batch on `device`: the copy moves the stored bytes, the device decodes."""
        return self.to(device).decode()


@dataclass(frozen=True)
class LoaderThreads:
    """Threads of a loader: `read` threads fetch and check chunks; `gather` threads copy rows
    from the group buffer into batches (1: the loader's own thread does it)."""

    read: int = 4
    gather: int = 1

    @classmethod
    def for_machine(
        cls, location: str, device: str | torch.device, cpus: int | None = None
    ) -> LoaderThreads:
        """Threads sized from the machine. Training on the CPU, the SAEs need the cores: reads
        get a quarter of them (1 to 4) and the loader's thread gathers (on 2 cores, 4 readers
        preempt torch's compute threads: store/RAM 0.92 with 4, 1.0 with 1 at d = 768). Training
        on an accelerator, the CPUs serve only the loader: three quarters read, a quarter
        gathers. Object storage and HTTP get at least 16 reads, since each mostly waits on the
        network (measured when the store was designed: 16-64 chunk reads in flight hide it)."""
        cpus = cpus or len(os.sched_getaffinity(0))
        if torch.device(device).type == "cpu":
            read, gather = max(1, min(4, cpus // 4)), 1
        else:
            read, gather = max(2, cpus - cpus // 4), max(1, cpus // 4)
        if not is_local(location):
            read = max(read, REMOTE_READ_THREADS)
        return cls(read, gather)


def chunk_units(ranges: Sequence[tuple[int, int]], rows_per_chunk: int) -> list[tuple[int, int]]:
    """Cut row ranges at chunk boundaries, so that every unit reads from exactly one chunk."""
    units = []
    for start, stop in ranges:
        edges = range((start // rows_per_chunk + 1) * rows_per_chunk, stop, rows_per_chunk)
        units += list(itertools.pairwise([start, *edges, stop]))
    return units


@dataclass
class _Group:
    """A group of chunks being read into (the first rows of) a group buffer."""

    epoch: int
    buffer_RY: np.ndarray
    n_rows: int
    reads: list[Future[None]]

    def ready(self) -> np.ndarray:
        """The group's records, once every read has landed."""
        for read in self.reads:
            read.result()
        return self.buffer_RY[: self.n_rows]


class _Batcher:
    """Cuts one iteration's shuffled group rows into batches: whole records gathered (split
    between the gather threads) into batch buffers. Rows that do not fill a batch wait in a
    carry (fewer than one batch), so that their group's buffer can be refilled meanwhile."""

    def __init__(
        self,
        batch_size: int,
        row_bytes: int,
        new_batch: Callable[[int], torch.Tensor],
        gather: ThreadPoolExecutor,
        gather_threads: int,
    ) -> None:
        self.batch_size = batch_size
        self.new_batch = new_batch
        self.gather, self.gather_threads = gather, gather_threads
        self.carry_RY = np.empty((batch_size, row_bytes), np.uint8)
        self.carried = 0

    def serve(self, records_RY: np.ndarray, order: np.ndarray) -> Iterator[torch.Tensor]:
        """Batches of the carried rows followed by a group's rows in `order`; what does not fill
        a batch is carried over."""
        first = 0
        while self.carried + len(order) - first >= self.batch_size:
            batch_RY = self.new_batch(self.batch_size)
            into_RY = batch_RY.numpy()
            head, self.carried = self.carried, 0
            into_RY[:head] = self.carry_RY[:head]
            stop = first + self.batch_size - head
            self._gather(records_RY, order[first:stop], into_RY[head:])
            first = stop
            yield batch_RY
        rest = order[first:]
        self._gather(records_RY, rest, self.carry_RY[self.carried : self.carried + len(rest)])
        self.carried += len(rest)

    def rest(self) -> torch.Tensor | None:
        """The carried rows as a last, short batch (None when there are none)."""
        if not self.carried:
            return None
        batch_RY = self.new_batch(self.carried)
        batch_RY.numpy()[:] = self.carry_RY[: self.carried]
        self.carried = 0
        return batch_RY

    def _gather(self, records_RY: np.ndarray, index: np.ndarray, into_RY: np.ndarray) -> None:
        """into[i] = records[index[i]], whole records, split between the gather threads."""
        n, threads = len(index), self.gather_threads
        bounds = [n * i // threads for i in range(threads + 1)]
        windows = [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]

        def take(window: slice) -> None:
            np.take(records_RY, index[window], axis=0, out=into_RY[window], mode="clip")

        if len(windows) == 1:
            take(windows[0])
        else:
            list(self.gather.map(take, windows))


class ShuffledLoader:
    """Iterate over shuffled batches of a store's rows (deterministic for a seed).

    fields: any of `activations`, `gradients` (float32, descaled; at `hook`, or at the hook a
    field is qualified with, `schema.hook_field`, so that one batch holds several hooks of the
    same rows, each read once), `tokens`, `sequence`, `position`, `loss` and `row` (the row's
    index in the store). The rows and their order do not depend on the fields or hooks read.
    epochs: passes over the split; None repeats forever. Every row appears once per epoch
    (`drop_last` drops the final partial batch).
    encoded: hand out `EncodedBatch`es (the store's encoding; `batch.on(device)` decodes) instead
    of float32 `Batch`es. pin_device: the CUDA device the batches are for: they are allocated in
    pinned memory (by a thread bound to that device), so that copies to it are asynchronous.
    Both paths give the same rows in the same batches for a seed.
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
        encoded: bool = False,
        pin_device: str | torch.device | None = None,
        threads: LoaderThreads = LoaderThreads(),
        prefetch_batches: int = 4,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0 or buffer_rows <= 0:
            raise ValueError("batch_size and buffer_rows must be positive")
        self.store = store
        self.fields = tuple(fields)
        plain_hook_field = any(name in (schema.ACTIVATIONS, schema.GRADIENTS) for name in fields)
        self.hook = store.resolve_hook(hook) if plain_hook_field or hook else None
        for name in self.fields:
            base, qualifier = schema.split_field(name)
            if base == schema.GRADIENTS:
                store.require_gradients(qualifier or self.hook)
        self.batch_size = batch_size
        self.seed = seed
        self.epochs = epochs
        self.exclude_position_zero = exclude_position_zero
        self.encoded = encoded
        self.pin_device = None if pin_device is None else torch.device(pin_device)
        self.threads = threads
        self.prefetch_batches = prefetch_batches
        self.drop_last = drop_last
        chunk = store.spec.layout.rows_per_chunk
        self.units = chunk_units(store.ranges(split), chunk)
        self.units_per_group = max(1, buffer_rows // chunk)
        read_fields = set(self.fields) | {ROW_INDEX}  # store rows name non-finite rows
        read_fields |= {schema.POSITION} if exclude_position_zero else set()
        self._read_fields = sorted(read_fields)
        self.layout = RecordLayout.of(store.raw_layout(self._read_fields, self.hook))

    def __iter__(self) -> Iterator[Batch] | Iterator[EncodedBatch]:
        if not self.units:
            return
        batches: queue.Queue = queue.Queue(self.prefetch_batches)
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
        def put(item: Batch | EncodedBatch | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        if self.pin_device is not None:  # pinned allocations of this thread use the batches' GPU
            torch.cuda.set_device(self.pin_device)
        try:
            for records_RY, epoch in self._batch_records():
                if not put(self._batch(records_RY, epoch)):
                    return
            put(None)
        except BaseException as error:
            put(error)

    def _batch(self, records_RY: torch.Tensor, epoch: int) -> Batch | EncodedBatch:
        """Every batch passes here once built, its raw rows on the CPU: the rows holding NaN or
        Inf are found here, from the stored bits, and travel with the batch."""
        raw = self.layout.numpy_fields(records_RY.numpy())
        bad = nonfinite_index(raw, self.store.spec)
        batch = EncodedBatch(
            records_RY, self.layout, self.store.spec, self.fields, epoch, bad, raw[ROW_INDEX][bad]
        )
        return batch if self.encoded else batch.decode()

    def _unit_groups(self) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """(epoch, units) of every group, in reading order."""
        for epoch in itertools.count() if self.epochs is None else range(self.epochs):
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
            for first in range(0, len(order), self.units_per_group):
                yield epoch, [self.units[i] for i in order[first : first + self.units_per_group]]

    def _batch_records(self) -> Iterator[tuple[torch.Tensor, int]]:
        """(records, epoch) of every batch, in order. Two group buffers take turns: one is read
        while the other is served."""
        rng = np.random.default_rng(self.seed)
        chunks = min(self.units_per_group, len(self.units))
        group_rows = chunks * self.store.spec.layout.rows_per_chunk
        free = [np.empty((group_rows, self.layout.row_bytes), np.uint8) for _ in range(2)]
        plans = self._unit_groups()
        reading: list[_Group] = []
        epoch = 0
        with (
            ThreadPoolExecutor(self.threads.read, thread_name_prefix="saekit-read") as io,
            ThreadPoolExecutor(self.threads.gather, thread_name_prefix="saekit-gather") as gather,
        ):
            batcher = _Batcher(
                self.batch_size,
                self.layout.row_bytes,
                self._batch_buffers(),
                gather,
                self.threads.gather,
            )
            while free and (plan := next(plans, None)) is not None:
                reading.append(self._start_group(io, *plan, free.pop()))
            while reading:
                group = reading.pop(0)
                records_RY, epoch = group.ready(), group.epoch
                order = rng.permutation(self._eligible(records_RY))
                for batch_RY in batcher.serve(records_RY, order):
                    yield batch_RY, epoch
                if (plan := next(plans, None)) is not None:
                    reading.append(self._start_group(io, *plan, group.buffer_RY))
            if not self.drop_last and (batch_RY := batcher.rest()) is not None:
                yield batch_RY, epoch

    def _batch_buffers(self) -> Callable[[int], torch.Tensor]:
        """Where the records of each batch go. A decoded batch never shares memory with its
        records (decoding copies them) and is decoded before the next is gathered, so one buffer
        serves every batch. An encoded batch is handed out as it is, in a buffer of its own, so
        it stays intact however long it is held; pinned buffers come from torch's caching host
        allocator, which hands a block out again only once every tensor using it is gone and
        the copies from it have finished."""
        row_bytes = self.layout.row_bytes
        if not self.encoded:
            scratch_RY = torch.from_numpy(np.empty((self.batch_size, row_bytes), np.uint8))
            return lambda n_rows: scratch_RY[:n_rows]
        if self.pin_device is not None:
            return lambda n_rows: torch.empty(
                (n_rows, row_bytes), dtype=torch.uint8, pin_memory=True
            )
        return lambda n_rows: torch.from_numpy(np.empty((n_rows, row_bytes), np.uint8))

    def _start_group(
        self, io: ThreadPoolExecutor, epoch: int, units: list[tuple[int, int]], buffer: np.ndarray
    ) -> _Group:
        offsets = np.cumsum([0] + [stop - start for start, stop in units])
        fields = self.layout.numpy_fields(buffer)

        def read(unit: tuple[int, int], offset: int) -> None:
            start, stop = unit
            views = {
                name: values[offset : offset + stop - start] for name, values in fields.items()
            }
            got = self.store.read(self._read_fields, start, stop, self.hook, out=views)
            if ROW_INDEX in views:
                views[ROW_INDEX][...] = got[ROW_INDEX]

        reads = [
            io.submit(read, unit, int(offset)) for unit, offset in zip(units, offsets, strict=False)
        ]
        return _Group(epoch, buffer, int(offsets[-1]), reads)

    def _eligible(self, records_RY: np.ndarray) -> np.ndarray:
        """Indices of the group's rows that may be served (position 0 excluded on request)."""
        if not self.exclude_position_zero:
            return np.arange(len(records_RY))
        return np.flatnonzero(self.layout.numpy_fields(records_RY)[schema.POSITION] != 0)
