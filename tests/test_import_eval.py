"""End to end: SAEs saved in SAELens', sparsify's and dictionary_learning's formats are imported
and evaluated by `sae eval` in one report next to a saekit SAE, on the tiny LM's store (offline
and spliced into the LM), and `sae inspect` reads a foreign folder as it is."""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import harvest_small_store, relu_sae, save

HOOK = "blocks.1.hook_resid_post"
D, F = 64, 128


def random_weights(seed, **shapes):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=generator) * 0.1 for name, shape in shapes.items()}


def write_folders(root):
    """One SAE in each library's format at the store's hook, with random weights."""
    saelens = root / "saelens"
    saelens.mkdir(parents=True)
    metadata = {"hook_name": HOOK, "sae_lens_version": "6.54.12",
                "model_from_pretrained_kwargs": {"center_writing_weights": False}}  # fmt: skip
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": metadata}  # fmt: skip
    (saelens / "cfg.json").write_text(json.dumps(cfg))
    weights = random_weights(0, W_enc=(D, F), b_enc=(F,), W_dec=(F, D), b_dec=(D,))
    save_file({**weights, "threshold": torch.full((F,), 0.05)}, saelens / "sae_weights.safetensors")
    sparsify = root / "sparsify" / "h.1"
    sparsify.mkdir(parents=True)
    cfg = {"activation": "topk", "k": 8, "num_latents": F, "transcode": False, "d_in": D}
    (sparsify / "cfg.json").write_text(json.dumps(cfg))
    weights = random_weights(1, **{"encoder.weight": (F, D), "encoder.bias": (F,)}, W_dec=(F, D))
    save_file({**weights, "b_dec": torch.zeros(D)}, sparsify / "sae.safetensors")
    learning = root / "dictionary_learning"
    learning.mkdir()
    trainer = {"dict_class": "BatchTopKSAE", "submodule_name": "resid_post_layer_1"}
    (learning / "config.json").write_text(json.dumps({"trainer": trainer}))
    state = random_weights(2, **{"encoder.weight": (F, D), "encoder.bias": (F,)})
    state.update(random_weights(3, **{"decoder.weight": (D, F), "b_dec": (D,)}))
    state.update(k=torch.tensor(8, dtype=torch.int), threshold=torch.tensor(0.1))
    torch.save(state, learning / "ae.pt")
    return {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": learning}


@pytest.mark.slow
def test_imported_saes_are_evaluated_next_to_saekits_in_one_report(
    tiny_lm, corpus, tmp_path, run_cli
):
    store = harvest_small_store(tiny_lm, corpus, tmp_path / "store.zarr")
    own = relu_sae(D, F, torch.randn(F, D) * 0.1, torch.randn(D, F) * 0.1)
    save(tmp_path / "run", "saekit-relu", own, store)
    folders = write_folders(tmp_path / "foreign")
    for library, folder in folders.items():
        result = run_cli("import", folder, "--out", tmp_path / "imported", "--name", library)
        assert result.exit_code == 0, result.stderr
    result = run_cli("eval", tmp_path / "run", tmp_path / "imported", "--out", tmp_path / "report",
                     "--batch-size", "4")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["label"]: row for row in report["rows"]}
    assert set(rows) == {
        "saekit-relu", "saelens", "sparsify",
        "dictionary_learning [threshold]", "dictionary_learning [batch]",
    }  # fmt: skip
    for row in rows.values():
        assert row["hook"] == HOOK and row["offline"]["nmse"] is not None
        assert row["online"]["loss_added"] is not None
    assert rows["saelens"]["variant"] == "jumprelu" and rows["sparsify"]["variant"] == "topk"
    assert rows["sparsify"]["offline"]["l0"] == pytest.approx(8, abs=1e-6)
    site = run_cli("inspect", folders["saelens"], "--store", store, "--out", tmp_path / "site",
                   "--latents", "4", "--tokens", "512")  # fmt: skip
    assert site.exit_code == 0, site.stderr
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.slow
def test_saes_made_by_each_library_are_evaluated_in_one_report(tiny_lm, corpus, tmp_path, run_cli):
    """Opt-in: every SAE the opt-in import tests make with SAELens, sparsify and
    dictionary_learning, at the tiny LM's width, imported and evaluated next to a saekit SAE."""
    from foreign_helpers import library_python, run_library
    from test_import_dictionary_learning import SCRIPT as DICTIONARY_LEARNING
    from test_import_saelens import SCRIPT as SAELENS
    from test_import_sparsify import SCRIPT as SPARSIFY

    pythons = {
        "saelens": library_python("SAEKIT_SAELENS_PYTHON", "sae_lens"),
        "sparsify": library_python("SAEKIT_SPARSIFY_PYTHON", "sparsify"),
        "dl": library_python("SAEKIT_DICTIONARY_LEARNING_PYTHON", "dictionary_learning"),
    }
    hooks = ("blocks.0.hook_resid_post", "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")
    store = harvest_small_store(tiny_lm, corpus, tmp_path / "store.zarr", hooks=hooks)
    own = relu_sae(D, F, torch.randn(F, D) * 0.1, torch.randn(D, F) * 0.1)
    save(tmp_path / "run", "saekit-relu", own, store, hook=hooks[0])
    x_BD = torch.randn(8, D)
    scripts = {"saelens": (SAELENS, str(D)), "sparsify": (SPARSIFY,), "dl": (DICTIONARY_LEARNING,)}
    imported = 0
    for library, (script, *args) in scripts.items():
        (tmp_path / library).mkdir()
        made = run_library(pythons[library], script, tmp_path / library, x_BD, *args)
        for case in sorted(p for p in made.iterdir() if p.is_dir()):
            # sparsify saves a coder in a folder named after its hookpoint
            folder = (
                next(p for p in case.iterdir() if p.is_dir()) if library == "sparsify" else case
            )
            result = run_cli("import", folder, "--out", tmp_path / "imported",
                             "--name", f"{library}-{case.name}")  # fmt: skip
            assert result.exit_code == 0, result.stderr
            imported += 1
    result = run_cli("eval", tmp_path / "run", tmp_path / "imported", "--out", tmp_path / "report",
                     "--tokens", "512", "--batch-size", "4")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    names = {row["name"] for row in report["rows"]}
    assert len(names) == imported + 1 and "saekit-relu" in names
    assert all(row["online"]["loss_added"] is not None for row in report["rows"])
