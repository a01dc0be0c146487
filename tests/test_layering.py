"""saekit's layering, checked by tools rather than by review.

1. The import-linter contract in pyproject.toml (`[tool.importlinter]`; `make test` also runs
   `lint-imports`): cli → demo → recipes | dashboard → finetune → evaluate → harvest | train →
   lm → cache_format → base, each layer importing only the layers below it (and `|` siblings
   not each other). It holds on this tree, and a planted upward import in a copy of the tree
   breaks it, with the offending import named.
2. A rule the contract cannot state, checked with grimp (import-linter's graph library): outside
   a stage package, only the stage's public package is imported (`saekit.train`, never
   `saekit.train.export`). base and cache_format are plumbing, not stages: their submodules may
   be imported anywhere below the rule of 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = (
    "saekit.lm",
    "saekit.harvest",
    "saekit.train",
    "saekit.evaluate",
    "saekit.finetune",
    "saekit.dashboard",
    "saekit.recipes",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with `root`'s pyproject.toml, on the saekit package in `root`/src."""
    code = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layering_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "saekit's layers import downward only KEPT" in result.stdout
    assert "1 kept, 0 broken" in result.stdout


PLANTED = [
    # (module file, code appended to it, the import the contract must name)
    ("cache_format/summary.py", "import saekit.cli", "saekit.cache_format.summary -> saekit.cli"),
    (
        "base/units.py",
        "def _planted():\n    import saekit.lm",  # a lazy import is an import too
        "saekit.base.units -> saekit.lm",
    ),
    (
        "train/zipf.py",  # harvest | train: siblings, independent of each other
        "from saekit.harvest import sources",
        "saekit.train.zipf -> saekit.harvest.sources",
    ),
]


@pytest.mark.parametrize(("module", "code", "named"), PLANTED, ids=[p[2] for p in PLANTED])
def test_a_planted_upward_import_breaks_the_contract(tmp_path, module, code, named):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "src" / "saekit", tmp_path / "src" / "saekit", ignore=ignore)
    target = tmp_path / "src" / "saekit" / module
    target.write_text(target.read_text() + f"\n\n{code}  # planted\n")
    line = len(target.read_text().splitlines())
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "saekit's layers import downward only BROKEN" in result.stdout
    assert f"- {named} (l.{line})" in result.stdout, result.stdout


def stage_of(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def deep_imports() -> dict[str, list[str]]:
    """{"importer -> imported": ["l.N: line", ...]} for every import of a stage's submodule from
    outside that stage."""
    graph = grimp.build_graph("saekit", cache_dir=None)
    found = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            stage = stage_of(imported)
            if stage and imported != stage and stage_of(importer) != stage:
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = [f"l.{d['line_number']}: {d['line_contents']}" for d in details]
                found[f"{importer} -> {imported}"] = lines
    return found


def test_stages_import_each_other_through_their_public_package():
    assert deep_imports() == {}
