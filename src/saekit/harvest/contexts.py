"""Documents -> token contexts, by one documented packing rule.

Packing rule: documents are tokenised without special tokens and joined into one stream with
the end-of-text token after each document; every context is the BOS token followed by the next
`context_size - 1` tokens of that stream. Tokens left over at the end that do not fill a context
are dropped. The first `holdout` contexts form the held-out split; the training contexts then
start at the next document (the rest of the document that filled the last held-out context is
skipped), so no document is split between the two.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from saekit.base.errors import SaekitError
from saekit.harvest.sources import TextSource, shuffled

TOKENIZE_BATCH = 256
DOCUMENT_SHUFFLE_BUFFER = 10_000  # documents in the seeded streaming shuffle before packing


@dataclass(frozen=True)
class Packing:
    context_size: int
    bos_id: int
    separator_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, context_size: int) -> Packing:
        bos = tokenizer.bos_token_id
        eos = tokenizer.eos_token_id
        if bos is None and eos is None:
            raise SaekitError(
                "the tokenizer has neither a BOS nor an end-of-text token to start contexts with"
            )
        return cls(context_size, bos if bos is not None else eos, eos if eos is not None else bos)

    def describe(self) -> str:
        return (
            f"BOS ({self.bos_id}) + {self.context_size - 1} tokens of the documents joined "
            f"by the end-of-text token ({self.separator_id}); held-out contexts first, then "
            "training contexts from the next document"
        )


def tokenize(documents: Iterable[str], tokenizer: Any) -> Iterator[list[int]]:
    """Token ids of each document (no special tokens), tokenised in batches for speed."""
    documents = iter(documents)
    while batch := list(itertools.islice(documents, TOKENIZE_BATCH)):
        yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def pack(token_lists: Iterator[list[int]], packing: Packing) -> Iterator[np.ndarray]:
    """Contexts of `packing.context_size` token ids (int64), by the packing rule."""
    body = packing.context_size - 1
    pending: list[int] = []
    start = 0
    for tokens in token_lists:
        pending.extend(tokens)
        pending.append(packing.separator_id)
        while len(pending) - start >= body:
            yield np.array([packing.bos_id, *pending[start : start + body]], dtype=np.int64)
            start += body
        if start > 1 << 16:  # drop consumed tokens now and then, not at every context
            del pending[:start]
            start = 0


def context_stream(
    documents: Iterable[str], tokenizer: Any, packing: Packing, holdout: int
) -> Iterator[np.ndarray]:
    """Held-out contexts, then training contexts starting at a fresh document."""
    token_lists = tokenize(documents, tokenizer)
    yield from itertools.islice(pack(token_lists, packing), holdout)
    yield from pack(token_lists, packing)


def text_contexts(
    source: TextSource, tokenizer: Any, packing: Packing, seed: int, holdout: int
) -> Iterator[np.ndarray]:
    """The contexts a harvest with `seed` makes of `source`: its documents shuffled with a
    seeded streaming buffer of DOCUMENT_SHUFFLE_BUFFER documents, then packed; `holdout`
    held-out contexts first (see `context_stream`)."""
    documents = shuffled(source.documents(), seed, DOCUMENT_SHUFFLE_BUFFER)
    return context_stream(documents, tokenizer, packing, holdout)
