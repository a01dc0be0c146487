"""The text a fine-tune reads: contexts of the store's length, in a fixed order for a seed.

- `StoreContexts` (the default): the store's training contexts, rebuilt from its token ids
  (`tokens`, `sequence`, `position`) as the evaluation rebuilds the held-out ones. The held-out
  split is never read. A store keeps each of its blocks' rows permuted, so contexts are read one
  block at a time: each epoch visits the blocks in a seeded order and each block's contexts in
  a seeded order. A context that straddles two blocks (only when the context size does not
  divide the block size) is not used.
- `TextContexts` (`--dataset`): documents packed exactly as the harvest packs them. A dataset
  that is the store's own is read as the harvest read it (the store's seed) from the first
  training context on, so the fine-tune never reads held-out text and goes on past the end of
  the store; another dataset is shuffled with the fine-tune's seed. Either stream starts again
  when it runs out.

Batch `s` holds contexts `[s·B, (s+1)·B)` of the stream, so a resumed fine-tune reads exactly
what an uninterrupted one reads from its step on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.evaluate import rebuilt_contexts
from saekit.harvest import Packing, TextSource, text_contexts

TOKEN_FIELDS = ("tokens", "sequence", "position")


class ContextSource(Protocol):
    """Where a fine-tune's contexts come from."""

    def identity(self) -> dict[str, Any]:
        """What determines the contexts (compared when a fine-tune is resumed)."""
        ...

    def batches(self, first_step: int, batch_size: int) -> Iterator[Tensor]:
        """[batch_size, T] int64 token ids of every step from `first_step` on (endless)."""
        ...


def _batched(contexts: Iterator[Tensor], batch_size: int) -> Iterator[Tensor]:
    while True:
        yield torch.stack(list(itertools.islice(contexts, batch_size)))


@dataclass(frozen=True)
class _Block:
    """The whole contexts within one block of the store's committed training rows."""

    start: int  # stored rows [start, stop)
    stop: int
    first: int  # global index of its first whole context
    count: int


class StoreContexts:
    """The store's training contexts in a seeded order (see the module's docstring)."""

    def __init__(self, store: ActivationStore, context_size: int, seed: int) -> None:
        self.store, self.context_size, self.seed = store, context_size, seed
        self.blocks = _training_blocks(store, context_size)
        self.total = sum(block.count for block in self.blocks)
        if self.total == 0:
            raise SaekitError(
                f"store {store.location} holds no whole training context to fine-tune on; "
                "harvest more tokens, or give text with --dataset"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "source": "the store's training contexts",
            "contexts": self.total,
            "order": "blocks in a seeded order per epoch, each block's contexts in a seeded order",
            "seed": self.seed,
        }

    def batches(self, first_step: int, batch_size: int) -> Iterator[Tensor]:
        return _batched(self._contexts_from(first_step * batch_size), batch_size)

    def _contexts_from(self, position: int) -> Iterator[Tensor]:
        """Every context of the stream from `position` (a count of contexts) on."""
        first_epoch, skip = divmod(position, self.total)
        for epoch in itertools.count(first_epoch):
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
            for index in order:
                block = self.blocks[index]
                if skip >= block.count:
                    skip -= block.count
                    continue
                contexts_CT = self._read(block)
                within = np.random.default_rng([self.seed, epoch, int(index)])
                for slot in within.permutation(block.count)[skip:]:
                    yield contexts_CT[slot]
                skip = 0

    def _read(self, block: _Block) -> Tensor:
        rows = self.store.read(list(TOKEN_FIELDS), block.start, block.stop)
        sequences = np.arange(block.first, block.first + block.count)
        return rebuilt_contexts(self.store, rows, sequences, self.context_size)


def _training_blocks(store: ActivationStore, context_size: int) -> list[_Block]:
    """The store's blocks of committed training rows that hold whole contexts (rows are in
    stream order, context c at rows [c·T, (c+1)·T), each block's rows permuted within it)."""
    per_block = store.spec.layout.rows_per_block
    blocks = []
    for low, high in store.ranges("train"):
        for block_start in range(low - low % per_block, high, per_block):
            start, stop = max(low, block_start), min(high, block_start + per_block)
            first, last = -(-start // context_size), stop // context_size
            if last > first:
                blocks.append(_Block(start, stop, first, last - first))
    return blocks


class TextContexts:
    """Text packed as the harvest packs it (see the module's docstring)."""

    def __init__(
        self,
        source: TextSource,
        store: ActivationStore,
        tokenizer: Any,
        context_size: int,
        seed: int,
    ) -> None:
        self.source, self.tokenizer = source, tokenizer
        self.packing = Packing.for_tokenizer(tokenizer, context_size)
        recorded = store.spec.identity
        self.own = all(recorded.get(key) == value for key, value in source.identity().items())
        self.seed = int(recorded.get("seed", 0)) if self.own else seed
        self.skip = store.spec.layout.holdout_rows // context_size if self.own else 0
        if next(self._pass(), None) is None:
            raise SaekitError(
                f"dataset {source.spec} holds too little text for one context of "
                f"{context_size} tokens"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "source": "text",
            **self.source.identity(),
            "packing": self.packing.describe(),
            "stores_own_dataset": self.own,
            "held_out_contexts_skipped": self.skip,
            "seed": self.seed,
        }

    def batches(self, first_step: int, batch_size: int) -> Iterator[Tensor]:
        endless = itertools.chain.from_iterable(self._pass() for _ in itertools.count())
        contexts = itertools.islice(endless, first_step * batch_size, None)
        return _batched(contexts, batch_size)

    def _pass(self) -> Iterator[Tensor]:
        """One pass over the text: its contexts after those skipped."""
        contexts = text_contexts(self.source, self.tokenizer, self.packing, self.seed, self.skip)
        return (torch.from_numpy(c) for c in itertools.islice(contexts, self.skip, None))
