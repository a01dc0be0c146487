"""Where a store lives: a local path or an fsspec URL, opened as a zarr store object."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local, local_path


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
