"""Readers never modify a store: every read-only command on a store whose files are read-only."""

import stat

import pytest
import torch

from helpers import harvest_small_store, snapshot
from saekit.cache_format import ActivationStore, ShuffledLoader


@pytest.fixture
def read_only_store(small_store):
    """The store with every write permission removed (a root user could still write, so the
    tests also compare every file's bytes before and after)."""
    make_read_only(small_store)
    yield small_store
    for path in [small_store, *small_store.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_read_only_commands_leave_the_store_untouched(run_cli, read_only_store):
    before = snapshot(read_only_store)
    times = {p: p.stat().st_mtime_ns for p in read_only_store.rglob("*")}
    assert run_cli("info", read_only_store).exit_code == 0
    assert run_cli("info", read_only_store, "--json").exit_code == 0
    assert run_cli("verify", read_only_store).exit_code == 0
    store = ActivationStore.open(read_only_store)
    batches = list(ShuffledLoader(store, fields=("activations", "gradients"), batch_size=256))
    assert batches and all(torch.isfinite(b["gradients"]).all() for b in batches)
    assert store.read_tensors(["activations"], 0, 512)["activations"].shape == (512, 64)
    assert snapshot(read_only_store) == before, "no file added, removed or changed"
    assert {p: p.stat().st_mtime_ns for p in read_only_store.rglob("*")} == times


def make_read_only(path):
    for item in [path, *path.rglob("*")]:
        item.chmod(item.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow  # a harvest, a training run and an eval
def test_train_and_eval_leave_a_read_only_store_untouched(run_cli, tiny_lm, corpus, tmp_path):
    store = harvest_small_store(tiny_lm, corpus, tmp_path / "store.zarr")
    make_read_only(store)
    before = snapshot(store)
    try:
        trained = run_cli(
            "train",
            "--store",
            store,
            "--out",
            tmp_path / "run",
            "--sae",
            "gsae:k=4,latents=64",
            "--tokens",
            "2048",
            "--batch-size",
            "512",
        )
        assert trained.exit_code == 0, trained.stderr
        evaluated = run_cli("eval", tmp_path / "run", "--out", tmp_path / "report")
        assert evaluated.exit_code == 0, evaluated.stderr
        assert snapshot(store) == before, "train and eval never write into the store"
    finally:
        for item in [store, *store.rglob("*")]:
            item.chmod(item.stat().st_mode | stat.S_IWUSR)
