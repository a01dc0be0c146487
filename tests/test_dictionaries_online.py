"""Dictionaries spliced into the LM, against hand-written loops over the plain HF GPT-2: a
transcoder's prediction in place of an MLP's output, a crosscoder's reconstructions at all its
hooks at once, and a cross-layer transcoder's replacement model (its encoders reading the
replacement model's own stream, every covered MLP output overwritten)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from saekit.evaluate.online import online_metrics
from saekit.evaluate.targets import Target
from saekit.lm import load_model
from saekit.train import modes, parse_spec
from saekit.train.sae_config import SAEConfig

D, CPU = 64, torch.device("cpu")
MID, MLP_IN, MLP_OUT = "blocks.{}.hook_resid_mid", "blocks.{}.mlp.hook_in", "blocks.{}.hook_mlp_out"
HOOKS = ("hook_resid_mid", "mlp.hook_in", "hook_mlp_out")


@pytest.fixture(scope="module")
def models(tiny_lm):
    return load_model(str(tiny_lm), CPU), GPT2LMHeadModel.from_pretrained(tiny_lm).eval()


@pytest.fixture(scope="module")
def contexts():
    return torch.randint(0, 300, (6, 20), generator=torch.Generator().manual_seed(0))


def dictionary(text, seed=0, scale=0.2):
    """The dictionary of spec `text` (with its shape keys) with random weights and biases, as
    `load_sae` gives it."""
    spec = parse_spec(text).resolve(D)
    widths = {f"blocks.{layer}.{hook}": D for layer in (0, 1) for hook in HOOKS}
    shape = spec.shape(widths, None)
    sae = spec.build(shape)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    sae.cfg = SAEConfig(
        name=spec.name, variant=spec.variant, hook=shape.source_hooks[0], d_in=shape.d_in,
        d_sae=sae.d_sae, k=getattr(spec.options, "k", None), options=spec.options_dict(),
        calibration={}, input_scale=1.0, store={}, training={"batch_size": 64},
        shape=shape.to_json(), input_scales={h: 1.0 for h in shape.hooks},
    )  # fmt: skip
    return sae.eval()


def spliced_ce(models, contexts, sae, mode=modes.INFERENCE):
    model, _ = models
    means = {h: torch.zeros(D) for h in sae.shape.hooks}
    target = Target("run", sae, mode)
    return online_metrics(model, contexts, [target], means, 3, CPU)[target.label]


def hand_ce(hf, contexts, block_edit):
    """Next-token CE at positions 1 .. T − 2 of the HF model run block by block; `block_edit`
    (layer, resid_mid, clean mlp output) -> the MLP output the block adds."""
    with torch.no_grad():
        t = contexts.shape[1]
        h = hf.transformer.wte(contexts) + hf.transformer.wpe(torch.arange(t))
        for layer, block in enumerate(hf.transformer.h):
            h = h + block.attn(block.ln_1(h))[0]
            mlp_out = block.mlp(block.ln_2(h))
            h = h + block_edit(layer, h, block.ln_2(h), mlp_out)
        logits = hf.lm_head(hf.transformer.ln_f(h))
        log_p = F.log_softmax(logits[:, 1:-1].float(), dim=-1)
        return float(-log_p.gather(-1, contexts[:, 2:, None]).mean())


def keep_position_zero(new_BTD, clean_BTD):
    return torch.cat([clean_BTD[:, :1], new_BTD[:, 1:]], dim=1)


def test_a_skip_transcoder_spliced_predicts_the_mlp_output_from_its_input(models, contexts):
    spec = f"topk:k=3,latents=16,hooks={MLP_IN.format(1)},target={MLP_OUT.format(1)},skip=true"
    sae = dictionary(spec, scale=0.1)
    _, hf = models

    def edit(layer, resid_mid, mlp_in, mlp_out):
        if layer != 1:
            return mlp_out
        b, t, d = mlp_in.shape
        return keep_position_zero(sae(mlp_in.reshape(-1, d)).view(b, t, d), mlp_out)

    online = spliced_ce(models, contexts, sae)
    assert online["ce_spliced"] == pytest.approx(hand_ce(hf, contexts, edit), abs=1e-4)
    assert online["ce_spliced"] != pytest.approx(online["ce_clean"], abs=1e-3), "a real change"


def test_a_crosscoder_is_spliced_at_all_its_hooks_at_once(models, contexts):
    """Reconstructions of both layers' MLP outputs from the clean ones, both spliced in the same
    pass."""
    sae = dictionary(f"relu:latents=16,hooks={MLP_OUT.format(0)}+{MLP_OUT.format(1)}", scale=0.1)
    _, hf = models
    clean_outputs = {}
    hand_ce(hf, contexts, lambda layer, mid, mlp_in, out: clean_outputs.setdefault(layer, out))
    b, t, d = clean_outputs[0].shape
    x = torch.cat([clean_outputs[0], clean_outputs[1]], dim=2).reshape(-1, 2 * d)
    with torch.no_grad():
        y = sae(x).view(b, t, 2 * d)

    def edit(layer, resid_mid, mlp_in, mlp_out):
        return keep_position_zero(y[..., layer * d : (layer + 1) * d], mlp_out)

    online = spliced_ce(models, contexts, sae)
    assert online["ce_spliced"] == pytest.approx(hand_ce(hf, contexts, edit), abs=1e-4)


@pytest.mark.parametrize("text", ["topk:k=3,latents=8,layers=0-1", "relu:latents=8,layers=0-1"])
def test_a_cross_layer_transcoder_runs_as_its_replacement_model(models, contexts, text):
    """Layer l's latents read the replacement model's own stream before its MLP (k per layer for
    TopK); every MLP output is the sum of the decoders of the layers ≤ it, plus its bias."""
    sae = dictionary(text, scale=0.15)
    _, hf = models
    g = sae.group
    written = {}

    def edit(layer, resid_mid, mlp_in, mlp_out):
        b, t, d = resid_mid.shape
        x = resid_mid.reshape(-1, d) - sae.b_in[layer * d : (layer + 1) * d]
        z = x @ sae.W_enc[layer].T + sae.b_enc[layer * g : (layer + 1) * g]
        if text.startswith("topk"):
            keep = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.topk(3, dim=1).indices, True)
            f = (z * keep).relu()
        else:
            f = z.relu()
        for target in range(layer, 2):
            rows = slice((target - layer) * d, (target - layer + 1) * d)
            part = (f @ sae.W_dec[layer][rows].T).view(b, t, d)
            written[target] = written.get(target, 0) + part
        y = written[layer] + sae.b_dec[layer * d : (layer + 1) * d]
        return keep_position_zero(y, mlp_out)

    online = spliced_ce(models, contexts, sae)
    assert online["ce_spliced"] == pytest.approx(hand_ce(hf, contexts, edit), abs=1e-4)


def test_a_cross_layer_transcoder_in_batch_mode_is_not_spliced(models, contexts):
    """Its batch selection spans every layer of a batch of tokens: no replacement model exists."""
    sae = dictionary("batchtopk:k=3,latents=8,layers=0-1")
    model, _ = models
    batch, threshold = Target("run", sae, modes.BATCH), Target("run", sae, modes.THRESHOLD)
    means = {h: torch.zeros(D) for h in sae.shape.hooks}
    online = online_metrics(model, contexts, [batch, threshold], means, 3, CPU)
    assert batch.label not in online and threshold.label in online
