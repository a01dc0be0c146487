"""Broken and hostile inputs: every one ends in one clear line, never a traceback, and changes no
byte of the store, the run, the model, the corpus or anything else (sha256 of every file).

Each case copies one harvested store and one trained run, breaks something, runs one command
and checks its exit code (1: damaged data, 2: bad input), its one line on stderr and every
file's hash. The classes: store metadata (lies the store tells about itself included), store data
(damaged scales and token ids included), writing where saekit must not (inside a store, through
links, over folders saekit did not write, where the machine refuses), harvest options and inputs,
runs and saved SAEs (an SAE meeting another model's store or model included), other options.
The tests after the table show what works: outputs saekit wrote are replaced, links at staging
names are never followed, --allow-other-model says what it let through, a write past a file-size
limit is one line and leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from safetensors.torch import load_file, save_file

from helpers import harvest_small_store, snapshot
from saekit.base.errors import SaekitError
from saekit.base.outputs import MARKER_FILE, marker_kind, write_marker
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.dashboard import is_site
from saekit.train import TrainRequest, TrainSettings, parse_spec, train
from saekit.train.checkpoint import Checkpoints
from saekit.train.metrics import METRICS_FILE, MetricsLog

HOOK = "blocks.1.hook_resid_post"
ACTIVATIONS = f"hooks/{HOOK}/activations"
SAE_DIR = "run/saes/topk-k4-64"


@pytest.fixture(scope="module")
def pristine(tiny_lm, corpus, tmp_path_factory):
    """A store of the tiny LM (4800 tokens, 960 held out, chunks of 256, blocks of 512 rows) and
    a run of one TopK SAE trained on it."""
    root = tmp_path_factory.mktemp("hostile")
    store = harvest_small_store(tiny_lm, corpus, root / "store.zarr")
    request = TrainRequest(
        store=str(store),
        hook=None,
        out=root / "run",
        specs=[parse_spec("topk:k=4,latents=64")],
        settings=TrainSettings(tokens=1024, batch_size=256),
    )
    train(request)
    return root


@dataclass
class World:
    """A private copy of the store and the run, an unrelated folder, and the LM and corpus."""

    root: Path
    model: Path
    corpus: Path

    @property
    def store(self) -> Path:
        return self.root / "store.zarr"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def mine(self) -> Path:
        """Someone's files that saekit must never touch."""
        return self.root / "mine"

    def harvest(self, out: Path | str, *extra: object) -> list[object]:
        """The command that harvested the store, writing to `out`."""
        return [
            "harvest", "--model", self.model, "--dataset", self.corpus, "--hook", HOOK,
            "--tokens", 4800, "--holdout-tokens", 960, "--context-size", 32, "--batch-size", 8,
            "--rows-per-chunk", 256, "--chunks-per-block", 2, "--out", out, *extra,
        ]  # fmt: skip

    def train(self, out: Path | str, *extra: object, sae: str = "topk:k=4,latents=64") -> list:
        return ["train", "--store", self.store, "--out", out, "--sae", sae, "--batch-size", 256,
                "--tokens", 1024, *extra]  # fmt: skip

    def eval(self, *extra: object) -> list[object]:
        return ["eval", self.run, "--out", self.root / "report", "--no-online", *extra]

    def inspect(self, out: Path | str, *extra: object) -> list[object]:
        return ["inspect", self.run, "--out", out, "--latents", 4, "--device", "cpu", *extra]


@pytest.fixture
def world(pristine, tiny_lm, corpus, tmp_path) -> World:
    root = tmp_path / "w"
    shutil.copytree(pristine, root, symlinks=True)
    world = World(root, tiny_lm, corpus)
    for cfg_file in world.run.glob("saes/*/cfg.json"):  # the copy's SAEs name the copied store
        edit_json(cfg_file, lambda cfg: cfg["store"].update(location=str(world.store)))
    world.mine.mkdir()
    (world.mine / "notes.txt").write_text("mine, not saekit's")
    return world


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def edit_attrs(world: World, **changes: object) -> None:
    """Change root attributes of the store (None deletes one)."""

    def apply(meta: dict) -> None:
        for key, value in changes.items():
            if value is None:
                meta["attributes"].pop(key, None)
            else:
                meta["attributes"][key] = value

    edit_json(world.store / "zarr.json", apply)


def edit_layout(world: World, **changes: object) -> None:
    edit_json(world.store / "zarr.json", lambda meta: meta["attributes"]["layout"].update(changes))


def identity_of(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]["identity"]


def store_of_another_model(world: World) -> Path:
    """A copy of the store whose identity says another model's weights made it (same hook,
    width, tokenizer and context)."""
    other = world.root / "other.zarr"
    shutil.copytree(world.store, other)
    identity = {**identity_of(other), "weights_fingerprint": "0123456789abcdef"}
    edit_json(other / "zarr.json", lambda meta: meta["attributes"].update(identity=identity))
    return other


def run_on_another_store(world: World) -> Path:
    """A copy of the run whose SAE says it was trained on `store_of_another_model`."""
    other_store, run2 = store_of_another_model(world), world.root / "run2"
    shutil.copytree(world.run, run2)
    identity = identity_of(other_store)
    edit_json(
        run2 / "saes/topk-k4-64/cfg.json",
        lambda cfg: cfg["store"].update(location=str(other_store), identity=identity),
    )
    return run2


def write_rows(world: World, path: str, rows: list[int], value: float) -> None:
    """Write values into committed rows with plain zarr (chunk checksums stay valid)."""
    array = zarr.open_group(world.store, mode="r+")[path]
    for row in rows:
        array[row, 3] = value


def write_scale(world: World, rows: list[int], value: float) -> None:
    """Write a gradient scale into committed rows with plain zarr (checksums stay valid)."""
    array = zarr.open_group(world.store, mode="r+")[f"hooks/{HOOK}/gradient_scale"]
    for row in rows:
        array[row] = value


def used_rows(world: World, start: int, n: int) -> list[int]:
    """The first `n` rows from `start` that readers use (position 0 is never read)."""
    position = zarr.open_group(world.store, mode="r")["position"][start : start + 256]
    return [start + int(i) for i in np.flatnonzero(position != 0)[:n]]


def chunk_file(world: World, path: str, index: int) -> Path:
    return world.store / path / "c" / str(index) / ("0" if path.startswith("hooks") else "")


@dataclass
class Case:
    """A broken input: `setup` breaks the world and returns the command; the command must exit
    with `code` and one stderr line holding `fragment`."""

    name: str
    setup: Callable[[World], list]
    code: int
    fragment: str


def case(name: str, code: int, fragment: str) -> Callable:
    def register(setup: Callable[[World], list]) -> Callable:
        CASES.append(Case(name, setup, code, fragment))
        return setup

    return register


CASES: list[Case] = []

# -- store metadata: checked when any reader opens the store ------------------------------------


@case("missing-layout", 1, "layout must be an object")
def _(w):
    edit_attrs(w, layout=None)
    return ["info", w.store]


@case("format-version-string", 1, "format_version must be a positive integer, not '1'")
def _(w):
    edit_attrs(w, format_version="1")
    return ["info", w.store]


@case("format-version-true", 1, "format_version must be a positive integer, not True")
def _(w):
    edit_attrs(w, format_version=True)
    return w.train(w.root / "run2")


@case("format-version-negative", 1, "format_version must be a positive integer, not -1")
def _(w):
    edit_attrs(w, format_version=-1)
    return w.eval()


@case("format-version-newer", 2, "newer than the 2 this saekit reads; upgrade saekit")
def _(w):
    edit_attrs(w, format_version=3)
    return ["verify", w.store]


@case("rows-per-chunk-zero", 1, "layout.rows_per_chunk must be a positive integer, not 0")
def _(w):
    edit_layout(w, rows_per_chunk=0)
    return w.train(w.root / "run2")


@case("rows-per-block-not-a-multiple", 1, "a multiple of layout.rows_per_chunk (256)")
def _(w):
    edit_layout(w, rows_per_block=700)
    return ["info", w.store]


@case("n-rows-committed-negative", 1, "n_rows_committed must be an integer >= 0, not -5")
def _(w):
    edit_attrs(w, n_rows_committed=-5)
    return w.eval()


@case("n-rows-committed-string", 1, 'n_rows_committed must be an integer >= 0, not "100"')
def _(w):
    edit_attrs(w, n_rows_committed="100")
    return ["info", w.store]


@case("n-rows-committed-above-capacity", 1, "at most layout.capacity_rows (4800)")
def _(w):
    edit_attrs(w, n_rows_committed=5000)
    return w.eval()


@case("n-rows-committed-above-rows-written", 1, "holds 4800 rows but rows up to 4900")
def _(w):  # a lie consistent in the root attributes, given away by the arrays
    edit_layout(w, capacity_rows=6016)
    identity = json.loads((w.store / "zarr.json").read_text())["attributes"]["identity"]
    edit_attrs(w, n_rows_committed=4900, identity={**identity, "tokens": 6016})
    return w.train(w.root / "run2")


@case("hook-width-disagrees-with-arrays", 1, "has rows of shape [64] but the root attributes")
def _(w):
    edit_attrs(w, hooks={HOOK: {"d": 32, "gradients": True}})
    return w.train(w.root / "run2")


@case("activation-dtype-disagrees-with-arrays", 1, "holds float16 but the root attributes")
def _(w):
    edit_attrs(w, activation_dtype="float32")
    return w.train(w.root / "run2", sae="gsae:k=4,latents=64")


@case("activation-dtype-unknown", 1, "activation_dtype must be one of float16, bfloat16")
def _(w):
    edit_attrs(w, activation_dtype="float64")
    return ["info", w.store, "--json"]


@case("no-hooks", 1, "hooks must be a non-empty object")
def _(w):
    edit_attrs(w, hooks={})
    return w.eval()


@case("hook-name-escapes", 1, "a hook name must be free of '/' and '..'")
def _(w):
    edit_attrs(w, hooks={"../../mine": {"d": 64, "gradients": True}})
    return ["info", w.store]


@case("identity-not-an-object", 1, "identity must be an object")
def _(w):
    edit_attrs(w, identity="gpt2")
    return ["info", w.store]


@case("root-metadata-not-json", 1, "the root zarr.json cannot be read")
def _(w):
    (w.store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    return ["info", w.store]


@case("array-metadata-not-json", 1, "corrupt: metadata: array 'tokens' has unreadable metadata")
def _(w):
    (w.store / "tokens" / "zarr.json").write_text("{")
    return ["verify", w.store]


@case("gradient-encoding-disagrees", 1, 'has encoding "float32" but the root attributes mean')
def _(w):
    edit_json(
        w.store / f"hooks/{HOOK}/gradients/zarr.json",
        lambda meta: meta["attributes"].update(encoding="float32"),
    )
    return ["verify", w.store]


@case("missing-array", 1, "array 'loss' is missing")
def _(w):
    shutil.rmtree(w.store / "loss")
    return w.train(w.root / "run2")


@case("holdout-above-capacity", 1, "at least layout.holdout_rows (960)")
def _(w):
    edit_layout(w, capacity_rows=500)
    edit_attrs(w, n_rows_committed=500)
    return ["info", w.store]


@case("interrupted-creation", 2, "was interrupted while being created")
def _(w):
    edit_attrs(w, initialized=False)
    return w.eval()


@case("holdout-rows-edited-to-zero", 1, "layout.holdout_rows must be identity.holdout_tokens")
def _(w):  # training would take the held-out rows for its own
    edit_layout(w, holdout_rows=0)
    return w.train(w.root / "run2")


@case("holdout-rows-lie-consistently-smaller", 1, "on the other side of the held-out split")
def _(w):  # the identity edited to agree: the rows' contexts still give it away to training
    edit_layout(w, holdout_rows=480)
    edit_attrs(w, identity={**identity_of(w.store), "holdout_tokens": 480})
    return w.train(w.root / "run2")


@case("holdout-rows-lie-consistently-larger", 1, "on the other side of the held-out split")
def _(w):  # and to evaluation, which would measure on training rows
    edit_layout(w, holdout_rows=1920)
    edit_attrs(w, identity={**identity_of(w.store), "holdout_tokens": 1920})
    return w.eval()


@case("verify-holdout-rows-not-whole-contexts", 1, "must be whole contexts (a multiple of")
def _(w):  # the identity edited to agree: the context size still gives it away
    edit_layout(w, holdout_rows=950)
    edit_attrs(w, identity={**identity_of(w.store), "holdout_tokens": 950})
    return ["verify", w.store]


@case("holdout-rows-beyond-the-committed-rows", 1, "at least layout.holdout_rows (4800)")
def _(w):
    edit_layout(w, holdout_rows=4800, capacity_rows=4800)
    edit_attrs(w, identity={**identity_of(w.store), "holdout_tokens": 4800})
    edit_attrs(w, n_rows_committed=4768)
    return ["verify", w.store]


@case("layout-seed-disagrees-with-identity", 1, "layout.seed must be identity.seed (0), not 7")
def _(w):
    edit_layout(w, seed=7)
    return ["info", w.store]


@case("identity-vocab-size-not-a-count", 1, "identity.vocab_size must be a positive integer")
def _(w):
    edit_attrs(w, identity={**identity_of(w.store), "vocab_size": -3})
    return w.eval()


@case("gradients-without-a-gradient-convention", 1, "as identity.gradient_convention is null")
def _(w):
    edit_attrs(w, identity={**identity_of(w.store), "gradient_convention": None})
    return ["verify", w.store]


# -- store data: met while reading ----------------------------------------------------------------


@case("truncated-training-chunk", 1, "cannot be read (checksum mismatch)")
def _(w):
    path = chunk_file(w, ACTIVATIONS, 10)
    path.write_bytes(path.read_bytes()[:1000])
    return w.train(w.root / "run2")


@case("truncated-held-out-chunk", 1, "cannot be read (checksum mismatch)")
def _(w):
    path = chunk_file(w, ACTIVATIONS, 1)
    path.write_bytes(path.read_bytes()[:1000])
    return w.eval()


@case("deleted-held-out-chunk", 1, "held-out rows of store")
def _(w):
    chunk_file(w, ACTIVATIONS, 2).unlink()
    return w.eval()


@case("nan-in-held-out-rows", 1, "held-out rows of store")
def _(w):
    write_rows(w, ACTIVATIONS, used_rows(w, 17, 2), float("nan"))
    return w.eval()


@case("inf-in-training-rows-for-the-mean", 1, "training rows of store")
def _(w):
    write_rows(w, ACTIVATIONS, used_rows(w, 2000, 1), float("inf"))
    return w.eval()


@case("verify-nan-rows", 1, "1 rows with NaN or Inf values (unwritten rows?): rows 1030")
def _(w):
    write_rows(w, ACTIVATIONS, [1030], float("nan"))
    return ["verify", w.store]


@case("verify-missing-chunk", 1, f"corrupt: {ACTIVATIONS} chunk 5 (rows 1280-1535): chunk is")
def _(w):
    chunk_file(w, ACTIVATIONS, 5).unlink()
    return ["verify", w.store]


@case("verify-gradient-scale-not-a-power-of-two", 1, "not a power of two from 2^-126 to 2^126")
def _(w):
    write_scale(w, used_rows(w, 1000, 1), 1e-30)
    return ["verify", w.store]


@case("verify-gradient-scale-outside-the-range", 1, "gradient scales that are not a power of two")
def _(w):  # 2^-140: a power of two, but below the 2^-126 a writer ever stores
    write_scale(w, used_rows(w, 2000, 1), 2.0**-140)
    return ["verify", w.store]


@case("verify-token-ids-beyond-the-vocabulary", 1, "values of 300 or more (identity.vocab_size)")
def _(w):
    zarr.open_group(w.store, mode="r+")["tokens"][700] = 100_000
    return ["verify", w.store]


@case("inspect-negative-token-id", 1, "row 5 of 'tokens' holds -7, which cannot be")
def _(w):
    zarr.open_group(w.store, mode="r+")["tokens"][5] = -7
    return w.inspect(w.root / "site")


@case("eval-online-token-id-beyond-the-vocabulary", 1, "holds 100000, which cannot be")
def _(w):
    zarr.open_group(w.store, mode="r+")["tokens"][5] = 100_000
    return ["eval", w.run, "--out", w.root / "report", "--tokens", 64]


@case("inspect-token-ids-beyond-an-unrecorded-vocabulary", 1, "outside the vocabulary of 300")
def _(w):  # a store of an older saekit records no vocab_size: the tokenizer tells
    edit_attrs(w, identity={k: v for k, v in identity_of(w.store).items() if k != "vocab_size"})
    tokens = zarr.open_group(w.store, mode="r+")["tokens"]
    tokens[:960] = np.where(tokens[:960] > 5, 299 + 7, tokens[:960])
    return w.inspect(w.root / "site")


@case("inspect-deleted-tokens-chunk", 1, "of 'tokens' holds -1, which cannot be")
def _(w):
    chunk_file(w, "tokens", 0).unlink()
    return w.inspect(w.root / "site")


@case("inspect-nan-in-held-out-rows", 1, "no site was written (--out is as it was); run sae ver")
def _(w):
    write_rows(w, ACTIVATIONS, used_rows(w, 17, 2), float("nan"))
    return w.inspect(w.root / "site")


# -- writing where saekit must not ----------------------------------------------------------------


@case("eval-out-inside-the-store", 2, "lies inside the store")
def _(w):
    return ["eval", w.run, "--out", w.store / "report", "--no-online"]


@case("eval-out-through-a-link-to-the-store", 2, "lies inside the store")
def _(w):
    (w.root / "link").symlink_to(w.store)
    return ["eval", w.run, "--out", w.root / "link" / "report", "--no-online"]


@case("train-out-inside-the-store", 2, "lies inside the store")
def _(w):
    return w.train(w.store / "run")


@case("train-out-through-a-link-into-the-store", 2, "lies inside the store")
def _(w):
    (w.root / "link").symlink_to(w.store / "hooks")
    return w.train(w.root / "link" / "run")


@case("harvest-out-inside-another-store", 2, "lies inside the store")
def _(w):
    return w.harvest(w.store / "hooks" / "inner.zarr")


@case("lock-file-is-a-link", 2, "cannot open the lock file")
def _(w):
    (w.store / "locks" / "create.lock").unlink()
    (w.store / "locks" / "create.lock").symlink_to(w.mine / "notes.txt")
    return w.harvest(w.store)


@case("lock-directory-is-a-link", 2, "cannot create the lock directory")
def _(w):
    shutil.rmtree(w.store / "locks")
    (w.store / "locks").symlink_to(w.mine)
    return w.harvest(w.store)


@case("array-directory-is-a-link", 2, "is a symbolic link; saekit never writes through links")
def _(w):
    shutil.move(w.store / "loss" / "c", w.mine / "c")
    (w.store / "loss" / "c").symlink_to(w.mine / "c")
    edit_attrs(w, n_rows_committed=512, complete=False)
    return w.harvest(w.store)


@case("harvest-resume-of-lying-metadata", 1, "n_rows_committed must be at most")
def _(w):
    edit_attrs(w, n_rows_committed=9000, complete=False)
    return w.harvest(w.store)


@case("out-holds-a-file-named-locks", 2, "is not a saekit activation store")
def _(w):
    (w.mine / "notes.txt").unlink()
    (w.mine / "locks").write_text("my locks")
    return w.harvest(w.mine)


@case("out-holds-someone-elses-locks-folder", 2, "is not a saekit activation store")
def _(w):
    (w.mine / "notes.txt").unlink()
    (w.mine / "locks").mkdir()
    (w.mine / "locks" / "door.txt").write_text("front door")
    return w.harvest(w.mine)


@case("out-is-a-file", 2, "is a file, not a store directory")
def _(w):
    return w.harvest(w.mine / "notes.txt")


@case("out-parent-not-writable", 2, "/proc/saekit-test/store.zarr")
def _(w):
    if not Path("/proc/self").exists():
        pytest.skip("needs a read-only /proc")
    return w.harvest("/proc/saekit-test/store.zarr")


@case("inspect-out-is-someone-elses-folder-with-an-inspect-json", 2, "is not an inspect site sae")
def _(w):  # a file name proves nothing: the folder is not replaced
    (w.mine / "inspect.json").write_text('{"mine": true}')
    (w.mine / "thesis.txt").write_text("four years of work")
    (w.mine / "photos").mkdir()
    (w.mine / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    return w.inspect(w.mine)


@case("inspect-out-is-a-site-of-an-earlier-saekit", 2, "delete it yourself or choose a new --out")
def _(w):  # no marker: saekit cannot tell it wrote it
    (w.mine / "inspect.json").write_text('{"format": "saekit.inspect", "format_version": 1}')
    return w.inspect(w.mine)


@case("inspect-out-is-a-link", 2, "is a symbolic link; saekit never writes through links")
def _(w):
    (w.root / "site").symlink_to(w.mine)
    return w.inspect(w.root / "site")


@case("eval-out-is-a-report-of-an-earlier-saekit", 2, "looks like an eval report of an earlier")
def _(w):
    (w.mine / "report.json").write_text("{}")
    return ["eval", w.run, "--out", w.mine, "--no-online"]


@case("eval-out-holds-another-kind-of-output", 2, "holds an inspect site, not an eval report")
def _(w):
    marker = {"format": "saekit.output", "kind": "inspect-site", "id": "0123"}
    (w.mine / ".saekit-output.json").write_text(json.dumps(marker))
    return ["eval", w.run, "--out", w.mine, "--no-online"]


@case("train-resume-sae-directory-is-a-link", 2, "is a symbolic link; saekit never writes through")
def _(w):  # the resumed run would export its SAE, cfg.json and saelens/ into mine/
    shutil.move(w.root / SAE_DIR, w.mine / "sae")
    (w.root / SAE_DIR).symlink_to(w.mine / "sae")
    return w.train(w.run, "--resume")


@case("train-resume-checkpoints-is-a-link", 2, "checkpoints is a symbolic link; saekit never")
def _(w):  # the resumed run would checkpoint into mine/ and remove mine/step-precious
    shutil.move(w.run / "checkpoints", w.mine / "checkpoints")
    (w.mine / "checkpoints" / "step-precious").mkdir()
    (w.mine / "checkpoints" / "step-precious" / "keep.txt").write_text("precious")
    (w.run / "checkpoints").symlink_to(w.mine / "checkpoints")
    return w.train(w.run, "--resume")


@case("train-resume-checkpoint-is-a-link", 2, "is a symbolic link; saekit never writes through")
def _(w):
    step = next(w.run.glob("checkpoints/step-*"))
    shutil.move(step, w.mine / step.name)
    step.symlink_to(w.mine / step.name)
    return w.train(w.run, "--resume")


def marked(folder: Path, kind: str) -> Path:
    """`folder`, made and marked as an output of `kind` saekit wrote."""
    folder.mkdir()
    write_marker(folder, kind)
    return folder


@case("eval-inspect-site-is-a-link", 2, "report/inspect is a symbolic link; saekit never writes")
def _(w):
    report = marked(w.root / "report", "eval-report")
    (report / "inspect").symlink_to(w.mine)
    return ["eval", w.run, "--out", report, "--no-online", "--inspect"]


@case("demo-dir-model-is-a-link", 2, "tiny-gpt2 is a symbolic link; saekit never writes")
def _(w):  # the demo would save its tiny LM into mine/
    demo = marked(w.root / "demo", "demo-dir")
    (demo / "tiny-gpt2").symlink_to(w.mine)
    return ["demo", "--out", demo]


@case("recipe-dir-figures-is-a-link", 2, "figures is a symbolic link; saekit never writes")
def _(w):  # the report would draw its figures into mine/
    from saekit.recipes.catalog import RECIPES
    from saekit.recipes.inputs import RecipeRequest, check_inputs
    from saekit.recipes.workspace import Workspace, new_record, open_record

    out = w.root / "recipes"
    inputs = check_inputs(RecipeRequest(("gated",), out, store=str(w.store)))
    record = new_record(
        inputs.preset, inputs.recipes, inputs.model.name, None, str(w.store), inputs.hook
    )
    open_record(Workspace(out), record, list(RECIPES))
    (out / "figures").symlink_to(w.mine)
    return ["recipe", "gated", "--store", w.store, "--out", out]


@case("demo-out-inside-a-store", 2, "lies inside the store")
def _(w):
    return ["demo", "--out", w.store / "demo"]


@case("demo-out-is-a-file", 2, "is a file, not a directory")
def _(w):
    return ["demo", "--out", w.mine / "notes.txt"]


@case("demo-out-is-someone-elses-folder", 2, "is not a demo directory saekit wrote")
def _(w):
    return ["demo", "--out", w.mine]


def unwritable(path: str) -> str:
    if not Path("/proc/self").exists():
        pytest.skip("needs a read-only /proc")
    return path


@case("train-out-parent-not-writable", 2, "cannot write --out /proc/saekit-test/run")
def _(w):
    return w.train(unwritable("/proc/saekit-test/run"))


@case("eval-out-parent-not-writable", 2, "cannot write --out /proc/saekit-test/report")
def _(w):
    return ["eval", w.run, "--out", unwritable("/proc/saekit-test/report"), "--no-online"]


@case("inspect-out-parent-not-writable", 2, "cannot write --out /proc/saekit-test/site")
def _(w):
    return w.inspect(unwritable("/proc/saekit-test/site"))


@case("recipe-out-parent-not-writable", 2, "cannot write --out /proc/saekit-test/recipes")
def _(w):
    out = unwritable("/proc/saekit-test/recipes")
    return ["recipe", "gated", "--store", w.store, "--out", out]


@case("recipe-json-fields-of-the-wrong-type", 2, "recipe.json: preset must be an object")
def _(w):
    record = {"format": "saekit.recipe", "preset": 5, "model": str(w.model), "hook": HOOK}
    (w.mine / "recipe.json").write_text(json.dumps(record))
    return ["recipe", "gated", "--store", w.store, "--out", w.mine]


@case("recipe-store-of-another-model", 2, "weights_fingerprint (store: ")
def _(w):  # refused before anything is trained, not after
    return ["recipe", "gated", "--store", w.store, "--model", other_weights(w), "--out",
            w.root / "recipes"]  # fmt: skip


# -- harvest options and inputs -------------------------------------------------------------------


@case("harvest-out-name-too-long", 2, "File name too long")
def _(w):
    return w.harvest(w.root / ("s" * 300 + ".zarr"))


@case("harvest-seed-negative", 2, "--seed must be 0 or more, not -1")
def _(w):
    return w.harvest(w.root / "new.zarr", "--seed", -1)


@case("txt-with-binary-bytes", 2, "is not UTF-8 text; convert the file")
def _(w):  # refused before the store is created, not harvested with replacement characters
    text = w.corpus.read_bytes()
    (w.mine / "docs.txt").write_bytes(text + bytes(range(128, 256)) * 8 + text)
    command = w.harvest(w.root / "new.zarr")
    command[command.index("--dataset") + 1] = w.mine / "docs.txt"
    return command


@case("jsonl-text-column-missing-further-on", 2, "docs.jsonl:3 has no 'text' field")
def _(w):  # refused before the store is created, not after an empty one was
    lines = [json.dumps({"text": doc}) for doc in w.corpus.read_text().split("\n\n")[:2]]
    lines.append(json.dumps({"body": "no text field"}))
    (w.mine / "docs.jsonl").write_text("\n".join(lines) + "\n")
    command = w.harvest(w.root / "new.zarr")
    command[command.index("--dataset") + 1] = w.mine / "docs.jsonl"
    return command


@case("rows-per-chunk-option-zero", 2, "--rows-per-chunk and --chunks-per-block must be positive")
def _(w):
    return w.harvest(w.root / "new.zarr", "--rows-per-chunk", 0)


@case("chunks-per-block-negative", 2, "--rows-per-chunk and --chunks-per-block must be positive")
def _(w):
    return w.harvest(w.root / "new.zarr", "--chunks-per-block", -1)


@case("jsonl-not-utf8", 2, "docs.jsonl:1 is not UTF-8 text")
def _(w):
    (w.mine / "docs.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "fine"}\n')
    command = w.harvest(w.root / "new.zarr")
    command[command.index("--dataset") + 1] = w.mine / "docs.jsonl"
    return command


@case("tokens-option-zero", 2, "--tokens must be positive")
def _(w):
    return w.harvest(w.root / "new.zarr", "--tokens", 0)


# -- runs and saved SAEs --------------------------------------------------------------------------


@case("sae-cfg-not-json", 2, "cfg.json cannot be read as JSON")
def _(w):
    (w.root / SAE_DIR / "cfg.json").write_text("{oops")
    return w.eval()


@case("sae-cfg-d-in-disagrees-with-weights", 2, "holds W_dec of shape [64, 64] but its cfg.json")
def _(w):
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg.update(d_in=32))
    return w.eval()


@case("sae-cfg-k-above-latents", 2, "disagree with d_sae=64")
def _(w):
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg["options"].update(k=1000))
    return w.eval()


@case("sae-cfg-huge-latents", 2, "disagree with d_sae=10000000000")
def _(w):
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg.update(d_sae=10**10))
    return w.eval()


@case("sae-cfg-hook-not-in-store", 2, "was trained on hook blocks.0.hook_resid_post, which")
def _(w):
    other_hook = "blocks.0.hook_resid_post"
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg.update(hook=other_hook))
    return w.eval()


@case("sae-cfg-input-scale-string", 2, "input_scale must be a positive number")
def _(w):
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg.update(input_scale="1"))
    return w.eval()


@case("sae-weights-wrong-shape", 2, "holds W_enc of shape [32, 64] but its cfg.json means [64, 64]")
def _(w):
    path = w.root / SAE_DIR / "sae.safetensors"
    tensors = load_file(path)
    tensors["W_enc"] = tensors["W_enc"][:32].contiguous()
    save_file(tensors, path)
    return w.eval()


@case("sae-weights-not-safetensors", 2, "is not a safetensors file")
def _(w):
    (w.root / SAE_DIR / "sae.safetensors").write_bytes(b"PK\x03\x04 not safetensors at all")
    return w.eval()


@case("latest-checkpoint-not-json", 2, "latest.json cannot be read as JSON")
def _(w):
    (w.run / "checkpoints" / "latest.json").write_text("[")
    return w.train(w.run, "--resume")


@case("latest-checkpoint-names-elsewhere", 2, "latest.json does not name a checkpoint")
def _(w):
    edit_json(w.run / "checkpoints/latest.json", lambda v: v.update(directory="../../mine"))
    return w.train(w.run, "--resume")


@case("checkpoint-not-a-checkpoint", 2, "trainer.pt is not a checkpoint")
def _(w):
    (next(w.run.glob("checkpoints/step-*")) / "trainer.pt").write_bytes(b"\x80\x04junk")
    return w.train(w.run, "--resume")


@case("run-config-not-json", 2, "is not empty and holds no training run")
def _(w):
    (w.run / "config.json").write_text("not json")
    return w.train(w.run, "--resume")


@case("run-config-a-list", 2, "holds something else than a training run")
def _(w):
    (w.run / "config.json").write_text("[1, 2]")
    return w.train(w.run, "--resume")


@case("metrics-damaged", 2, "metrics.jsonl:1 is not a metrics record")
def _(w):
    (w.run / "metrics.jsonl").write_text("{broken\n")
    return w.train(w.run, "--resume")


@case("sae-weights-hold-nan", 2, "holds NaN or Inf in W_enc; the saved SAE is damaged")
def _(w):
    path = w.root / SAE_DIR / "sae.safetensors"
    tensors = load_file(path)
    tensors["W_enc"][3, 5] = float("nan")
    save_file(tensors, path)
    return w.eval()


@case("sae-cfg-store-is-gone", 2, "cfg.json names the store /nonexistent/x.zarr, which does not")
def _(w):
    gone = "/nonexistent/x.zarr"
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg["store"].update(location=gone))
    return w.eval()


@case("sae-cfg-format-version-newer", 2, "format version 99, newer than the 1 this saekit reads")
def _(w):
    edit_json(w.root / SAE_DIR / "cfg.json", lambda cfg: cfg.update(format_version=99))
    return w.eval()


@case("eval-sae-of-another-models-store", 2, "was trained on activations of another model than")
def _(w):
    return ["eval", w.run, "--store", store_of_another_model(w), "--out", w.root / "report",
            "--no-online"]  # fmt: skip


@case("eval-online-sae-of-another-models-store", 2, "weights_fingerprint (trained on: ")
def _(w):
    return ["eval", w.run, "--store", store_of_another_model(w), "--out", w.root / "report"]


@case("eval-runs-of-two-stores-without-store", 2, "were trained on different stores")
def _(w):  # the second run would be measured on the first run's store
    return ["eval", w.run, run_on_another_store(w), "--out", w.root / "report", "--no-online"]


@case("inspect-sae-of-another-models-store", 2, "was trained on activations of another model")
def _(w):
    return w.inspect(w.root / "site", "--store", store_of_another_model(w))


@case("inspect-model-with-other-weights", 2, "is not the model store")
def _(w):  # its unembedding would give other logit effects
    return w.inspect(w.root / "site", "--model", other_weights(w))


# -- other options --------------------------------------------------------------------------------


@case("train-seed-negative", 2, "--seed must be 0 or more, not -1")
def _(w):
    return w.train(w.root / "run2", "--seed", -1)


@case("train-lr-infinite", 2, "--lr must be a positive number")
def _(w):
    return w.train(w.root / "run2", "--lr", "inf")


@case("spec-key-given-twice", 2, "key 'k' is given twice; give it once")
def _(w):
    return w.train(w.root / "run2", sae="topk:k=8,k=9,latents=64")


@case("spec-option-not-finite", 2, "l1: expected a finite number, got 'inf'")
def _(w):
    return w.train(w.root / "run2", sae="relu:l1=inf,latents=64")


@case("inspect-seed-negative", 2, "--seed must be 0 or more")
def _(w):
    return w.inspect(w.root / "site", "--seed", -1)


@case("inspect-latents-only-commas", 2, "--latents ',' is not 'all'")
def _(w):
    return ["inspect", w.run, "--out", w.root / "site", "--latents", ","]


@case("inspect-top-beyond-memory", 2, "of memory, more than the")
def _(w):
    return w.inspect(w.root / "site", "--top", 100_000_000)


@case("inspect-out-name-too-long", 2, "File name too long; choose a shorter name")
def _(w):
    return w.inspect(w.root / ("s" * 256))


@case("eval-batch-size-zero", 2, "--batch-size must be positive, not 0")
def _(w):
    return w.eval("--batch-size", 0)


@case("eval-tokens-negative", 2, "--tokens must be positive, not -3")
def _(w):
    return w.eval("--tokens", -3)


@case("latents-beyond-memory", 2, "would need about 51.4 TB of memory to train")
def _(w):
    return w.train(w.root / "run2", sae="topk:k=4,latents=10000000000")


@case("unreachable-endpoint", 2, "cannot use http://127.0.0.1:9/x.zarr")
def _(w):
    return ["info", "http://127.0.0.1:9/x.zarr"]


@case("storage-options-not-an-object", 2, "--storage-options must be a JSON object")
def _(w):
    return ["info", w.store, "--storage-options", "[1]"]


def other_weights(world: World) -> Path:
    """A copy of the LM with the same shapes and tokenizer but other weights."""
    other = world.root / "other_lm"
    shutil.copytree(world.model, other)
    tensors = load_file(other / "model.safetensors")
    name = next(key for key in tensors if key.endswith("wte.weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    return other


@case("other-model-weights", 2, "weights_fingerprint (store: ")
def _(w):
    return ["eval", w.run, "--out", w.root / "report", "--model", other_weights(w)]


@case("online-model-not-a-model", 2, "is not a Hugging Face model directory")
def _(w):
    return ["eval", w.run, "--out", w.root / "report", "--model", w.mine]


def test_there_are_enough_cases():
    assert len(CASES) >= 120
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_broken_input_ends_in_one_line_and_changes_nothing(case, world, run_cli):
    command = case.setup(world)
    watched = [world.root, world.model, world.corpus.parent]
    before = [snapshot(path) for path in watched]
    result = run_cli(*command)
    assert result.exit_code == case.code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(("error: ", "corrupt: ")), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert case.fragment in result.stderr, result.stderr
    assert [snapshot(path) for path in watched] == before, "no byte changed, no file added"


# -- the safety net -------------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_exit_3(world, run_cli, monkeypatch):
    import saekit.cli.store

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nacross lines")

    monkeypatch.setattr(saekit.cli.store, "describe", broken)
    monkeypatch.delenv("SAEKIT_DEBUG", raising=False)
    result = run_cli("info", world.store)
    assert result.exit_code == 3
    assert result.stderr == (
        "error: internal error: RuntimeError: a bug across lines; please report it with the "
        "command (add --debug for the traceback)\n"
    )
    debug = run_cli("info", world.store, "--debug")
    assert debug.exit_code == 3 and "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("error: internal error: RuntimeError")
    monkeypatch.setenv("SAEKIT_DEBUG", "1")
    assert "Traceback" in run_cli("info", world.store).stderr


# -- what to do instead of stopping ---------------------------------------------------------------


def test_skip_nonfinite_leaves_rows_out_and_says_how_many(world, run_cli):
    bad = [*used_rows(world, 17, 2), *used_rows(world, 2000, 2)]  # held out, then training
    write_rows(world, ACTIVATIONS, bad, float("nan"))
    evaluated = run_cli(*world.eval("--skip-nonfinite"))
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads((world.root / "report" / "report.json").read_text())
    assert report["store"]["nonfinite_rows_skipped"] == 4
    assert f"rows {', '.join(map(str, bad))}" in report["warnings"][0]
    assert np.isfinite(report["rows"][0]["offline"]["nmse"])
    assert "Warning" in (world.root / "report" / "report.md").read_text()
    assert "warning: 4 store rows holding NaN or Inf were left out" in evaluated.stdout

    trained = run_cli(*world.train(world.root / "run2", "--skip-nonfinite", "--tokens", 3584))
    assert trained.exit_code == 0, trained.stderr
    metrics = (world.root / "run2" / "metrics.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in metrics]
    assert lines[-1]["nonfinite_rows_skipped"] >= 2
    assert all(np.isfinite(line["loss"]) for line in lines)
    assert "rows holding NaN or Inf were left out of training" in trained.stdout


def test_eval_with_another_model_is_allowed_only_when_asked_and_says_so(world, run_cli):
    other = other_weights(world)
    command = ["eval", world.run, "--out", world.root / "report", "--model", other]
    result = run_cli(*command, "--allow-other-model", "--tokens", 64)
    assert result.exit_code == 0, result.stderr
    report = json.loads((world.root / "report" / "report.json").read_text())
    assert "differs from the store's: weights_fingerprint" in report["warnings"][0]
    assert report["model"] == str(other)


def test_errors_print_no_stray_lines(world, run_cli):
    """A train refused before training prints exactly its line (no empty line of an unstarted
    progress bar before it)."""
    result = run_cli(*world.train(world.root / "run2", sae="topk:k=400,latents=64"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --sae 'topk:k=400,latents=64': k=400 is more")
    assert result.stderr.count("\n") == 1


def test_eval_replaces_links_planted_in_its_report_and_never_writes_through_them(world, run_cli):
    report = world.root / "report"
    assert run_cli(*world.eval()).exit_code == 0
    for name in ("report.json", "report.md", "l0_vs_nmse.png"):
        (report / name).unlink()
        (report / name).symlink_to(world.mine / "notes.txt")
    assert run_cli(*world.eval()).exit_code == 0
    assert (world.mine / "notes.txt").read_text() == "mine, not saekit's"
    assert not any((report / name).is_symlink() for name in ("report.json", "report.md"))
    assert json.loads((report / "report.json").read_text())["rows"]
    assert (report / "l0_vs_nmse.png").read_bytes().startswith(b"\x89PNG")


def test_training_never_appends_through_a_link_planted_for_its_metrics(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / METRICS_FILE).symlink_to(victim)
    with pytest.raises(SaekitError, match="never writes through links in a run"):
        MetricsLog(tmp_path / METRICS_FILE)
    assert victim.read_text() == "mine"


# -- outputs saekit wrote, and only those, are replaced --------------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Staging directories and temporary files saekit leaves nowhere, once a command ended."""
    return sorted(p.name for p in folder.rglob(".saekit-*") if p.name != MARKER_FILE)


def test_inspect_replaces_its_own_site_and_never_follows_links_at_staging_names(world, run_cli):
    site = world.root / "site"
    assert run_cli(*world.inspect(site)).exit_code == 0
    assert is_site(site) and (site / "index.html").is_file()
    # links at the staging names an earlier saekit used (`.site.partial-PID`): never followed
    for name in (f".site.partial-{os.getpid()}", f".site.previous-{os.getpid()}"):
        (world.root / name).symlink_to(world.mine)
    before = snapshot(world.mine)
    result = run_cli(*world.inspect(site, "--latents", 2))
    assert result.exit_code == 0, result.stderr
    assert snapshot(world.mine) == before and len(list(world.mine.iterdir())) == 1
    manifest = json.loads((site / "inspect.json").read_text())
    assert manifest["settings"]["latents"] == "2" and manifest["warnings"] == []
    assert leftovers(world.root) == []


def test_a_site_gets_the_longest_legal_name(world, run_cli):
    site = world.root / ("s" * 255)
    result = run_cli(*world.inspect(site))
    assert result.exit_code == 0, result.stderr
    assert is_site(site) and leftovers(world.root) == []


def test_every_output_directory_carries_saekits_marker(world, run_cli):
    assert marker_kind(world.run) == "train-run"
    (world.run / MARKER_FILE).unlink()  # as a run of an earlier saekit
    assert run_cli(*world.train(world.run, "--resume")).exit_code == 0
    assert marker_kind(world.run) == "train-run", "resuming it marks it"
    assert run_cli(*world.eval()).exit_code == 0
    assert marker_kind(world.root / "report") == "eval-report"
    assert run_cli(*world.eval()).exit_code == 0, "a report saekit wrote is rewritten"
    assert run_cli(*world.train(world.root / "run2")).exit_code == 0
    assert marker_kind(world.root / "run2") == "train-run"


def test_inspect_reads_every_split(world, run_cli):
    for split in ("all", "train", "holdout"):
        site = world.root / f"site-{split}"
        result = run_cli(*world.inspect(site, "--split", split, "--tokens", 2000))
        assert result.exit_code == 0, result.stderr
        manifest = json.loads((site / "inspect.json").read_text())
        assert manifest["settings"]["split"] == split


def test_checkpoints_remove_only_the_checkpoints_saekit_named(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, {"step": 1}, {"a": {"w": 1}})
    precious = tmp_path / "checkpoints" / "step-precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    checkpoints.save(2, {"step": 2}, {"a": {"w": 2}})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest.json", "step-000000002", "step-precious"]
    assert (precious / "keep.txt").read_text() == "mine"


def test_verify_finds_held_out_rows_that_lie_consistently(world, run_cli):
    edit_layout(world, holdout_rows=480)
    edit_attrs(world, identity={**identity_of(world.store), "holdout_tokens": 480})
    result = run_cli("verify", world.store)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines and all("contexts on the other side of the held-out split" in x for x in lines)
    assert all(line.startswith("corrupt: sequence chunk ") for line in lines)


# -- another model: refused, or allowed and said ---------------------------------------------------


def test_measuring_saes_on_another_models_store_is_allowed_only_when_asked(world, run_cli):
    other = store_of_another_model(world)
    evaluated = run_cli(*world.eval("--store", other, "--allow-other-model"))
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads((world.root / "report" / "report.json").read_text())
    assert "from another model than it was trained on: weights_fingerprint" in report["warnings"][0]
    assert "another model than it was trained on" in evaluated.stdout
    assert "**Warning**" in (world.root / "report" / "report.md").read_text()
    site = world.root / "site"
    model = other_weights(world)
    inspected = run_cli(
        *world.inspect(site, "--store", other, "--model", model, "--allow-other-model")
    )
    assert inspected.exit_code == 0, inspected.stderr
    warnings = json.loads((site / "inspect.json").read_text())["warnings"]
    assert len(warnings) == 2 and "another model than it was trained on" in warnings[0]
    assert warnings[1].startswith(f"token strings and logit effects use model {model}, which")
    assert inspected.stdout.count("warning: ") == 2


def test_a_recipe_with_another_model_than_its_store_says_so(world):
    from saekit.recipes.inputs import RecipeRequest, check_inputs

    model = str(other_weights(world))
    request = RecipeRequest(("gated",), world.root / "r", model=model, store=str(world.store))
    with pytest.raises(SaekitError, match="is not the model store"):
        check_inputs(request)
    allowed = check_inputs(dataclasses.replace(request, allow_other_model=True))
    assert allowed.warnings[0].startswith(f"online metrics use model {model}, which differs")
    assert not (world.root / "r").exists()


# -- damaged row scales ----------------------------------------------------------------------------


def test_a_damaged_row_scale_stops_training_and_is_found_by_verify(tmp_path, run_cli):
    store = tmp_path / "f8.zarr"
    write_synthetic_store(store, synthetic_spec(2048, holdout_rows=256, activation_dtype="float8"))
    scales = zarr.open_group(store, mode="r+")["hooks/synthetic.hook_resid/activation_scale"]
    scales[1500] = 1e-30  # what a float8 row would decode to values ~1e32 with
    verified = run_cli("verify", store)
    assert verified.exit_code == 1
    assert "1 rows with activation scales that are not a power of two" in verified.stderr
    trained = run_cli("train", "--store", store, "--out", tmp_path / "run", "--sae",
                      "topk:k=4,latents=64", "--batch-size", 256)  # fmt: skip
    assert trained.exit_code == 1, trained.stderr
    last = trained.stderr.strip().splitlines()[-1]
    assert "holds NaN or Inf (or a damaged row scale) in store rows 1500" in last, last


# -- the machine refuses a write ------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from saekit.base import atomic

    target = tmp_path / "report.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(
        SaekitError, match=r"cannot write .*report\.json: No space left on device; "
    ):
        atomic.write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "report.json"
    ]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A file-size limit for this process (as `ulimit -f`): writes past it fail with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_write_past_a_file_size_limit_is_one_line_and_leaves_nothing_half_written(world, run_cli):
    with file_size_limit(40_000):  # config.json fits, a checkpoint does not
        trained = run_cli(*world.train(world.root / "run2"))
    assert trained.exit_code == 2, trained.stderr
    last = trained.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "File too large; raise the file" in last
    assert not (world.root / "run2" / "checkpoints" / "latest.json").exists()
    assert list((world.root / "run2" / "checkpoints").iterdir()) == [], "no half checkpoint"

    with file_size_limit(20_000):  # report.json fits, a plot does not
        evaluated = run_cli(*world.eval())
    assert evaluated.exit_code == 2 and evaluated.stderr.count("\n") == 1, evaluated.stderr
    assert "l0_vs_nmse.png: File too large" in evaluated.stderr

    site = world.root / "site"
    with file_size_limit(4_000):
        inspected = run_cli(*world.inspect(site))
    assert inspected.exit_code == 2 and inspected.stderr.count("\n") == 1, inspected.stderr
    assert "error: cannot write " in inspected.stderr and "File too large" in inspected.stderr
    assert not site.exists()
    assert leftovers(world.root) == []
