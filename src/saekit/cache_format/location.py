"""Where a store lives: a local path or an fsspec URL, opened as a zarr store object."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore


def is_local(location: str | Path) -> bool:
    """True for plain paths and file:// URLs."""
    scheme = urlparse(str(location)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and str(location)[1:3] == ":\\")


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
