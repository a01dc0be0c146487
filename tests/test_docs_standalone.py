"""The docs and docstrings stand on their own: nothing cites a document the repository lacks.

A pure text scan (no imports of saekit): research notes outside the repository (`../shared/...`,
`algorithms-notes`, `algorithms §N`) are never cited — what the code needs of them is in
docs/algorithms.md. Runtime data under `../shared/data` (the benchmarks' and experiments'
tokenizer and text) is a path the code reads, not a citation, and stays allowed. Relative links
in the docs point to files (and headings) that exist in the repository.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCANNED = ("README.md", "docs", "src", "benchmarks", "experiments")
TEXT_SUFFIXES = {".md", ".py", ".toml", ".txt", ".js", ".css", ".html", ".json", ".cfg"}

# What a citation of a document outside the repository looks like, by name.
FORBIDDEN = {
    "../shared": re.compile(r"\.\./shared(?!/data\b)"),  # except the runtime data directory
    "shared/research": re.compile(r"shared/research"),
    "algorithms-notes": re.compile(r"algorithms-notes"),
    "algorithms §": re.compile(r"algorithms §"),  # the old spec's sections: docs/algorithms.md §N
}

# Citations known to remain in code another change is rewriting right now (recipes/ and
# evaluate/). Each entry is (path, pattern); remove an entry when its citation is gone —
# test_pending_entries_are_still_needed fails until then, so the list only shrinks.
PENDING: set[tuple[str, str]] = set()


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            p
            for p in candidates
            if p.is_file()
            and p.suffix in TEXT_SUFFIXES
            and "output" not in p.relative_to(ROOT).parts  # experiments' generated files
        ]
    return files


def citations() -> list[tuple[str, str, int, str]]:
    """(path, name of the pattern, line number, line) of every citation of a document outside
    the repository."""
    found = []
    for path in scanned_files():
        relative = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append((relative, name, number, line.strip()))
    return found


def test_nothing_cites_documents_outside_the_repository():
    unexpected = [c for c in citations() if (c[0], c[1]) not in PENDING]
    assert not unexpected, "cite docs/algorithms.md instead:\n" + "\n".join(
        f"{path}:{number}: {line}" for path, _, number, line in unexpected
    )


def test_pending_entries_are_still_needed():
    found = {(path, name) for path, name, _, _ in citations()}
    for entry in PENDING:
        assert entry in found, f"its citation is gone: remove {entry} from PENDING"


def test_the_patterns_catch_citations_and_spare_data_paths():
    line = "see ../shared/research/algorithms-notes.md and algorithms §5"
    assert all(pattern.search(line) for pattern in FORBIDDEN.values())
    fine = "text in ../shared/data/text; see docs/algorithms.md §5"
    assert not any(pattern.search(fine) for pattern in FORBIDDEN.values())


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    anchors, seen, fenced = set(), {}, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_stay_in_the_repository(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc.resolve()
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        assert ROOT.resolve() in resolved.parents, f"{doc.name}: {target} leaves the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved.read_text()), f"{doc.name}: no heading #{anchor}"
