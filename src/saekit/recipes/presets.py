"""Presets: the scale a recipe runs at.

`small` runs each recipe on the demo's tiny LM (or any small local model) on a CPU: the hook is the
middle layer's residual stream, a few hundred thousand tokens are harvested, SAEs have 8·d latents
and see 512k tokens. `paper` uses the papers' settings (GPT-2 small, `blocks.7.hook_resid_post`,
~14M training tokens, 15,360 latents) and needs a GPU; its cost is estimated before it starts.
Both train every SAE a claim rests on with two seeds, so a verdict can tell a difference from
seed noise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Every setting a recipe takes from its preset."""

    name: str
    hook: str | None  # None: the middle layer's residual stream, blocks.{n_layers // 2}
    context_size: int
    harvest_tokens: int  # held-out included
    holdout_tokens: int
    harvest_batch: int  # contexts per LM pass
    expansion: int  # latents = expansion · d
    train_tokens: int
    batch_size: int
    seeds: tuple[int, ...]  # every SAE a claim rests on is trained once per seed
    online_tokens: int  # held-out tokens spliced into the LM (offline metrics use them all)
    eval_batch: int  # contexts per LM pass when splicing
    gsae_k: tuple[int, ...]  # g-SAE paper, Fig. 4: L0 grid of TopK and g-SAE
    headline_k: int  # L0 of the β, value-mode and latents sweeps
    latents_factors: tuple[float, ...]  # the latents sweep, in multiples of expansion · d
    beta_effs: tuple[float, ...]
    choice_k: tuple[int, ...]  # Mutual / Feature Choice: L0 grid
    l1_grid: tuple[float, ...]  # Gated and ReLU+L1: λ sweep
    steering_latents: int
    steering_contexts: int
    steering_alphas: tuple[
        float, ...
    ]  # added α · E‖x‖ · d_i, in units of the mean norm at the hook

    def hook_for(self, n_layers: int) -> str:
        return self.hook or f"blocks.{n_layers // 2}.hook_resid_post"

    def latents(self, d: int, factor: float = 1.0) -> int:
        return max(1, round(self.expansion * d * factor))


SMALL = Preset(
    name="small",
    hook=None,
    context_size=128,
    harvest_tokens=262_144,
    holdout_tokens=16_384,
    harvest_batch=16,
    expansion=8,
    train_tokens=524_288,
    batch_size=1024,
    seeds=(0, 1),
    online_tokens=16_384,
    eval_batch=16,
    gsae_k=(8, 16, 32),
    headline_k=16,
    latents_factors=(0.5, 1.0, 2.0),
    beta_effs=(0.1, 0.3, 1.0),
    choice_k=(8, 16, 32),
    l1_grid=(1.0, 2.0, 4.0, 8.0, 16.0),
    steering_latents=32,
    steering_contexts=32,
    steering_alphas=(0.25, 0.5, 1.0, 2.0),
)

PAPER = Preset(
    name="paper",
    hook="blocks.7.hook_resid_post",
    context_size=128,
    harvest_tokens=15_000_000,
    holdout_tokens=1_000_000,
    harvest_batch=64,
    expansion=20,
    train_tokens=14_000_000,
    batch_size=4096,
    seeds=(0, 1),
    online_tokens=262_144,
    eval_batch=32,
    gsae_k=(16, 32, 64, 128),
    headline_k=32,
    latents_factors=(0.25, 0.5, 1.0, 2.0),
    beta_effs=(0.1, 0.3, 1.0),
    choice_k=(16, 32, 64),
    l1_grid=(1.0, 2.0, 4.0, 8.0, 16.0),
    steering_latents=256,
    steering_contexts=256,
    steering_alphas=(0.25, 0.5, 1.0, 2.0),
)

PRESETS = {preset.name: preset for preset in (SMALL, PAPER)}
