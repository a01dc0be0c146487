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


def readout(vocab: int, d: int, seed: int, rank: int | None = None) -> np.ndarray:
    """A random readout [vocab, d]; of rank `rank` (its rows in a random subspace) if given."""
    rng = np.random.default_rng([seed, 11])
    readout_VD = rng.standard_normal((vocab, d)) / np.sqrt(d)
    if rank is not None:
        basis_DR = np.linalg.qr(rng.standard_normal((d, rank)))[0]
        readout_VD = readout_VD @ basis_DR @ basis_DR.T * np.sqrt(d / rank)
    return readout_VD


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
    path: Path,
    n_rows: int,
    n_atoms: int,
    d: int,
    active: int,
    seed: int = 0,
    readout_rank: int | None = None,
) -> np.ndarray:
    """Write the store; return its atoms. With `readout_rank` the loss reads only a subspace of
    the activations, so the gradients lie in it."""
    spec = StoreSpec(
        layout=StoreLayout(rows_per_chunk=1024, chunks_per_block=4, capacity_rows=n_rows),
        hooks={HOOK: HookSpec(d=d)},
        activation_dtype="float32",
        identity={
            "generator": "tests.planted",
            "atoms": n_atoms,
            "seed": seed,
            "readout_rank": readout_rank,
        },
    )
    atoms_AD = dictionary(n_atoms, d, seed)
    readout_VD = readout(50, d, seed, readout_rank)
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


# -- several hooks: what transcoders, crosscoders and cross-layer transcoders reconstruct --------

LAYERS = 3
SOURCE, TARGET = "blocks.{}.hook_resid_mid", "blocks.{}.hook_mlp_out"


def layered_atoms(n_atoms: int, d: int, seed: int) -> dict[str, np.ndarray]:
    """The planted directions of a layered model: per layer l, reading atoms `read_l`
    [n_atoms, d], and for every target t ≥ l the atoms `write_l_t` [n_atoms, d]; `skip_l` [d, d]
    a dense linear map from source l to target l (what a skip transcoder's W_skip finds)."""
    atoms = {}
    for layer in range(LAYERS):
        atoms[f"read_{layer}"] = dictionary(n_atoms, d, seed * 100 + layer)
        for target in range(layer, LAYERS):
            atoms[f"write_{layer}_{target}"] = dictionary(
                n_atoms, d, seed * 100 + 10 * layer + target + 50
            )
        atoms[f"skip_{layer}"] = np.random.default_rng([seed, 13, layer]).standard_normal(
            (d, d)
        ) / np.sqrt(d)
    return atoms


def layered_rows(block: Block, atoms: dict[str, np.ndarray], active: int, seed: int) -> RowBlock:
    """Per layer l, sparse codes c_l; the source x_l = c_l read_l + noise and the target
    y_t = Σ_{l ≤ t} c_l write_l_t + skip_t x_t: what a cross-layer transcoder (and, at one layer
    with its skip path, a skip transcoder) represents exactly."""
    rng = np.random.default_rng([seed, block.index])
    n = block.n_rows
    n_atoms, d = atoms["read_0"].shape
    codes = []
    for _ in range(LAYERS):
        support = np.argsort(rng.random((n, n_atoms)), axis=1)[:, :active]
        c = np.zeros((n, n_atoms))
        np.put_along_axis(c, support, rng.uniform(1.0, 2.0, (n, active)), axis=1)
        codes.append(c)
    activations = {}
    for layer in range(LAYERS):
        x = codes[layer] @ atoms[f"read_{layer}"] + 0.01 * rng.standard_normal((n, d))
        y = sum(codes[s] @ atoms[f"write_{s}_{layer}"] for s in range(layer + 1))
        y = y + x @ atoms[f"skip_{layer}"].T
        activations[SOURCE.format(layer)] = torch.from_numpy(x.astype(np.float32))
        activations[TARGET.format(layer)] = torch.from_numpy(y.astype(np.float32))
    rows = np.arange(block.start, block.stop)
    gradients = {
        hook: torch.from_numpy((0.01 * rng.standard_normal((n, d))).astype(np.float32))
        for hook in activations
        if "mlp_out" in hook
    }
    return RowBlock(
        tokens=rng.integers(0, 50, n).astype(np.int32),
        sequence=rows // 64,
        position=rows % 64,
        loss=np.ones(n, np.float32),
        activations=activations,
        gradients=gradients,
    )


def write_layered_store(
    path: Path, n_rows: int, n_atoms: int, d: int, active: int, seed: int = 0, holdout: int = 0
) -> dict[str, np.ndarray]:
    """A store of the layered model's sources and targets (gradients at the targets only);
    return its atoms."""
    hooks = {}
    for layer in range(LAYERS):
        hooks[SOURCE.format(layer)] = HookSpec(d=d, gradients=False)
        hooks[TARGET.format(layer)] = HookSpec(d=d)
    spec = StoreSpec(
        layout=StoreLayout(
            rows_per_chunk=1024, chunks_per_block=4, capacity_rows=n_rows, holdout_rows=holdout
        ),
        hooks=hooks,
        activation_dtype="float32",
        identity={"generator": "tests.planted.layered", "atoms": n_atoms, "seed": seed},
    )
    atoms = layered_atoms(n_atoms, d, seed)
    with StoreWriter.open(path, spec) as writer:
        for block in writer.pending_blocks():
            writer.write(block, layered_rows(block, atoms, active, seed))
        writer.finish()
    return atoms
