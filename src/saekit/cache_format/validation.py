"""Check a store's metadata against format v1 before anything relies on it.

Readers (`ActivationStore.open`), `sae verify` and a writer resuming a store all go through
`validate`: every root attribute a reader uses (types, ranges), every array the schema plans
(present, row shape, dtype, chunking, decoding attributes) and every shard's commit record, and
how they agree with each other. What is valid is derived from the schema's own tables
(`ACTIVATION_DTYPES`, `array_plan`, ...), so a new dtype or encoding added there is accepted here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from saekit.base.errors import IntegrityError
from saekit.cache_format import schema
from saekit.cache_format.location import read_json
from saekit.cache_format.progress import committed_ranges, progress_key
from saekit.cache_format.schema import StoreSpec

# Array attributes that say how stored values decode (the others are descriptive).
DECODING_ATTRS = ("logical_dtype", "encoding")
HOOK_KEYS = {f.name for f in dataclasses.fields(schema.HookSpec)}
# numbers of the identity a reader relies on where they are recorded, and their least value
IDENTITY_COUNTS = {"context_size": 1, "vocab_size": 1, "holdout_tokens": 0}


class StoreMetadataError(IntegrityError):
    """A store's metadata contradicts the format or itself. `problems` lists every finding."""

    def __init__(self, location: str | Path, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(
            f"store {location} has damaged metadata: {problems[0]}{more}; `sae verify` lists "
            "every problem; restore the store from a copy or harvest it again"
        )


@dataclass(frozen=True)
class ValidStore:
    """What a validated store's readers rely on."""

    spec: StoreSpec
    committed: list[tuple[int, int]]  # committed row ranges, in order
    arrays: dict[str, zarr.Array]  # every planned array, by path


def validate(group: zarr.Group, attrs: dict[str, Any], location: str | Path) -> ValidStore:
    """The validated store, or `StoreMetadataError` naming every problem found."""
    problems = root_problems(attrs)
    if problems:
        raise StoreMetadataError(location, problems)
    spec = StoreSpec.from_attrs(attrs)
    problems = progress_problems(group, spec)
    if problems:
        raise StoreMetadataError(location, problems)
    committed = committed_ranges(attrs, group.store, spec)
    end = committed[-1][1] if committed else 0
    arrays, problems = checked_arrays(group, spec, end)
    if problems:
        raise StoreMetadataError(location, problems)
    return ValidStore(spec, committed, arrays)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_plain_name(name: str) -> bool:
    """A hook name that stays one directory under `hooks/`."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


class _Findings:
    """Problems collected while checking fields; `need` records one when a check fails."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def need(self, ok: bool, field: str, expected: str, value: Any) -> bool:
        if not ok:
            self.problems.append(f"{field} must be {expected}, not {_shown(value)}")
        return ok

    def count(self, table: dict, key: str, field: str, minimum: int) -> bool:
        value = table.get(key)
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        return self.need(_is_int(value) and value >= minimum, field, expected, value)


def _shown(value: Any) -> str:
    text = json.dumps(value) if value is not None else "missing"
    return text if len(text) <= 60 else text[:57] + "..."


def root_problems(attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a store's root attributes (its format name and version aside)."""
    found = _Findings()
    for key in ("initialized", "complete"):
        found.need(isinstance(attrs.get(key), bool), key, "a boolean", attrs.get(key))
    found.count(attrs, "n_rows_committed", "n_rows_committed", 0)
    layout = attrs.get("layout")
    if found.need(isinstance(layout, dict), "layout", "an object", layout):
        _layout_problems(found, layout, attrs.get("n_rows_committed"))
    found.need(
        attrs.get("activation_dtype") in schema.ACTIVATION_DTYPES,
        "activation_dtype",
        f"one of {', '.join(schema.ACTIVATION_DTYPES)}",
        attrs.get("activation_dtype"),
    )
    dtype, version = attrs.get("activation_dtype"), attrs.get("format_version")
    needed = schema.ACTIVATION_DTYPE_FORMAT_VERSIONS.get(dtype) if isinstance(dtype, str) else None
    if needed is not None and _is_int(version):
        found.need(
            version >= needed,
            "format_version",
            f"at least {needed} for activation_dtype {attrs['activation_dtype']}",
            version,
        )
    hooks = attrs.get("hooks")
    if found.need(isinstance(hooks, dict) and bool(hooks), "hooks", "a non-empty object", hooks):
        for name, hook in hooks.items():
            _hook_problems(found, name, hook)
    for key in ("identity", "provenance"):
        value = attrs.get(key, {})
        found.need(isinstance(value, dict), key, "an object", value)
    complete, initialized = attrs.get("complete"), attrs.get("initialized")
    found.need(
        complete is not True or initialized is True,
        "initialized",
        "true when complete",
        initialized,
    )
    identity = attrs.get("identity", {})
    if isinstance(identity, dict) and isinstance(layout, dict):
        _identity_problems(found, identity, layout, attrs)
    return found.problems


def _identity_problems(
    found: _Findings, identity: dict[str, Any], layout: dict[str, Any], attrs: dict[str, Any]
) -> None:
    """The identity's numbers (where recorded) in their ranges, and the layout's rows in whole
    contexts, as the harvest writes them: held-out rows and capacity are multiples of the
    context size, the held-out rows are the recorded held-out tokens, a complete store holds at
    least its held-out rows; the layout's seed is the identity's; hooks
    keep gradients exactly when a gradient convention is recorded."""
    known: dict[str, int] = {}
    for key, minimum in IDENTITY_COUNTS.items():
        if identity.get(key) is not None and found.count(identity, key, f"identity.{key}", minimum):
            known[key] = identity[key]
    if (
        identity.get("seed") is not None
        and found.need(_is_int(identity["seed"]), "identity.seed", "an integer", identity["seed"])
        and _is_int(layout.get("seed"))
    ):
        found.need(
            layout["seed"] == identity["seed"],
            "layout.seed",
            f"identity.seed ({identity['seed']})",
            layout["seed"],
        )
    holdout, capacity = layout.get("holdout_rows"), layout.get("capacity_rows")
    committed = attrs.get("n_rows_committed")
    context = known.get("context_size")
    if context is not None:
        for field, value in (("layout.holdout_rows", holdout), ("layout.capacity_rows", capacity)):
            if _is_int(value):
                found.need(
                    value % context == 0,
                    field,
                    f"whole contexts (a multiple of identity.context_size, {context})",
                    value,
                )
        tokens = identity.get("tokens")
        if _is_int(tokens) and tokens > 0 and _is_int(capacity):
            whole = -(-tokens // context) * context
            found.need(
                capacity == whole,
                "layout.capacity_rows",
                f"identity.tokens ({tokens}) in whole contexts ({whole})",
                capacity,
            )
    if "holdout_tokens" in known and _is_int(holdout):
        found.need(
            holdout == known["holdout_tokens"],
            "layout.holdout_rows",
            f"identity.holdout_tokens ({known['holdout_tokens']})",
            holdout,
        )
    if attrs.get("complete") is True and _is_int(committed) and _is_int(holdout):
        found.need(
            committed >= holdout,
            "n_rows_committed",
            f"at least layout.holdout_rows ({holdout}) in a complete store",
            committed,
        )
    hooks = attrs.get("hooks")
    if "gradient_convention" in identity and isinstance(hooks, dict):
        # a convention is recorded exactly when some hook keeps gradients (not necessarily all)
        recorded = identity["gradient_convention"] is not None
        flags = {
            name: hook["gradients"]
            for name, hook in hooks.items()
            if isinstance(hook, dict) and isinstance(hook.get("gradients"), bool)
        }
        if recorded:
            found.need(
                any(flags.values()) or not flags,
                "hooks.*.gradients",
                "true for some hook, as identity.gradient_convention says",
                flags,
            )
        else:
            for name, kept in flags.items():
                found.need(
                    not kept,
                    f"hooks.{name}.gradients",
                    "false, as identity.gradient_convention is null",
                    kept,
                )


def _hook_problems(found: _Findings, name: str, hook: Any) -> None:
    field = f"hooks.{name}"
    found.need(_is_plain_name(name), "a hook name", "free of '/' and '..'", name)
    if found.need(isinstance(hook, dict), field, "an object", hook):
        found.count(hook, "d", f"{field}.d", 1)
        gradients = hook.get("gradients")
        found.need(isinstance(gradients, bool), f"{field}.gradients", "a boolean", gradients)
        unknown = sorted(set(hook) - HOOK_KEYS)
        found.need(not unknown, field, f"without keys other than {sorted(HOOK_KEYS)}", unknown)


def _layout_problems(found: _Findings, layout: dict[str, Any], n_rows_committed: Any) -> None:
    chunk_ok = found.count(layout, "rows_per_chunk", "layout.rows_per_chunk", 1)
    if found.count(layout, "rows_per_block", "layout.rows_per_block", 1) and chunk_ok:
        block, chunk = layout["rows_per_block"], layout["rows_per_chunk"]
        found.need(
            block % chunk == 0,
            "layout.rows_per_block",
            f"a multiple of layout.rows_per_chunk ({chunk})",
            block,
        )
    holdout_ok = found.count(layout, "holdout_rows", "layout.holdout_rows", 0)
    found.need(_is_int(layout.get("seed")), "layout.seed", "an integer", layout.get("seed"))
    shards = layout.get("shards", 1)
    found.need(
        _is_int(shards) and 1 <= shards <= schema.MAX_SHARDS,
        "layout.shards",
        f"an integer from 1 to {schema.MAX_SHARDS}",
        shards,
    )
    if not found.need("capacity_rows" in layout, "layout.capacity_rows", "given", None):
        return
    capacity = layout["capacity_rows"]
    if capacity is None:
        found.need(shards == 1, "layout.capacity_rows", "set in a sharded store", capacity)
        return
    if not found.count(layout, "capacity_rows", "layout.capacity_rows", 0) or not holdout_ok:
        return
    found.need(
        capacity >= layout["holdout_rows"],
        "layout.capacity_rows",
        f"at least layout.holdout_rows ({layout['holdout_rows']})",
        capacity,
    )
    if _is_int(n_rows_committed):
        found.need(
            n_rows_committed <= capacity,
            "n_rows_committed",
            f"at most layout.capacity_rows ({capacity})",
            n_rows_committed,
        )


def progress_problems(group: zarr.Group, spec: StoreSpec) -> list[str]:
    """What is wrong with the commit records of a sharded store still being written."""
    if spec.layout.shards == 1 or group.attrs.get("complete"):
        return []
    found = _Findings()
    for shard in range(spec.layout.shards):
        key = progress_key(shard)
        try:
            record = read_json(group.store, key)
        except (ValueError, UnicodeDecodeError):
            found.problems.append(f"{key} is not valid JSON")
            continue
        if record is None:
            continue
        if not found.need(isinstance(record, dict), key, "an object", record):
            continue
        first, end = spec.layout.shard_rows(shard)
        until = record.get("committed_until")
        found.need(
            _is_int(until) and first <= until <= end,
            f"{key}: committed_until",
            f"an integer in [{first}, {end}]",
            until,
        )
        complete = record.get("complete")
        found.need(isinstance(complete, bool), f"{key}: complete", "a boolean", complete)
    return found.problems


def checked_arrays(
    group: zarr.Group, spec: StoreSpec, committed_end: int
) -> tuple[dict[str, zarr.Array], list[str]]:
    """Every array the spec plans, and what is wrong with them: a missing array, a row shape,
    dtype, chunking or decoding attribute that disagrees with the root attributes, or fewer
    rows than are committed."""
    arrays: dict[str, zarr.Array] = {}
    problems: list[str] = []
    chunk = spec.layout.rows_per_chunk
    for path, plan in schema.array_plan(spec).items():
        try:
            array = group[path]
        except KeyError:
            problems.append(f"array '{path}' is missing")
            continue
        except Exception as error:  # metadata zarr cannot parse: damaged, whatever zarr raises
            problems.append(f"array '{path}' has unreadable metadata ({_first_line(error)})")
            continue
        if not isinstance(array, zarr.Array):
            problems.append(f"'{path}' is a group, not an array")
            continue
        problems += _array_problems(path, array, plan, chunk, committed_end)
        arrays[path] = array
    return arrays, problems


def _array_problems(
    path: str, array: zarr.Array, plan: schema.ArrayPlan, chunk: int, committed_end: int
) -> list[str]:
    where = f"array '{path}'"
    if array.shape[1:] != plan.row_shape or array.ndim != 1 + len(plan.row_shape):
        return [
            f"{where} has rows of shape {list(array.shape[1:])} but the root attributes say "
            f"{list(plan.row_shape)} (hooks.<hook>.d)"
        ]
    problems = []
    if array.dtype != plan.dtype:
        problems.append(
            f"{where} holds {array.dtype} but the root attributes (activation_dtype) mean "
            f"{plan.dtype}"
        )
    if tuple(array.chunks) != (chunk, *plan.row_shape):
        problems.append(
            f"{where} is chunked by {array.chunks[0]} rows but layout.rows_per_chunk is {chunk}"
        )
    attributes = array.metadata.attributes
    if not isinstance(attributes, dict):
        problems.append(f"{where} has attributes {_shown(attributes)}, not an object")
        attributes = {}
    for key in DECODING_ATTRS:  # absent in stores written before saekit recorded it
        if key in plan.attrs and key in attributes and attributes[key] != plan.attrs[key]:
            problems.append(
                f"{where} has {key} {_shown(attributes.get(key))} but the root attributes "
                f"mean {plan.attrs[key]!r}"
            )
    if array.shape[0] < committed_end:
        problems.append(
            f"{where} holds {array.shape[0]} rows but rows up to {committed_end} are committed "
            "(n_rows_committed)"
        )
    return problems


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
