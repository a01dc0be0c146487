"""`sae ls`: the stores and published SAEs under a URL, with their key facts, read from their
metadata alone (a store's root attributes, a published SAE's manifest; no tensor is read)."""

from __future__ import annotations

from typing import Any

from saekit.base.fingerprint import store_fingerprint
from saekit.base.published import Entry, entries


def listing(url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per store and published SAE under `url`: stores first, then SAEs, by URL."""
    return [_store(entry) if entry.kind == "store" else _sae(entry) for entry in entries(
        url, storage_options
    )]  # fmt: skip


def _store(entry: Entry) -> dict[str, Any]:
    attributes = entry.meta
    identity = attributes.get("identity") or {}
    rows = int(attributes.get("n_rows_committed") or 0)
    return {
        "kind": "store",
        "url": entry.url,
        "model": identity.get("model"),
        "dataset": identity.get("dataset"),
        "hooks": {name: hook.get("d") for name, hook in (attributes.get("hooks") or {}).items()},
        "rows": rows,
        "complete": bool(attributes.get("complete")),
        "fingerprint": store_fingerprint(identity, rows),
    }


def _sae(entry: Entry) -> dict[str, Any]:
    facts = entry.meta.get("facts") or {}
    return {
        "kind": "sae",
        "url": entry.url,
        "published": entry.meta.get("published"),
        **facts,
    }
