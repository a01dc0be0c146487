"""Evaluated rows of a recipe (one SAE in one mode, one seed) and the curves built from them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from saekit.recipes.pareto import Point, frontier
from saekit.train import SHAPE_DEFAULTS

OFFLINE_METRICS = (
    "l0",
    "nmse",
    "dead_fraction",
    "underused_fraction",
    "relative_reconstruction_bias",
    "cosine",
    # the loss added estimated from the store's gradients (`saekit.evaluate.estimate`)
    "loss_added_estimate",
    "kl_estimate",
    "loss_added_first_order",
)
ONLINE_METRICS = ("loss_added", "ce_recovered_zero", "ce_recovered_mean", "kl")
HIGHER_IS_BETTER = {"ce_recovered_zero": True, "ce_recovered_mean": True, "cosine": True}
# fidelity metrics, traded against L0: their curves keep the Pareto-optimal points only
TRADE_OFFS = ("nmse", "loss_added", "ce_recovered_zero", "ce_recovered_mean", "kl")


@dataclass(frozen=True)
class Row:
    """One evaluated SAE in one mode, as cached in `evals/<run>.json`."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def variant(self) -> str:
        return self.data["variant"]

    @property
    def mode(self) -> str:
        return self.data["mode"]

    @property
    def seed(self) -> int:
        return self.data["seed"]

    @property
    def options(self) -> dict[str, Any]:
        return self.data["options"]

    @property
    def steering(self) -> dict[str, Any] | None:
        return self.data.get("steering")

    @property
    def finetuned(self) -> bool:
        """Whether the SAE was made by a KL fine-tune of another SAE of its run."""
        return bool(self.data.get("finetune"))

    def option(self, key: str) -> Any:
        """An option's value; a shape key left out of a saved SAE's options has its default."""
        return self.options.get(key, SHAPE_DEFAULTS.get(key))

    def metric(self, key: str) -> float:
        """An offline or online metric; `gamma_error` is |γ − 1|, `prefix_nmse:<w>` (and
        `prefix_l0:<w>`) the NMSE (L0) of a Matryoshka SAE's first w latents alone; NaN when not
        measured."""
        if key == "gamma_error":
            return abs(self.metric("relative_reconstruction_bias") - 1)
        if key.startswith("prefix_"):
            name, width = key.split(":", 1)
            value = self.data["offline"].get(name, {}).get(width)
            return float("nan") if value is None else float(value)
        source = self.data["offline"] if key in OFFLINE_METRICS else self.data.get("online") or {}
        value = source.get(key)
        return float("nan") if value is None else float(value)

    def matches(self, variant: str | None, mode: str | None, options: dict[str, Any]) -> bool:
        return (
            (variant is None or self.variant == variant)
            and (mode is None or self.mode == mode)
            and all(self.option(key) == value for key, value in options.items())
        )


@dataclass(frozen=True)
class Series:
    """A family of SAEs that differ only along a sweep (k, λ or width): a filter on rows. The
    SAEs a KL fine-tune made are a family of their own (`finetuned`): they keep the options of
    the SAE they were fine-tuned from. `variant` or `mode` None: any."""

    label: str
    variant: str | None
    mode: str | None
    options: dict[str, Any]
    finetuned: bool | None = False  # None: both

    def at(self, **options: Any) -> Series:
        """The same series narrowed to rows with these option values (e.g. one k)."""
        return dataclasses.replace(self, options={**self.options, **options})

    def fine_tuned(self, label: str) -> Series:
        """The SAEs a KL fine-tune made from this series' SAEs."""
        return dataclasses.replace(self, label=label, finetuned=True)

    def rows(self, rows: Iterable[Row], seed: int | None = None) -> list[Row]:
        return [
            r
            for r in rows
            if r.matches(self.variant, self.mode, self.options)
            and self.finetuned in (None, r.finetuned)
            and seed in (None, r.seed)
        ]


class Results:
    """Every evaluated row of a recipe."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.rows})

    def select(
        self, variant: str | None = None, mode: str | None = None, **options: Any
    ) -> list[Row]:
        return [r for r in self.rows if r.matches(variant, mode, options)]

    def swept(self, series: Series, key: str) -> list[Any]:
        """The values the series' rows take for option `key`, sorted (a sweep's points)."""
        return sorted({r.options[key] for r in series.rows(self.rows)})

    def seeds_of(self, series: Series) -> list[int]:
        return sorted({r.seed for r in series.rows(self.rows)})

    def curve(self, series: Series, metric: str, seed: int) -> list[Point]:
        """One seed's SAEs of a series as (L0, metric) sorted by L0: the Pareto curve for a
        fidelity metric, every point for others (e.g. γ)."""
        points = [(r.metric("l0"), r.metric(metric)) for r in series.rows(self.rows, seed)]
        finite = sorted((l0, v) for l0, v in points if l0 > 0 and math.isfinite(v))
        if metric in TRADE_OFFS:
            return frontier(finite, HIGHER_IS_BETTER.get(metric, False))
        return finite

    def values(
        self, series: Series, metric: str, where: Callable[[Row], bool] = lambda r: True
    ) -> dict[int, float]:
        """metric of the series' row satisfying `where`, by seed (the mean if several)."""
        by_seed: dict[int, list[float]] = {}
        for row in series.rows(self.rows):
            if where(row):
                by_seed.setdefault(row.seed, []).append(row.metric(metric))
        return {seed: sum(v) / len(v) for seed, v in sorted(by_seed.items())}
