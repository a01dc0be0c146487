"""Writer and reader: lockstep rows, the block permutation, the split, growth and fsspec reads."""

import dataclasses
import json

import fsspec
import numpy as np
import pytest
import torch
import zarr

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore, HookSpec, StoreLayout, StoreWriter, schema
from saekit.cache_format.synthetic import synthetic_rows, synthetic_spec, write_synthetic_store
from saekit.cache_format.writer import trim


def stream_rows(spec, n_rows):
    """The rows the synthetic writer was given, in stream order (float32, before encoding)."""
    blocks = [spec.layout.block(i) for i in range(spec.layout.n_blocks)]
    parts = [
        synthetic_rows(spec, b, spec.identity["context_size"], spec.identity["seed"])
        for b in blocks
    ]
    hook = next(iter(spec.hooks))
    return {
        "sequence": np.concatenate([p.sequence for p in parts])[:n_rows],
        "position": np.concatenate([p.position for p in parts])[:n_rows],
        "activations": torch.cat([p.activations[hook] for p in parts])[:n_rows],
        "gradients": torch.cat([p.gradients[hook] for p in parts])[:n_rows],
    }


def test_rows_round_trip_in_lockstep(small_store):
    store = ActivationStore.open(small_store)
    spec = store.spec
    assert store.n_rows_committed == 4096 and store.complete
    lengths = {store.array(p).shape[0] for p in store.array_paths}
    assert lengths == {4096}, "every row array has the same length"
    got = store.read_tensors(["row", "sequence", "position", "activations", "gradients"], 0, 4096)
    want = stream_rows(spec, 4096)
    # rows are permuted inside blocks; (sequence, position) says where each came from
    context = spec.identity["context_size"]
    source = got["sequence"].numpy() * context + got["position"].numpy()
    assert sorted(source) == list(range(4096))
    assert torch.allclose(got["activations"], want["activations"][source], rtol=1e-3, atol=1e-3)
    g_want = want["gradients"][source]
    err = (got["gradients"] - g_want).norm(dim=1) / g_want.norm(dim=1).clamp_min(1e-30)
    assert err[g_want.norm(dim=1) > 0].max() < 1e-3


def test_rows_are_permuted_within_blocks_and_within_the_split(small_store):
    store = ActivationStore.open(small_store)
    layout = store.spec.layout
    got = store.read(["sequence", "position"], 0, store.n_rows_committed)
    source = got["sequence"] * 16 + got["position"]
    for index in range(layout.n_blocks):
        block = layout.block(index)
        stored = source[block.start : block.stop]
        assert sorted(stored) == list(range(block.start, block.stop)), "a block keeps its rows"
        assert not np.array_equal(stored, np.arange(block.start, block.stop)), "and shuffles them"
    holdout = source[: layout.holdout_rows]
    assert holdout.max() < layout.holdout_rows, "held-out rows never mix with training rows"


def test_split_ranges(small_store):
    store = ActivationStore.open(small_store)
    assert store.ranges("holdout") == [(0, 512)]
    assert store.ranges("train") == [(512, 4096)]
    assert store.n_rows("all") == 4096


def head(rows, n):
    return dataclasses.replace(
        rows,
        tokens=rows.tokens[:n],
        sequence=rows.sequence[:n],
        position=rows.position[:n],
        loss=rows.loss[:n],
        activations={k: v[:n] for k, v in rows.activations.items()},
        gradients={k: v[:n] for k, v in rows.gradients.items()},
    )


def test_unknown_capacity_grows_then_trims(tmp_path):
    spec = synthetic_spec(1500)  # 1500 rows: one full block of 1024 and a short one of 476
    open_ended = dataclasses.replace(spec, layout=StoreLayout(256, 4, 0, None, 0))
    path = tmp_path / "grow.zarr"
    with StoreWriter.open(path, open_ended) as writer:
        for block in writer.pending_blocks():
            rows = synthetic_rows(open_ended, block, 16, 0)
            if block.index == 1:  # the data runs out part-way through the second block
                writer.write(block, head(rows, 476))
                break
            writer.write(block, rows)
        assert list(writer.pending_blocks()) == [], "a short block ends the store"
        writer.finish()
    store = ActivationStore.open(path)
    assert store.n_rows_committed == 1500 and store.complete
    assert {store.array(p).shape[0] for p in store.array_paths} == {1500}


def test_bfloat16_and_float32_stores(tmp_path):
    for dtype, atol in [("bfloat16", 0.05), ("float32", 0.0)]:
        spec = synthetic_spec(1024, activation_dtype=dtype)
        write_synthetic_store(tmp_path / dtype, spec)
        store = ActivationStore.open(tmp_path / dtype)
        meta = json.loads(
            (tmp_path / dtype / "hooks/synthetic.hook_resid/activations/zarr.json").read_text()
        )
        assert meta["attributes"]["logical_dtype"] == dtype
        got = store.read_tensors(["sequence", "position", "activations", "gradients"], 0, 1024)
        want = stream_rows(spec, 1024)
        source = got["sequence"] * 16 + got["position"]
        rel = (got["activations"] - want["activations"][source]).abs() / want["activations"][
            source
        ].abs().clamp_min(1)
        assert rel.max() <= atol + 1e-7
        if dtype == "float32":
            assert torch.equal(got["gradients"], want["gradients"][source])


def test_read_through_an_fsspec_url(small_store):
    """A store copied into fsspec's memory filesystem reads exactly like the local one."""
    fs = fsspec.filesystem("memory")
    for file in small_store.rglob("*"):
        if file.is_file():
            fs.pipe(f"/shared/small.zarr/{file.relative_to(small_store)}", file.read_bytes())
    remote = ActivationStore.open("memory://shared/small.zarr")
    local = ActivationStore.open(small_store)
    fields = ["tokens", "sequence", "position", "loss", "activations", "gradients"]
    a, b = remote.read(fields, 0, 4096), local.read(fields, 0, 4096)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name])
    fs.rm("/shared", recursive=True)


def test_readers_refuse_unknown_hooks_and_missing_gradients(tmp_path):
    spec = synthetic_spec(1024, hooks={"h.acts_only": HookSpec(d=8, gradients=False)})
    write_synthetic_store(tmp_path / "s", spec)
    store = ActivationStore.open(tmp_path / "s")
    with pytest.raises(SaekitError, match="no gradients"):
        store.read(["gradients"], 0, 10)
    with pytest.raises(SaekitError, match="has no hook 'nope'"):
        store.read(["activations"], 0, 10, hook="nope")
    assert schema.hook_array_path("h.acts_only", "gradients") not in store.array_paths


def test_trimming_a_huge_array_touches_only_the_chunks_that_exist(tmp_path):
    """Finishing a store asked for 10^15 rows must not enumerate 10^12 chunk keys (zarr's
    resize does, and ran out of memory); only the chunk objects past the end are deleted."""
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    array = group.create_array("x", shape=(10**15,), chunks=(256,), dtype="int32", fill_value=-1)
    array[:1000] = np.arange(1000)
    (tmp_path / "s.zarr/x/c/3.torn.partial").write_bytes(b"half")  # a killed writer's leftover
    trim(array, 600)
    assert array.shape == (600,)
    left = sorted(p.name for p in (tmp_path / "s.zarr/x/c").iterdir())
    assert left == ["0", "1", "2", "3.torn.partial"], "chunk 3 (rows 768-1023) is gone"
    np.testing.assert_array_equal(array[:], np.arange(600))
