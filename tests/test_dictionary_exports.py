"""Exports of every shape compute what saekit computes: SAELens transcoders (ReLU, JumpReLU,
skip) and Matryoshka SAEs as JumpReLU, circuit-tracer per-layer transcoders and cross-layer
transcoders — each evaluated here by a plain re-implementation of the format's forward pass
from its files alone (the libraries themselves: tests/test_train_saelens.py and
tests/test_circuit_tracer.py, opt-in), on raw activations of dictionaries trained at other
scales; a top-k transcoder is refused with the reason."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import assert_one_line_error
from train_helpers import EXPORT_SOURCE, EXPORT_TARGET, raw_inputs, saved

D = 8
SRC, DST = EXPORT_SOURCE, EXPORT_TARGET


def jumprelu_or_relu(h, threshold):
    return h.relu() if threshold is None else h.relu() * (h > threshold)


TRANSCODERS = [
    ("relu:latents=16", "transcoder"),
    ("relu:latents=16,skip=true", "skip_transcoder"),
    ("jumprelu:latents=16", "jumprelu_transcoder"),
    ("jumprelu:latents=16,skip=true", "jumprelu_skip_transcoder"),
    ("gated:latents=16", "jumprelu_transcoder"),
    ("batchtopk:k=3,latents=16", "jumprelu_transcoder"),
    ("feature-choice:k=3,latents=16,skip=true", "jumprelu_skip_transcoder"),
]


@pytest.mark.parametrize(("activation", "architecture"), TRANSCODERS)
def test_saelens_transcoders_compute_what_saekit_computes(tmp_path, activation, architecture):
    sae, directory = saved(tmp_path, f"{activation},hooks={SRC},target={DST}")
    cfg = json.loads((directory / "saelens" / "cfg.json").read_text())
    w = load_file(directory / "saelens" / "sae_weights.safetensors")
    assert cfg["architecture"] == architecture and cfg["apply_b_dec_to_input"] is False
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["hook_name_out"]) == (SRC, DST)
    x = raw_inputs(sae)
    f = jumprelu_or_relu(x @ w["W_enc"] + w["b_enc"], w.get("threshold"))
    y = f @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if "W_skip" in w else 0)
    torch.testing.assert_close(y, sae(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("activation", "_"), TRANSCODERS)
def test_circuit_tracer_transcoders_compute_what_saekit_computes(tmp_path, activation, _):
    sae, directory = saved(tmp_path, f"{activation},hooks={SRC},target={DST}")
    assert json.loads((directory / "exports.json").read_text())["circuit_tracer"].endswith(
        "layer_1.safetensors"
    )
    w = load_file(directory / "circuit_tracer" / "layer_1.safetensors")
    assert "k" not in w and all(t.is_contiguous() for t in w.values())
    x = raw_inputs(sae)
    h = F.linear(x, w["W_enc"], w["b_enc"])
    threshold = w.get("activation_function.threshold")
    f = h.relu() if threshold is None else h * (h > threshold)  # its JumpReLU has no ReLU
    y = f @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if "W_skip" in w else 0)
    torch.testing.assert_close(y, sae(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "activation", ["relu:latents=6", "jumprelu:latents=6", "batchtopk:k=2,latents=6"]
)
def test_circuit_tracer_cross_layer_transcoders_compute_what_saekit_computes(tmp_path, activation):
    sae, directory = saved(tmp_path, f"{activation},layers=0-1")
    out = directory / "circuit_tracer"
    config = json.loads((out / "config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder"
    assert config["feature_input_hook"] == "hook_resid_mid"
    x = raw_inputs(sae)
    layers = [load_file(out / f"W_enc_{i}.safetensors") for i in range(2)]
    decoders = [load_file(out / f"W_dec_{i}.safetensors")[f"W_dec_{i}"] for i in range(2)]
    assert decoders[0].shape == (6, 2, D) and decoders[1].shape == (6, 1, D), "source-major"
    acts = []
    for i, w in enumerate(layers):
        h = x[:, i * D : (i + 1) * D] @ w[f"W_enc_{i}"].T + w[f"b_enc_{i}"]
        threshold = w.get(f"threshold_{i}")
        acts.append(h.relu() if threshold is None else h * (h > threshold))
    y = torch.cat(
        [
            sum(acts[s] @ decoders[s][:, t - s, :] for s in range(t + 1)) + layers[t][f"b_dec_{t}"]
            for t in range(2)
        ],
        dim=1,
    )
    torch.testing.assert_close(y, sae(x).detach(), rtol=1e-4, atol=1e-4)


def test_a_matryoshka_sae_goes_to_saelens_as_a_jumprelu_with_its_prefixes(tmp_path):
    sae, directory = saved(tmp_path, "matryoshka:k=2,latents=16,groups=4+4+8")
    cfg = json.loads((directory / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["matryoshka_widths"] == [4, 8, 16]
    w = load_file(directory / "saelens" / "sae_weights.safetensors")
    x = raw_inputs(sae)
    f = jumprelu_or_relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], w["threshold"])
    torch.testing.assert_close(f @ w["W_dec"] + w["b_dec"], sae(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "text", [f"topk:k=3,latents=16,hooks={SRC},target={DST}", "topk:k=2,latents=6,layers=0-1"]
)
def test_top_k_transcoders_are_not_exported_and_say_why(tmp_path, text):
    _, directory = saved(tmp_path, text)
    exports = json.loads((directory / "exports.json").read_text())
    assert "top-k" in exports["circuit_tracer"], exports
    for name in ("saelens", "circuit_tracer"):
        assert exports[name].startswith("not exported:"), exports
        assert not (directory / name).exists() or not any((directory / name).iterdir())


def test_sae_export_assembles_a_circuit_tracer_transcoder_set(tmp_path, run_cli):
    layer1 = saved(tmp_path, f"relu:latents=16,hooks={SRC},target={DST}")[1]
    layer0 = saved(
        tmp_path, "relu:latents=16,hooks=blocks.0.mlp.hook_in,target=blocks.0.hook_mlp_out"
    )[1]
    out = tmp_path / "set"
    assert_one_line_error(
        run_cli("export", layer1, "--circuit-tracer", out), "layers [0] have none"
    )
    assert not out.exists()
    result = run_cli("export", layer1, layer0, "--circuit-tracer", out)
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (
        "mlp.hook_in",
        "hook_mlp_out",
    )
    assert config["transcoders"] == ["layer_0.safetensors", "layer_1.safetensors"]
    for layer, directory in ((0, layer0), (1, layer1)):
        copied = load_file(out / f"layer_{layer}.safetensors")
        original = load_file(directory / "circuit_tracer" / f"layer_{layer}.safetensors")
        assert all(torch.equal(copied[k], original[k]) for k in original)
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "thesis.txt").write_text("mine")
    assert_one_line_error(
        run_cli("export", layer1, layer0, "--circuit-tracer", unrelated),
        "is not a circuit-tracer transcoder set saekit wrote",
    )
    assert [p.name for p in unrelated.iterdir()] == ["thesis.txt"]
    sae_only = saved(tmp_path, "relu:latents=16")[1]
    assert_one_line_error(
        run_cli("export", sae_only, "--circuit-tracer", tmp_path / "x"), "no circuit-tracer"
    )
