"""The harvest: text -> contexts -> LM forward/backward -> encoded rows -> store blocks.

Contexts are processed in globally aligned batches (batch j holds contexts [jB, (j+1)B)), so a
resumed harvest recomputes exactly the batches an uninterrupted one computes and writes the same
bytes. Each batch is encoded to the storage dtypes on the model's device, copied into a host
buffer for the current block (pinned memory and non-blocking copies on CUDA), and a finished
block goes to the store writer, which commits it on its own thread while the LM computes on.
"""

from __future__ import annotations

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
from saekit.cache_format import HookSpec, RowBlock, StoreLayout, StoreSpec, StoreWriter
from saekit.cache_format.encoding import as_numpy
from saekit.cache_format.location import absolute_location
from saekit.cache_format.schema import MAX_SHARDS, Block
from saekit.cache_format.writer import check_resumable, check_target, encode_rows
from saekit.errors import SaekitError
from saekit.harvest.contexts import Packing, context_stream
from saekit.harvest.forward import GRADIENT_CONVENTION, run_batch
from saekit.harvest.model import (
    LoadedModel,
    check_hooks,
    hook_widths,
    load_model,
    resolve_device,
)
from saekit.harvest.sources import TextSource, resolve_source, shuffled

DOCUMENT_SHUFFLE_BUFFER = 10_000
DEFAULT_HOLDOUT_TOKENS = 1 << 16


@dataclass(frozen=True)
class HarvestConfig:
    """Everything `sae harvest` takes. `tokens=None` harvests the whole dataset."""

    model: str
    dataset: str
    hooks: tuple[str, ...]
    out: str
    tokens: int | None = None
    context_size: int = 128
    batch_size: int = 16
    dtype: str = "float16"
    gradients: bool = True
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
    model: LoadedModel
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
    if not 1 <= config.shards <= MAX_SHARDS:
        raise SaekitError(f"--shards must be from 1 to {MAX_SHARDS}, not {config.shards}")
    if not 0 <= config.shard < config.shards:
        raise SaekitError(
            f"shard {config.shard} of {config.shards} does not exist; shards are "
            "numbered 0..N-1 (e.g. --shard 0/4)"
        )
    if config.shards > 1 and config.tokens is None:
        raise SaekitError("a sharded harvest needs --tokens, to split the rows between shards")


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
    model = load_model(config.model, device)
    hooks = list(config.hooks)
    check_hooks(model, hooks)
    if config.context_size > model.n_ctx:
        raise SaekitError(
            f"--context-size {config.context_size} is above the model's context "
            f"of {model.n_ctx} tokens"
        )
    if next(iter(source.documents()), None) is None:
        raise SaekitError(f"dataset {config.dataset} holds no text")
    packing = Packing.for_tokenizer(model.tokenizer, config.context_size)
    widths = hook_widths(model, hooks)
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
        "gradient_convention": GRADIENT_CONVENTION if config.gradients else None,
    }
    identity = _keep_recorded_paths(identity, existing)
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
        hooks={h: HookSpec(d=widths[h], gradients=config.gradients) for h in hooks},
        activation_dtype=config.dtype,
        identity=identity,
        provenance=provenance,
    )
    check_resumable(config.out, spec, config.storage_options)
    return HarvestPlan(config, model, source, packing, spec)


def _keep_recorded_paths(identity: dict[str, Any], existing: dict | None) -> dict[str, Any]:
    """Stores written by older saekit versions name a local model or dataset as it was typed
    (relative); resuming one keeps that name when it means the same path."""
    stored = (existing or {}).get("identity")
    kept = dict(identity)
    for key in ("model", "dataset"):
        old = stored.get(key) if isinstance(stored, dict) else None
        if isinstance(old, str) and absolute_location(old) == identity.get(key):
            kept[key] = old
    return kept


def _batches(plan: HarvestPlan, first_context: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first context, [B, T] token ids) of every batch from `first_context` on."""
    documents = shuffled(plan.source.documents(), plan.config.seed, DOCUMENT_SHUFFLE_BUFFER)
    holdout_contexts = plan.spec.layout.holdout_rows // plan.context_size
    contexts = context_stream(documents, plan.model.tokenizer, plan.packing, holdout_contexts)
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


class _BlockFiller:
    """Copies encoded rows, in stream order, into host buffers of the current block and hands
    every full block to the writer. Buffers are recycled once the writer has committed them;
    on CUDA they are pinned so that the device-to-host copies are asynchronous.
    """

    def __init__(self, writer: StoreWriter, device: torch.device) -> None:
        self.writer = writer
        self.device = device
        self.pin = device.type == "cuda"
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
        """Take the rows [first_row, first_row + n) that are not committed yet; return how many."""
        n = next(iter(encoded.values())).shape[0]
        offset = skipped = max(self.block.start - first_row, 0) if self.block else n
        while offset < n and self.block is not None:
            if self._buffers is None:
                self._buffers = self._acquire(encoded)
            take = min(n - offset, self.block.n_rows - self._filled)
            for path, values in encoded.items():
                self._buffers[path][self._filled : self._filled + take].copy_(
                    values[offset : offset + take], non_blocking=self.pin
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
        if self.pin:
            torch.cuda.current_stream(self.device).synchronize()  # the copies have landed
        buffers, n_rows = self._buffers, self._filled
        self.writer.write(self.block, {path: as_numpy(b[:n_rows]) for path, b in buffers.items()})
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
        rows = self.writer.spec.layout.rows_per_block
        return {
            path: torch.empty((rows, *t.shape[1:]), dtype=t.dtype, pin_memory=self.pin)
            for path, t in like.items()
        }


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
        filler = _BlockFiller(writer, device)
        if not filler.done:
            first_context = filler.block.start // t // batch_size * batch_size
            for first, tokens in _batches(plan, first_context):
                tokens_BT = torch.from_numpy(tokens).to(device)
                out = run_batch(
                    bridge,
                    tokens_BT,
                    list(plan.spec.hooks),
                    gradients=plan.config.gradients,
                    autocast_bf16=plan.config.autocast_bf16,
                )
                rows = encode_rows(_rows_of(first, tokens_BT, out), plan.spec)
                added = filler.add(first * t, rows)
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
