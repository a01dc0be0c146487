"""Seeded fuzzing of a store's metadata: every `zarr.json` of a small store is mutated at random
(types, signs, missing keys, shapes, truncated files), and `info`, `verify`, `train` and `eval`
must each end with exit code 0, 1 or 2 and one line, never a traceback or an internal error."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from saekit.cache_format import HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import TrainRequest, TrainSettings, parse_spec, train

pytestmark = pytest.mark.slow  # 300 seeded trials, each running a command on a mutated store

TRIALS = int(os.environ.get("SAEKIT_FUZZ_TRIALS", "300"))
ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 7, 2**40, -(2**40), 1.5, -0.5, "", "x", "1", "float32",
    "uint16", "scaled-float16", [], [0], [-1], [128, 16], [0, 16], {}, {"d": 16},
]  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small complete store (1024 rows, 256 held out, d = 16) and a run trained on it."""
    root = tmp_path_factory.mktemp("fuzz")
    spec = synthetic_spec(
        1024,
        hooks={"synthetic.hook_resid": HookSpec(d=16)},
        rows_per_chunk=128,
        chunks_per_block=2,
        holdout_rows=256,
    )
    write_synthetic_store(root / "store.zarr", spec)
    train(
        TrainRequest(
            store=str(root / "store.zarr"),
            hook=None,
            out=root / "run",
            specs=[parse_spec("topk:k=4,latents=32")],
            settings=TrainSettings(tokens=256, batch_size=128, calibration_rows=512),
        )
    )
    return root


def nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every node of a JSON value (the root excluded)."""
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    else:
        return []
    found = []
    for key, child in children:
        found += [(*path, key), *nodes(child, (*path, key))]
    return found


def mutate(text: str, rng: random.Random) -> str:
    """One random change to a JSON document: delete or replace a node, perturb a number, or
    cut the file short."""
    try:
        document = json.loads(text)
    except ValueError:  # cut short by an earlier mutation
        return text
    if rng.random() < 0.1:
        return text[: rng.randrange(len(text))]
    path = rng.choice(nodes(document))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    roll = rng.random()
    if roll < 0.25 and isinstance(parent, dict):
        del parent[key]
    elif roll < 0.5 and isinstance(old, int | float) and not isinstance(old, bool):
        parent[key] = rng.choice([-old, old + 1, old - 1, old * 2, 0, old // 3])
    else:
        parent[key] = rng.choice(ODD_VALUES)
    return json.dumps(document)


def test_mutated_metadata_never_ends_in_a_traceback(pristine, tmp_path, run_cli):
    metadata = sorted(
        p.relative_to(pristine / "store.zarr") for p in (pristine / "store.zarr").rglob("zarr.json")
    )
    outcomes: dict[str, set[int]] = {}
    for trial in range(TRIALS):
        rng = random.Random(trial)
        store = tmp_path / f"s{trial}"
        shutil.copytree(pristine / "store.zarr", store)
        for _ in range(rng.choice([1, 1, 2, 3])):
            target = store / (Path("zarr.json") if rng.random() < 0.5 else rng.choice(metadata))
            target.write_text(mutate(target.read_text(), rng))
        commands = {
            "info": ["info", store, "--json"],
            "verify": ["verify", store],
            "train": ["train", "--store", store, "--out", tmp_path / f"r{trial}", "--sae",
                      "topk:k=4,latents=32", "--tokens", 128, "--batch-size", 128],
            "eval": ["eval", pristine / "run", "--store", store, "--out", tmp_path / f"e{trial}",
                     "--no-online"],
        }  # fmt: skip
        for name, command in commands.items():
            result = run_cli(*command)
            assert_clean_end(result, verify=name == "verify", context=f"trial {trial}, {name}")
            outcomes.setdefault(name, set()).add(result.exit_code)
        for leftover in (store, tmp_path / f"r{trial}", tmp_path / f"e{trial}"):
            shutil.rmtree(leftover, ignore_errors=True)
    assert outcomes["info"] >= {0, 1}, "the trials include sound and damaged stores"


def assert_clean_end(result, verify: bool, context: str) -> None:
    """Exit 0, 1 or 2, never a traceback; a failure is one `error:` line (verify: one
    `corrupt:` line per problem)."""
    context = f"{context}: {result.stderr}"
    assert result.exit_code in (0, 1, 2), context
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, context
    if result.exit_code and not (verify and result.stderr.startswith("corrupt: ")):
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, context
