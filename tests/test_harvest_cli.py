"""`sae harvest` end to end: resume after kill -9 is bit-identical; bad inputs touch nothing."""

import json
import subprocess

import pytest
import torch

from helpers import assert_one_line_error, assert_same_store, small_corpus, snapshot
from kill_switch import KILLED, child_command, count_events
from saekit.cache_format import ActivationStore


def harvest_args(tiny_lm, corpus, out, *extra):
    return [
        "harvest", "--model", str(tiny_lm), "--dataset", str(corpus), "--out", str(out),
        "--hook", "blocks.0.hook_resid_post", "--hook", "blocks.1.hook_resid_post",
        "--tokens", "6000", "--holdout-tokens", "600", "--context-size", "24",
        "--batch-size", "4", "--rows-per-chunk", "128", "--chunks-per-block", "2", *extra,
    ]  # fmt: skip


def committed(path) -> int:
    try:
        return json.loads((path / "zarr.json").read_text())["attributes"]["n_rows_committed"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return 0


def test_cli_harvest_writes_a_verifiable_store(run_cli, tiny_lm, corpus, tmp_path):
    result = run_cli(*harvest_args(tiny_lm, corpus, tmp_path / "s.zarr"))
    assert result.exit_code == 0, result.stderr
    assert "harvest complete: 6,000 tokens" in result.stdout
    store = ActivationStore.open(tmp_path / "s.zarr")
    assert store.complete
    assert store.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert "sae harvest --model" in store.spec.provenance["command"]
    assert run_cli("verify", tmp_path / "s.zarr").exit_code == 0


@pytest.mark.slow  # kill -9 of `sae harvest` child processes, then reruns
def test_kill_minus_nine_then_rerun_gives_a_bit_identical_store(run_cli, tiny_lm, corpus, tmp_path):
    reference = tmp_path / "reference.zarr"
    with count_events() as events:
        assert run_cli(*harvest_args(tiny_lm, corpus, reference)).exit_code == 0
    killed = tmp_path / "killed.zarr"
    kill_at = len(events) // 2  # the harvest dies half-way through its writes, mid-block
    code = "from saekit.cli import main; main(sys.argv[1:])"
    command = child_command(kill_at, code, *harvest_args(tiny_lm, corpus, killed), torn=True)
    assert subprocess.run(command, stdout=subprocess.DEVNULL).returncode == KILLED
    rows_at_kill = committed(killed)
    assert 0 < rows_at_kill < 6000
    rerun = run_cli(*harvest_args(tiny_lm, corpus, killed))
    assert rerun.exit_code == 0, rerun.stderr
    assert_same_store(reference, killed)


@pytest.mark.slow  # a whole CLI harvest before the refusal
def test_a_different_configuration_is_refused(run_cli, tiny_lm, corpus, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(*harvest_args(tiny_lm, corpus, out)).exit_code == 0
    before = snapshot(out)
    changed = harvest_args(tiny_lm, corpus, out, "--seed", "3", "--dtype", "float32")
    assert_one_line_error(run_cli(*changed), "other settings", "identity.seed", "activation_dtype")
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"--model": "{tmp}/nomodel"}, ["not a Hugging Face model directory"]),
        ({"--model": "nobody/no-such-model"}, ["cannot load model nobody/no-such-model"]),
        (
            {"--hook": "blocks.0.hook_resid_psot"},
            ["no hook 'blocks.0.hook_resid_psot'", "did you mean blocks.0.hook_resid_post"],
        ),
        ({"--hook": "blocks.0.attn.hook_pattern"}, ["not [batch, position, d]"]),
        ({"--dataset": "{tmp}/empty.txt"}, ["holds no text"]),
        ({"--dataset": "{tmp}/missing.txt"}, ["does not exist"]),
        ({"--dataset": "{tmp}/broken.parquet"}, ["cannot read"]),
        ({"--dataset": "{tmp}/records.jsonl"}, ["has no 'text' field", "--text-column"]),
        ({"--context-size": "4096"}, ["above the model's context of 128"]),
        ({"--tokens": "0"}, ["--tokens must be positive"]),
        ({"--tokens": "-5"}, ["--tokens must be positive"]),
        ({"--holdout-tokens": "9000"}, ["leaves no training tokens"]),
        ({"--out": "{tmp}/a_file.txt"}, ["is a file"]),
        ({"--out": "{tmp}/photos"}, ["not a saekit activation store"]),
        ({"--dtype": "int8"}, ["--dtype must be one of"]),
        ({"--device": "tpu"}, ["--device must be auto, cpu, cuda (the current GPU) or cuda:N"]),
        ({"--device": "cuda:x"}, ["--device must be auto, cpu, cuda"]),
    ],
)
def test_bad_inputs(run_cli, tiny_lm, corpus, tmp_path, change, fragments):
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    (tmp_path / "records.jsonl").write_text('{"body": "hello"}\n')
    (tmp_path / "a_file.txt").write_text("keep me")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    args = harvest_args(tiny_lm, corpus, tmp_path / "new.zarr")
    for option, value in change.items():
        if option in args:
            args[args.index(option) + 1] = value.format(tmp=tmp_path)
        else:
            args += [option, value]
    before = snapshot(tmp_path)
    assert_one_line_error(run_cli(*args), *fragments)
    assert snapshot(tmp_path) == before, "nothing written or damaged"
    assert not (tmp_path / "new.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_where_there_is_none(run_cli, tiny_lm, corpus, tmp_path):
    args = harvest_args(tiny_lm, corpus, tmp_path / "new.zarr", "--device", "cuda")
    assert_one_line_error(run_cli(*args), "no CUDA GPU")
    assert not (tmp_path / "new.zarr").exists()


def test_a_dataset_smaller_than_tokens_finishes_the_store_and_a_rerun_changes_nothing(
    run_cli, tiny_lm, corpus, tmp_path
):
    out = tmp_path / "s.zarr"
    args = harvest_args(tiny_lm, small_corpus(corpus, tmp_path / "few.txt"), out)
    args[args.index("--tokens") + 1] = str(10**15)
    args[args.index("--holdout-tokens") + 1] = "240"
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "(the dataset ran out first)" in result.stdout
    store = ActivationStore.open(out)
    assert store.complete and 240 < store.n_rows_committed < 3000
    assert {store.array(p).shape[0] for p in store.array_paths} == {store.n_rows_committed}
    assert store.spec.layout.capacity_rows == -(-(10**15) // 24) * 24, "whole contexts asked for"
    chunks = len(list((out / "tokens" / "c").iterdir()))
    assert chunks == -(-store.n_rows_committed // 128), "no chunk beyond the rows written"
    assert run_cli("verify", out).exit_code == 0

    before = {k: v for k, v in snapshot(out).items() if not k.startswith("locks")}
    again = run_cli(*args)
    assert again.exit_code == 0, again.stderr
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("locks")} == before
