"""A recipe's evaluated rows turned into its part of the report: the declared sections, then the
declared claims judged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saekit.recipes.claims import Claim
from saekit.recipes.declarations import Figure, Recipe, Section, View
from saekit.recipes.judge import judge
from saekit.recipes.lengths import convergence_section, rows_at
from saekit.recipes.results import Results, Row


@dataclass
class Analysis:
    """What a recipe makes of its rows: report sections (with their figures) and claims."""

    recipe: Recipe
    rows: list[Row]
    sections: list[Section]
    claims: list[Claim]

    @property
    def figures(self) -> list[Figure]:
        return [figure for section in self.sections for figure in section.figures]

    @property
    def findings(self) -> dict[str, Any]:
        """The numbers the sections add to report.json."""
        return {key: value for s in self.sections for key, value in s.findings.items()}


def analyse(recipe: Recipe, rows: list[Row], view: View) -> Analysis:
    """Render the recipe's sections and judge its claims on the rows of SAEs trained for the
    preset's tokens; judge its headline claims again on each longer length's rows and add the
    training-length section."""
    tokens = view.scope.preset.train_tokens
    lengths = recipe.lengths(view.scope)
    results = Results(rows_at(rows, lengths[0], tokens))
    sections = [section(results, view) for section in recipe.sections]
    specs = recipe.claims(view.scope)
    claims = [judge(recipe.name, claim, results) for claim in specs]
    for length in lengths[1:]:
        longer = Results(rows_at(rows, length, tokens))
        claims += [
            judge(recipe.name, claim.at_length(length), longer) for claim in specs if claim.headline
        ]
    if len(lengths) > 1:
        sections.append(convergence_section(recipe.name, view, lengths))
    return Analysis(recipe, rows, [s for s in sections if s is not None], claims)
