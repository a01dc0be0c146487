"""SAEs made with SAELens' own classes and saved with its own save functions are imported by
saekit and compute SAELens' own codes and outputs (to 1e-5).

Opt-in: runs when SAEKIT_SAELENS_PYTHON names a Python that can `import sae_lens` (sae-lens
6.54: `python -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0
sae-lens`).
"""

import json

import torch

from foreign_helpers import assert_same, library_outputs, library_python, run_library
from saekit.train import load_sae

D = 16  # the script takes its width from x; 40 latents
SCRIPT = """
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
from sae_lens.saes import *
from sae_lens.saes.sae import SAEMetadata

x = load_file(sys.argv[1])["x"]
out = Path(sys.argv[2])
D, F = x.shape[1], 40
E = int(sys.argv[3]) if len(sys.argv) > 3 else 12  # transcoders' output width
torch.manual_seed(0)
unprocessed = {"center_writing_weights": False}


def meta(hook="blocks.0.hook_resid_post", hook_out=None):
    values = {"hook_name": hook, "model_from_pretrained_kwargs": unprocessed}
    if hook_out:
        values["hook_name_out"] = hook_out
    return SAEMetadata(**values)


def randomise(sae):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name != "r_mag" else 0.2))
    return sae


tc = dict(d_in=D, d_sae=F, d_out=E, apply_b_dec_to_input=False,
          metadata=meta("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"))
saes = {
    "standard": StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, metadata=meta())),
    "standard_no_b_dec": StandardSAE(StandardSAEConfig(
        d_in=D, d_sae=F, apply_b_dec_to_input=False, metadata=meta())),
    "topk": TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=5, metadata=meta())),
    "topk_rescaled": TopKSAE(TopKSAEConfig(
        d_in=D, d_sae=F, k=5, rescale_acts_by_decoder_norm=True, metadata=meta())),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=F, metadata=meta())),
    "gated": GatedSAE(GatedSAEConfig(d_in=D, d_sae=F, metadata=meta())),
    "gated_no_b_dec": GatedSAE(GatedSAEConfig(
        d_in=D, d_sae=F, apply_b_dec_to_input=False, metadata=meta())),
    "transcoder": Transcoder(TranscoderConfig(**tc)),
    "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(**tc)),
    "jumprelu_transcoder": JumpReLUTranscoder(JumpReLUTranscoderConfig(**tc)),
    "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(**tc)),
}
outputs = {}
for case, sae in saes.items():
    randomise(sae).save_model(out / case)
# BatchTopK and Matryoshka train as their own classes and are saved as JumpReLU SAEs
training = {
    "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(
        d_in=D, d_sae=F, k=4, metadata=meta())),
    "matryoshka": MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D, d_sae=F, k=4, matryoshka_widths=[8, 16], metadata=meta())),
}
for case, sae in training.items():
    randomise(sae)
    sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    sae.save_inference_model(out / case)
for case in [*saes, *training]:
    sae = SAE.load_from_disk(out / case)  # SAELens' own reading of the folder
    with torch.no_grad():
        outputs[f"codes_{case}"] = sae.encode(x).contiguous()
        outputs[f"out_{case}"] = sae(x).contiguous()
save_file(outputs, out / "outputs.safetensors")
"""
# each case and the saekit variant it maps to
CASES = {
    "standard": "relu", "standard_no_b_dec": "relu", "topk": "topk", "topk_rescaled": "topk",
    "jumprelu": "jumprelu", "gated": "gated", "gated_no_b_dec": "gated", "transcoder": "relu",
    "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu", "batchtopk": "jumprelu", "matryoshka": "jumprelu",
}  # fmt: skip


def test_every_saelens_architecture_computes_saelens_own_codes_and_outputs(tmp_path):
    python = library_python("SAEKIT_SAELENS_PYTHON", "sae_lens")
    x_BD = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2
    folder = run_library(python, SCRIPT, tmp_path, x_BD)
    outputs = library_outputs(folder)
    for case, variant in CASES.items():
        assert_same(folder / case, outputs, case, x_BD)
        cfg = load_sae(folder / case).cfg
        assert cfg.imported_from["library"] == "sae_lens"
        assert (
            cfg.imported_from["version"]
            == json.loads((folder / case / "cfg.json").read_text())["metadata"]["sae_lens_version"]
        )
        assert cfg.variant == variant, case
    transcoder = load_sae(folder / "jumprelu_skip_transcoder")
    assert transcoder.shape.source_hooks == ("blocks.0.mlp.hook_in",)
    assert transcoder.shape.target_hooks == ("blocks.0.hook_mlp_out",)
    assert transcoder.shape.skip
    # the relu-like thresholds (random, some negative) were really exercised
    assert (load_sae(folder / "jumprelu").activation.log_threshold == float("-inf")).any()
