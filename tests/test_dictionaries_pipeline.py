"""Every shape end to end through the command line: `sae harvest` at the MLPs' inputs and
outputs and the streams before them, one `sae train` of transcoders, a skip transcoder, a
crosscoder, a cross-layer transcoder and a Matryoshka SAE, then `sae eval` (per target hook,
per layer, per prefix; spliced into the LM) and `sae inspect` (a dashboard for each)."""

import json

import pytest

from saekit.cli import main

pytestmark = pytest.mark.slow

HOOKS = [
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_resid_mid",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_mlp_out",
    "blocks.1.mlp.hook_in",
]
MLP_IN, MLP_OUT = "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"
SPECS = {
    "transcoder": f"batchtopk:k=4,latents=64,hooks={MLP_IN},target={MLP_OUT}",
    "skip": f"jumprelu:latents=64,hooks={MLP_IN},target={MLP_OUT},skip=true",
    "crosscoder": "crosscoder:k=8,latents=64,hooks=blocks.0.hook_mlp_out+blocks.1.hook_mlp_out",
    "clt": "relu:latents=32,layers=0-1,l1=2",
    "matryoshka": f"matryoshka:k=4,latents=64,groups=16+16+32,hooks={MLP_OUT}",
}


def sae(*args) -> None:
    """Run `sae ARGS` in this process; it must succeed."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    assert exit_.value.code in (0, None), args[0]


@pytest.fixture(scope="module")
def pipeline(tiny_lm, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    store, run = root / "store.zarr", root / "run"
    hook_args = [arg for hook in HOOKS for arg in ("--hook", hook)]
    sae(
        "harvest", "--model", tiny_lm, "--dataset", corpus, *hook_args, "--out", store,
        "--tokens", 8000, "--holdout-tokens", 1024, "--context-size", 32, "--batch-size", 8,
        "--rows-per-chunk", 512, "--chunks-per-block", 2,
    )  # fmt: skip
    spec_args = [arg for spec in SPECS.values() for arg in ("--sae", spec)]
    sae("train", "--store", store, "--out", run, *spec_args, "--tokens", 16384,
        "--batch-size", 256)  # fmt: skip
    sae("eval", run, "--out", root / "report", "--inspect", "--tokens", 512)
    return root, json.loads((root / "report" / "report.json").read_text())


def rows(report, variant=None):
    return {row["name"]: row for row in report["rows"] if variant in (None, row["variant"])}


def test_every_shape_is_trained_evaluated_and_spliced(pipeline):
    root, report = pipeline
    by_label = {row["label"]: row for row in report["rows"]}
    assert all(row["online"] is not None for row in report["rows"] if row["mode"] != "batch"), (
        "every dictionary but batch-mode CLTs is spliced into the LM"
    )
    crosscoder = next(r for r in report["rows"] if r["name"].startswith("topk-k8-64-blocks.0-1"))
    assert set(crosscoder["offline"]["per_hook"]) == {"blocks.0.hook_mlp_out", MLP_OUT}
    (clt,) = [r for r in report["rows"] if "clt0-1" in r["name"]]
    per_layer = clt["offline"]["l0_per_layer"]
    assert len(per_layer) == 2 and sum(per_layer) == pytest.approx(clt["offline"]["l0"])
    assert set(clt["offline"]["per_hook"]) == {"blocks.0.hook_mlp_out", MLP_OUT}
    matryoshka = next(r for r in report["rows"] if r["variant"] == "matryoshka")
    prefixes = matryoshka["offline"]["prefix_nmse"]
    assert list(prefixes) == ["16", "32", "64"]
    assert prefixes["64"] == pytest.approx(matryoshka["offline"]["nmse"], rel=1e-6)
    assert prefixes["16"] >= prefixes["64"], "more latents reconstruct at least as well"
    markdown = (root / "report" / "report.md").read_text()
    for section in ("## Each target hook", "## Active latents per layer", "## Matryoshka prefixes"):
        assert section in markdown
    assert any("[threshold]" in label for label in by_label)


def test_the_saved_dictionaries_say_their_shape_and_exports(pipeline):
    root, _ = pipeline
    saes = root / "run" / "saes"
    for directory in saes.iterdir():
        cfg = json.loads((directory / "cfg.json").read_text())
        exports = json.loads((directory / "exports.json").read_text())
        if "clt" in directory.name:
            assert (
                cfg["shape"]["layers"] == [0, 1] and exports["circuit_tracer"] == "circuit_tracer"
            )
        if directory.name.startswith("batchtopk"):  # the transcoder: JumpReLU in both formats
            assert exports["saelens"] == "saelens"
            assert exports["circuit_tracer"] == "circuit_tracer/layer_1.safetensors"
            assert cfg["shape"]["targets"] == [[MLP_OUT, 64]]


def test_inspect_builds_a_dashboard_for_every_shape(pipeline):
    root, report = pipeline
    site = root / "report" / "inspect"
    manifest = json.loads((site / "inspect.json").read_text())
    names = {sae["name"] for sae in manifest["saes"]}
    assert names == {row["name"] for row in report["rows"]}
    transcoder = next(sae for sae in manifest["saes"] if sae["name"].startswith("batchtopk"))
    assert transcoder["logits"], "a transcoder writes the stream's width: logit effects exist"
    assert transcoder["shape"] == f"{MLP_IN} -> {MLP_OUT}"
