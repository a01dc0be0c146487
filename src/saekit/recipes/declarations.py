"""The vocabulary a recipe is declared in: arms, sweeps, stages, claims and report sections.

A recipe is a value (`Recipe`): which SAEs to train (`Stage`s of `TrainSet`s: arms swept over k,
λ or width), which of them to steer, which claims to judge on the evaluated rows (`ClaimSpec`s:
two series, a metric and where to compare them) and the report sections (functions from the
results to text, figures and findings). What depends on the preset (the L0 grid, the width) is
declared as a function of the recipe's `Scope`. One engine (`runner`, `judge`, `report`) trains,
evaluates, interpolates, judges and renders every recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saekit.cache_format import ActivationStore
from saekit.recipes.claims import Point
from saekit.recipes.presets import Preset
from saekit.recipes.results import Results, Series
from saekit.train import modes


def spec(variant: str, **keys: Any) -> str:
    """`variant:key=value,...` (booleans as true/false, floats as they print)."""
    values = [f"{key}={str(v).lower() if isinstance(v, bool) else v}" for key, v in keys.items()]
    return f"{variant}:{','.join(values)}"


@dataclass(frozen=True)
class Scope:
    """What a recipe's declarations depend on: the preset, the recipe's grid at that preset, the
    width of the activations it reads and the hooks it trains on (the main one first: the hook
    of its runs)."""

    preset: Preset
    grid: Any
    d_in: int
    hooks: tuple[str, ...]

    @property
    def hook(self) -> str:
        """The hook an SAE without shape keys reads."""
        return self.hooks[0]

    @property
    def width(self) -> int:
        """The recipe's base number of latents (expansion · d)."""
        return self.preset.latents(self.d_in)

    def latents(self, factor: float) -> int:
        return self.preset.latents(self.d_in, factor)


@dataclass(frozen=True)
class Arm:
    """A kind of SAE in a recipe: a variant with fixed options (given in this order in its
    specs), `width` times the base latents, read in `mode` unless a series says otherwise."""

    label: str
    variant: str
    options: Mapping[str, Any] = field(default_factory=dict)
    mode: str = modes.INFERENCE
    width: float = 1.0

    def spec(self, leading: Mapping[str, Any], latents: int, derived: Mapping[str, Any]) -> str:
        """The spec of one SAE: the swept and fixed keys, latents, the arm's options, then the
        options learnt from earlier stages."""
        return spec(self.variant, **leading, latents=latents, **self.options, **derived)

    def series(self, mode: str | None = None, label: str | None = None, **filters: Any) -> Series:
        """This arm's rows in `mode` (default: its own), narrowed by option `filters`."""
        return Series(
            label or self.label, self.variant, mode or self.mode, {**self.options, **filters}
        )


@dataclass(frozen=True)
class StageInputs:
    """What options learnt from earlier stages may read: this seed's SAEs trained so far (by
    name; None while only counting SAEs for the cost estimate) and the store they read."""

    scope: Scope
    seed: int
    trained: Mapping[str, Path] | None = None
    store: ActivationStore | None = None


Derive = Callable[[StageInputs, Any], Mapping[str, Any]]  # (inputs, swept value) -> options


@dataclass(frozen=True)
class Finetune:
    """A short KL fine-tune of a train set's SAEs after their stage trained (`sae finetune`):
    each SAE trained further on the spliced LM's KL to the clean LM plus its reconstruction
    loss, on the store's training contexts, for `share` of its training tokens in steps of
    `contexts` contexts; the results are new SAEs of the stage's run (`<name>-kl<tokens>`),
    evaluated like the others."""

    share: float
    contexts: int = 8

    def tokens(self, training_tokens: int, context_size: int) -> int:
        """The fine-tune's tokens: `share` of the SAE's, rounded to whole steps (at least one)."""
        step = self.contexts * context_size
        return max(round(self.share * training_tokens / step), 1) * step


@dataclass(frozen=True)
class TrainSet:
    """SAEs of some arms, swept over one option (`k`, `l1`, or `latents` given as factors of the
    base width) with other options `fixed`; trained on every seed or on the first only, and
    fine-tuned afterwards when a `finetune` is declared."""

    arms: tuple[Arm, ...]
    over: str
    values: tuple[Any, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    seeds: Literal["all", "first"] = "all"
    derive: Derive | None = None  # options learnt from earlier stages, per swept value
    finetune: Finetune | None = None

    def specs(self, inputs: StageInputs) -> list[str]:
        scope, specs = inputs.scope, []
        for value in self.values:
            derived = self.derive(inputs, value) if self.derive else {}
            for arm in self.arms:
                if self.over == "latents":
                    leading, latents = dict(self.fixed), scope.latents(value)
                else:
                    leading, latents = {**self.fixed, self.over: value}, scope.latents(arm.width)
                specs.append(arm.spec(leading, latents, derived))
        return specs


@dataclass(frozen=True)
class Stage:
    """One training run per seed, of every SAE its train sets give for that seed, each SAE
    seeing `length` times the preset's training tokens."""

    name: str
    sets: tuple[TrainSet, ...]
    length: float = 1.0

    def seeds(self, preset: Preset) -> tuple[int, ...]:
        """The seeds this stage trains a run for."""
        every = any(s.seeds == "all" for s in self.sets)
        return preset.seeds if every else preset.seeds[:1]

    def specs(self, inputs: StageInputs) -> list[str]:
        """The SAEs of this stage's run of `inputs.seed` (each once)."""
        first = inputs.seed == inputs.scope.preset.seeds[0]
        specs = [
            text
            for train_set in self.sets
            if train_set.seeds == "all" or first
            for text in train_set.specs(inputs)
        ]
        return list(dict.fromkeys(specs))

    def finetunes(self, inputs: StageInputs) -> list[tuple[Finetune, list[str]]]:
        """The fine-tunes declared for this stage's run of `inputs.seed`: each with the specs
        of the SAEs it fine-tunes."""
        first = inputs.seed == inputs.scope.preset.seeds[0]
        return [
            (train_set.finetune, train_set.specs(inputs))
            for train_set in self.sets
            if train_set.finetune is not None and (train_set.seeds == "all" or first)
        ]


# -- claims ---------------------------------------------------------------------------------------


class Comparison:
    """Where a claim compares its two series: the points it is judged at."""

    def points(self, results: Results, claimed: Series, other: Series, metric: str) -> list[Point]:
        raise NotImplementedError


@dataclass(frozen=True)
class ClaimSpec:
    """A paper's claim: the claimed winner and the other series, the metric, where they are
    compared, and how the report names them."""

    text: str
    source: str
    claimed: Series
    other: Series
    metric: str  # a row metric (`Row.metric`), e.g. loss_added
    metric_label: str  # e.g. "loss added (nats/token)"
    at: Comparison
    arms: str | None = None  # default: "<claimed> vs <other>"
    note: str = ""
    digits: int = 3
    headline: bool = False  # also judged on the SAEs trained longer (`Recipe.longer`)

    @property
    def arms_text(self) -> str:
        return self.arms or f"{self.claimed.label} vs {self.other.label}"

    def at_length(self, length: float) -> ClaimSpec:
        """The claim as judged on SAEs trained `length` times the preset's tokens."""
        return dataclasses.replace(self, text=f"{self.text} — at {length:g}× the training tokens")


# -- report sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A figure of the report: a file under `figures/` and its caption."""

    file: str
    caption: str


@dataclass
class Section:
    """A part of a recipe's report: markdown text, the figures drawn for it and the numbers it
    adds to report.json's findings."""

    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """What a report section may look at besides the rows: the scope, where figures go and the
    run directories (their metrics.jsonl holds the training curves)."""

    scope: Scope
    figures_dir: Path
    run_dirs: Mapping[str, Path]


SectionFunction = Callable[[Results, View], Section | None]


# -- the recipe -----------------------------------------------------------------------------------


def length_stage(length: float) -> str:
    """The name of the stage that trains a recipe's headline SAEs again at `length`."""
    return f"length{length:g}"


def residual_stream(layer: int) -> tuple[str, ...]:
    """The hooks of a recipe on the residual stream: the stream after block `layer`."""
    return (f"blocks.{layer}.hook_resid_post",)


@dataclass(frozen=True)
class Recipe:
    """A paper's headline comparison, declared: its sweep, the SAEs it steers, its claims and
    its report sections. `grids` maps a preset's name to this recipe's grid at that preset."""

    name: str
    title: str
    paper: str
    grids: Mapping[str, Any]
    stages: Callable[[Scope], list[Stage]]
    claims: Callable[[Scope], list[ClaimSpec]]
    sections: tuple[SectionFunction, ...]
    steered: Callable[[Scope], list[Series]] = lambda scope: []
    hooks: Callable[[int], tuple[str, ...]] = residual_stream  # layer -> hooks, main first
    # what is trained again at each longer length of the grid's `lengths` (its headline claims'
    # SAEs), so that those claims are judged at several training lengths
    longer: Callable[[Scope], tuple[TrainSet, ...]] = lambda scope: ()
    needs_gradients: bool = False
    diagnostic_modes: bool = False  # also evaluate SAEs in the modes that only explain a result

    def grid(self, preset: Preset) -> Any:
        """This recipe's grid at `preset` (the preset's override, else the declared one)."""
        if self.name in preset.grids:
            return preset.grids[self.name]
        return self.grids[preset.name]

    def lengths(self, scope: Scope) -> tuple[float, ...]:
        """The training lengths the recipe measures, in multiples of the preset's tokens (the
        first 1: every stage; the others: the `longer` SAEs)."""
        return tuple(getattr(scope.grid, "lengths", (1.0,)))

    def training_stages(self, scope: Scope) -> list[Stage]:
        """The declared stages, then one stage per longer length."""
        longer = self.longer(scope)
        return self.stages(scope) + [
            Stage(length_stage(length), longer, length)
            for length in self.lengths(scope)[1:]
            if longer
        ]

    def scope(self, preset: Preset, d_in: int, hooks: tuple[str, ...]) -> Scope:
        return Scope(preset, self.grid(preset), d_in, hooks)

    def steers(
        self, scope: Scope, variant: str, options: Mapping[str, Any], finetuned: bool = False
    ) -> bool:
        """Whether the SAE with these options (fine-tuned from another or not) gets the steering
        sweep."""
        return any(
            s.variant == variant
            and _subset(s.options, options)
            and s.finetuned in (None, finetuned)
            for s in self.steered(scope)
        )

    def steering_alphas(self, scope: Scope) -> tuple[float, ...]:
        return tuple(getattr(scope.grid, "steering_alphas", ()))


def _subset(wanted: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
    return all(options.get(key) == value for key, value in wanted.items())
