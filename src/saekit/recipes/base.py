"""What a recipe is: its training stages, the extra evaluation it asks for, and its analysis.

A recipe trains its sweep in *stages*; each stage is one training run per seed (many SAEs per
data pass). A later stage may depend on an earlier one's SAEs (Feature Choice's Zipf capacities
are fitted to a TopK SAE). The runner trains and evaluates; the recipe turns the evaluated rows
into tables, figures and claims (`Analysis`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from saekit.cache_format import ActivationStore
from saekit.recipes.claims import Claim
from saekit.recipes.presets import Preset
from saekit.recipes.results import Results


@dataclass
class StageContext:
    """What a stage's SAE specs may depend on."""

    preset: Preset
    d_in: int
    seed: int
    # The SAE directories of earlier stages' runs of this seed, by SAE name, and the store they
    # were trained on; None while only counting the SAEs (cost estimate) before any training.
    trained: dict[str, Path] | None = None
    store: ActivationStore | None = None
    hook: str | None = None


@dataclass(frozen=True)
class Stage:
    """One training run per seed: `specs(context)` gives its SAEs (`variant:key=value,...`)."""

    name: str
    specs: Callable[[StageContext], list[str]]
    seeds: str = "all"  # "all" of the preset's seeds, or "first" only


@dataclass
class Figure:
    """A figure of the report: a file under `figures/` and its caption."""

    file: str
    caption: str


@dataclass
class Analysis:
    """What a recipe makes of its results: report sections, figures and claims."""

    sections: list[str] = field(default_factory=list)  # markdown, in order
    figures: list[Figure] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)  # numbers for report.json


@dataclass
class AnalysisContext:
    """Where a recipe's analysis may look besides its rows."""

    preset: Preset
    d_in: int
    figures_dir: Path
    run_dirs: dict[str, Path]  # run name -> run directory (metrics.jsonl for training curves)
    reconstruction_notes: list[str] = field(default_factory=list)


class Recipe:
    """A paper's headline comparison as stages of training runs plus an analysis."""

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    steered_per_seed: ClassVar[int] = 0  # SAEs per seed with a steering sweep (cost estimate)
    diagnostic_modes: ClassVar[bool] = False  # also evaluate SAEs in modes that only explain

    def stages(self, preset: Preset) -> list[Stage]:
        raise NotImplementedError

    def steers(self, variant: str, options: dict[str, Any], preset: Preset, d_in: int) -> bool:
        """Whether the steering sweep runs for this SAE."""
        return False

    def analyse(self, results: Results, context: AnalysisContext) -> Analysis:
        raise NotImplementedError


def spec(variant: str, **keys: Any) -> str:
    """`variant:key=value,...` (booleans as true/false, floats as they print)."""
    values = [f"{key}={str(v).lower() if isinstance(v, bool) else v}" for key, v in keys.items()]
    return f"{variant}:{','.join(values)}"
