"""Stores and runs record local paths absolute, so that eval works from any folder; paths an
older saekit recorded as typed (relative) are found beside the store or the run."""

import json
import os

import pytest

from helpers import small_corpus, snapshot
from saekit.cache_format import ActivationStore

pytestmark = pytest.mark.slow  # harvests, trains and evaluates (twice), end to end


def test_eval_from_another_folder_finds_the_store_and_the_model(
    run_cli, tiny_lm, corpus, tmp_path, monkeypatch
):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "lm").symlink_to(tiny_lm)
    small_corpus(corpus, work / "docs.txt")
    monkeypatch.chdir(work)
    harvest = [
        "harvest", "--model", "lm", "--dataset", "docs.txt", "--hook", "blocks.1.hook_resid_post",
        "--tokens", 1200, "--holdout-tokens", 240, "--context-size", 24, "--batch-size", 5,
        "--rows-per-chunk", 120, "--chunks-per-block", 2, "--out", "store.zarr",
    ]  # fmt: skip
    assert run_cli(*harvest).exit_code == 0
    identity = ActivationStore.open("store.zarr").spec.identity
    assert identity["model"] == str(work / "lm") and identity["dataset"] == str(work / "docs.txt")
    train = ["train", "--store", "store.zarr", "--out", "run", "--sae", "topk:k=4,latents=64"]
    assert run_cli(*train, "--batch-size", 240).exit_code == 0
    cfg = json.loads((work / "run/saes/topk-k4-64/cfg.json").read_text())
    assert cfg["store"]["location"] == str(work / "store.zarr")

    monkeypatch.chdir(elsewhere)
    evaluated = run_cli("eval", work / "run", "--out", "report")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads((elsewhere / "report/report.json").read_text())["rows"][0]["online"]

    # what an older saekit recorded: the paths as typed in `work`
    meta = json.loads((work / "store.zarr/zarr.json").read_text())
    meta["attributes"]["identity"].update(model="lm", dataset="docs.txt")
    (work / "store.zarr/zarr.json").write_text(json.dumps(meta))
    cfg["store"]["location"] = "store.zarr"
    (work / "run/saes/topk-k4-64/cfg.json").write_text(json.dumps(cfg))
    again = run_cli("eval", work / "run", "--out", "report")
    assert again.exit_code == 0, again.stderr

    monkeypatch.chdir(work)  # resuming such a store with the same command is still the same store
    before = {k: v for k, v in snapshot(work / "store.zarr").items() if not k.startswith("locks")}
    assert run_cli(*harvest).exit_code == 0
    after = snapshot(work / "store.zarr")
    assert {k: v for k, v in after.items() if not k.startswith("locks")} == before
    assert os.path.isabs(json.loads((elsewhere / "report/report.json").read_text())["runs"][0])
