"""The SAELens export loads in SAELens itself and computes what saekit computes.

SAELens is not a saekit dependency: this test runs only when SAEKIT_SAELENS_PYTHON names a
Python that can `import sae_lens` (e.g. a separate virtualenv:
`python -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens`).
"""

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import TrainRequest, TrainSettings, load_sae, parse_spec, train
from train_helpers import ALL_VARIANTS, EXPORT_SOURCE, EXPORT_TARGET, EXPORT_WIDTH, saved

SAELENS_PYTHON = os.environ.get("SAEKIT_SAELENS_PYTHON")
AUGMENTED_GSAE = "gsae:k=4,latents=96,selection_only=false"  # the g-SAE with plain-mode gains
pytestmark = pytest.mark.skipif(not SAELENS_PYTHON, reason="SAEKIT_SAELENS_PYTHON is not set")

SCRIPT = """
import sys
from safetensors.torch import load_file, save_file
from sae_lens import SAE
x = load_file(sys.argv[1])["x"]
outputs = {}
for directory in sys.argv[3:]:
    sae = SAE.load_from_disk(directory)
    outputs[directory] = sae.decode(sae.encode(x)).detach().contiguous()
save_file({str(i): out for i, out in enumerate(outputs.values())}, sys.argv[2])
"""


def test_every_export_loads_in_saelens_and_reconstructs_the_same(tmp_path):
    write_synthetic_store(tmp_path / "store.zarr", synthetic_spec(4096, holdout_rows=512))
    specs = [*ALL_VARIANTS, AUGMENTED_GSAE]
    request = TrainRequest(
        store=str(tmp_path / "store.zarr"),
        hook=None,
        out=tmp_path / "run",
        specs=[parse_spec(text) for text in specs],
        settings=TrainSettings(tokens=4096, batch_size=256),
    )
    directories = list(train(request).sae_dirs.values())
    saes = [load_sae(directory) for directory in directories]
    (augmented,) = [sae for sae in saes if sae.cfg.options.get("selection_only") is False]
    gain = augmented.activation.plain_gain()
    assert (gain - 1).abs().max() > 0.01, "the g-SAE's gains must be learnt for the test to tell"
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 10
    save_file({"x": x}, tmp_path / "x.safetensors")
    exports = [str(d / "saelens") for d in directories]
    files = [tmp_path / "x.safetensors", tmp_path / "out.safetensors"]
    subprocess.run([SAELENS_PYTHON, "-c", SCRIPT, *files, *exports], check=True)
    outputs = load_file(tmp_path / "out.safetensors")
    for i, sae in enumerate(saes):
        expected = sae(x).detach()
        torch.testing.assert_close(outputs[str(i)], expected, rtol=1e-4, atol=1e-4)


TRANSCODER_SCRIPT = """
import sys
from safetensors.torch import load_file, save_file
from sae_lens import SAE
x = load_file(sys.argv[1])["x"]
outputs = {}
for i, directory in enumerate(sys.argv[3:]):
    sae = SAE.load_from_disk(directory)
    outputs[str(i)] = sae(x).detach().contiguous()
save_file(outputs, sys.argv[2])
"""


def test_transcoders_and_matryoshka_load_in_saelens_and_compute_the_same(tmp_path):
    """ReLU, JumpReLU (and Gated, BatchTopK as JumpReLU) transcoders with and without a skip
    path, and a Matryoshka SAE as a JumpReLU: SAELens' own classes on the exported folders."""
    specs = [
        f"{activation},hooks={EXPORT_SOURCE},target={EXPORT_TARGET}{skip}"
        for activation in ("relu:latents=16", "jumprelu:latents=16", "gated:latents=16",
                           "batchtopk:k=3,latents=16")
        for skip in ("", ",skip=true")
    ] + ["matryoshka:k=2,latents=16,groups=4+4+8,hooks=" + EXPORT_SOURCE]  # fmt: skip
    saes = [saved(tmp_path, text) for text in specs]
    x = torch.randn(32, EXPORT_WIDTH, generator=torch.Generator().manual_seed(0)) * 3
    save_file({"x": x}, tmp_path / "x.safetensors")
    files = [tmp_path / "x.safetensors", tmp_path / "out.safetensors"]
    folders = [str(directory / "saelens") for _, directory in saes]
    subprocess.run([SAELENS_PYTHON, "-c", TRANSCODER_SCRIPT, *files, *folders], check=True)
    outputs = load_file(tmp_path / "out.safetensors")
    for i, (sae, _) in enumerate(saes):
        torch.testing.assert_close(outputs[str(i)], sae(x).detach(), rtol=1e-4, atol=1e-4)
