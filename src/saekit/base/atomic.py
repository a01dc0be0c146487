"""Crash-safe file writes: write a temporary file beside the target, fsync, then `os.replace`.

A reader (or a resumed run) sees either the old file or the complete new one, never a torn one.
The temporary file has a random short name (so a target name of any legal length leaves room for
it) and is created new (`O_CREAT | O_EXCL | O_NOFOLLOW`): a link planted in its place is never
followed. A write the machine refuses (full disk, file-size limit, permissions) is one line naming
the file and the cause (`SaekitError`), and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save

from saekit.base.errors import write_error


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `write(file)` writes."""
    temporary = path.with_name(f".saekit-{secrets.token_hex(6)}.tmp")
    recorder: _RecordingFile | None = None
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as file:
            recorder = _RecordingFile(file)
            write(recorder)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(path, error) from None
    except Exception:
        # a writer that wraps the file's errors in its own (torch.save raises RuntimeError)
        if recorder is not None and recorder.error is not None:
            raise write_error(path, recorder.error) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


class _RecordingFile:
    """A binary file that remembers the OS error a write met, for writers that re-raise it as
    something else."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, allow_nan=True) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def write_torch(path: Path, value: Any) -> None:
    write_atomically(path, lambda file: torch.save(value, file))


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    data = save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata)
    write_atomically(path, lambda file: file.write(data))


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` a file of `source`'s bytes: a hard link where the file system allows it
    (nothing copied), else a crash-safe copy. Either way `target` is replaced, never written
    through."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        with source.open("rb") as file:
            write_atomically(target, lambda out: shutil.copyfileobj(file, out))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
