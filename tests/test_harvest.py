"""Harvest correctness: stored values against independent computations on the same tiny GPT-2."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.harvest import HarvestConfig, harvest
from saekit.harvest.hooks import resolve
from saekit.lm import GRADIENT_CONVENTION

CONTEXT = 32
HOOKS = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post")


def harvest_store(tiny_lm, corpus, out, **overrides):
    settings = dict(
        model=str(tiny_lm),
        dataset=str(corpus),
        hooks=HOOKS,
        out=str(out),
        tokens=3990,
        holdout_tokens=640,
        context_size=CONTEXT,
        batch_size=8,
        dtype="float32",
        rows_per_chunk=256,
        chunks_per_block=2,
    )
    settings.update(overrides)
    result = harvest(HarvestConfig(**settings))
    return ActivationStore.open(out), result


def contexts_of(store):
    """The store's contexts rebuilt from its rows: ([n_seq, T] tokens, row index of each token)."""
    got = store.read(["sequence", "position", "tokens"], 0, store.n_rows_committed)
    n_seq = int(got["sequence"].max()) + 1
    rows = np.full((n_seq, CONTEXT), -1)
    rows[got["sequence"], got["position"]] = np.arange(store.n_rows_committed)
    tokens = got["tokens"][rows]
    assert (rows >= 0).all(), "every position of every context is stored exactly once"
    return torch.from_numpy(tokens).long(), rows


def hf_reference(tiny_lm, tokens):
    """Activations, gradients and per-token CE from the plain HF model (no TransformerLens)."""
    model = GPT2LMHeadModel.from_pretrained(tiny_lm).eval()
    captured = {}
    blocks = model.transformer.h
    handles = [
        blocks[0].register_forward_pre_hook(
            lambda m, args: captured.__setitem__(HOOKS[0], args[0])
        ),
        blocks[1].register_forward_hook(
            lambda m, a, out: captured.__setitem__(
                HOOKS[1], out[0] if isinstance(out, tuple) else out
            )
        ),
        blocks[0].mlp.act.register_forward_hook(
            lambda m, a, out: captured.__setitem__(HOOKS[2], out)
        ),
    ]
    logits = model(tokens).logits
    for handle in handles:
        handle.remove()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    ce = ce.view(tokens.shape[0], -1)
    grads = torch.autograd.grad(ce.sum(), [captured[h] for h in HOOKS])
    return (
        {h: captured[h].detach() for h in HOOKS},
        dict(zip(HOOKS, grads, strict=True)),
        ce.detach(),
    )


@pytest.fixture(scope="module")
def float32_store(tiny_lm, corpus, tmp_path_factory):
    return harvest_store(tiny_lm, corpus, tmp_path_factory.mktemp("h") / "store.zarr")[0]


def test_stored_values_equal_an_independent_hf_computation(float32_store, tiny_lm):
    store = float32_store
    tokens, rows = contexts_of(store)
    assert (tokens[:, 0] == 0).all(), "every context starts with BOS"
    acts, grads, ce = hf_reference(tiny_lm, tokens)
    everything = store.read_tensors(["loss", "activations"], 0, store.n_rows_committed, HOOKS[0])
    loss = everything["loss"][rows]
    assert torch.isnan(loss[:, -1]).all(), "the last position predicts nothing"
    torch.testing.assert_close(loss[:, :-1], ce, rtol=1e-5, atol=1e-5)
    for hook in HOOKS:
        got = store.read_tensors(["activations", "gradients"], 0, store.n_rows_committed, hook)
        torch.testing.assert_close(got["activations"][rows], acts[hook], rtol=1e-5, atol=1e-5)
        g_got, g_want = got["gradients"][rows], grads[hook]
        assert (g_got[:, -1] == 0).all(), "no loss downstream of the last position"
        scale = g_want.abs().max()
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5 * float(scale))


def test_activations_equal_run_with_cache(float32_store, tiny_lm):
    from transformer_lens.model_bridge import TransformerBridge

    store = float32_store
    tokens, rows = contexts_of(store)
    bridge = TransformerBridge.boot_transformers(str(tiny_lm), device="cpu")
    _, cache = bridge.run_with_cache(tokens[:8])
    for hook in HOOKS:
        got = store.read_tensors(["activations"], 0, store.n_rows_committed, hook)["activations"]
        torch.testing.assert_close(got[rows[:8]], cache[hook], rtol=1e-5, atol=1e-5)
    assert store.spec.hooks[HOOKS[2]].d == 4 * store.spec.hooks[HOOKS[1]].d, "MLP width stored"


def test_layout_split_and_metadata(float32_store):
    store = float32_store
    assert store.n_rows_committed == 4000, "--tokens 3990 rounds up to whole contexts"
    assert store.n_rows("holdout") == 640
    holdout = store.read(["sequence"], 0, 640)["sequence"]
    train = store.read(["sequence"], 640, store.n_rows_committed)["sequence"]
    assert holdout.max() < train.min(), "held-out contexts come first, as whole contexts"
    identity = store.spec.identity
    assert identity["context_size"] == CONTEXT and identity["batch_size"] == 8
    assert "sum over the context" in identity["gradient_convention"]
    assert identity["weights_fingerprint"] and identity["tokenizer_fingerprint"]


def test_float16_store_matches_float32_within_precision(float32_store, tiny_lm, corpus, tmp_path):
    half, _ = harvest_store(tiny_lm, corpus, tmp_path / "half.zarr", dtype="float16")
    hook = HOOKS[1]
    a = float32_store.read_tensors(["activations", "gradients"], 0, 4000, hook)
    b = half.read_tensors(["activations", "gradients"], 0, 4000, hook)
    torch.testing.assert_close(b["activations"], a["activations"], rtol=1e-3, atol=1e-3)
    norms = a["gradients"].norm(dim=1)
    rel = (b["gradients"] - a["gradients"]).norm(dim=1)[norms > 0] / norms[norms > 0]
    assert rel.max() <= 1e-3, "per-token relative gradient error within 1e-3"


def test_no_gradients_stores_activations_only(tiny_lm, corpus, tmp_path, float32_store):
    store, _ = harvest_store(tiny_lm, corpus, tmp_path / "acts.zarr", gradients=False)
    assert not store.has_gradients(HOOKS[0])
    assert store.spec.identity["gradient_convention"] is None
    a = float32_store.read_tensors(["activations"], 0, 4000, HOOKS[1])["activations"]
    b = store.read_tensors(["activations"], 0, 4000, HOOKS[1])["activations"]
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # two more harvests
def test_seed_fixes_the_document_order(tiny_lm, corpus, tmp_path, float32_store):
    again, _ = harvest_store(tiny_lm, corpus, tmp_path / "again.zarr", hooks=HOOKS[:1])
    other, _ = harvest_store(tiny_lm, corpus, tmp_path / "other.zarr", hooks=HOOKS[:1], seed=5)
    tokens = float32_store.read(["tokens"], 0, 4000)["tokens"]
    np.testing.assert_array_equal(again.read(["tokens"], 0, 4000)["tokens"], tokens)
    assert not np.array_equal(other.read(["tokens"], 0, 4000)["tokens"], tokens)


@pytest.mark.slow  # harvests the whole corpus (~25k tokens)
def test_dataset_running_out_ends_the_store(tiny_lm, corpus, tmp_path):
    store, result = harvest_store(
        tiny_lm, corpus, tmp_path / "all.zarr", tokens=None, hooks=HOOKS[:1], dtype="float16"
    )
    assert result.dataset_exhausted and store.complete
    assert store.n_rows_committed % CONTEXT == 0 and store.n_rows_committed > 10_000


# The hooks a transcoder, a CLT or a crosscoder reads, at every layer (TransformerBridge names),
# and the layer norm's pre-affine output, which is not the MLP's input.
SUBLAYER = ("mlp.hook_in", "hook_mlp_out", "hook_resid_mid", "hook_attn_out")
SUBLAYER_PATTERNS = (*(f"blocks.*.{h}" for h in SUBLAYER), "blocks.*.ln2.hook_normalized")
SUBLAYER_HOOKS = tuple(f"blocks.{layer}.{h}" for h in SUBLAYER for layer in (0, 1))
GAIN_SPREAD, BIAS_SPREAD = 0.3, 0.3


@pytest.fixture(scope="module")
def affine_lm(tiny_lm, tmp_path_factory):
    """The tiny GPT-2 with every layer norm's gain and bias, and every linear bias, drawn at
    random (a fresh GPT-2 has gains 1 and biases 0, where pre- and post-affine tensors agree)."""
    out = tmp_path_factory.mktemp("affine") / "model"
    shutil.copytree(tiny_lm, out)
    model = GPT2LMHeadModel.from_pretrained(tiny_lm)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if ".ln_" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + (GAIN_SPREAD if base else BIAS_SPREAD) * noise)
            elif name.endswith(".bias"):
                parameter.copy_(0.1 * noise)
    model.save_pretrained(out)
    return out


def hf_sublayers(model_dir, tokens):
    """Activations and gradients at each layer's MLP input (ln_2's output), MLP output, resid_mid
    (block input + attention output) and attention output, from the plain HF model."""
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    seen = {}

    def keep(key, pick):
        return lambda module, args, *output: seen.__setitem__(key, pick(args, output))

    handles = []
    for layer, block in enumerate(model.transformer.h):
        handles += [
            block.register_forward_pre_hook(keep((layer, "in"), lambda a, o: a[0])),
            block.attn.register_forward_hook(keep((layer, "attn"), lambda a, o: o[0][0])),
            block.ln_2.register_forward_pre_hook(keep((layer, "mid"), lambda a, o: a[0])),
            block.ln_2.register_forward_hook(keep((layer, "ln2"), lambda a, o: o[0])),
            block.mlp.register_forward_hook(keep((layer, "mlp"), lambda a, o: o[0])),
        ]
    logits = model(tokens).logits
    for handle in handles:
        handle.remove()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
    nodes = {}
    for layer in (0, 1):
        nodes[f"blocks.{layer}.mlp.hook_in"] = seen[layer, "ln2"]
        nodes[f"blocks.{layer}.hook_mlp_out"] = seen[layer, "mlp"]
        nodes[f"blocks.{layer}.hook_resid_mid"] = seen[layer, "mid"]  # the tensor ln_2 reads
        nodes[f"blocks.{layer}.hook_attn_out"] = seen[layer, "attn"]
    grads = dict(zip(nodes, torch.autograd.grad(ce, list(nodes.values())), strict=True))
    acts = {hook: x.detach() for hook, x in nodes.items()}
    for layer in (0, 1):  # resid_mid computed independently: the block's input + attention out
        acts[f"blocks.{layer}.hook_resid_mid"] = (seen[layer, "in"] + seen[layer, "attn"]).detach()
    return acts, grads, model


@pytest.fixture(scope="module")
def sublayer_store(affine_lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sublayer") / "store.zarr"
    return harvest_store(affine_lm, corpus, out, hooks=SUBLAYER_PATTERNS, tokens=1024)[0]


def test_mlp_input_output_resid_mid_and_attn_out_equal_plain_hf(sublayer_store, affine_lm):
    store = sublayer_store
    assert store.hooks == [
        *SUBLAYER_HOOKS,
        "blocks.0.ln2.hook_normalized",
        "blocks.1.ln2.hook_normalized",
    ], "patterns expand in place, layers in order; the store names hooks, not patterns"
    assert store.spec.identity["weights"] == "unfolded, uncentred (TransformerBridge defaults)"
    tokens, rows = contexts_of(store)
    acts, grads, _ = hf_sublayers(affine_lm, tokens)
    for hook in SUBLAYER_HOOKS:
        got = store.read_tensors(["activations", "gradients"], 0, store.n_rows_committed, hook)
        torch.testing.assert_close(got["activations"][rows], acts[hook], rtol=1e-5, atol=1e-5)
        scale = float(grads[hook].abs().max())
        assert scale > 0, f"the loss depends on {hook}"
        torch.testing.assert_close(
            got["gradients"][rows], grads[hook], rtol=1e-4, atol=1e-5 * scale
        )


def test_ln2_hook_normalized_is_not_the_mlp_input(sublayer_store, affine_lm):
    """TransformerBridge's ln2.hook_normalized is taken before the layer norm's gain and bias
    (SAELens transcoders use that name with HookedTransformer's folded weights); the MLP reads
    mlp.hook_in = ln2.hook_out."""
    store = sublayer_store
    tokens, rows = contexts_of(store)
    acts, _, model = hf_sublayers(affine_lm, tokens)
    for layer in (0, 1):
        ln_2 = model.transformer.h[layer].ln_2
        normalized = store.read_tensors(
            ["activations"], 0, store.n_rows_committed, f"blocks.{layer}.ln2.hook_normalized"
        )["activations"][rows]
        mlp_input = acts[f"blocks.{layer}.mlp.hook_in"]
        gap = float((normalized - mlp_input).abs().max())
        relative = float(((normalized - mlp_input).norm(dim=-1) / mlp_input.norm(dim=-1)).mean())
        print(f"layer {layer}: ln2.hook_normalized - MLP input: max {gap:.3f}, {relative:.1%}")
        assert gap > 0.5, "pre-affine: far from the MLP's input"
        affine = normalized * ln_2.weight.detach() + ln_2.bias.detach()
        torch.testing.assert_close(affine, mlp_input, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "targets",
    [("blocks.*.hook_mlp_out",), ("blocks.1.hook_mlp_out",), ("blocks.0-1.mlp.hook_in",)],
)
def test_gradients_at_some_hooks_are_those_of_the_all_hooks_harvest(
    sublayer_store, affine_lm, corpus, tmp_path, targets
):
    """Gradients only where asked (the graph starts at the first of those hooks): the same bits
    there, activations and loss as a harvest with gradients at every hook."""
    some, _ = harvest_store(
        affine_lm, corpus, tmp_path / "s.zarr", hooks=SUBLAYER_PATTERNS, tokens=1024,
        gradients=targets,
    )  # fmt: skip
    kept = [h for h in some.hooks if some.has_gradients(h)]
    assert kept == resolve(targets, some.hooks, option="--gradients", among="the hooks")
    assert some.spec.identity["gradient_convention"] == GRADIENT_CONVENTION
    assert set(some.array_paths) < set(sublayer_store.array_paths)
    for path in some.array_paths:
        np.testing.assert_array_equal(some.array(path)[:], sublayer_store.array(path)[:], path)
    refused = r"has no gradients for blocks\.0\.hook_resid_mid"
    with pytest.raises(SaekitError, match=refused) as error:
        some.require_gradients("blocks.0.hook_resid_mid")
    assert "\n" not in str(error.value)
