"""Where a store lives: a local path or an fsspec URL, opened as a zarr store object."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from saekit.cache_format.schema import FORMAT_NAME
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


def refuse_links(root: Path, key: str) -> None:
    """Refuse a key of a local store whose path below `root` passes through a symbolic link."""
    path = root
    for part in key.split("/"):
        path = path / part
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise SaekitError(
                    f"{path} is a symbolic link; saekit never writes through links inside a "
                    "store: replace it with the real file or directory"
                )
        except (FileNotFoundError, NotADirectoryError):
            return


class NoFollowLocalStore(LocalStore):
    """A local store for writers that never writes or deletes through a symbolic link below its
    root (zarr's LocalStore follows them, so a planted link could redirect chunk writes)."""

    def _check_no_links(self, key: str) -> None:
        refuse_links(self.root, key)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        self._check_no_links(key)
        await super()._set(key, value, exclusive)

    async def delete(self, key: str) -> None:
        self._check_no_links(key)
        await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_no_links(prefix)
        await super().delete_dir(prefix)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._check_no_links(key)
        super().set_sync(key, value)

    def delete_sync(self, key: str) -> None:
        self._check_no_links(key)
        super().delete_sync(key)


def absolute_location(location: str | Path) -> str:
    """A location as identities and configs record it: a local path made absolute (so that it
    can be found from any working directory), a URL as given."""
    text = str(location)
    if not is_local(text) or text.startswith("file://"):
        return text
    return os.path.abspath(os.path.expanduser(text))


def resolve_recorded_path(recorded: str, anchor: Path) -> str:
    """A local path recorded relative to some working directory (by older saekit versions, or
    by hand): as recorded when it exists from here, else against `anchor` or the nearest of its
    parents where it exists, else as recorded. Absolute paths and URLs are returned as they are."""
    path = Path(recorded).expanduser()
    if not is_local(recorded) or path.is_absolute() or path.exists():
        return recorded
    anchor = Path(os.path.abspath(anchor))
    for base in (anchor, *anchor.parents):
        if (base / path).exists():
            return str(base / path)
    return recorded


def zarr_store(
    location: str | Path, *, read_only: bool, storage_options: dict[str, Any] | None = None
) -> Store:
    """A zarr store object for a local path or any fsspec URL (s3://, gs://, http(s)://, memory://).

    Local writers get a `NoFollowLocalStore` rooted at the real path."""
    if is_local(location):
        if read_only:
            return LocalStore(local_path(location), read_only=True)
        return NoFollowLocalStore(os.path.realpath(local_path(location)))
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


def enclosing_store(location: str | Path) -> Path | None:
    """The saekit store a local path is or lies inside, symbolic links resolved, or None: the
    nearest of the path and its parents whose `zarr.json` names the saekit format."""
    real = Path(os.path.realpath(local_path(location)))
    for candidate in (real, *real.parents):
        try:
            meta = json.loads((candidate / "zarr.json").read_bytes())
        except (OSError, ValueError):
            continue
        attributes = meta.get("attributes") if isinstance(meta, dict) else None
        if isinstance(attributes, dict) and attributes.get("format") == FORMAT_NAME:
            return candidate
    return None


def refuse_inside_store(out: str | Path, command: str) -> None:
    """Refuse an output (`--out`) that is or lies inside a store, symbolic links resolved: a
    store is changed by its writer only."""
    store = enclosing_store(out)
    if store is not None:
        raise SaekitError(
            f"--out {out} lies inside the store {store}; {command} never writes into a store, "
            "choose another directory"
        )
