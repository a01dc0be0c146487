"""float8 stores: half of float16's bytes per row, values within the documented bound, resumed,
verified and described like the others, refused cleanly by a saekit that predates them, and
harvested, trained on and evaluated end to end."""

import json

import numpy as np
import pytest
import torch
import zarr

from helpers import assert_one_line_error, assert_same_store, harvest_small_store, snapshot
from saekit.cache_format import ActivationStore, HookSpec, StoreWriter, schema
from saekit.cache_format.synthetic import synthetic_rows, synthetic_spec, write_synthetic_store
from saekit.cache_format.verify import verify_store

HOOK = "synthetic.hook_resid"
ROW_ERROR = 2**-4 + 1e-3  # the per-row bound docs/cache-format.md states for float8


def relative_row_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    norms = want.double().norm(dim=1)
    keep = norms > 0
    return (got.double() - want.double()).norm(dim=1)[keep] / norms[keep]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same synthetic rows (d = 768) as float8, float16 and float32 stores."""
    root = tmp_path_factory.mktemp("float8")
    paths = {}
    for dtype in ("float8", "float16", "float32"):
        paths[dtype] = root / f"{dtype}.zarr"
        spec = synthetic_spec(2048, hooks={HOOK: HookSpec(d=768)}, activation_dtype=dtype)
        write_synthetic_store(paths[dtype], spec)
    return paths


def stored_bytes_per_row(store: ActivationStore) -> int:
    return sum(
        store.array(path).dtype.itemsize * int(np.prod(store.array(path).shape[1:]))
        for path in store.array_paths
    )


def test_float8_arrays_bytes_and_values(stores):
    f8, f16, f32 = (ActivationStore.open(stores[d]) for d in ("float8", "float16", "float32"))
    assert f8.attrs["format_version"] == 2 and f16.attrs["format_version"] == 1
    for array in ("activations", "gradients"):
        meta = f8.array(schema.hook_array_path(HOOK, array)).metadata
        assert f8.array(schema.hook_array_path(HOOK, array)).dtype == np.uint8
        assert meta.attributes["logical_dtype"] == "float8_e4m3fn"
        assert meta.attributes["encoding"] == "scaled-float8"
    assert schema.hook_array_path(HOOK, "activation_scale") in f8.array_paths
    assert stored_bytes_per_row(f8) / stored_bytes_per_row(f16) <= 0.52
    got = f8.read_tensors(["activations", "gradients"], 0, 2048)
    want = f32.read_tensors(["activations", "gradients"], 0, 2048)
    for name in ("activations", "gradients"):
        error = relative_row_error(got[name], want[name])
        assert error.max() <= ROW_ERROR and error.median() <= 0.03, name


def test_float8_store_resumes_to_the_same_bytes(stores, tmp_path):
    spec = synthetic_spec(2048, hooks={HOOK: HookSpec(d=768)}, activation_dtype="float8")
    with StoreWriter.open(tmp_path / "parts", spec) as writer:
        block = next(writer.pending_blocks())
        writer.write(block, synthetic_rows(spec, block, 16, 0))
    assert ActivationStore.open(tmp_path / "parts").n_rows_committed == 1024
    write_synthetic_store(tmp_path / "parts", spec)
    assert_same_store(stores["float8"], tmp_path / "parts")


def test_verify_finds_nan_bits_and_bad_scales_in_a_float8_store(tmp_path, run_cli):
    path = tmp_path / "f8.zarr"
    write_synthetic_store(path, synthetic_spec(1024, activation_dtype="float8"))
    assert run_cli("verify", path).exit_code == 0
    assert verify_store(ActivationStore.open(path)) == []
    group = zarr.open_group(path, mode="r+")
    group[schema.hook_array_path(HOOK, "gradients")][300, 5] = schema.FLOAT8_NAN_BITS
    group[schema.hook_array_path(HOOK, "activation_scale")][700] = 0.0
    result = run_cli("verify", path)
    assert result.exit_code == 1
    assert (
        f"hooks/{HOOK}/gradients chunk 1 (rows 256-511): 1 rows with NaN or Inf values "
        "(unwritten rows?): rows 300" in result.stderr
    )
    assert (
        f"hooks/{HOOK}/activation_scale chunk 2 (rows 512-767): 1 rows with activation scales "
        "that are not a power of two from 2^-126 to 2^126: rows 700" in result.stderr
    )


def test_info_describes_a_float8_store(stores, run_cli):
    result = run_cli("info", stores["float8"], "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["activation_dtype"] == "float8" and info["gradient_encoding"] == "scaled-float8"
    assert info["format_version"] == 2


def test_a_saekit_before_float8_refuses_the_store_and_reads_the_others(
    stores, run_cli, monkeypatch
):
    monkeypatch.setattr(schema, "FORMAT_VERSION", 1)  # what saekit read before float8
    before = snapshot(stores["float8"])
    assert_one_line_error(
        run_cli("info", stores["float8"]), "format version 2", "newer than the 1", "upgrade saekit"
    )
    assert snapshot(stores["float8"]) == before
    assert run_cli("info", stores["float16"]).exit_code == 0


V1_ATTRIBUTES = {  # what saekit wrote on the float arrays of a store before float8
    "activations": {"logical_dtype": "float16"},
    "gradients": {"encoding": "scaled-float16", "decode": "gradients / gradient_scale[:, None]"},
}


def test_a_store_written_before_float8_is_still_read(tmp_path, run_cli):
    path = tmp_path / "v1.zarr"
    write_synthetic_store(path, synthetic_spec(1024, holdout_rows=256))
    new = ActivationStore.open(path).read(["activations", "gradients"], 0, 1024, HOOK)
    for array, attributes in V1_ATTRIBUTES.items():
        metadata = path / "hooks" / HOOK / array / "zarr.json"
        document = json.loads(metadata.read_text())
        document["attributes"] = attributes
        metadata.write_text(json.dumps(document))
    store = ActivationStore.open(path)
    assert store.spec.format_version == 1
    old = store.read(["activations", "gradients"], 0, 1024, HOOK)
    assert all(np.array_equal(old[name], new[name]) for name in new)
    assert run_cli("verify", path).exit_code == 0
    lie = json.loads((path / "hooks" / HOOK / "gradients" / "zarr.json").read_text())
    lie["attributes"]["encoding"] = "scaled-float8"  # present, so it must agree
    (path / "hooks" / HOOK / "gradients" / "zarr.json").write_text(json.dumps(lie))
    refused = run_cli("info", path)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert 'has encoding "scaled-float8" but the root attributes mean' in refused.stderr


@pytest.mark.slow  # two harvests, a training run and an eval
def test_harvest_train_and_eval_a_float8_store(tiny_lm, corpus, tmp_path, run_cli):
    """`sae harvest --dtype float8` stores the LM's rows within the bound; an SAE trained on it
    evaluates (NMSE, loss added) as on a float32 harvest of the same tokens, within the
    quantisation noise."""
    hook = "blocks.1.hook_resid_post"
    f32 = harvest_small_store(tiny_lm, corpus, tmp_path / "f32.zarr", dtype="float32")
    f8 = tmp_path / "f8.zarr"
    harvest = run_cli(
        "harvest", "--model", tiny_lm, "--dataset", corpus, "--out", f8, "--hook", hook,
        "--tokens", "4800", "--holdout-tokens", "960", "--context-size", "32",
        "--batch-size", "8", "--rows-per-chunk", "256", "--chunks-per-block", "2",
        "--dtype", "float8",
    )  # fmt: skip
    assert harvest.exit_code == 0, harvest.stderr
    assert run_cli("verify", f8).exit_code == 0
    got = ActivationStore.open(f8).read_tensors(["activations", "gradients"], 0, 4800)
    want = ActivationStore.open(f32).read_tensors(["activations", "gradients"], 0, 4800)
    for name in ("activations", "gradients"):
        assert relative_row_error(got[name], want[name]).max() <= ROW_ERROR, name

    run = tmp_path / "run"
    trained = run_cli(
        "train", "--store", f8, "--out", run, "--sae", "topk:k=8,latents=128",
        "--batch-size", "256", "--tokens", str(256 * 30),
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    reports = {}
    for name, store in (("f8", f8), ("f32", f32)):
        out = tmp_path / f"report-{name}"
        evaluated = run_cli("eval", run, "--out", out, "--store", store, "--tokens", "320")
        assert evaluated.exit_code == 0, evaluated.stderr
        reports[name] = json.loads((out / "report.json").read_text())["rows"][0]
    nmse = {name: row["offline"]["nmse"] for name, row in reports.items()}
    assert nmse["f32"] < 0.5, "the SAE learned something"
    assert abs(nmse["f8"] - nmse["f32"]) < 0.01, nmse
    assert reports["f8"]["online"]["loss_added"] == pytest.approx(
        reports["f32"]["online"]["loss_added"], abs=0.05
    )
