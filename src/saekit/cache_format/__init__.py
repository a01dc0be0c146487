"""The activation store: the on-disk contract between harvest, train and eval.

See docs/cache-format.md for the specification.
"""

from saekit.cache_format.loader import Batch, EncodedBatch, LoaderThreads, ShuffledLoader
from saekit.cache_format.reader import SPLITS, ActivationStore, Split
from saekit.cache_format.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Block,
    HookSpec,
    StoreLayout,
    StoreSpec,
)
from saekit.cache_format.writer import RowBlock, StoreWriter, encode_block

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SPLITS",
    "ActivationStore",
    "Batch",
    "Block",
    "EncodedBatch",
    "HookSpec",
    "LoaderThreads",
    "RowBlock",
    "ShuffledLoader",
    "Split",
    "StoreLayout",
    "StoreSpec",
    "StoreWriter",
    "encode_block",
]
