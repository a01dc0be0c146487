"""Crash-safe file writes: write a temporary file beside the target, fsync, then `os.replace`.

A reader (or a resumed run) sees either the old file or the complete new one, never a torn one.
The temporary file is created new (`O_CREAT | O_EXCL | O_NOFOLLOW`): a link planted in its place
is never followed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `write(file)` writes."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)  # a leftover of a killed process with this pid (or a link)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


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
