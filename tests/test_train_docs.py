"""docs/variants.md documents every registered variant and every key it accepts."""

import dataclasses
import re
from pathlib import Path

import pytest

from saekit.train.variants import ALIASES, VARIANTS

DOC = (Path(__file__).parent.parent / "docs" / "variants.md").read_text()


@pytest.mark.parametrize("variant", [*VARIANTS, *ALIASES])
def test_every_variant_has_a_section(variant):
    assert re.search(rf"^## .*\b{re.escape(variant)}\b", DOC, re.M), variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_key_is_documented(variant):
    for field in dataclasses.fields(VARIANTS[variant].options_type):
        assert f"`{field.name}`" in DOC, f"{variant}: key {field.name}"
