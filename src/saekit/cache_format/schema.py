"""The store's names, attributes and geometry: the store format in one place.

A store is a Zarr v3 group. Every row array has one row per token, the same length and the same
chunk length. Rows are written and committed in *blocks* of whole chunks; rows inside a block are
permuted (separately for the held-out and the training part) so that a chunk mixes many sequences.
`docs/cache-format.md` is the human-readable version of this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saekit.base.errors import IntegrityError, SaekitError
from saekit.base.outputs import STORE_FORMAT

FORMAT_NAME = STORE_FORMAT
# The newest format version this saekit reads. A store carries the lowest version that describes
# it (`StoreSpec.format_version`), so that older readers refuse only stores they would misread.
FORMAT_VERSION = 2
MAX_SHARDS = 100_000  # shard numbers have five digits in their keys (`shard-00003`)

# Per-row arrays at the root of the group: name -> (numpy dtype, fill value of unwritten rows).
TOKENS = "tokens"
SEQUENCE = "sequence"
POSITION = "position"
LOSS = "loss"
ROW_COLUMNS: dict[str, tuple[str, int | float]] = {
    TOKENS: ("int32", -1),
    SEQUENCE: ("int64", -1),
    POSITION: ("int32", -1),
    LOSS: ("float32", float("nan")),
}

# Per-hook arrays, under hooks/<hook>/.
ACTIVATIONS = "activations"
GRADIENTS = "gradients"
GRADIENT_SCALE = "gradient_scale"
ACTIVATION_SCALE = "activation_scale"  # float8 stores scale activations too


@dataclass(frozen=True)
class FloatEncoding:
    """How rows of float values are kept in a zarr array.

    `element` is the value type (the arrays' `logical_dtype` attribute); `storage_dtype` the
    zarr array's dtype: zarr has no bfloat16 or float8 dtype, so those are kept as their raw bits
    in unsigned integer arrays. `fill` marks unwritten rows (NaN, or the bits of a NaN). A
    `scaled` encoding multiplies each row by a power of two kept in a float32 scale array
    (`value = stored / scale`).
    """

    name: str
    element: str
    storage_dtype: str
    fill: float | int
    scaled: bool


BFLOAT16_NAN_BITS = 0x7FC0
FLOAT8_NAN_BITS = 0x7F  # float8_e4m3fn has no infinities; S.1111.111 is NaN
FLOAT_ENCODINGS = {
    encoding.name: encoding
    for encoding in (
        FloatEncoding("float16", "float16", "float16", float("nan"), scaled=False),
        FloatEncoding("bfloat16", "bfloat16", "uint16", BFLOAT16_NAN_BITS, scaled=False),
        FloatEncoding("float32", "float32", "float32", float("nan"), scaled=False),
        FloatEncoding("scaled-float16", "float16", "float16", float("nan"), scaled=True),
        FloatEncoding("scaled-float8", "float8_e4m3fn", "uint8", FLOAT8_NAN_BITS, scaled=True),
    )
}
# A store's activation dtype fixes the encoding of its activations and of its gradients.
ACTIVATION_ENCODINGS = {
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
    "float8": "scaled-float8",
}
GRADIENT_ENCODINGS = {
    "float16": "scaled-float16",
    "bfloat16": "scaled-float16",
    "float32": "float32",
    "float8": "scaled-float8",
}
ACTIVATION_DTYPES = tuple(ACTIVATION_ENCODINGS)
# The format version that introduced each activation dtype: saekit before float8 knew version 1
# and refuses newer versions with "upgrade saekit" instead of misreading uint8 bits.
ACTIVATION_DTYPE_FORMAT_VERSIONS = {"float16": 1, "bfloat16": 1, "float32": 1, "float8": 2}
# The per-hook float arrays and the scale array each one has when its encoding is scaled.
SCALE_ARRAYS = {ACTIVATIONS: ACTIVATION_SCALE, GRADIENTS: GRADIENT_SCALE}
SCALE_MEANING = "power of two the row was multiplied by"

ROW_SHUFFLE_RULE = (
    "rows of each block are permuted, the held-out part and the training part separately, "
    "by numpy.random.default_rng([seed, block_index]).permutation"
)


HOOK_FIELD_SEPARATOR = "@"


def hook_field(name: str, hook: str) -> str:
    """A per-hook field qualified with its hook (`activations@blocks.1.hook_mlp_out`): how a read
    of several hooks names each hook's values, scales and gradients."""
    return f"{name}{HOOK_FIELD_SEPARATOR}{hook}"


def split_field(name: str) -> tuple[str, str | None]:
    """(the field, its hook) of a field name, the hook None when it is not qualified."""
    base, separator, hook = name.partition(HOOK_FIELD_SEPARATOR)
    return base, (hook if separator else None)


def scale_field(name: str) -> str | None:
    """The scale field a (possibly qualified) float field carries when scaled, else None."""
    base, hook = split_field(name)
    if base not in SCALE_ARRAYS:
        return None
    return SCALE_ARRAYS[base] if hook is None else hook_field(SCALE_ARRAYS[base], hook)


def hook_array_path(hook: str, array: str) -> str:
    """Path of a per-hook array, e.g. `hooks/blocks.7.hook_resid_post/gradients`."""
    return f"hooks/{hook}/{array}"


@dataclass(frozen=True)
class HookSpec:
    """One hook point stored in the store: its width and whether gradients are kept."""

    d: int
    gradients: bool = True


@dataclass(frozen=True)
class Block:
    """A write-and-commit unit: rows [start, stop) of the store."""

    index: int
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class StoreLayout:
    """Row geometry of a store.

    `capacity_rows` is None when the writer does not know the final size in advance (arrays then
    grow block by block). Held-out rows are the first `holdout_rows` rows of the store, so the
    split is fixed before the end of the data is known. A store written by `shards` independent
    writers splits its blocks into that many contiguous ranges, one per writer (this needs a
    known capacity).
    """

    rows_per_chunk: int = 8192
    chunks_per_block: int = 16
    holdout_rows: int = 0
    capacity_rows: int | None = None
    seed: int = 0
    shards: int = 1

    def __post_init__(self) -> None:
        if self.rows_per_chunk <= 0 or self.chunks_per_block <= 0:
            raise ValueError("rows_per_chunk and chunks_per_block must be positive")
        if self.holdout_rows < 0:
            raise ValueError("holdout_rows must be >= 0")
        if self.capacity_rows is not None and self.capacity_rows < self.holdout_rows:
            raise ValueError("capacity_rows must be at least holdout_rows")
        if not 1 <= self.shards <= MAX_SHARDS or (self.shards > 1 and self.capacity_rows is None):
            raise ValueError(f"a sharded store needs 1 to {MAX_SHARDS} shards and a known capacity")

    @property
    def rows_per_block(self) -> int:
        return self.rows_per_chunk * self.chunks_per_block

    def block(self, index: int) -> Block:
        """The rows of block `index`, clipped to the capacity when it is known."""
        start = index * self.rows_per_block
        stop = start + self.rows_per_block
        if self.capacity_rows is not None:
            stop = min(stop, self.capacity_rows)
        return Block(index, start, stop)

    @property
    def n_blocks(self) -> int | None:
        if self.capacity_rows is None:
            return None
        return -(-self.capacity_rows // self.rows_per_block)

    def shard_blocks(self, shard: int) -> range:
        """Indices of the blocks written by `shard` (endless for a store of unknown size)."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} is not in 0..{self.shards - 1}")
        if self.n_blocks is None:
            return range(0, 1 << 62)
        return range(
            shard * self.n_blocks // self.shards, (shard + 1) * self.n_blocks // self.shards
        )

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Rows [start, stop) of `shard`, in a store of known capacity."""
        if self.capacity_rows is None:
            raise ValueError("only a store of known capacity has fixed shard rows")
        blocks = self.shard_blocks(shard)
        first, end = blocks.start * self.rows_per_block, blocks.stop * self.rows_per_block
        return min(first, self.capacity_rows), min(end, self.capacity_rows)

    def row_permutation(self, block: Block) -> np.ndarray:
        """Stored row i of `block` holds stream row `block.start + permutation[i]`."""
        rng = np.random.default_rng([self.seed, block.index])
        split = min(max(self.holdout_rows - block.start, 0), block.n_rows)
        holdout_part = rng.permutation(split)
        train_part = split + rng.permutation(block.n_rows - split)
        return np.concatenate([holdout_part, train_part])

    def to_attrs(self) -> dict[str, Any]:
        return {
            "rows_per_chunk": self.rows_per_chunk,
            "rows_per_block": self.rows_per_block,
            "holdout_rows": self.holdout_rows,
            "capacity_rows": self.capacity_rows,
            "seed": self.seed,
            "row_shuffle": ROW_SHUFFLE_RULE,
            "shards": self.shards,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreLayout:
        return cls(
            rows_per_chunk=attrs["rows_per_chunk"],
            chunks_per_block=attrs["rows_per_block"] // attrs["rows_per_chunk"],
            holdout_rows=attrs["holdout_rows"],
            capacity_rows=attrs["capacity_rows"],
            seed=attrs["seed"],
            shards=attrs.get("shards", 1),
        )


@dataclass(frozen=True)
class StoreSpec:
    """Everything that fixes a store's content: layout, hooks, storage dtype and producer identity.

    `identity` holds the producer's settings that determine the rows (model, dataset, context
    size, ...): resuming a store with a different identity is refused. `provenance` is descriptive
    only (command line, times, versions) and may differ between runs that resume one store.
    """

    layout: StoreLayout
    hooks: dict[str, HookSpec]
    activation_dtype: str = "float16"
    identity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"activation_dtype must be one of {ACTIVATION_DTYPES}")
        if not self.hooks:
            raise ValueError("a store needs at least one hook")

    @property
    def activation_encoding(self) -> FloatEncoding:
        return FLOAT_ENCODINGS[ACTIVATION_ENCODINGS[self.activation_dtype]]

    @property
    def gradient_encoding(self) -> str:
        """float32 stores keep float32 gradients, float8 stores scaled float8, the others scaled
        float16."""
        return GRADIENT_ENCODINGS[self.activation_dtype]

    def encoding(self, array: str) -> FloatEncoding:
        """The encoding of a per-hook float array (`activations` or `gradients`)."""
        if array == ACTIVATIONS:
            return self.activation_encoding
        return FLOAT_ENCODINGS[self.gradient_encoding]

    @property
    def format_version(self) -> int:
        """The format version this store is written with."""
        return ACTIVATION_DTYPE_FORMAT_VERSIONS[self.activation_dtype]

    def fixed_attrs(self) -> dict[str, Any]:
        """The attributes that must match for a writer to resume this store."""
        return {
            "layout": self.layout.to_attrs(),
            "activation_dtype": self.activation_dtype,
            "hooks": {name: dataclasses.asdict(h) for name, h in self.hooks.items()},
            "identity": self.identity,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSpec:
        return cls(
            layout=StoreLayout.from_attrs(attrs["layout"]),
            hooks={name: HookSpec(**h) for name, h in attrs["hooks"].items()},
            activation_dtype=attrs["activation_dtype"],
            identity=attrs.get("identity", {}),
            provenance=attrs.get("provenance", {}),
        )


def differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the settings where two (nested) attribute dicts differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(wanted), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += differences(stored.get(key), wanted.get(key), name)
        return out
    if _normalise(stored) == _normalise(wanted):
        return []
    return [f"{prefix or 'value'} (store: {stored!r}, now: {wanted!r})"]


def _normalise(value: Any) -> Any:
    """JSON round trips turn tuples into lists; compare them as equal."""
    if isinstance(value, tuple | list):
        return [_normalise(v) for v in value]
    return value


@dataclass(frozen=True)
class ArrayPlan:
    """How one array of the store is laid out: the shape of a row, dtype, fill and attributes."""

    row_shape: tuple[int, ...]
    dtype: str
    fill: float | int
    attrs: dict[str, Any] = field(default_factory=dict)


def array_plan(spec: StoreSpec) -> dict[str, ArrayPlan]:
    """Every array a store with this spec holds, by path."""
    plan = {name: ArrayPlan((), dtype, fill) for name, (dtype, fill) in ROW_COLUMNS.items()}
    for hook, hook_spec in spec.hooks.items():
        arrays = (ACTIVATIONS, GRADIENTS) if hook_spec.gradients else (ACTIVATIONS,)
        for array in arrays:
            encoding, scale = spec.encoding(array), SCALE_ARRAYS[array]
            plan[hook_array_path(hook, array)] = ArrayPlan(
                (hook_spec.d,),
                encoding.storage_dtype,
                encoding.fill,
                {
                    "logical_dtype": encoding.element,
                    "encoding": encoding.name,
                    "decode": f"{array} / {scale}[:, None]" if encoding.scaled else array,
                },
            )
            if encoding.scaled:
                plan[hook_array_path(hook, scale)] = ArrayPlan(
                    (), "float32", float("nan"), {"meaning": SCALE_MEANING}
                )
    return plan


def check_format(attrs: dict | None, location: str | Path) -> dict:
    """Return the attributes if they describe a store this saekit can read, else raise."""
    if attrs is None or attrs.get("format") != FORMAT_NAME:
        raise SaekitError(
            f"{location} is not a saekit activation store (no '{FORMAT_NAME}' format "
            "attribute); check the path"
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IntegrityError(
            f"store {location} has damaged metadata: format_version must be a positive "
            f"integer, not {version!r}; restore the store from a copy or harvest it again"
        )
    if version > FORMAT_VERSION:
        raise SaekitError(
            f"{location} uses store format version {version}, newer than the {FORMAT_VERSION} "
            "this saekit reads; upgrade saekit"
        )
    return attrs
