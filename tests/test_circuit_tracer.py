"""circuit-tracer loads saekit's per-layer transcoders (as a transcoder set, through
`sae export`) and cross-layer transcoders with its own loaders, and computes what saekit
computes.

circuit-tracer is not a saekit dependency: this test runs only when
SAEKIT_CIRCUIT_TRACER_PYTHON names a Python that can `import circuit_tracer` (e.g. a separate
virtualenv: `python -m venv /tmp/ct && /tmp/ct/bin/pip install torch==2.13.0 circuit-tracer`).
Its replacement model needs an official TransformerLens model name and that model's config from
the Hugging Face hub, which this offline machine cannot fetch, so the test exercises the loaders
and the transcoders' own forward passes, not attribution graphs.
"""

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from train_helpers import EXPORT_WIDTH, saved

CIRCUIT_TRACER_PYTHON = os.environ.get("SAEKIT_CIRCUIT_TRACER_PYTHON")
pytestmark = pytest.mark.skipif(
    not CIRCUIT_TRACER_PYTHON, reason="SAEKIT_CIRCUIT_TRACER_PYTHON is not set"
)

SCRIPT = """
import sys, torch
from safetensors.torch import load_file, save_file
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
x = load_file(sys.argv[1])
set_dir, clt_dir, out = sys.argv[2:5]
transcoders = load_transcoder_set(
    {0: f"{set_dir}/layer_0.safetensors", 1: f"{set_dir}/layer_1.safetensors"},
    scan="test", feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out",
    device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False,
)
outputs = {f"plt_{i}": transcoders.transcoders[i](x[f"plt_{i}"]) for i in (0, 1)}
clt = load_clt(clt_dir, device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
outputs["clt"] = clt(x["clt"])  # [layers, rows, d] in, [layers, rows, d] out
save_file({k: v.detach().contiguous() for k, v in outputs.items()}, out)
"""


@pytest.mark.parametrize("activation", ["relu:latents=16", "jumprelu:latents=16"])
def test_circuit_tracer_loads_transcoder_sets_and_clts(tmp_path, run_cli, activation):
    plts = [
        saved(tmp_path, f"{activation},hooks=blocks.{layer}.mlp.hook_in,"
              f"target=blocks.{layer}.hook_mlp_out,skip=true")
        for layer in (0, 1)
    ]  # fmt: skip
    clt, clt_dir = saved(tmp_path, f"{activation.replace('16', '6')},layers=0-1")
    set_dir = tmp_path / "set"
    assert run_cli("export", *(d for _, d in plts), "--circuit-tracer", set_dir).exit_code == 0
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(2, 24, EXPORT_WIDTH, generator=generator) * 3
    inputs = {"plt_0": rows[0].clone(), "plt_1": rows[1].clone(), "clt": rows}
    save_file(inputs, tmp_path / "x.safetensors")
    command = [
        CIRCUIT_TRACER_PYTHON, "-c", SCRIPT, tmp_path / "x.safetensors", set_dir,
        clt_dir / "circuit_tracer", tmp_path / "out.safetensors",
    ]  # fmt: skip
    subprocess.run([str(part) for part in command], check=True)
    outputs = load_file(tmp_path / "out.safetensors")
    for layer, (sae, _) in enumerate(plts):
        expected = sae(inputs[f"plt_{layer}"]).detach()
        torch.testing.assert_close(outputs[f"plt_{layer}"], expected, rtol=1e-4, atol=1e-4)
    expected = clt(torch.cat([rows[0], rows[1]], dim=1)).detach()
    got = torch.cat([outputs["clt"][0], outputs["clt"][1]], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
