"""The harvest: text -> contexts -> LM forward/backward -> encoded rows -> store blocks.

Contexts are processed in globally aligned batches (batch j holds contexts [jB, (j+1)B)), so a
resumed harvest recomputes exactly the batches an uninterrupted one computes and writes the same
bytes. Each batch is encoded to the storage dtypes on the model's device and copied into host
buffers of the current block; a finished block goes to the store writer, which commits it on its
own thread while the LM computes on.

On CUDA nothing in a batch waits for the GPU: the token ids go up from pinned memory, the rows'
problems (NaN, Inf, float16 overflow) are flagged per row on the GPU and travel with the rows,
and the rows come down on a side stream into two pinned staging buffers of one batch each, then
into ordinary memory. The host waits once per block, when it hands the block over: the copies
have landed and the flags are read there. Pinned memory is bounded by the staging buffers
(2 × the rows of one batch × the bytes of a row), whatever the number of hooks or blocks.
"""

from __future__ import annotations

import collections
import itertools
import math
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Protocol

import numpy as np
import torch

from saekit import __version__
from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError
from saekit.base.locations import absolute_location
from saekit.cache_format import HookSpec, RowBlock, StoreLayout, StoreSpec, StoreWriter
from saekit.cache_format.encoding import as_numpy, raise_for_problems
from saekit.cache_format.schema import MAX_SHARDS, Block
from saekit.cache_format.writer import check_resumable, check_target, encode_rows, row_problems
from saekit.harvest.contexts import DOCUMENT_SHUFFLE_BUFFER, Packing, text_contexts
from saekit.harvest.hooks import resolve
from saekit.harvest.sources import TextSource, resolve_source
from saekit.lm import GRADIENT_CONVENTION, LanguageModel, load_model, run_batch

DEFAULT_HOLDOUT_TOKENS = 1 << 16
# identity entries recorded since the first saekit; absent in older stores
ADDED_IDENTITY_KEYS = ("weights", "vocab_size")


@dataclass(frozen=True)
class HarvestConfig:
    """Everything `sae harvest` takes. `tokens=None` harvests the whole dataset."""

    model: str
    dataset: str
    hooks: tuple[str, ...]  # hook names or patterns (`--hook`; see saekit.harvest.hooks)
    out: str
    tokens: int | None = None
    context_size: int = 128
    batch_size: int = 16
    dtype: str = "float16"
    # loss gradients at every hook (True), at none (False), or at the hooks these names or
    # patterns give (`--gradients`; see saekit.harvest.hooks), each among `hooks`
    gradients: bool | tuple[str, ...] = True
    holdout_tokens: int | None = None  # default: 5 % of --tokens, or 65536 without --tokens
    device: str = "auto"
    seed: int = 0
    split: str = "train"
    text_column: str = "text"
    autocast_bf16: bool = False
    rows_per_chunk: int = 8192
    chunks_per_block: int = 16
    shards: int = 1  # the store is written by this many independent shard writers
    shard: int = 0  # the shard this harvest writes
    storage_options: dict[str, Any] | None = None  # fsspec options for a remote --out
    owner: str | None = None  # run id shared by the shard tasks of one distributed harvest
    provenance: dict[str, Any] = field(default_factory=dict)


class Progress(Protocol):
    """What the harvest reports to (the CLI's progress bar)."""

    def start(self, total_rows: int | None, done_rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


@dataclass
class HarvestPlan:
    """A validated harvest: the loaded model, the source and the store's spec."""

    config: HarvestConfig
    model: LanguageModel
    source: TextSource
    packing: Packing
    spec: StoreSpec

    @property
    def context_size(self) -> int:
        return self.config.context_size


@dataclass(frozen=True)
class HarvestResult:
    rows: int
    complete: bool
    dataset_exhausted: bool


def _check_numbers(config: HarvestConfig) -> None:
    if config.tokens is not None and config.tokens <= 0:
        raise SaekitError(f"--tokens must be positive, not {config.tokens}")
    if config.context_size < 2:
        raise SaekitError("--context-size must be at least 2 (BOS and one token)")
    if config.batch_size <= 0:
        raise SaekitError("--batch-size must be positive")
    if config.rows_per_chunk <= 0 or config.chunks_per_block <= 0:
        raise SaekitError("--rows-per-chunk and --chunks-per-block must be positive")
    if config.holdout_tokens is not None and config.holdout_tokens < 0:
        raise SaekitError("--holdout-tokens must be >= 0")
    if config.seed < 0:
        raise SaekitError(f"--seed must be 0 or more, not {config.seed}")
    if not 1 <= config.shards <= MAX_SHARDS:
        raise SaekitError(f"--shards must be from 1 to {MAX_SHARDS}, not {config.shards}")
    if not 0 <= config.shard < config.shards:
        raise SaekitError(
            f"shard {config.shard} of {config.shards} does not exist; shards are "
            "numbered 0..N-1 (e.g. --shard 0/4)"
        )
    if config.shards > 1 and config.tokens is None:
        raise SaekitError("a sharded harvest needs --tokens, to split the rows between shards")
    if not isinstance(config.gradients, bool) and not _gradient_patterns(config):
        raise SaekitError("--gradients takes a hook name or pattern, e.g. 'blocks.*.hook_mlp_out'")


def _gradient_patterns(config: HarvestConfig) -> tuple[str, ...]:
    gradients = config.gradients
    return (gradients,) if isinstance(gradients, str) else tuple(gradients)


def _resolve_hooks(config: HarvestConfig, model: LanguageModel) -> tuple[list[str], set[str]]:
    """(the hooks the --hook names and patterns give, in order; those that keep gradients)."""
    hooks = resolve(
        config.hooks,
        model.hook_names,
        option="--hook",
        among=f"the hooks of model {model.name}",
        strict=False,  # the model's check names the closest hooks, and switched-off ones
    )
    model.check_hooks(hooks)
    if isinstance(config.gradients, bool):
        return hooks, set(hooks) if config.gradients else set()
    chosen = resolve(
        _gradient_patterns(config), hooks, option="--gradients", among="the harvested hooks"
    )
    return hooks, set(chosen)


def _row_counts(config: HarvestConfig) -> tuple[int | None, int]:
    """(capacity rows or None, held-out rows), both whole contexts."""
    t = config.context_size
    capacity = None if config.tokens is None else math.ceil(config.tokens / t) * t
    holdout_tokens = config.holdout_tokens
    if holdout_tokens is None:
        holdout_tokens = DEFAULT_HOLDOUT_TOKENS if config.tokens is None else config.tokens // 20
    holdout = math.ceil(holdout_tokens / t) * t
    if capacity is not None and holdout >= capacity:
        raise SaekitError(
            f"--holdout-tokens ({holdout_tokens}) leaves no training tokens out of "
            f"--tokens {config.tokens}; lower it"
        )
    return capacity, holdout


def plan_harvest(config: HarvestConfig) -> HarvestPlan:
    """Validate every input (cheapest checks first) before anything is written."""
    _check_numbers(config)
    capacity, holdout = _row_counts(config)
    existing = check_target(config.out, config.storage_options)
    device = resolve_device(config.device)
    source = resolve_source(config.dataset, config.split, config.text_column)
    source.check()  # every local file: readable text with the text column, before any write
    model = load_model(config.model, device)
    hooks, with_gradients = _resolve_hooks(config, model)
    if config.context_size > model.n_ctx:
        raise SaekitError(
            f"--context-size {config.context_size} is above the model's context "
            f"of {model.n_ctx} tokens"
        )
    if next(iter(source.documents()), None) is None:
        raise SaekitError(f"dataset {config.dataset} holds no text")
    packing = Packing.for_tokenizer(model.tokenizer, config.context_size)
    widths = model.hook_widths(hooks)
    identity = {
        "producer": "saekit harvest",
        **model.identity,
        **source.identity(),
        "context_size": config.context_size,
        "packing": packing.describe(),
        "document_shuffle": f"streaming buffer of {DOCUMENT_SHUFFLE_BUFFER} documents",
        "tokens": config.tokens,
        "holdout_tokens": holdout,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "autocast_bf16": config.autocast_bf16,
        "gradient_convention": GRADIENT_CONVENTION if with_gradients else None,
    }
    identity = _compatible_identity(identity, existing)
    provenance = {
        "device": str(device),
        "host": platform.node(),
        "saekit": __version__,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer_lens"),
        **config.provenance,
    }
    spec = StoreSpec(
        layout=StoreLayout(
            config.rows_per_chunk,
            config.chunks_per_block,
            holdout,
            capacity,
            config.seed,
            config.shards,
        ),
        hooks={h: HookSpec(d=widths[h], gradients=h in with_gradients) for h in hooks},
        activation_dtype=config.dtype,
        identity=identity,
        provenance=provenance,
    )
    check_resumable(config.out, spec, config.storage_options)
    return HarvestPlan(config, model, source, packing, spec)


def _compatible_identity(identity: dict[str, Any], existing: dict | None) -> dict[str, Any]:
    """The identity to resume `existing` with, where older saekit versions recorded less:
    - they named a local model or dataset as it was typed (relative); resuming keeps that name
      when it means the same path;
    - they lack the identity entries added since (`weights`: always unfolded and uncentred, as
      now; `vocab_size`); resuming such a store leaves them out."""
    stored = (existing or {}).get("identity")
    kept = dict(identity)
    for key in ("model", "dataset"):
        old = stored.get(key) if isinstance(stored, dict) else None
        if isinstance(old, str) and absolute_location(old) == identity.get(key):
            kept[key] = old
    if isinstance(stored, dict):
        for key in ADDED_IDENTITY_KEYS:
            if key not in stored:
                kept.pop(key, None)
    return kept


def _batches(plan: HarvestPlan, first_context: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first context, [B, T] token ids) of every batch from `first_context` on."""
    holdout_contexts = plan.spec.layout.holdout_rows // plan.context_size
    contexts = text_contexts(
        plan.source, plan.model.tokenizer, plan.packing, plan.config.seed, holdout_contexts
    )
    capacity = plan.spec.layout.capacity_rows
    if capacity is not None:
        contexts = itertools.islice(contexts, capacity // plan.context_size)
    contexts = itertools.islice(contexts, first_context, None)
    size = plan.config.batch_size
    for index in itertools.count(first_context, size):
        batch = list(itertools.islice(contexts, size))
        if not batch:
            return
        yield index, np.stack(batch)


ROW_PROBLEMS = "row_problems"  # not a store array: per-row flags that travel with the rows


class _BlockFiller:
    """Copies encoded rows, in stream order, into host buffers of the current block and hands
    every full block to the writer, after checking its rows' problem flags. Buffers are recycled
    once the writer has committed them.
    """

    def __init__(self, writer: StoreWriter, copies: _HostCopies | _StagedCopies) -> None:
        self.writer = writer
        self.copies = copies
        self._blocks = writer.pending_blocks()
        self.block: Block | None = next(self._blocks, None)
        self._buffers: dict[str, torch.Tensor] | None = None
        self._filled = 0  # rows of the current block already in its buffers
        self._free: list[dict[str, torch.Tensor]] = []
        self._in_use: list[tuple[int, dict[str, torch.Tensor]]] = []

    @property
    def done(self) -> bool:
        """True once every block of a store of known size has been handed over."""
        return self.block is None

    def add(self, first_row: int, encoded: dict[str, torch.Tensor]) -> int:
        """Take the rows [first_row, first_row + n) that are not committed yet; return how many.
        `encoded` holds the store arrays and ROW_PROBLEMS."""
        n = next(iter(encoded.values())).shape[0]
        offset = skipped = max(self.block.start - first_row, 0) if self.block else n
        while offset < n and self.block is not None:
            if self._buffers is None:
                self._buffers = self._acquire(encoded)
            take = min(n - offset, self.block.n_rows - self._filled)
            filled = slice(self._filled, self._filled + take)
            self.copies.copy(
                {path: buffer[filled] for path, buffer in self._buffers.items()},
                {path: values[offset : offset + take] for path, values in encoded.items()},
            )
            self._filled += take
            offset += take
            if self._filled == self.block.n_rows:
                self._hand_over()
                self.block = next(self._blocks, None)
        return offset - skipped

    def close(self) -> None:
        """Hand over a partly filled last block (the data ran out)."""
        if self._filled:
            self._hand_over()

    def _hand_over(self) -> None:
        self.copies.wait()  # every row of the block is in its buffers
        buffers, n_rows = self._buffers, self._filled
        raise_for_problems(buffers[ROW_PROBLEMS][:n_rows])
        rows = {path: as_numpy(b[:n_rows]) for path, b in buffers.items() if path != ROW_PROBLEMS}
        self.writer.write(self.block, rows)
        self._in_use.append((self.block.start + n_rows, buffers))
        self._buffers, self._filled = None, 0

    def _acquire(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Buffers for a block: recycled from a block the writer has committed, or new."""
        committed = self.writer.n_rows_committed
        waiting = []
        for stop, buffers in self._in_use:
            if stop <= committed:
                self._free.append(buffers)
            else:
                waiting.append((stop, buffers))
        self._in_use = waiting
        if self._free:
            return self._free.pop()
        return _empty_like(like, self.writer.spec.layout.rows_per_block, pin=False)


def _empty_like(like: dict[str, torch.Tensor], rows: int, pin: bool) -> dict[str, torch.Tensor]:
    """Host buffers of `rows` rows shaped and typed like the tensors of `like`."""
    return {
        path: torch.empty((rows, *t.shape[1:]), dtype=t.dtype, pin_memory=pin)
        for path, t in like.items()
    }


class _HostCopies:
    """Rows already on the host (a CPU harvest) are copied straight into the block."""

    def copy(self, dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
        for path, values in src.items():
            dst[path].copy_(values)

    def wait(self) -> None:
        pass


class _StagedCopies:
    """Device rows reach the block's host buffers through SLOTS pinned staging buffers of
    `rows` rows, copied on a side stream so that the copies overlap the LM's next batch.

    A copy waits for the kernels that made its rows (stream order), lands in a free slot, and is
    moved into the block's buffers by the host when its slot is needed again or the block is
    handed over. `wait` lands every copy. The source tensors are marked as used by the side
    stream, so that the allocator does not give their memory to the next batch before the copy
    has read it.
    """

    SLOTS = 2

    def __init__(self, device: torch.device, rows: int) -> None:
        self.device, self.rows = device, rows
        self.stream = torch.cuda.Stream(device)
        self._slots: list[dict[str, torch.Tensor]] = []
        self._free: list[dict[str, torch.Tensor]] = []
        self._pending: collections.deque = collections.deque()

    @property
    def pinned_bytes(self) -> int:
        return sum(t.nbytes for slot in self._slots for t in slot.values())

    def copy(self, dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
        n = next(iter(src.values())).shape[0]
        for start in range(0, n, self.rows):
            part = slice(start, min(n, start + self.rows))
            self._copy_part(
                {p: t[part] for p, t in dst.items()}, {p: t[part] for p, t in src.items()}
            )

    def wait(self) -> None:
        while self._pending:
            self._land()

    def _copy_part(self, dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
        slot = self._slot(src)
        n = next(iter(src.values())).shape[0]
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for path, values in src.items():
                slot[path][:n].copy_(values, non_blocking=True)
                values.record_stream(self.stream)
            landed = torch.cuda.Event()
            landed.record(self.stream)
        self._pending.append((landed, slot, dst, n))

    def _slot(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self._free and len(self._slots) < self.SLOTS:
            self._slots.append(_empty_like(like, self.rows, pin=self.device.type == "cuda"))
            self._free.append(self._slots[-1])
        while not self._free:
            self._land()
        return self._free.pop()

    def _land(self) -> None:
        landed, slot, dst, n = self._pending.popleft()
        landed.synchronize()
        for path, buffer in dst.items():
            buffer.copy_(slot[path][:n])
        self._free.append(slot)


def harvest(config: HarvestConfig, progress: Progress | None = None) -> HarvestResult:
    """Plan, then run the harvest into `config.out` (creating or resuming the store)."""
    return run_harvest(plan_harvest(config), progress)


def run_harvest(plan: HarvestPlan, progress: Progress | None = None) -> HarvestResult:
    """Harvest into the plan's store, resuming after its committed rows."""
    bridge, device = plan.model.bridge, plan.model.device
    t, batch_size = plan.context_size, plan.config.batch_size
    config = plan.config
    with StoreWriter.open(
        config.out,
        plan.spec,
        shard=config.shard,
        storage_options=config.storage_options,
        owner=config.owner,
    ) as writer:
        first_row, last_row = writer.shard_rows
        if progress:
            total = None if last_row is None else last_row - first_row
            progress.start(total, writer.n_rows_committed - first_row)
        copies = _StagedCopies(device, batch_size * t) if device.type == "cuda" else _HostCopies()
        filler = _BlockFiller(writer, copies)
        gradient_hooks = [h for h, spec in plan.spec.hooks.items() if spec.gradients]
        if not filler.done:
            first_context = filler.block.start // t // batch_size * batch_size
            for first, tokens in _batches(plan, first_context):
                tokens_BT = _to_device(tokens, device)
                out = run_batch(
                    bridge,
                    tokens_BT,
                    list(plan.spec.hooks),
                    gradients=gradient_hooks,
                    autocast_bf16=plan.config.autocast_bf16,
                )
                rows = _rows_of(first, tokens_BT, out)
                encoded = encode_rows(rows, plan.spec, check=False)
                encoded[ROW_PROBLEMS] = row_problems(rows, plan.spec)
                added = filler.add(first * t, encoded)
                if progress:
                    progress.advance(added)
                if filler.done:
                    break
            filler.close()
        writer.flush()
        end = writer.n_rows_committed
        if not filler.done and end <= plan.spec.layout.holdout_rows:
            raise SaekitError(
                f"dataset {config.dataset} ran out after {end} tokens, before any training "
                f"tokens ({plan.spec.layout.holdout_rows} are held out); use more text or lower "
                "--holdout-tokens, and write a new store"
            )
        writer.finish()
        return HarvestResult(end - first_row, complete=True, dataset_exhausted=not filler.done)


def _to_device(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    """Token ids on the model's device; on CUDA from pinned memory, so the host does not wait
    for the GPU to finish the previous batch."""
    tokens_BT = torch.from_numpy(tokens)
    if device.type != "cuda":
        return tokens_BT
    return tokens_BT.pin_memory().to(device, non_blocking=True)


def _rows_of(first_context: int, tokens_BT: torch.Tensor, out: Any) -> RowBlock:
    """The batch's rows in stream order (context by context, position by position)."""
    b, t = tokens_BT.shape
    device = tokens_BT.device
    sequence = torch.arange(first_context, first_context + b, device=device).repeat_interleave(t)
    return RowBlock(
        tokens=tokens_BT.flatten(),
        sequence=sequence,
        position=torch.arange(t, device=device).repeat(b),
        loss=out.loss.flatten(),
        activations={h: x.flatten(0, 1) for h, x in out.activations.items()},
        gradients={h: g.flatten(0, 1) for h, g in out.gradients.items()},
    )
