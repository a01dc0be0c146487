"""Read-only access to a store's committed rows, from a local path or an fsspec URL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
import zarr.errors
from zarr.core.buffer.cpu import NDBuffer

from saekit.base.errors import IntegrityError, SaekitError
from saekit.base.locations import is_local
from saekit.cache_format import encoding, schema
from saekit.cache_format.location import remote_error, zarr_store
from saekit.cache_format.validation import StoreMetadataError, ValidStore, validate

Split = Literal["train", "holdout", "all"]
SPLITS: tuple[Split, ...] = ("train", "holdout", "all")
ROW_FIELDS = (schema.TOKENS, schema.SEQUENCE, schema.POSITION, schema.LOSS)
HOOK_FIELDS = (schema.ACTIVATIONS, schema.GRADIENTS)
ROW_INDEX = "row"  # a field computed on read: the row's index in the store


class ActivationStore:
    """A store opened read-only. Only committed rows are visible; nothing is ever written.

    Opening validates the metadata every reader relies on (`validation.validate`); a damaged
    store is refused with one line naming the problem.
    """

    def __init__(self, location: str | Path, attrs: dict[str, Any], valid: ValidStore) -> None:
        self.location = str(location)
        self.attrs = attrs
        self.spec = valid.spec
        self.committed = valid.committed
        self.n_rows_committed = sum(stop - start for start, stop in self.committed)
        self._arrays: dict[str, zarr.Array] = valid.arrays

    @classmethod
    def open(
        cls, location: str | Path, storage_options: dict[str, Any] | None = None
    ) -> ActivationStore:
        """Open a store read-only (local path, file://, memory://, http(s)://, s3://, gs://...)."""
        try:
            group = _open_group(location, storage_options)
            attrs = schema.check_format(dict(group.attrs), location)
            if not attrs.get("initialized"):
                raise SaekitError(
                    f"store {location} was interrupted while being created; re-run the command "
                    "that writes it"
                )
            return cls(location, attrs, validate(group, attrs, location))
        except SaekitError:
            raise
        except Exception as error:  # network, credentials, permissions: one line, no trace
            if is_local(location) and not isinstance(error, OSError):
                raise
            raise remote_error(str(location), error) from None

    # -- description -------------------------------------------------------------------------

    @property
    def hooks(self) -> list[str]:
        return list(self.spec.hooks)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    def resolve_hook(self, hook: str | None) -> str:
        """`hook`, checked against the store; None picks the store's only hook."""
        if hook is None:
            if len(self.hooks) != 1:
                raise SaekitError(f"store has hooks {self.hooks}; choose one with --hook")
            return self.hooks[0]
        if hook not in self.spec.hooks:
            raise SaekitError(f"store {self.location} has no hook '{hook}'; it has {self.hooks}")
        return hook

    def has_gradients(self, hook: str | None) -> bool:
        return self.spec.hooks[self.resolve_hook(hook)].gradients

    def require_gradients(self, hook: str | None) -> None:
        """Raise a clear error when the store keeps no gradients for `hook`."""
        if not self.has_gradients(hook):
            raise SaekitError(
                f"store {self.location} has no gradients for {self.resolve_hook(hook)}; harvest "
                "it with gradients there (the default, or a --gradients pattern that matches "
                "it) to train g-SAEs or loss-aware SAEs (loss_aware=...)"
            )

    def ranges(self, split: Split) -> list[tuple[int, int]]:
        """Committed row ranges of a split; held-out rows are the first `holdout_rows` rows."""
        holdout = self.spec.layout.holdout_rows
        low, high = {"all": (0, None), "holdout": (0, holdout), "train": (holdout, None)}[split]
        clipped = [(max(a, low), b if high is None else min(b, high)) for a, b in self.committed]
        return [(a, b) for a, b in clipped if b > a]

    def check_split(self) -> None:
        """Read the sequences of the rows on either side of the held-out split (a chunk each) and
        refuse a layout whose held-out rows are not the harvest's (`split_mismatch`): cheap
        enough for every trainer and evaluator to call, and it catches a `holdout_rows` edited
        together with the identity, which would let training read held-out rows."""
        holdout, chunk = self.spec.layout.holdout_rows, self.spec.layout.rows_per_chunk
        for first, stop in self.committed:
            for low, high in ((holdout - chunk, holdout), (holdout, holdout + chunk)):
                low, high = max(low, first), min(high, stop)
                if high > low:
                    self.read([schema.SEQUENCE], low, high)

    def n_rows(self, split: Split) -> int:
        return sum(stop - start for start, stop in self.ranges(split))

    def array(self, path: str) -> zarr.Array:
        """The zarr array at `path` (for integrity checks and plain-zarr access)."""
        return self._arrays[path]

    @property
    def array_paths(self) -> list[str]:
        return list(self._arrays)

    # -- reading -----------------------------------------------------------------------------

    def fields_to_arrays(self, fields: Sequence[str], hook: str | None = None) -> dict[str, str]:
        """Raw output name -> array path for the fields asked (scaled floats add their scale).
        A hook field is read at `hook`, or at the hook it is qualified with
        (`schema.hook_field`), and then named with that qualifier, scale included."""
        paths: dict[str, str] = {}
        for name in fields:
            base, qualifier = schema.split_field(name)
            if name in ROW_FIELDS:
                paths[name] = name
            elif base in HOOK_FIELDS:
                paths.update(self._hook_paths(base, qualifier or hook, qualifier is not None))
            elif name != ROW_INDEX:
                raise ValueError(f"unknown field {name!r}")
        return paths

    def read(
        self,
        fields: Sequence[str],
        start: int,
        stop: int,
        hook: str | None = None,
        out: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Raw stored values of rows [start, stop) (storage dtypes; gradients not yet descaled).

        With `out`, stored values are read straight into those arrays (one per raw name, of the
        rows' shape and storage dtype) instead of new ones; the `row` field is always new.
        """
        if stop > start and not any(a <= start and stop <= b for a, b in self.committed):
            raise ValueError(f"rows [{start}, {stop}) are not committed")
        result: dict[str, np.ndarray] = {}
        if ROW_INDEX in fields:
            result[ROW_INDEX] = np.arange(start, stop, dtype=np.int64)
        for name, path in self.fields_to_arrays(fields, hook).items():
            result[name] = self._read_array(path, start, stop, None if out is None else out[name])
            if name in INTEGER_FIELDS:
                self._check_values(name, result[name], start)
            if name == schema.SEQUENCE:
                self._check_split(result[name], start)
        return result

    def _check_split(self, sequence: np.ndarray, start: int) -> None:
        """Refuse rows whose context lies on the other side of the held-out split than the row
        (`split_mismatch`): the layout's held-out rows are not the harvest's."""
        bad = split_mismatch(sequence, start, self.spec)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise IntegrityError(
                f"store {self.location}: row {row} holds a token of context "
                f"{int(sequence[row - start])}, on the other side of the held-out split "
                f"(layout.holdout_rows {self.spec.layout.holdout_rows}) than the row; the "
                "store's metadata is damaged, run sae verify on it"
            )

    def _check_values(self, name: str, values: np.ndarray, start: int) -> None:
        """Refuse rows whose token id, sequence or position cannot be (negative: the fill of a
        chunk missing or never written; beyond the vocabulary or the context the store
        records) in one line pointing at `sae verify`."""
        bad, _ = impossible_values(name, values, self.spec.identity)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            value = int(values[row - start])
            if value < 0:
                why = "negative: the fill of rows never written, a chunk missing?"
            else:
                bound = FIELD_BOUNDS[name]
                why = f"at least identity.{bound}, {self.spec.identity[bound]}"
            raise IntegrityError(
                f"store {self.location}: row {row} of '{name}' holds {value}, which cannot be "
                f"({why}); the store is damaged, run sae verify on it"
            )

    def _read_array(self, path: str, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
        """Rows [start, stop) of one array; a chunk that cannot be read or decoded (checksum
        mismatch, truncated file) is refused in one line pointing at `sae verify`."""
        array = self._arrays[path]
        try:
            if out is None:
                return array[start:stop]
            array.get_basic_selection(slice(start, stop), out=NDBuffer.from_numpy_array(out))
            return out
        except OSError as error:
            if not is_local(self.location):
                raise remote_error(self.location, error) from None
            reason = error.strerror or str(error)
        except (ValueError, RuntimeError, TypeError) as error:  # checksum or decoding failure
            reason = "checksum mismatch" if "checksum" in str(error) else str(error)
        raise IntegrityError(
            f"store {self.location}: rows {start}-{stop - 1} of '{path}' cannot be read "
            f"({reason}); the store is damaged, run sae verify on it"
        )

    def raw_layout(self, fields: Sequence[str], hook: str | None = None) -> dict[str, tuple]:
        """Raw output name -> (row shape, numpy dtype) of what `read(fields)` returns."""
        layout = {ROW_INDEX: ((), np.dtype(np.int64))} if ROW_INDEX in fields else {}
        for name, path in self.fields_to_arrays(fields, hook).items():
            array = self._arrays[path]
            layout[name] = (array.shape[1:], array.dtype)
        return layout

    def _hook_paths(self, name: str, hook: str | None, qualified: bool) -> dict[str, str]:
        """The arrays of a hook field: its values, and its per-row scale when it has one, named
        plainly or qualified with the hook."""
        hook = self.resolve_hook(hook)
        if name == schema.GRADIENTS:
            self.require_gradients(hook)
        arrays = [name]
        if self.spec.encoding(name).scaled:
            arrays.append(schema.SCALE_ARRAYS[name])
        return {
            schema.hook_field(array, hook) if qualified else array: schema.hook_array_path(
                hook, array
            )
            for array in arrays
        }

    def decode(
        self, raw: dict[str, np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Raw values (numpy or already-moved tensors) -> float32 activations and gradients."""
        tensors = {
            name: (encoding.as_torch(v) if isinstance(v, np.ndarray) else v).to(device)
            for name, v in raw.items()
        }
        return encoding.decode_fields(tensors, self.spec)

    def read_tensors(
        self,
        fields: Sequence[str],
        start: int,
        stop: int,
        hook: str | None = None,
        device: str | torch.device = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Rows [start, stop) as tensors, activations and gradients decoded to float32."""
        return self.decode(self.read(fields, start, stop, hook), device)


INTEGER_FIELDS = (schema.TOKENS, schema.SEQUENCE, schema.POSITION)
# the identity's bound on the values of an integer field, where the store records one
FIELD_BOUNDS = {schema.TOKENS: "vocab_size", schema.POSITION: "context_size"}


def impossible_values(
    name: str, values: np.ndarray, identity: dict[str, Any]
) -> tuple[np.ndarray, str]:
    """[R] bool: which values of an integer field no harvest writes (negative, the fill of
    unwritten rows; a token id beyond `identity.vocab_size`, a position beyond
    `identity.context_size`), and what is wrong with them."""
    bound_key = FIELD_BOUNDS.get(name)
    bound = identity.get(bound_key) if bound_key else None
    if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0:
        return (values < 0) | (values >= bound), (
            f"negative values (unwritten rows?) or values of {bound} or more (identity.{bound_key})"
        )
    return values < 0, "negative values (unwritten rows?)"


def split_mismatch(sequence: np.ndarray, start: int, spec: schema.StoreSpec) -> np.ndarray:
    """[R] bool: rows [start, start + R) whose context (`sequence`) lies on the other side of
    the held-out split than the row. The held-out rows are the first contexts of the harvest and
    the training contexts are numbered after them, so a row before `holdout_rows` holds a context
    that starts before it, and a row after it one that ends after it; a layout whose held-out
    rows were edited gives itself away here. Nothing is checked without a recorded context size."""
    context = spec.identity.get("context_size")
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        return np.zeros(len(sequence), dtype=bool)
    holdout = spec.layout.holdout_rows
    held_out = np.arange(start, start + len(sequence)) < holdout
    first_row = sequence.astype(np.int64) * context
    return np.where(held_out, first_row >= holdout, first_row + context <= holdout)


def _open_group(location: str | Path, storage_options: dict[str, Any] | None) -> zarr.Group:
    """The store's root group; a missing or damaged root `zarr.json` is refused in one line."""
    try:
        store = zarr_store(location, read_only=True, storage_options=storage_options)
        group = zarr.open_group(store, mode="r", zarr_format=3)
    except (
        FileNotFoundError,
        NotADirectoryError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.ContainsArrayError,
    ):
        raise SaekitError(f"{location} is not a saekit activation store; check the path") from None
    except ImportError as error:  # fsspec names the package a protocol needs
        raise SaekitError(f"cannot open {location}: {error}") from None
    except (ValueError, TypeError, KeyError, zarr.errors.BaseZarrError) as error:
        problem = f"the root zarr.json cannot be read ({error})"
        raise StoreMetadataError(location, [problem]) from None
    if not isinstance(group, zarr.Group):
        raise SaekitError(f"{location} is not a saekit activation store; check the path")
    return group
