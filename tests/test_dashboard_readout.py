"""Logit effects read through the final norm and the unembedding alone equal those computed with
the whole model, for a tied GPT-2 (LayerNorm) and an untied Llama (RMSNorm), from single,
sharded and PyTorch `.bin` checkpoints."""

import pytest
import torch

from saekit.lm.readout import load_readout, top_logit_effects


def llama(path, **save):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a norm weight that is not all ones, so that it matters
        model.model.norm.weight.uniform_(0.5, 2.0)
    model.save_pretrained(path, **save)
    return model, model.model.norm


def gpt2(path, **save):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4))
    with torch.no_grad():
        model.transformer.ln_f.weight.uniform_(0.5, 2.0)
        model.transformer.ln_f.bias.uniform_(-1.0, 1.0)
    model.save_pretrained(path, **save)
    return model, model.transformer.ln_f


@pytest.mark.parametrize(
    ("build", "save"),
    [
        (gpt2, {}),
        (gpt2, {"safe_serialization": False}),
        (llama, {"max_shard_size": "20KB"}),
        (llama, {"safe_serialization": False}),
    ],
)
def test_readout_alone_gives_the_whole_models_logit_effects(tmp_path, build, save):
    model, norm = build(tmp_path / "lm", **save)
    files = {p.name for p in (tmp_path / "lm").iterdir()}
    if "max_shard_size" in save:
        assert "model.safetensors.index.json" in files, "the checkpoint is sharded"
    readout = load_readout(str(tmp_path / "lm"), torch.device("cpu"))
    assert type(readout.norm) is type(norm)
    directions_LD = torch.randn(5, 32)
    scaled = directions_LD * (32**0.5 / directions_LD.norm(dim=1, keepdim=True))
    with torch.no_grad():
        head = model.get_output_embeddings()
        expected = head(norm(scaled)) - head(norm(torch.zeros(1, 32)))
    torch.testing.assert_close(readout.logit_effects(directions_LD), expected)
    top_ids, top_values, bottom_ids, bottom_values = top_logit_effects(
        readout, directions_LD.T, torch.tensor([1, 3]), k=4
    )
    assert torch.equal(top_ids, expected[[1, 3]].topk(4).indices)
    torch.testing.assert_close(top_values, expected[[1, 3]].topk(4).values)
    assert torch.equal(bottom_ids, expected[[1, 3]].topk(4, largest=False).indices)
    torch.testing.assert_close(bottom_values, expected[[1, 3]].topk(4, largest=False).values)
