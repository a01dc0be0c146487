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


def assert_one_line_error(result, *fragments: str) -> None:
    """A bad-input failure: exit code 2, one `error:` line on stderr naming every fragment."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def harvest_small_store(tiny_lm, corpus, out, **overrides):
    """Harvest the tiny LM at blocks.1.hook_resid_post: 4800 tokens, 960 held out, context 32."""
    from saekit.harvest import HarvestConfig, harvest

    settings = dict(
        model=str(tiny_lm),
        dataset=str(corpus),
        hooks=("blocks.1.hook_resid_post",),
        out=str(out),
        tokens=4800,
        holdout_tokens=960,
        context_size=32,
        batch_size=8,
        rows_per_chunk=256,
        chunks_per_block=2,
    )
    harvest(HarvestConfig(**{**settings, **overrides}))
    return out


def small_corpus(corpus, path, documents=12):
    """The first documents of the corpus (about 1,500 tokens of the tiny LM) in a new file."""
    path.write_text("\n\n".join(corpus.read_text().split("\n\n")[:documents]) + "\n")
    return path
