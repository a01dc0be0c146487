"""Dictionaries trained and saved by dictionary_learning's own `trainSAE` (its `ae.pt` and
`config.json`, activation normalisation on) are imported by saekit and compute the library's
own codes and outputs (to 1e-5), BatchTopK and Matryoshka in both their threshold and their
batch modes.

Opt-in: runs when SAEKIT_DICTIONARY_LEARNING_PYTHON names a Python that can
`import dictionary_learning` (dictionary-learning 0.1.0: `python -m venv /tmp/dl-venv &&
/tmp/dl-venv/bin/pip install torch==2.13.0 dictionary-learning`).
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
from dictionary_learning.dictionary import (
    AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder)
from dictionary_learning.trainers import *
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
from dictionary_learning.trainers.matryoshka_batch_top_k import (
    MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKTrainer)
from dictionary_learning.trainers.top_k import AutoEncoderTopK
from dictionary_learning.training import trainSAE

x = load_file(sys.argv[1])["x"]
out = Path(sys.argv[2])
D, F, steps = x.shape[1], 40, 40
torch.manual_seed(0)
common = dict(steps=steps, activation_dim=D, dict_size=F, layer=0, lm_name="tiny",
              submodule_name="resid_post_layer_0", warmup_steps=2, seed=0, device="cpu")
sparse = dict(sparsity_warmup_steps=2)
topk = dict(k=4, threshold_start_step=5)
trainers = {  # case: (trainer config, its dictionary class)
    "standard": (dict(trainer=StandardTrainer, **common, **sparse), AutoEncoder),
    "gated": (dict(trainer=GatedSAETrainer, **common, **sparse, lr=1e-2), GatedAutoEncoder),
    "jumprelu": (dict(trainer=JumpReluTrainer, **common, **sparse), JumpReluAutoEncoder),
    "topk": (dict(trainer=TopKTrainer, **common, **topk), AutoEncoderTopK),
    "batchtopk": (dict(trainer=BatchTopKTrainer, **common, **topk), BatchTopKSAE),
    # a threshold never learnt (-1): every positive code passes (SAELens PR #608's trap)
    "batchtopk_unlearnt": (
        dict(trainer=BatchTopKTrainer, **common, k=4, threshold_start_step=10**6),
        BatchTopKSAE),
    "matryoshka": (dict(trainer=MatryoshkaBatchTopKTrainer, **common, **topk,
                        group_fractions=[0.25, 0.75]), MatryoshkaBatchTopKSAE),
}
shift = torch.randn(D) * 3  # a mean for the biases to learn


def data():
    while True:
        yield torch.randn(32, D) * 2 + shift


trainSAE(data(), [config for config, _ in trainers.values()], steps=steps, save_dir=str(out),
         normalize_activations=True, device="cpu")
outputs = {}
for i, (case, (_, cls)) in enumerate(trainers.items()):
    folder = out / case
    (out / f"trainer_{i}").rename(folder)
    if cls is AutoEncoder:  # keep the codes as saved (its default renormalises the decoder)
        ae = cls.from_pretrained(folder / "ae.pt", normalize_decoder=False)
    else:
        ae = cls.from_pretrained(folder / "ae.pt")
    with torch.no_grad():
        outputs[f"codes_{case}"] = ae.encode(x).contiguous()
        outputs[f"out_{case}"] = ae(x).contiguous()
        if cls in (BatchTopKSAE, MatryoshkaBatchTopKSAE):
            outputs[f"batch_{case}"] = ae.encode(x, use_threshold=False).contiguous()
# AutoEncoderNew has no trainer here: random weights, saved as trainSAE saves
ae = AutoEncoderNew(D, F)
with torch.no_grad():
    for p in ae.parameters():
        p.copy_(torch.randn_like(p) * 0.5)
(out / "new").mkdir()
torch.save(ae.state_dict(), out / "new" / "ae.pt")
config = {"trainer": {"dict_class": "AutoEncoderNew", "submodule_name": "resid_post_layer_0"}}
(out / "new" / "config.json").write_text(json.dumps(config))
with torch.no_grad():
    outputs["codes_new"] = ae.encode(x).contiguous()
    outputs["out_new"] = ae(x).contiguous()
save_file(outputs, out / "outputs.safetensors")
"""
CASES = {
    "standard": "relu", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk",
    "batchtopk": "batchtopk", "batchtopk_unlearnt": "batchtopk", "matryoshka": "matryoshka",
    "new": "relu",
}  # fmt: skip


def test_every_dictionary_class_computes_the_library_own_codes_and_outputs(tmp_path):
    python = library_python("SAEKIT_DICTIONARY_LEARNING_PYTHON", "dictionary_learning")
    x_BD = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2
    folder = run_library(python, SCRIPT, tmp_path, x_BD)
    outputs = library_outputs(folder)
    for case, variant in CASES.items():
        assert_same(folder / case, outputs, case, x_BD)
        sae = load_sae(folder / case)
        assert sae.cfg.variant == variant and sae.cfg.hook == "blocks.0.hook_resid_post", case
        assert sae.cfg.imported_from["library"] == "dictionary_learning"
    learnt = load_sae(folder / "batchtopk").activation.threshold.value
    unlearnt = load_sae(folder / "batchtopk_unlearnt").activation.threshold.value
    assert learnt > 0 and unlearnt == 0
    matryoshka = load_sae(folder / "matryoshka")
    assert matryoshka.cfg.options["groups"] == "10+30"
