"""One writer per store: an exclusive lock held for the writer's lifetime.

Local stores use `fcntl.flock` on `<store>/writer.lock`; the operating system drops the lock when
the process dies, so `kill -9` never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from saekit.errors import SaekitError

LOCK_NAME = "writer.lock"


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the store's writer lock, or refuse at once if another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise SaekitError(
                f"store {root} is being written by another process (pid {holder}); "
                "wait for it to finish or write to another store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
