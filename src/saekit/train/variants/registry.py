"""The variant registry: variant name (or alias) -> activation strategy class."""

from __future__ import annotations

from typing import TypeVar

from saekit.train.variants.base import Activation

VARIANTS: dict[str, type[Activation]] = {}
ALIASES: dict[str, str] = {}

A = TypeVar("A", bound=type[Activation])


def register(cls: A) -> A:
    """Class decorator: make a variant available under its name and aliases."""
    for key in (cls.name, *cls.aliases):
        if key in VARIANTS or key in ALIASES:
            raise ValueError(f"variant name {key!r} is registered twice")
    VARIANTS[cls.name] = cls
    ALIASES.update({alias: cls.name for alias in cls.aliases})
    return cls


def canonical_name(name: str) -> str | None:
    """The registered name of a variant or alias, None if unknown."""
    return name if name in VARIANTS else ALIASES.get(name)


def described_names() -> list[str]:
    """Every variant's name, each followed by its aliases: `batchtopk (alias mutual-choice)`."""
    described = []
    for name in sorted(VARIANTS):
        aliases = sorted(alias for alias, target in ALIASES.items() if target == name)
        described.append(f"{name} (alias {', '.join(aliases)})" if aliases else name)
    return described


def all_names() -> list[str]:
    """Every accepted variant name and alias."""
    return [*VARIANTS, *ALIASES]
