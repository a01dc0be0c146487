"""Dictionaries saved by other libraries (SAELens, sparsify, dictionary_learning), read as
saekit dictionaries: each library's module recognises its folders and maps what it reads onto
a saekit variant and shape (`foreign.Foreign`), folding in every difference of convention or
refusing, in one line, what it cannot represent faithfully. See docs/variants.md#importing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from saekit.base.errors import SaekitError
from saekit.train.importers import dictionary_learning, saelens, sparsify
from saekit.train.importers.foreign import Foreign, build
from saekit.train.sae import Dictionary

LIBRARIES: tuple[ModuleType, ...] = (saelens, sparsify, dictionary_learning)
FORMATS = (
    "SAELens' (cfg.json + sae_weights.safetensors), sparsify's (cfg.json + sae.safetensors) "
    "or dictionary_learning's (ae.pt + config.json)"
)


def foreign_library(directory: Path) -> ModuleType | None:
    """The importer of the library whose saved folder `directory` is, None for any other."""
    return next((library for library in LIBRARIES if library.recognises(directory)), None)


def read_foreign(directory: Path, hook: str | None = None, target: str | None = None) -> Foreign:
    """What a library's folder holds, mapped onto saekit (`hook`, `target`: the store hooks it
    reads and predicts, over those its library names)."""
    library = foreign_library(directory) if directory.is_dir() else None
    if library is None:
        raise SaekitError(f"{directory} is not a saved SAE folder of {FORMATS}")
    return library.read(directory, hook, target)


def load_foreign(directory: Path) -> Dictionary:
    """A library's folder as a saekit dictionary (eval mode, CPU, `cfg` set)."""
    sae, _ = build(read_foreign(directory))
    return sae


__all__ = ["FORMATS", "Foreign", "build", "foreign_library", "load_foreign", "read_foreign"]
