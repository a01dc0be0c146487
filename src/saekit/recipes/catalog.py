"""Every recipe `sae recipe` knows, in the order `all` runs them."""

from saekit.recipes import choice, e2e, gated, gsae, transcoders
from saekit.recipes.declarations import Recipe

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (gsae.RECIPE, choice.RECIPE, gated.RECIPE, transcoders.RECIPE, e2e.RECIPE)
}
