"""Where a writer writes: a local directory or an fsspec URL (s3://, gs://, memory://, ...)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from zarr.abc.store import Store

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local, local_path
from saekit.base.outputs import enclosing_store
from saekit.cache_format import schema
from saekit.cache_format.location import refuse_links, remote_error, zarr_store
from saekit.cache_format.locking import LOCK_DIR, is_lock_name, local_lock, object_lock
from saekit.cache_format.progress import progress_key


class StoreTarget:
    """A store location opened for writing: checks, locks and the zarr store object."""

    def __init__(self, location: str | Path, storage_options: dict[str, Any] | None = None):
        self.location = str(location)
        self.storage_options = storage_options
        self.local = is_local(location)
        if self.local:
            self.path = local_path(location)
        else:
            try:
                self.fs, self.root = fsspec.core.url_to_fs(self.location, **(storage_options or {}))
            except (ImportError, ValueError) as error:
                raise SaekitError(f"cannot write to {location}: {error}") from None

    def zarr_store(self, read_only: bool = False) -> Store:
        return zarr_store(self.location, read_only=read_only, storage_options=self.storage_options)

    def _root_attrs(self) -> dict | None:
        try:
            text = (
                (self.path / "zarr.json").read_text()
                if self.local
                else self.fs.cat_file(f"{self.root}/zarr.json")
            )
            meta = json.loads(text)
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return meta.get("attributes", {}) if isinstance(meta, dict) else None

    def _is_empty(self) -> bool:
        """No data yet (lock files of a writer killed while creating the store do not count)."""
        if self.local:
            if not self.path.exists():
                return True
            if not self.path.is_dir():
                raise SaekitError(
                    f"{self.path} is a file, not a store directory; choose another output path"
                )
            return all(p.name == LOCK_DIR and _holds_only_locks(p) for p in self.path.iterdir())
        try:
            if not self.fs.exists(self.root):
                self._check_bucket()
                return True
            if self.fs.isfile(self.root):
                raise SaekitError(f"{self.location} is an object, not a store prefix")
            names = {Path(p).name for p in self.fs.ls(self.root, detail=False)}
        except SaekitError:
            raise
        except Exception as error:  # network, credentials, missing bucket: one line, no trace
            raise remote_error(self.location, error) from None
        return names <= {LOCK_DIR}

    def _check_bucket(self) -> None:
        """Object stores: the bucket of a new store must exist (saekit does not create buckets)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
            bucket = self.root.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise SaekitError(
                    f"bucket {bucket} of {self.location} does not exist; create it "
                    "first or check the name"
                )

    def existing_attrs(self) -> dict | None:
        """Refuse, touching nothing, a file, a foreign directory or a place inside another store;
        return the attributes of the store already there, or None for a new store."""
        if self.local:
            real = Path(os.path.realpath(self.path))
            outer = enclosing_store(real.parent)
            if outer is not None:
                raise SaekitError(
                    f"{self.location} lies inside the store {outer}, which only its writer may "
                    "change; choose an output path outside it"
                )
            existing = next(p for p in (real, *real.parents) if p.exists())
            if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
                raise SaekitError(
                    f"cannot write to {self.location}: {existing} is not writable; choose an "
                    "output path you can write to"
                )
        if self._is_empty():
            return None
        return schema.check_format(self._root_attrs(), self.location)

    def refuse_links(self, keys: list[str]) -> None:
        """Refuse, before writing anything, a local store where one of these keys' directories
        is a symbolic link (chunk writes check their own paths too)."""
        if self.local:
            for key in [*keys, progress_key(0)]:
                refuse_links(Path(os.path.realpath(self.path)), key)

    @contextlib.contextmanager
    def lock(self, name: str, owner: str) -> Iterator[None]:
        """Exclusive rights to `name` (a shard, or the store's creation and finishing)."""
        if self.local:
            with local_lock(self.path, name):
                yield
        else:
            with object_lock(self.fs, self.root, name, owner):
                yield

    def remove_partial_writes(self) -> None:
        """Delete temporary files of local chunk writes cut short by a kill (never needed on
        object storage, where a PUT is all or nothing)."""
        if self.local:
            for stray in self.path.rglob("*.partial"):
                stray.unlink()


def _holds_only_locks(directory: Path) -> bool:
    """A real `locks/` directory holding nothing but saekit's own lock files."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    return all(
        is_lock_name(p.name) and p.is_file() and not p.is_symlink() for p in directory.iterdir()
    )
