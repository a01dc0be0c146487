"""Harvest correctness: stored values against independent computations on the same tiny GPT-2."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from saekit.cache_format import ActivationStore
from saekit.harvest import HarvestConfig, harvest

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
