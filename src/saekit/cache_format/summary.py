"""A machine-readable description of a store, for `sae info`."""

from __future__ import annotations

from typing import Any

import fsspec

from saekit.base.locations import is_local, local_path
from saekit.cache_format.reader import ActivationStore


def bytes_on_disk(location: str, storage_options: dict[str, Any] | None = None) -> int | None:
    """Total size of the store's objects, or None where the backend cannot list (plain HTTP)."""
    try:
        if is_local(location):
            return sum(p.stat().st_size for p in local_path(location).rglob("*") if p.is_file())
        fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
        return int(fs.du(path, total=True))
    except (OSError, NotImplementedError, ValueError):
        return None


def describe(store: ActivationStore, storage_options: dict[str, Any] | None = None) -> dict:
    """Everything a teammate needs to know about a store, as a JSON-able dict."""
    layout = store.spec.layout
    attrs = store.attrs
    size = bytes_on_disk(store.location, storage_options)
    return {
        "location": store.location,
        "format": attrs["format"],
        "format_version": attrs["format_version"],
        "saekit_version": attrs.get("saekit_version"),
        "created": attrs.get("created"),
        "complete": store.complete,
        "rows": {
            "committed": store.n_rows_committed,
            "capacity": layout.capacity_rows,
            "holdout": store.n_rows("holdout"),
            "train": store.n_rows("train"),
            "committed_ranges": [list(r) for r in store.committed],
        },
        "shards": {
            "count": layout.shards,
            "rows": [list(layout.shard_rows(i)) for i in range(layout.shards)]
            if layout.capacity_rows is not None
            else None,
        },
        "layout": layout.to_attrs(),
        "activation_dtype": store.spec.activation_dtype,
        "gradient_encoding": store.spec.gradient_encoding,
        "hooks": {
            name: {"d": h.d, "gradients": h.gradients} for name, h in store.spec.hooks.items()
        },
        "identity": store.spec.identity,
        "provenance": store.spec.provenance,
        "bytes": size,
        "bytes_per_row": None
        if not size or not store.n_rows_committed
        else size / store.n_rows_committed,
    }
