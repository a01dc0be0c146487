"""The LM's home: edits at several hooks in one pass against plain HF, the readout, the shape and
FLOPs read from the model, and the model-meets-store checks."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import harvest_small_store
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.lm import (
    ModelShape,
    after_first_position,
    edited_logits,
    load_model,
    load_model_for_store,
    next_token_stats,
    run_batch,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_lm):
    return load_model(str(tiny_lm), CPU)


@pytest.fixture(scope="module")
def tokens_BT(model):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.d_vocab, (3, 12), generator=generator)


def test_no_edit_gives_the_clean_logits(model, tokens_BT):
    clean = run_batch(model.bridge, tokens_BT, [], gradients=False, keep_logits=True).logits
    torch.testing.assert_close(edited_logits(model.bridge, tokens_BT, {}).float(), clean)


def test_edits_at_two_hooks_act_in_one_pass_like_plain_hf(model, tokens_BT, tiny_lm):
    """Replacing both MLP outputs (layer 0 with zeros, layer 1 with twice its value) in one
    pass equals the same edit made by hand on the plain HF model."""
    edits = {
        "blocks.0.hook_mlp_out": lambda x_BTD: torch.zeros_like(x_BTD),
        "blocks.1.hook_mlp_out": lambda x_BTD: 2 * x_BTD,
    }
    edited = edited_logits(model.bridge, tokens_BT, edits)
    hf = GPT2LMHeadModel.from_pretrained(tiny_lm).eval()
    handles = [
        hf.transformer.h[0].mlp.register_forward_hook(lambda m, i, out: torch.zeros_like(out)),
        hf.transformer.h[1].mlp.register_forward_hook(lambda m, i, out: 2 * out),
    ]
    with torch.no_grad():
        expected = hf(tokens_BT).logits
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(edited.float(), expected, rtol=1e-4, atol=1e-4)
    clean = edited_logits(model.bridge, tokens_BT, {})
    assert not torch.allclose(edited, clean, atol=1e-3), "the edits changed the prediction"


def test_an_edit_may_read_what_an_earlier_hook_saw_in_the_same_pass(model, tokens_BT):
    """A later hook's edit reads the (edited) stream an earlier hook captured in this pass:
    what a cross-layer transcoder's replacement model needs."""
    seen = {}

    def capture(x_BTD):
        seen["resid"] = x_BTD
        return x_BTD

    def write_back(x_BTD):
        return torch.zeros_like(x_BTD) + seen["resid"].mean()

    edits = {"blocks.0.hook_resid_mid": capture, "blocks.1.hook_mlp_out": write_back}
    edited = edited_logits(model.bridge, tokens_BT, edits)
    by_hand = {
        "blocks.1.hook_mlp_out": lambda x_BTD: torch.zeros_like(x_BTD) + seen["resid"].mean()
    }
    torch.testing.assert_close(edited, edited_logits(model.bridge, tokens_BT, by_hand))


def test_position_zero_is_never_replaced(model, tokens_BT):
    hook = "blocks.1.hook_resid_post"
    x_BTD = run_batch(model.bridge, tokens_BT, [hook], gradients=False).activations[hook]
    swapped = after_first_position(torch.zeros_like(x_BTD))(x_BTD)
    assert torch.equal(swapped[:, 0], x_BTD[:, 0]) and not swapped[:, 1:].any()


def test_gradients_only_at_the_hooks_asked(model, tokens_BT):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"]
    every = run_batch(model.bridge, tokens_BT, hooks)
    named = run_batch(model.bridge, tokens_BT, hooks, gradients=hooks)
    some = run_batch(model.bridge, tokens_BT, hooks, gradients=hooks[1:2])
    assert list(some.gradients) == hooks[1:2]
    for hook in hooks:
        assert torch.equal(named.gradients[hook], every.gradients[hook]), "by name = True"
        assert torch.equal(some.activations[hook], every.activations[hook])
    assert torch.equal(some.gradients[hooks[1]], every.gradients[hooks[1]])
    assert torch.equal(some.loss.nan_to_num(), every.loss.nan_to_num())
    with pytest.raises(ValueError, match="not captured"):
        run_batch(model.bridge, tokens_BT, hooks[:1], gradients=hooks[1:])


def test_switched_off_hooks_are_not_offered_and_refused_with_what_to_use(model):
    names = model.hook_names
    assert "blocks.1.mlp.hook_in" in names and "blocks.1.hook_resid_mid" in names
    assert "blocks.1.hook_mlp_in" in model.bridge.hook_dict, "TransformerLens lists it"
    assert "blocks.1.hook_mlp_in" not in names and "blocks.1.attn.hook_result" not in names
    with pytest.raises(SaekitError, match="switched off") as error:
        model.check_hooks(["blocks.1.hook_mlp_in"])
    assert "blocks.1.mlp.hook_in" in str(error.value) and "\n" not in str(error.value)
    assert model.identity["weights"] == "unfolded, uncentred (TransformerBridge defaults)"


def test_next_token_stats_against_a_hand_computation():
    generator = torch.Generator().manual_seed(1)
    logits, clean = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5), generator=generator)
    ce, kl = next_token_stats(logits, tokens, clean)
    log_p, log_q = logits.log_softmax(-1), clean.log_softmax(-1)
    for b in range(2):
        for t in range(1, 4):  # predictions at positions 1 .. T − 2
            assert ce[b, t - 1] == pytest.approx(-float(log_p[b, t, tokens[b, t + 1]]), rel=1e-5)
            expected_kl = float((log_q[b, t].exp() * (log_q[b, t] - log_p[b, t])).sum())
            assert kl[b, t - 1] == pytest.approx(expected_kl, rel=1e-4, abs=1e-6)


def test_shape_and_flops_are_read_from_the_model(tiny_lm):
    shape = ModelShape.read(str(tiny_lm))
    hf = GPT2LMHeadModel.from_pretrained(tiny_lm)
    assert shape.parameters == sum(p.numel() for p in hf.parameters())
    config = hf.config
    assert (shape.n_layers, shape.d_model, shape.n_ctx) == (
        config.n_layer,
        config.n_embd,
        config.n_positions,
    )
    # GPT-2: per layer attention (3d² + d²) and MLP (8d²) weights, then the unembedding
    d, layers = config.n_embd, config.n_layer
    assert shape.matmul_weights == layers * 12 * d * d + config.vocab_size * d
    assert shape.forward_flops_per_token(32) == 2 * shape.matmul_weights + 2 * layers * 32 * d
    assert shape.forward_flops_per_token() == shape.forward_flops_per_token(config.n_positions)


def test_gpt2_small_shape_without_weights(tmp_path):
    GPT2Config().save_pretrained(tmp_path)  # a config alone: nothing is loaded or allocated
    shape = ModelShape.read(str(tmp_path))
    assert shape.parameters == 124_439_808, "GPT-2 small's parameter count"


def test_a_model_that_is_not_the_stores_is_refused(tiny_lm, corpus, tmp_path, model):
    path = harvest_small_store(tiny_lm, corpus, tmp_path / "s.zarr")
    store = ActivationStore.open(path)
    hooks = ["blocks.1.hook_resid_post"]
    checked = load_model_for_store(store, hooks, CPU)
    assert checked.warnings == [] and checked.model.name == str(tiny_lm)
    other = tmp_path / "other"
    hf = GPT2LMHeadModel.from_pretrained(tiny_lm)
    torch.nn.init.normal_(hf.transformer.h[0].mlp.c_fc.weight)
    hf.save_pretrained(other)
    model.tokenizer.save_pretrained(other)
    with pytest.raises(SaekitError, match="weights_fingerprint"):
        load_model_for_store(store, hooks, CPU, str(other))
    allowed = load_model_for_store(store, hooks, CPU, str(other), allow_other_model=True)
    assert "differs from the store's" in allowed.warnings[0]
    with pytest.raises(SaekitError, match="has no hook"):
        load_model_for_store(store, ["blocks.9.hook_resid_post"], CPU)
