"""Assertions shared by several test modules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from saekit.cache_format import ActivationStore


def snapshot(path: Path) -> dict[str, str]:
    """Every file under `path` with a hash of its bytes: equal snapshots mean nothing changed."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_same_store(a, b):
    """Two stores hold the same committed rows in every array, and the same settings."""
    sa, sb = ActivationStore.open(a), ActivationStore.open(b)
    assert sa.n_rows_committed == sb.n_rows_committed
    assert sa.array_paths == sb.array_paths
    for path in sa.array_paths:
        np.testing.assert_array_equal(sa.array(path)[:], sb.array(path)[:])
    ignore = {"created", "provenance"}
    assert {k: v for k, v in sa.attrs.items() if k not in ignore} == {
        k: v for k, v in sb.attrs.items() if k not in ignore
    }
