"""Importing other libraries' saved SAEs: hand-written folders in each format (tiny tensors) check
the mapping onto saekit's variants and shapes, and every refusal is one line with exit code 2.
The libraries' own classes are compared in the opt-in tests (test_import_<library>.py)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import assert_one_line_error
from saekit.base.errors import SaekitError
from saekit.cache_format.schema import HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import load_sae
from saekit.train.importers import read_foreign, saelens
from saekit.train.variants import VARIANTS
from train_helpers import EXPORT_SOURCE, EXPORT_TARGET, EXPORT_WIDTH, saved

D, F = 6, 10
HOOK = "blocks.0.hook_resid_post"
UNPROCESSED = {"center_writing_weights": False}


def tensors(seed=0, **shapes):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=generator) for name, shape in shapes.items()}


def saelens_folder(path, architecture="standard", cfg=None, metadata=None, weights=None):
    """A SAELens 6.x folder of a d=6, F=10 SAE, hand-written."""
    path.mkdir(parents=True)
    meta = {"hook_name": HOOK, "model_from_pretrained_kwargs": UNPROCESSED}
    meta.update({"sae_lens_version": "6.54.12", **(metadata or {})})
    values = {"architecture": architecture, "d_in": D, "d_sae": F, "dtype": "float32"}
    values.update({"apply_b_dec_to_input": True, "normalize_activations": "none"})
    values.update({**(cfg or {}), "metadata": meta})
    (path / "cfg.json").write_text(json.dumps(values))
    weights = weights or tensors(W_enc=(D, F), b_enc=(F,), W_dec=(F, D), b_dec=(D,))
    save_file(weights, path / "sae_weights.safetensors")
    return path


def sparsify_folder(path, **cfg):
    path.mkdir(parents=True)
    values = {"activation": "topk", "k": 3, "num_latents": F, "transcode": False, "d_in": D}
    (path / "cfg.json").write_text(json.dumps({**values, **cfg}))
    weights = tensors(**{"encoder.weight": (F, D), "encoder.bias": (F,)}, W_dec=(F, D))
    save_file({**weights, "b_dec": torch.randn(D)}, path / "sae.safetensors")
    return path


def dictionary_learning_folder(path, dict_class="BatchTopKSAE", threshold=-1.0, state=None):
    path.mkdir(parents=True)
    trainer = {"dict_class": dict_class, "submodule_name": "resid_post_layer_0"}
    (path / "config.json").write_text(json.dumps({"trainer": trainer}))
    state = state or {
        **tensors(**{"encoder.weight": (F, D), "encoder.bias": (F,), "decoder.weight": (D, F)}),
        "b_dec": torch.randn(D),
        "k": torch.tensor(3, dtype=torch.int),
        "threshold": torch.tensor(threshold),
    }
    torch.save(state, path / "ae.pt")
    return path


# -- the mapping ------------------------------------------------------------------------------


def test_saelens_standard_without_input_centring_computes_its_formula(tmp_path):
    folder = saelens_folder(tmp_path / "sae", cfg={"apply_b_dec_to_input": False})
    weights = tensors(W_enc=(D, F), b_enc=(F,), W_dec=(F, D), b_dec=(D,))
    sae = load_sae(folder)
    x_BD = torch.randn(5, D)
    f_BF = (x_BD @ weights["W_enc"] + weights["b_enc"]).relu()  # SAELens' own formula
    torch.testing.assert_close(sae.encode(x_BD), f_BF, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x_BD), f_BF @ weights["W_dec"] + weights["b_dec"])
    assert sae.cfg.variant == "relu" and sae.cfg.hook == HOOK
    assert sae.cfg.imported_from["version"] == "6.54.12"


def test_saelens_architectures_invert_the_variants_exports():
    for architecture, variant in saelens.SAE_VARIANTS.items():
        assert VARIANTS[variant].saelens_architecture == architecture


@pytest.mark.parametrize(
    "spec",
    [
        "relu:latents=12",
        "topk:k=3,latents=12",
        "jumprelu:latents=12",
        "gated:latents=12",
        "batchtopk:k=3,latents=12",
        f"relu:latents=12,hooks={EXPORT_SOURCE},target={EXPORT_TARGET},skip=true",
        f"jumprelu:latents=12,hooks={EXPORT_SOURCE},target={EXPORT_TARGET}",
    ],
)
def test_saekits_own_saelens_exports_import_back_to_the_same_dictionary(tmp_path, spec):
    original, directory = saved(tmp_path, spec)
    imported = load_sae(directory / "saelens")
    x_BD = torch.randn(32, EXPORT_WIDTH, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        torch.testing.assert_close(imported(x_BD), original(x_BD), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            imported.encode(x_BD), original.encode(x_BD), rtol=1e-5, atol=1e-5
        )
    assert imported.shape.source_hooks == original.shape.source_hooks
    assert imported.shape.target_hooks == original.shape.target_hooks


def test_sparsify_hooks_come_from_the_folder_name(tmp_path):
    sae = load_sae(sparsify_folder(tmp_path / "a" / "model.layers.3"))
    assert sae.cfg.hook == "blocks.3.hook_resid_post" and sae.cfg.variant == "topk"
    transcoder = load_sae(sparsify_folder(tmp_path / "b" / "h.2.mlp", transcode=True))
    assert transcoder.shape.source_hooks == ("blocks.2.mlp.hook_in",)
    assert transcoder.shape.target_hooks == ("blocks.2.hook_mlp_out",)
    override = read_foreign(tmp_path / "b" / "h.2.mlp", "blocks.2.hook_resid_mid", None)
    assert (override.hook, override.target) == ("blocks.2.hook_resid_mid", "blocks.2.hook_mlp_out")


def test_dictionary_learning_batchtopk_keeps_its_threshold(tmp_path):
    """SAELens PR #608's trap: a BatchTopK SAE loaded without its threshold. A learnt θ is
    kept; θ = −1 (never learnt) lets every positive code through, as the library does."""
    learnt = load_sae(dictionary_learning_folder(tmp_path / "learnt", threshold=0.75))
    assert learnt.cfg.variant == "batchtopk" and learnt.activation.threshold.value == 0.75
    unlearnt = load_sae(dictionary_learning_folder(tmp_path / "unlearnt", threshold=-1.0))
    x_BD = torch.randn(16, D)
    z_BF = unlearnt.pre_activations(x_BD)
    torch.testing.assert_close(unlearnt.encode(x_BD), z_BF.relu())


def test_dictionary_learning_with_a_target_is_a_transcoder(tmp_path):
    folder = dictionary_learning_folder(tmp_path / "tc", dict_class="AutoEncoderTopK")
    foreign = read_foreign(folder, "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")
    assert foreign.target == "blocks.0.hook_mlp_out"
    torch.testing.assert_close(foreign.tensors["b_in"], foreign.tensors["b_dec"])


# -- refusals, one line each --------------------------------------------------------------------


def refusal(tmp_path, run_cli, folder, *fragments, options=()):
    result = run_cli("import", folder, "--out", tmp_path / "imported", *options)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "imported").exists()


def test_a_folder_of_no_library_is_refused(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    refusal(tmp_path, run_cli, tmp_path / "empty", "is not a saved SAE folder of SAELens")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text("{not json")
    (bad / "sae_weights.safetensors").write_text("nope")
    refusal(tmp_path, run_cli, bad, "cannot be read as a SAELens SAE folder")


@pytest.mark.parametrize(
    ("architecture", "cfg", "metadata", "fragments"),
    [
        ("abstopk", {}, {}, ["architecture 'abstopk'", "does not import"]),
        ("standard", {"normalize_activations": "layer_norm"}, {}, ["normalises every token"]),
        (
            "standard",
            {"normalize_activations": "expected_average_only_in"},
            {},
            ["dataset-wide factor", "cannot be imported faithfully"],
        ),
        (
            "standard",
            {},
            {"model_from_pretrained_kwargs": {"center_writing_weights": True}},
            ["center_writing_weights", "cannot be imported faithfully"],
        ),
        ("standard", {"reshape_activations": "hook_z"}, {}, ["attention heads"]),
        (
            "standard",
            {},
            {"sae_lens_version": None, "model_from_pretrained_kwargs": None},
            ["before 6.0", "processed"],
        ),
        (
            "standard",
            {},
            {"hook_name": "blocks.0.ln2.hook_normalized", "model_from_pretrained_kwargs": {
                "fold_ln": True, "center_writing_weights": False}},
            ["LayerNorm folded"],
        ),
        ("standard", {}, {"hook_name": "blocks.0.attn.hook_z"}, ["cannot map", "--hook"]),
    ],
)  # fmt: skip
def test_saelens_sae_that_cannot_be_imported_faithfully_is_refused(
    tmp_path, run_cli, architecture, cfg, metadata, fragments
):
    folder = saelens_folder(tmp_path / "sae", architecture, cfg, metadata)
    refusal(tmp_path, run_cli, folder, *fragments)


def test_saelens_folder_with_a_wrong_tensor_is_refused(tmp_path, run_cli):
    weights = tensors(W_enc=(D, F), b_enc=(F,), W_dec=(F, D + 1), b_dec=(D,))
    folder = saelens_folder(tmp_path / "sae", weights=weights)
    refusal(tmp_path, run_cli, folder, "holds W_dec of shape [10, 7]", "not a complete")


def test_sparsify_groupmax_and_unknown_hookpoints_are_refused(tmp_path, run_cli):
    groupmax = sparsify_folder(tmp_path / "g" / "layers.0", activation="groupmax")
    refusal(tmp_path, run_cli, groupmax, "'groupmax' activation")
    odd = sparsify_folder(tmp_path / "o" / "embed_tokens")
    refusal(tmp_path, run_cli, odd, "'embed_tokens'", "--hook")
    imported = run_cli("import", odd, "--out", tmp_path / "run", "--hook", HOOK)
    assert imported.exit_code == 0, imported.stderr


def test_dictionary_learning_unknown_class_and_damaged_weights_are_refused(tmp_path, run_cli):
    unknown = dictionary_learning_folder(tmp_path / "u", dict_class="CrossCoder")
    refusal(tmp_path, run_cli, unknown, "does not import CrossCoder")
    damaged = dictionary_learning_folder(tmp_path / "d")
    (damaged / "ae.pt").write_bytes(b"not a torch file")
    refusal(tmp_path, run_cli, damaged, "cannot be read as a dictionary_learning")


def test_target_for_an_sae_is_refused(tmp_path, run_cli):
    folder = saelens_folder(tmp_path / "sae")
    refusal(tmp_path, run_cli, folder, "--target is for transcoders", options=("--target", HOOK))


# -- sae import, and the imported SAE against a store --------------------------------------------


def test_sae_import_writes_a_saekit_sae_and_refuses_a_taken_name(tmp_path, run_cli):
    folder = saelens_folder(tmp_path / "sae", "topk", cfg={"k": 3})
    result = run_cli("import", folder, "--out", tmp_path / "run", "--name", "theirs")
    assert result.exit_code == 0, result.stderr
    assert "imported sae_lens topk as topk" in result.stdout
    sae = load_sae(tmp_path / "run" / "saes" / "theirs")
    assert sae.cfg.imported_from["source"] == str(folder.resolve())
    assert sae.cfg.imported_from["config"]["k"] == 3
    x_BD = torch.randn(4, D)
    torch.testing.assert_close(sae(x_BD), load_sae(folder)(x_BD))
    again = run_cli("import", folder, "--out", tmp_path / "run", "--name", "theirs")
    assert_one_line_error(again, "exists; choose another --name")
    (tmp_path / "train-run").mkdir()
    (tmp_path / "train-run" / "config.json").write_text("{}")
    refusal_run = run_cli("import", folder, "--out", tmp_path / "train-run")
    assert_one_line_error(refusal_run, "is not an import run")
    (tmp_path / "link").symlink_to(tmp_path / "run")
    through_link = run_cli("import", folder, "--out", tmp_path / "link", "--name", "other")
    assert_one_line_error(through_link, "is a symbolic link")
    assert not (tmp_path / "run" / "saes" / "other").exists()


def test_an_imported_sae_whose_hook_or_width_the_store_lacks_is_refused(tmp_path, run_cli):
    store = tmp_path / "store.zarr"
    hooks = {HOOK: HookSpec(d=D + 2)}
    write_synthetic_store(store, synthetic_spec(512, hooks=hooks, holdout_rows=256))
    folder = saelens_folder(tmp_path / "sae")
    assert run_cli("import", folder, "--out", tmp_path / "run").exit_code == 0
    evaluate = ("eval", tmp_path / "run", "--store", store, "--no-online")
    width = run_cli(*evaluate, "--out", tmp_path / "report")
    assert_one_line_error(width, f"takes d_in={D} at {HOOK}", f"has d={D + 2}")
    elsewhere = run_cli("import", folder, "--out", tmp_path / "run2", "--hook", "blocks.5.x")
    assert elsewhere.exit_code == 0
    missing = run_cli("eval", tmp_path / "run2", "--store", store, "--no-online",
                      "--out", tmp_path / "report2")  # fmt: skip
    assert_one_line_error(missing, "blocks.5.x", "lacks")
    no_store = run_cli("eval", tmp_path / "run", "--out", tmp_path / "report3")
    assert_one_line_error(no_store, "names no store; give one with --store")


def test_read_foreign_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaekitError, match="is not a saved SAE folder"):
        read_foreign(tmp_path / "file")
