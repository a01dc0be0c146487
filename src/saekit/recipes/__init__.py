"""`sae recipe`: each seed paper's headline comparison, reproduced with one command.

A recipe is declared as data (`declarations.Recipe`: its sweep, the SAEs it steers, its claims and
report sections); one engine harvests once (or reuses a store), trains the sweep with many SAEs
per data pass, evaluates every SAE through `saekit.evaluate` and writes a report whose claims
table gives each paper claim a verdict.
"""

from saekit.recipes.catalog import RECIPES
from saekit.recipes.declarations import Recipe
from saekit.recipes.inputs import RecipeRequest
from saekit.recipes.presets import PAPER, PRESETS, SMALL, Preset
from saekit.recipes.runner import Outcome, Reporter, run_recipes

__all__ = [
    "PAPER",
    "PRESETS",
    "RECIPES",
    "SMALL",
    "Outcome",
    "Preset",
    "Recipe",
    "RecipeRequest",
    "Reporter",
    "run_recipes",
]
