"""Cheap, stable fingerprints of files: enough to notice that a model or dataset changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_EDGE = 1 << 20  # bytes hashed at each end of a file


def files_fingerprint(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over each file's name, size and first and last MiB (not the whole content)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        name = str(path.relative_to(root)) if root else path.name
        digest.update(f"{name}\0{size}\0".encode())
        with path.open("rb") as file:
            digest.update(file.read(_EDGE))
            if size > 2 * _EDGE:
                file.seek(size - _EDGE)
                digest.update(file.read(_EDGE))
    return digest.hexdigest()[:16]


def text_fingerprint(text: str) -> str:
    """Short sha256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_fingerprint(identity: dict[str, Any], rows: int) -> str:
    """A store's fingerprint: its harvest's identity (model and weights, tokenizer, dataset,
    packing, seed, token counts) and its committed rows. Two stores with one fingerprint hold
    the same tokens, and the same activations at every hook both have; an SAE's cfg.json
    records both, so its store's fingerprint is known without the store."""
    return text_fingerprint(json.dumps({"identity": identity, "rows": rows}, sort_keys=True))
