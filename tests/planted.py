"""A store of rows built from a known sparse dictionary, written through StoreWriter.

Each row is x = Σ_{i∈S} c_i D_i + noise with |S| = `active` atoms drawn uniformly and c_i in
[1, 2]; its gradient is that of a fixed random linear readout's cross-entropy,
g = Uᵀ(softmax(U x) − e_t) for a random target t, so gradients vary with x and are
meaningful for g-SAE. Rows are a deterministic function of (seed, block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saekit.cache_format import HookSpec, RowBlock, StoreLayout, StoreSpec, StoreWriter
from saekit.cache_format.schema import Block

HOOK = "planted.hook"


def dictionary(n_atoms: int, d: int, seed: int) -> np.ndarray:
    """The planted atoms, unit rows [n_atoms, d]."""
    atoms = np.random.default_rng([seed, 7]).standard_normal((n_atoms, d))
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def readout(vocab: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 11]).standard_normal((vocab, d)) / np.sqrt(d)


def planted_rows(
    block: Block, atoms_AD: np.ndarray, readout_VD: np.ndarray, active: int, seed: int
) -> RowBlock:
    rng = np.random.default_rng([seed, block.index])
    n, (n_atoms, d) = block.n_rows, atoms_AD.shape
    support = np.argsort(rng.random((n, n_atoms)), axis=1)[:, :active]
    codes = np.zeros((n, n_atoms))
    np.put_along_axis(codes, support, rng.uniform(1.0, 2.0, (n, active)), axis=1)
    x = codes @ atoms_AD + 0.01 * rng.standard_normal((n, d))
    logits = x @ readout_VD.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    target = rng.integers(0, len(readout_VD), n)
    probs[np.arange(n), target] -= 1.0
    g = probs @ readout_VD
    rows = np.arange(block.start, block.stop)
    return RowBlock(
        tokens=target.astype(np.int32),
        sequence=rows // 64,
        position=rows % 64,
        loss=np.ones(n, np.float32),
        activations={HOOK: torch.from_numpy(x.astype(np.float32))},
        gradients={HOOK: torch.from_numpy(g.astype(np.float32))},
    )


def write_planted_store(
    path: Path, n_rows: int, n_atoms: int, d: int, active: int, seed: int = 0
) -> np.ndarray:
    """Write the store; return its atoms."""
    spec = StoreSpec(
        layout=StoreLayout(rows_per_chunk=1024, chunks_per_block=4, capacity_rows=n_rows),
        hooks={HOOK: HookSpec(d=d)},
        activation_dtype="float32",
        identity={"generator": "tests.planted", "atoms": n_atoms, "seed": seed},
    )
    atoms_AD = dictionary(n_atoms, d, seed)
    readout_VD = readout(50, d, seed)
    with StoreWriter.open(path, spec) as writer:
        for block in writer.pending_blocks():
            writer.write(block, planted_rows(block, atoms_AD, readout_VD, active, seed))
        writer.finish()
    return atoms_AD


def recovered_fraction(atoms_AD: np.ndarray, W_dec_DF: torch.Tensor, cosine: float) -> float:
    """Fraction of atoms whose best-matching decoder column has cosine similarity > `cosine`."""
    columns = torch.nn.functional.normalize(W_dec_DF.detach().double(), dim=0)
    best = (torch.from_numpy(atoms_AD) @ columns).max(dim=1).values
    return float((best > cosine).double().mean())
