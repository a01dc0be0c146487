"""Presets: the scale every recipe runs at. Each recipe declares its own grid per preset (its
L0s, λs, widths) in its own file; a preset may override a recipe's grid (`grids`), which is how
tests shrink a recipe.

`small` runs each recipe on the demo's tiny LM (or any small local model) on a CPU: the layer is the
middle one (its residual stream, or its MLP for `transcoders`), a few hundred thousand tokens are
harvested, SAEs have 8·d latents and see 512k tokens. `paper` uses the papers' settings (GPT-2
small, layer 7: `blocks.7.hook_resid_post`, ~14M training tokens, 15,360 latents) and needs a GPU;
its cost is estimated before it starts.
Both train every SAE a claim rests on with two seeds, so a verdict can tell a difference from
seed noise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """The scale shared by every recipe."""

    name: str
    hook: str | None  # None: the middle layer's residual stream, blocks.{n_layers // 2}
    context_size: int
    harvest_tokens: int  # held-out included
    holdout_tokens: int
    harvest_batch: int  # contexts per LM pass
    expansion: int  # latents = expansion · d
    train_tokens: int  # per SAE
    batch_size: int
    seeds: tuple[int, ...]  # every SAE a claim rests on is trained once per seed
    online_tokens: int  # held-out tokens spliced into the LM (offline metrics use them all)
    eval_batch: int  # contexts per LM pass when splicing
    steering_latents: int  # alive latents steered per steered SAE
    steering_contexts: int  # held-out contexts each latent is steered on
    grids: Mapping[str, Any] = field(default_factory=dict)  # recipe name -> its grid, overriding

    def hook_for(self, n_layers: int) -> str:
        return self.hook or f"blocks.{n_layers // 2}.hook_resid_post"

    def layer_for(self, n_layers: int) -> int:
        """The layer every recipe works at: the preset hook's block, else the middle one (a
        residual-stream recipe reads the stream after it, `transcoders` its MLP)."""
        found = re.match(r"blocks\.(\d+)\.", self.hook_for(n_layers))
        return int(found.group(1)) if found else n_layers // 2

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
    steering_latents=32,
    steering_contexts=32,
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
    steering_latents=256,
    steering_contexts=256,
)

PRESETS = {preset.name: preset for preset in (SMALL, PAPER)}
