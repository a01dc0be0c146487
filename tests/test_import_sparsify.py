"""Sparse coders made with sparsify's own `SparseCoder` and saved with its `save_to_disk` are
imported by saekit and compute sparsify's own codes and outputs (to 1e-5).

Opt-in: runs when SAEKIT_SPARSIFY_PYTHON names a Python that can `import sparsify`
(eai-sparsify 1.3: `python -m venv /tmp/sparsify-venv && /tmp/sparsify-venv/bin/pip install
torch==2.13.0 eai-sparsify`).
"""

import torch

from foreign_helpers import assert_same, library_outputs, library_python, run_library
from saekit.train import load_sae

D = 16
SCRIPT = """
import json
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig

x = load_file(sys.argv[1])["x"]
out = Path(sys.argv[2])
torch.manual_seed(0)
# case: (hookpoint, config)
cases = {
    "sae": ("layers.0", dict(k=5, num_latents=40)),
    "sae_skip": ("layers.0", dict(k=5, num_latents=40, skip_connection=True)),
    "transcoder": ("layers.0.mlp", dict(k=5, num_latents=40, transcode=True)),
    "skip_transcoder": ("h.0.mlp", dict(k=5, num_latents=40, transcode=True,
                                        skip_connection=True)),
    "old_transcoder": ("transformer.h.0.mlp", dict(k=5, expansion_factor=3)),
}
outputs = {}
for case, (hookpoint, config) in cases.items():
    coder = SparseCoder(x.shape[1], SparseCoderConfig(**config))
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    folder = out / case / hookpoint
    coder.save_to_disk(folder)
    if case == "old_transcoder":  # sparsify before 2025-02: transcode was the run's setting
        cfg = json.loads((folder / "cfg.json").read_text())
        del cfg["transcode"]
        (folder / "cfg.json").write_text(json.dumps(cfg))
        (out / case / "config.json").write_text(json.dumps({"transcode": True}))
    coder = SparseCoder.load_from_disk(folder)  # sparsify's own reading of the folder
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x)
        codes = torch.zeros(len(x), coder.num_latents).scatter_(1, top_indices, top_acts)
        outputs[f"codes_{case}"] = codes
        outputs[f"out_{case}"] = coder(x).sae_out.contiguous()
save_file(outputs, out / "outputs.safetensors")
"""
# case: (its folder, the hooks saekit maps it to, whether it has a skip path)
CASES = {
    "sae": ("layers.0", ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post"), False),
    "sae_skip": ("layers.0", ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post"), True),
    "transcoder": ("layers.0.mlp", ("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"), False),
    "skip_transcoder": ("h.0.mlp", ("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"), True),
    "old_transcoder": (
        "transformer.h.0.mlp",
        ("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"),
        False,
    ),
}


def test_every_sparsify_coder_computes_sparsify_own_codes_and_outputs(tmp_path):
    python = library_python("SAEKIT_SPARSIFY_PYTHON", "sparsify")
    x_BD = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2
    folder = run_library(python, SCRIPT, tmp_path, x_BD)
    outputs = library_outputs(folder)
    for case, (hookpoint, (source, target), skip) in CASES.items():
        directory = folder / case / hookpoint
        assert_same(directory, outputs, case, x_BD)
        sae = load_sae(directory)
        assert (sae.shape.source_hooks, sae.shape.target_hooks) == ((source,), (target,)), case
        assert sae.shape.skip is skip and sae.cfg.variant == "topk" and sae.cfg.k == 5
        assert sae.cfg.imported_from["library"] == "sparsify"
    # the pre-2025 transcoder centred its input by b_dec: saekit keeps it as the input bias
    old = load_sae(folder / "old_transcoder" / "transformer.h.0.mlp")
    torch.testing.assert_close(old.b_in, old.b_dec)
