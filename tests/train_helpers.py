"""Building small SAEs with chosen weights, for hand-computed cases."""

from __future__ import annotations

import torch

from saekit.train import load_sae
from saekit.train.export import save_sae
from saekit.train.losses import StepContext
from saekit.train.sae import SAE
from saekit.train.sae_config import SAEConfig
from saekit.train.spec import parse_spec
from saekit.train.usage import LatentUsage

# One small SAE of every variant, for tests that go through all of them.
ALL_VARIANTS = [
    "relu:latents=96",
    "topk:k=4,latents=96",
    "batchtopk:k=4,latents=96",
    "feature-choice:k=4,latents=96",
    "gsae:k=4,latents=96",
    "gated:latents=96",
    "jumprelu:latents=96",
]


def build(text: str, d: int, *, seed: int | None = 0) -> SAE:
    """An SAE of spec `text` for inputs of width d, randomly initialised (tied, unit norm)."""
    sae = parse_spec(text).resolve(d).build(d)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        sae.init_weights_(generator, sae.activation.decoder_init_norm, None)
    return sae


def identity_sae(text: str, d: int) -> SAE:
    """An SAE whose pre-activations are the input itself: W_enc = W_dec = I, biases 0."""
    sae = build(text, d, seed=None)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae


def context(sae: SAE, dead: list[int] = (), progress: float = 0.5) -> StepContext:
    """A step context in which exactly the latents `dead` are dead."""
    usage = LatentUsage(sae.d_sae, dead_tokens=100, device=torch.device("cpu"))
    usage.tokens_since_fired_F[list(dead)] = 100
    return StepContext(usage, progress)


def loss_term(sae: SAE, name: str):
    """The loss term of `sae` called `name`."""
    (term,) = [t for t in sae.activation.loss_terms() if t.name == name]
    return term


EXPORT_WIDTH = 8
EXPORT_SOURCE, EXPORT_TARGET = "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"
# the scale each hook was trained at: every fold of an export is exercised
EXPORT_SCALES = {
    EXPORT_SOURCE: 2.0,
    EXPORT_TARGET: 0.5,
    "blocks.0.mlp.hook_in": 1.25,
    "blocks.0.hook_resid_mid": 3.0,
    "blocks.0.hook_mlp_out": 0.25,
    "blocks.1.hook_resid_mid": 1.5,
}


# -- dictionaries saved as `sae train` saves them, for the export tests ----------------------


def saved(tmp_path, text, seed=0):
    """A dictionary of spec `text` with random weights, trained one step (so learnt thresholds
    exist), saved as `sae train` saves it (scales folded in); the loaded copy."""
    spec = parse_spec(text).resolve(EXPORT_WIDTH)
    widths = {hook: EXPORT_WIDTH for hook in EXPORT_SCALES}
    shape = spec.shape(widths, EXPORT_SOURCE)
    sae = spec.build(shape)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    x = torch.randn(64, shape.d_in, generator=generator)
    sae.training_forward(x, None, torch.randn(64, shape.d_out, generator=generator))
    cfg = SAEConfig(
        name=spec.name, variant=spec.variant, hook=shape.source_hooks[0], d_in=shape.d_in,
        d_sae=sae.d_sae, k=getattr(spec.options, "k", None), options=spec.options_dict(),
        calibration={}, input_scale=EXPORT_SCALES[shape.source_hooks[0]],
        store={"identity": {"model": "gpt2", "context_size": 128}}, training={},
        shape=None if shape.reconstructs_its_input and len(shape.sources) == 1 else shape.to_json(),
        input_scales={hook: EXPORT_SCALES[hook] for hook in shape.hooks},
    )  # fmt: skip
    directory = tmp_path / spec.name
    save_sae(sae, directory, cfg)
    return load_sae(directory), directory


def raw_inputs(sae, seed=1):
    return torch.randn(32, sae.d_in, generator=torch.Generator().manual_seed(seed)) * 3
