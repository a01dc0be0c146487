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


# gradients at some hooks only: the MLP outputs of a transcoder's pairs, none at their inputs
SOME_GRADIENTS = (
    "--hook", "blocks.*.mlp.hook_in", "--hook", "blocks.0-1.hook_mlp_out",
    "--gradients", "blocks.*.hook_mlp_out",
)  # fmt: skip


@pytest.mark.slow  # kill -9 of `sae harvest` child processes, then reruns
@pytest.mark.parametrize("extra", [(), SOME_GRADIENTS], ids=["every hook", "some gradients"])
def test_kill_minus_nine_then_rerun_gives_a_bit_identical_store(
    run_cli, tiny_lm, corpus, tmp_path, extra
):
    reference = tmp_path / "reference.zarr"
    with count_events() as events:
        assert run_cli(*harvest_args(tiny_lm, corpus, reference, *extra)).exit_code == 0
    killed = tmp_path / "killed.zarr"
    kill_at = len(events) // 2  # the harvest dies half-way through its writes, mid-block
    code = "from saekit.cli import main; main(sys.argv[1:])"
    args = harvest_args(tiny_lm, corpus, killed, *extra)
    command = child_command(kill_at, code, *args, torn=True)
    assert subprocess.run(command, stdout=subprocess.DEVNULL).returncode == KILLED
    rows_at_kill = committed(killed)
    assert 0 < rows_at_kill < 6000
    rerun = run_cli(*args)
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


@pytest.mark.slow  # a harvest, then a resumed one
def test_gradients_at_some_hooks_are_recorded_shown_and_kept_on_resume(
    run_cli, tiny_lm, corpus, tmp_path
):
    out = tmp_path / "s.zarr"
    result = run_cli(*harvest_args(tiny_lm, corpus, out, *SOME_GRADIENTS))
    assert result.exit_code == 0, result.stderr
    assert "blocks.0.mlp.hook_in (d=64, no gradients)" in result.stdout
    store = ActivationStore.open(out)
    expected = [
        "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_in",
        "blocks.1.mlp.hook_in", "blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out",
    ]  # fmt: skip
    assert store.hooks == expected, "patterns expanded in place, in layer order"
    assert [h for h in store.hooks if store.has_gradients(h)] == expected[-2:]
    info = run_cli("info", out)
    assert "blocks.0.mlp.hook_in: d=64, activations float16, no gradients" in info.stdout
    assert "blocks.1.hook_mlp_out: d=64, activations float16, gradients scaled-float16" in (
        info.stdout
    )
    hooks = json.loads(run_cli("info", out, "--json").stdout)["hooks"]
    assert hooks["blocks.1.mlp.hook_in"] == {"d": 64, "gradients": False}
    assert run_cli("verify", out).exit_code == 0

    before = snapshot(out)
    same = list(SOME_GRADIENTS)
    same[same.index("blocks.*.hook_mlp_out")] = "blocks.0-1.hook_mlp_out"  # the same hooks
    assert run_cli(*harvest_args(tiny_lm, corpus, out, *same)).exit_code == 0
    everywhere = harvest_args(tiny_lm, corpus, out, *SOME_GRADIENTS[:4])
    refused = "hooks.blocks.0.mlp.hook_in.gradients (store: False, now: True)"
    assert_one_line_error(run_cli(*everywhere), "other settings", refused)
    none = harvest_args(tiny_lm, corpus, out, *SOME_GRADIENTS[:4], "--no-gradients")
    refused = "hooks.blocks.0.hook_mlp_out.gradients (store: True, now: False)"
    assert_one_line_error(run_cli(*none), "other settings", refused)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("locks")} == {
        k: v for k, v in before.items() if not k.startswith("locks")
    }


@pytest.mark.slow  # a harvest cut short, then resumed
def test_a_store_from_before_weights_were_recorded_resumes(run_cli, tiny_lm, corpus, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(*harvest_args(tiny_lm, corpus, out)).exit_code == 0
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["attributes"]["identity"].pop("weights").startswith("unfolded, uncentred")
    (out / "zarr.json").write_text(json.dumps(meta))
    assert run_cli(*harvest_args(tiny_lm, corpus, out)).exit_code == 0
    assert "weights" not in ActivationStore.open(out).spec.identity


def test_gradients_and_no_gradients_together_are_refused(run_cli, tiny_lm, corpus, tmp_path):
    args = harvest_args(tiny_lm, corpus, tmp_path / "new.zarr")
    both = [*args, "--gradients", "blocks.0.hook_resid_post", "--no-gradients"]
    assert_one_line_error(run_cli(*both), "--gradients PATTERN", "--no-gradients", "one of them")
    assert not (tmp_path / "new.zarr").exists()


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
        (
            {"--hook": "blocks.*.hook_resid_psot"},
            [
                "--hook 'blocks.*.hook_resid_psot' matches none of the hooks of model",
                "did you mean blocks.*.hook_resid_post",
            ],
        ),
        (
            {"--hook": "blocks.0-5.hook_resid_pre"},
            ["matches nothing for 2-5 of the range 0-5", "no blocks.2.hook_resid_pre"],
        ),
        ({"--hook": "blocks.1-0.hook_resid_pre"}, ["the range 1-0 runs backwards"]),
        (
            {"--hook": "blocks.*.hook_resid_post"},  # and the second --hook names layer 1 again
            [
                "a hook is given twice: blocks.1.hook_resid_post",
                "--hook 'blocks.*.hook_resid_post' and --hook 'blocks.1.hook_resid_post'",
            ],
        ),
        ({"--hook": "blocks.0.hook_mlp_in"}, ["switched off", "blocks.0.mlp.hook_in"]),
        (
            {"--gradients": "blocks.*.hook_mlp_out"},
            [
                "--gradients 'blocks.*.hook_mlp_out' matches none of the harvested hooks",
                "did you mean blocks.*.hook_resid_post",
            ],
        ),
        (
            {"--gradients": "blocks.0.hook_resid_pre"},
            ["--gradients 'blocks.0.hook_resid_pre' is none of the harvested hooks"],
        ),
        ({"--gradients": "blocks.[.hook_resid_post"}, ["matches none of the harvested hooks"]),
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
