"""Building small SAEs with chosen weights, for hand-computed cases."""

from __future__ import annotations

import torch

from saekit.train.losses import StepContext
from saekit.train.sae import SAE
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
