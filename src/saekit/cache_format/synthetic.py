"""Synthetic stores with GPT-2-like statistics, for the demo, tests and benchmarks.

Rows are generated per block from (seed, block index) alone, so a resumed write produces exactly
the bytes of an uninterrupted one. Activations have per-dimension scales and offsets, a few
heavy-tailed dimensions and an outlier norm at position 0 (as GPT-2's residual stream has);
gradients are Student-t values around 1e-4 with a per-token scale and are zero at the last
position, as the summed next-token loss gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saekit.cache_format import HookSpec, RowBlock, StoreLayout, StoreSpec, StoreWriter
from saekit.cache_format.schema import Block

SYNTHETIC_VOCAB = 50257


def _hook_statistics(seed: int, hook_index: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 1_000_003, hook_index])
    scale_D = rng.lognormal(0.0, 0.5, d)
    offset_D = rng.normal(0.0, 0.3, d)
    return scale_D, offset_D


def synthetic_rows(spec: StoreSpec, block: Block, context_size: int, seed: int) -> RowBlock:
    """The rows of `block` in stream order (contexts of `context_size` tokens in a row)."""
    rng = np.random.default_rng([seed, block.index])
    row_R = np.arange(block.start, block.stop)
    position_R = row_R % context_size
    last_R = position_R == context_size - 1
    n = block.n_rows
    loss_R = rng.exponential(3.0, n).astype(np.float32)
    loss_R[last_R] = np.nan
    activations, gradients = {}, {}
    for hook_index, (hook, hook_spec) in enumerate(spec.hooks.items()):
        d = hook_spec.d
        scale_D, offset_D = _hook_statistics(seed, hook_index, d)
        x_RD = rng.standard_normal((n, d)) * scale_D + offset_D
        x_RD[:, :4] += rng.standard_t(2, (n, 4)) * 5.0
        x_RD[position_R == 0] *= 30.0
        activations[hook] = torch.from_numpy(x_RD.astype(np.float32))
        if hook_spec.gradients:
            g_RD = rng.standard_t(3, (n, d)) * rng.lognormal(np.log(1e-4), 1.0, (n, 1))
            g_RD[last_R] = 0.0
            gradients[hook] = torch.from_numpy(g_RD.astype(np.float32))
    return RowBlock(
        tokens=rng.integers(0, SYNTHETIC_VOCAB, n, dtype=np.int32),
        sequence=row_R // context_size,
        position=position_R,
        loss=loss_R,
        activations=activations,
        gradients=gradients,
    )


def synthetic_spec(
    n_rows: int,
    *,
    hooks: dict[str, HookSpec] | None = None,
    context_size: int = 16,
    rows_per_chunk: int = 256,
    chunks_per_block: int = 4,
    holdout_rows: int = 0,
    activation_dtype: str = "float16",
    seed: int = 0,
) -> StoreSpec:
    """The spec of a synthetic store (its identity names the generator and its settings)."""
    return StoreSpec(
        layout=StoreLayout(rows_per_chunk, chunks_per_block, holdout_rows, n_rows, seed),
        hooks=hooks or {"synthetic.hook_resid": HookSpec(d=64)},
        activation_dtype=activation_dtype,
        identity={
            "generator": "saekit.synthetic",
            "context_size": context_size,
            "seed": seed,
            "vocab_size": SYNTHETIC_VOCAB,
        },
        provenance={"description": "synthetic GPT-2-like rows"},
    )


def write_synthetic_store(location: str | Path, spec: StoreSpec) -> None:
    """Write (or finish writing) a synthetic store described by `spec`."""
    context_size = spec.identity["context_size"]
    seed = spec.identity["seed"]
    with StoreWriter.open(location, spec) as writer:
        for block in writer.pending_blocks():
            writer.write(block, synthetic_rows(spec, block, context_size, seed))
        writer.finish()
