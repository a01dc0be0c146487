"""Exclusive write rights on a store (to create or finish it) or on one shard of it.

- Local stores: `fcntl.flock` on `<store>/locks/<name>.lock`. The operating system releases the
  lock when the process dies, so `kill -9` never leaves a stale lock behind.
- Object storage: a lease object `<store>/locks/<name>.json`, created exclusively (a conditional
  PUT), renewed by a background thread every `ttl / 3` seconds and deleted on release. A lease
  that has not been renewed for `ttl` seconds belongs to a dead writer and is taken over; so is a
  lease of the same run (same owner id), which is how a retried task resumes its shard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError

LOCK_DIR = "locks"
LOCK_FILE = re.compile(r"(create|shard-\d{5})\.lock")
LEASE_TTL_SECONDS = 120.0
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW


class LockHeld(SaekitError):
    """Another process holds the lock; `holder` says which (`pid 12 on host`)."""

    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder


def new_owner() -> str:
    """An id for one run of a writer (tasks of one run share it)."""
    return uuid.uuid4().hex


def is_lock_name(name: str) -> bool:
    """Whether `name` is one of saekit's local lock files (`create.lock`, `shard-00003.lock`)."""
    return LOCK_FILE.fullmatch(name) is not None


@contextlib.contextmanager
def local_lock(root: Path, name: str) -> Iterator[None]:
    """Hold `<root>/locks/<name>.lock`, or refuse at once (`LockHeld`) if another process
    holds it.

    Neither the lock directory nor the lock file may be a symbolic link: they are opened with
    `O_NOFOLLOW`, so a planted link can never make a writer truncate the file it points to."""
    lock_dir = root / LOCK_DIR
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise SaekitError(
            f"cannot create the lock directory {lock_dir}: {_reason(error)}; choose an --out "
            "you can write to (a symbolic link there is refused too)"
        ) from None
    try:
        fd = os.open(f"{name}.lock", _LOCK_FLAGS, 0o644, dir_fd=dir_fd)
    except OSError as error:
        raise SaekitError(
            f"cannot open the lock file {lock_dir / name}.lock: {_reason(error)}; remove it "
            "if it is not saekit's (links are never followed)"
        ) from None
    finally:
        os.close(dir_fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(
                f"{name} of store {root} is being written by another process ({holder}); "
                "wait for it to finish or write to another store",
                holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _reason(error: OSError) -> str:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return "it is a symbolic link or not a directory"
    if error.errno == errno.EEXIST:
        return "a file of that name is in the way"
    return error.strerror or str(error)


class ObjectLease:
    """A renewable lease object on an fsspec filesystem (see the module docstring)."""

    def __init__(self, fs: Any, key: str, owner: str, ttl: float = LEASE_TTL_SECONDS) -> None:
        self.fs, self.key, self.owner, self.ttl = fs, key, owner, ttl
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="saekit-lease", daemon=True)

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": platform.node(),
                "pid": os.getpid(),
                "renewed": time.time(),
                "ttl": self.ttl,
            }
        ).encode()

    def _create(self) -> bool:
        try:
            self.fs.pipe_file(self.key, self._record(), mode="create")
            return True
        except (FileExistsError, OSError) as error:
            if isinstance(error, FileExistsError) or "precondition" in str(error).lower():
                return False
            raise

    def acquire(self) -> None:
        if self._create():
            self._renewer.start()
            return
        try:
            held = json.loads(self.fs.cat_file(self.key))
        except (FileNotFoundError, json.JSONDecodeError):
            held = {}
        stale = time.time() - held.get("renewed", 0) > held.get("ttl", self.ttl)
        if held.get("owner") != self.owner and not stale:
            raise SaekitError(
                f"{self.key} is held by another writer (host {held.get('host')}, pid "
                f"{held.get('pid')}); wait for it to finish, or if it died, retry after "
                f"{held.get('ttl', self.ttl):.0f} s"
            )
        self.fs.rm_file(self.key)
        if not self._create():
            raise SaekitError(f"{self.key} was taken by another writer at the same moment")
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.fs.pipe_file(self.key, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key)


@contextlib.contextmanager
def object_lock(fs: Any, root: str, name: str, owner: str) -> Iterator[None]:
    """Hold the lease `<root>/locks/<name>.json` on an object store."""
    lease = ObjectLease(fs, f"{root}/{LOCK_DIR}/{name}.json", owner)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()
