"""docs/variants.md documents every registered variant and every key it accepts;
docs/algorithms.md gives every variant's maths, has every section the code cites, and a legend
for every shape suffix the code uses (as does saekit's package docstring)."""

import dataclasses
import re
from pathlib import Path

import pytest

import saekit
from saekit.train.variants import ALIASES, VARIANTS

DOCS = Path(__file__).parent.parent / "docs"
DOC = (DOCS / "variants.md").read_text()
ALGORITHMS = (DOCS / "algorithms.md").read_text()
SRC = Path(saekit.__file__).parent


@pytest.mark.parametrize("variant", [*VARIANTS, *ALIASES])
def test_every_variant_has_a_section(variant):
    assert re.search(rf"^## .*\b{re.escape(variant)}\b", DOC, re.M), variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_key_is_documented(variant):
    for field in dataclasses.fields(VARIANTS[variant].options_type):
        assert f"`{field.name}`" in DOC, f"{variant}: key {field.name}"


def _squashed(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _sections() -> dict[int, str]:
    """docs/algorithms.md's numbered sections: number → heading."""
    return {int(n): title for n, title in re.findall(r"^## (\d+)\. (.*)$", ALGORITHMS, re.M)}


@pytest.mark.parametrize("variant", [*VARIANTS, *ALIASES])
def test_every_variant_has_its_maths_in_algorithms(variant):
    headings = [_squashed(title) for title in _sections().values()]
    assert any(_squashed(variant) in heading for heading in headings), variant


def test_cited_sections_of_algorithms_exist():
    sections = _sections()
    assert sorted(sections) == list(range(1, len(sections) + 1))
    for path in SRC.rglob("*.py"):
        for number in re.findall(r"docs/algorithms\.md §(\d+)", path.read_text()):
            assert int(number) in sections, f"{path.relative_to(SRC)} cites §{number}"


def _suffix_letters() -> set[str]:
    """Every letter of a shape suffix (`x_BD` → B, D) in saekit's source."""
    letters = set()
    for path in SRC.rglob("*.py"):
        for suffix in re.findall(r"\b[a-z][A-Za-z0-9_]*?_([A-Z1]{1,5})\b", path.read_text()):
            letters |= set(suffix)
    return letters


def test_every_shape_suffix_letter_is_in_the_legends():
    legend = ALGORITHMS.split("### Shape suffixes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w)` \|", legend, re.M))
    in_package_doc = set(re.findall(r"^ {4}(\w)  ", saekit.__doc__ or "", re.M))
    used = _suffix_letters()
    assert used, "the scan finds suffixes"
    assert used <= documented, f"not in docs/algorithms.md §1: {sorted(used - documented)}"
    assert used <= in_package_doc, f"not in saekit's docstring: {sorted(used - in_package_doc)}"
    assert documented == in_package_doc, "the two legends list the same letters"
