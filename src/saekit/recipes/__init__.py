"""`sae recipe`: each seed paper's headline comparison, reproduced with one command.

A recipe harvests once (or reuses a store), trains its sweep with many SAEs per data pass,
evaluates every SAE and writes a report whose claims table gives each paper claim a verdict.
"""

from saekit.recipes.presets import PAPER, PRESETS, SMALL, Preset
from saekit.recipes.runner import RECIPES, Outcome, RecipeRequest, Reporter, run_recipes

__all__ = [
    "PAPER",
    "PRESETS",
    "RECIPES",
    "SMALL",
    "Outcome",
    "Preset",
    "RecipeRequest",
    "Reporter",
    "run_recipes",
]
