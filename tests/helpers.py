"""Assertions and builders shared by several test modules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from saekit.cache_format import ActivationStore
from saekit.train.export import save_sae
from saekit.train.sae_config import SAEConfig
from saekit.train.spec import parse_spec


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


def save(run, name, sae, store_path, hook="blocks.1.hook_resid_post", batch_size=64):
    """Save an SAE into RUN/saes/<name> the way sae train does (no input scaling)."""
    cfg = SAEConfig(
        name=name, variant=sae.activation.name, hook=hook, d_in=sae.d_in, d_sae=sae.d_sae,
        k=getattr(sae.activation.options, "k", None),
        options={k: v for k, v in vars(sae.activation.options).items()},
        calibration={}, input_scale=1.0,
        store={"location": str(store_path), "identity": {}, "n_rows_committed": 0,
               "holdout_rows": 0},
        training={"batch_size": batch_size},
    )  # fmt: skip
    save_sae(sae, run / "saes" / name, cfg)


def relu_sae(d, latents, W_enc, W_dec, b_enc=None, b_dec=None):
    """A ReLU SAE with the given weights: f = ReLU(W_enc (x − b_dec) + b_enc)."""
    sae = parse_spec(f"relu:latents={latents}").resolve(d).build(d)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.copy_(torch.zeros(latents) if b_enc is None else b_enc)
        sae.b_dec.copy_(torch.zeros(d) if b_dec is None else b_dec)
    return sae
