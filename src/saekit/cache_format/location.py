"""Where a store lives: a local path or an fsspec URL, opened as a zarr store object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from saekit.errors import SaekitError


def is_local(location: str | Path) -> bool:
    """True for plain paths and file:// URLs."""
    return urlparse(str(location)).scheme in ("", "file")


def local_path(location: str | Path) -> Path:
    """The filesystem path of a local location (plain path or file:// URL)."""
    text = str(location)
    if text.startswith("file://"):
        text = urlparse(text).path
    return Path(text).expanduser()


def zarr_store(
    location: str | Path, *, read_only: bool, storage_options: dict[str, Any] | None = None
) -> Store:
    """A zarr store object for a local path or any fsspec URL (s3://, gs://, http(s)://, memory://)."""
    if is_local(location):
        return LocalStore(local_path(location), read_only=read_only)
    return FsspecStore.from_url(
        str(location), storage_options=storage_options or None, read_only=read_only
    )


def read_json(store: Store, key: str) -> Any | None:
    """The JSON object stored at `key`, or None when there is none."""
    buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else json.loads(buffer.to_bytes())


def write_json(store: Store, key: str, value: Any) -> None:
    """Store a JSON object at `key` in one write (atomic: a rename locally, a PUT remotely)."""
    sync(store.set(key, Buffer.from_bytes(json.dumps(value, indent=1).encode())))


def remote_error(location: str, error: BaseException) -> SaekitError:
    """A one-line error for an object store that cannot be reached, read or written."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = ""
    if isinstance(error, PermissionError) or "credential" in reason.lower():
        hint = "; check the credentials (environment or --storage-options)"
    elif isinstance(error, FileNotFoundError) or "bucket" in reason.lower():
        hint = "; check that the bucket exists"
    return SaekitError(f"cannot use {location}: {reason}{hint}")
