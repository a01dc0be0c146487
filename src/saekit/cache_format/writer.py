"""Create or resume a store and append blocks of rows to it, crash-safely, on a background thread.

Commit protocol: a block's rows are written to every array (whole chunks), then the shard's commit
record advances in one atomic write (the root attribute `n_rows_committed` of an unsharded store,
`progress/shard-*.json` of a sharded one). A process killed at any moment leaves the committed
rows intact; the rows after them are rewritten on resume. One writer at a time holds a shard's
lock; the last shard to finish completes the store.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync

from saekit import __version__
from saekit.base.errors import IntegrityError, SaekitError
from saekit.cache_format import encoding, schema
from saekit.cache_format.location import remote_error
from saekit.cache_format.locking import new_owner
from saekit.cache_format.progress import ShardProgress, committed_ranges
from saekit.cache_format.schema import Block, StoreSpec
from saekit.cache_format.target import StoreTarget
from saekit.cache_format.validation import validate

ArrayLike = np.ndarray | torch.Tensor
EncodedBlock = dict[str, np.ndarray]


@dataclass
class RowBlock:
    """The rows of one block in stream order, before encoding. Tensors may live on any device."""

    tokens: ArrayLike
    sequence: ArrayLike
    position: ArrayLike
    loss: ArrayLike
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.tokens)


def encode_rows(rows: RowBlock, spec: StoreSpec, check: bool = True) -> dict[str, torch.Tensor]:
    """Encode rows into the storage dtypes, keyed by array path, on the rows' device.

    Non-finite values (and values beyond float16 in a float16 store) are refused; with
    `check=False` they are left to the caller, who finds them with `row_problems`."""
    columns = {
        schema.TOKENS: rows.tokens,
        schema.SEQUENCE: rows.sequence,
        schema.POSITION: rows.position,
        schema.LOSS: rows.loss,
    }
    encoded = {
        name: torch.as_tensor(value).to(getattr(torch, schema.ROW_COLUMNS[name][0]))
        for name, value in columns.items()
    }
    if set(rows.activations) != set(spec.hooks):
        raise ValueError(
            f"rows have hooks {sorted(rows.activations)}, store has {sorted(spec.hooks)}"
        )
    for hook, hook_spec in spec.hooks.items():
        x_RD = torch.as_tensor(rows.activations[hook])
        if x_RD.shape != (rows.n_rows, hook_spec.d):
            raise ValueError(f"activations of {hook} have shape {tuple(x_RD.shape)}")
        stored = {
            schema.ACTIVATIONS: encoding.encode_activations(x_RD, spec.activation_dtype, check)
        }
        if hook_spec.gradients != (hook in rows.gradients):
            raise ValueError(f"gradients of {hook} must be given iff the store keeps them")
        if hook_spec.gradients:
            g_RD = torch.as_tensor(rows.gradients[hook])
            stored[schema.GRADIENTS] = encoding.encode_gradients(
                g_RD, spec.gradient_encoding, check
            )
        for array, (values, scale) in stored.items():
            encoded[schema.hook_array_path(hook, array)] = values
            if scale is not None:
                encoded[schema.hook_array_path(hook, schema.SCALE_ARRAYS[array])] = scale
    return encoded


def row_problems(rows: RowBlock, spec: StoreSpec) -> torch.Tensor:
    """What `encode_rows` would refuse, as per-row flags on the rows' device (see `encoding`);
    nothing is read back to the host."""
    flags_R = torch.zeros(rows.n_rows, dtype=torch.uint8, device=torch.as_tensor(rows.loss).device)
    for hook in spec.hooks:
        flags_R |= encoding.activation_problems(rows.activations[hook], spec.activation_dtype)
        if hook in rows.gradients:
            flags_R |= encoding.gradient_problems(rows.gradients[hook])
    return flags_R


def encode_block(rows: RowBlock, spec: StoreSpec) -> EncodedBlock:
    """Encode rows into the storage dtypes as CPU numpy arrays, keyed by array path."""
    return {path: encoding.as_numpy(t) for path, t in encode_rows(rows, spec).items()}


def check_target(
    location: str | Path, storage_options: dict[str, Any] | None = None
) -> dict | None:
    """Refuse, touching nothing, an output that is a file or a foreign directory; return the
    attributes of the saekit store already there, or None for a new store."""
    return StoreTarget(location, storage_options).existing_attrs()


def check_resumable(
    location: str | Path | StoreTarget,
    spec: StoreSpec,
    storage_options: dict[str, Any] | None = None,
) -> dict | None:
    """Refuse, touching nothing, a target that is not this store; return its attributes."""
    target = (
        location if isinstance(location, StoreTarget) else StoreTarget(location, storage_options)
    )
    attrs = target.existing_attrs()
    if attrs is None:
        return None
    stored = {key: attrs.get(key) for key in spec.fixed_attrs()}
    diffs = schema.differences(stored, spec.fixed_attrs())
    if diffs:
        raise SaekitError(
            f"store {target.location} was made with other settings: {'; '.join(diffs)}; "
            "re-run with the original settings or choose a new output path"
        )
    if attrs.get("initialized"):  # resume only a store whose metadata is sound
        group = zarr.open_group(target.zarr_store(read_only=True), mode="r", zarr_format=3)
        validate(group, attrs, target.location)
    return attrs


def _create_arrays(group: zarr.Group, spec: StoreSpec) -> None:
    """Every planned array: empty (grown block by block as rows are committed) in a store with
    one writer, preallocated to the capacity in a sharded one (whose writers must not resize
    arrays others write), so that no capacity is ever allocated for rows never written."""
    rows = (spec.layout.capacity_rows or 0) if spec.layout.shards > 1 else 0
    chunk = spec.layout.rows_per_chunk
    for path, plan in schema.array_plan(spec).items():
        group.create_array(
            path,
            shape=(rows, *plan.row_shape),
            chunks=(chunk, *plan.row_shape),
            dtype=plan.dtype,
            fill_value=plan.fill,
            compressors=[Crc32cCodec()],
            dimension_names=["row", "feature"][: 1 + len(plan.row_shape)],
            attributes=plan.attrs,
            config={"write_empty_chunks": True},
            overwrite=True,
        )


def _create_or_open(target: StoreTarget, spec: StoreSpec, attrs: dict | None) -> zarr.Group:
    store = target.zarr_store()
    if attrs is None:
        group = zarr.create_group(
            store,
            zarr_format=3,
            attributes={
                "format": schema.FORMAT_NAME,
                "format_version": spec.format_version,
                "saekit_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                **spec.fixed_attrs(),
                "provenance": spec.provenance,
                "n_rows_committed": 0,
                "complete": False,
                "initialized": False,
            },
        )
    else:
        group = zarr.open_group(store, mode="r+", zarr_format=3)
    if not group.attrs.get("initialized"):
        _create_arrays(group, spec)
        group.attrs.update({"initialized": True})
    return group


class StoreWriter:
    """Appends blocks to a store (or to one shard of it) in order, on a background thread.

    Use `StoreWriter.open(...)` as a context manager: it creates the store or resumes it (the
    settings must match), holds the shard's lock, and on exit waits until every submitted block
    is committed. Encoding (when given `RowBlock`s) and writing happen on the writer's thread.
    """

    def __init__(
        self,
        target: StoreTarget,
        group: zarr.Group,
        spec: StoreSpec,
        shard: int,
        owner: str,
        queue_blocks: int,
    ) -> None:
        self.spec = spec
        self._target, self._group, self._owner = target, group, owner
        self._arrays = {path: group[path] for path in schema.array_plan(spec)}
        self._progress = ShardProgress(group, spec, shard)
        self._committed, self._complete = self._progress.load()
        blocks = spec.layout.shard_blocks(shard)
        self.shard_rows: tuple[int, int | None] = (
            spec.layout.shard_rows(shard) if spec.layout.capacity_rows is not None else (0, None)
        )
        self._next_index = max(blocks.start, self._committed // spec.layout.rows_per_block)
        self._end_index = blocks.stop
        self._ended = self._complete or self._committed % spec.layout.rows_per_block != 0
        self._io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="saekit-write")
        self._queue: queue.Queue[tuple[Block, RowBlock | EncodedBlock] | None] = queue.Queue(
            maxsize=queue_blocks
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="saekit-writer", daemon=True)
        self._thread.start()

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        location: str | Path,
        spec: StoreSpec,
        *,
        shard: int = 0,
        storage_options: dict[str, Any] | None = None,
        owner: str | None = None,
        queue_blocks: int = 2,
    ) -> Iterator[StoreWriter]:
        """Create `location` or resume the store there, and yield a writer for one shard of it.

        `owner` identifies a run: shard tasks of one run share it, so a retried task may take
        over the lease its failed attempt left on object storage.
        """
        target = StoreTarget(location, storage_options)
        check_resumable(target, spec)  # refuse early, before any lock is taken
        target.refuse_links([f"{path}/c" for path in schema.array_plan(spec)])
        owner = owner or new_owner()
        with target.lock("create", owner), write_errors(target):
            group = _create_or_open(target, spec, check_resumable(target, spec))
        with target.lock(f"shard-{shard:05d}", owner):
            with write_errors(target):
                if spec.layout.shards == 1:
                    target.remove_partial_writes()
                writer = cls(target, group, spec, shard, owner, queue_blocks)
            try:
                yield writer
            finally:
                writer.close()

    @property
    def n_rows_committed(self) -> int:
        """The shard's rows before this row index are complete (queued blocks not counted)."""
        return self._committed

    @property
    def complete(self) -> bool:
        return self._complete

    def pending_blocks(self) -> Iterator[Block]:
        """The shard's blocks still to write, in order (endless when the capacity is unknown)."""
        if self._ended:
            return
        for index in range(self._next_index, self._end_index):
            yield self.spec.layout.block(index)

    def write(self, block: Block, rows: RowBlock | EncodedBlock) -> None:
        """Queue a block's rows (stream order). A block shorter than `block` ends the shard."""
        self._raise_if_failed()
        if self._ended:
            raise ValueError("the shard has ended; no more blocks can be written")
        if block.index != self._next_index:
            raise ValueError(
                f"block {block.index} written out of order (expected {self._next_index})"
            )
        n_rows = rows.n_rows if isinstance(rows, RowBlock) else len(rows[schema.TOKENS])
        if not 0 < n_rows <= block.n_rows:
            raise ValueError(f"block {block.index} takes 1..{block.n_rows} rows, got {n_rows}")
        self._next_index += 1
        self._ended = n_rows < block.n_rows or self._next_index == self._end_index
        self._queue.put((Block(block.index, block.start, block.start + n_rows), rows))

    def finish(self) -> None:
        """Commit everything queued and mark the shard complete. When every shard is complete,
        the store is finished: arrays trimmed to the rows written, `complete` set."""
        self.flush()
        if self._complete:
            return
        if self._progress.sharded:
            self._progress.save(self._committed, complete=True)
        self._complete = self._ended = True
        finish_store(self._target, self._group, self.spec, self._owner)

    def flush(self) -> None:
        """Block until every queued block is committed."""
        self._queue.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Commit what is queued, then stop the background thread."""
        self._queue.put(None)
        self._thread.join()
        self._io_pool.shutdown()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:
                    with write_errors(self._target):
                        self._commit(*item)
            except BaseException as error:  # re-raised in the producer's thread
                self._error = error
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _commit(self, block: Block, rows: RowBlock | EncodedBlock) -> None:
        encoded = encode_block(rows, self.spec) if isinstance(rows, RowBlock) else rows
        order = self.spec.layout.row_permutation(block)
        for array in self._arrays.values():
            if array.shape[0] < block.stop:  # unknown capacity: grow block by block
                array.resize((block.stop, *array.shape[1:]))

        def store(path: str) -> None:
            self._arrays[path][block.start : block.stop] = encoded[path][order]

        list(self._io_pool.map(store, self._arrays))
        self._progress.save(block.stop)
        self._committed = block.stop


def finish_store(target: StoreTarget, group: zarr.Group, spec: StoreSpec, owner: str) -> bool:
    """Finish the store if every shard is complete: trim arrays, set `complete`. Idempotent."""
    with target.lock("create", owner):
        if group.attrs.get("complete"):
            return True
        shards = range(spec.layout.shards)
        if len(shards) > 1 and not all(ShardProgress(group, spec, s).load()[1] for s in shards):
            return False
        rows = committed_ranges(dict(group.attrs), group.store, spec)
        n_rows = rows[-1][1] if rows else 0
        if rows and rows != [(0, n_rows)]:
            raise IntegrityError(f"store {target.location} has gaps between shards: {rows}")
        if spec.layout.shards > 1:
            target.remove_partial_writes()
        for path in schema.array_plan(spec):
            trim(group[path], n_rows)
        group.attrs.update({"n_rows_committed": n_rows, "complete": True})
        return True


def trim(array: zarr.Array, n_rows: int) -> None:
    """Cut an array to `n_rows` rows, deleting the chunk objects past them that exist. Unlike
    zarr's resize, it never enumerates the chunk grid of the old shape, which may be huge
    (a capacity of 10^15 rows) while few chunks were written."""
    if array.shape[0] == n_rows:
        return
    sync(array._async_array.resize((n_rows, *array.shape[1:]), delete_outside_chunks=False))
    first_gone = -(-n_rows // array.chunks[0])
    store = array.store_path.store
    prefix = f"{array.path}/c/"
    for key in sync(_list(store, prefix)):
        index = key[len(prefix) :].split("/", 1)[0]
        if index.isdigit() and int(index) >= first_gone:  # not a torn temporary file
            sync(store.delete(key))


async def _list(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


@contextlib.contextmanager
def write_errors(target: StoreTarget) -> Iterator[None]:
    """A failed write (full disk, file-size limit, permissions, network) as one line; the
    committed rows stay intact, so re-running the command resumes the store."""
    try:
        yield
    except OSError as error:
        if not target.local:
            raise remote_error(target.location, error) from None
        raise SaekitError(
            f"cannot write to store {target.location}: {error.strerror or error}; fix that "
            "(free space, permissions) and re-run the same command: it resumes after the last "
            "committed block"
        ) from None
