"""The shuffled loader: exactly-once epochs, determinism, mixing, splits and bounded memory."""

import tracemalloc

import numpy as np
import pytest
import torch

from saekit.cache_format import ActivationStore, LoaderThreads, ShuffledLoader
from saekit.errors import SaekitError
from saekit.synthetic import synthetic_spec, write_synthetic_store

CONTEXT = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """16384 rows of 1024 sequences in 64 chunks; the first 1024 rows are held out."""
    path = tmp_path_factory.mktemp("loader") / "store.zarr"
    write_synthetic_store(path, synthetic_spec(16384, holdout_rows=1024))
    return ActivationStore.open(path)


def rows_of(loader):
    return torch.cat([batch["row"] for batch in loader]).numpy()


def test_one_epoch_yields_every_training_row_once(store):
    loader = ShuffledLoader(
        store, fields=("row",), batch_size=100, buffer_rows=2048, drop_last=False
    )
    rows = rows_of(loader)
    position = store.read(["position"], 0, store.n_rows_committed)["position"]
    expected = [r for r in range(1024, 16384) if position[r] != 0]
    assert sorted(rows) == expected, "every training row except position 0, exactly once"


def test_position_zero_is_kept_on_request(store):
    loader = ShuffledLoader(
        store, fields=("position",), batch_size=128, exclude_position_zero=False, drop_last=False
    )
    positions = torch.cat([b["position"] for b in loader])
    assert len(positions) == 16384 - 1024 and (positions == 0).sum() == (16384 - 1024) // CONTEXT


def test_holdout_split_is_kept_apart(store):
    holdout = rows_of(
        ShuffledLoader(store, fields=("row",), split="holdout", batch_size=64, drop_last=False)
    )
    assert holdout.max() < 1024 and len(holdout) == 1024 - 1024 // CONTEXT
    train = rows_of(ShuffledLoader(store, fields=("row",), batch_size=64))
    assert train.min() >= 1024


def test_same_seed_same_batches_other_seed_other_batches(store):
    def first_batches(seed):
        loader = ShuffledLoader(store, fields=("row", "activations"), batch_size=256, seed=seed)
        return [b["row"] for _, b in zip(range(6), loader, strict=False)]

    a, b, c = first_batches(3), first_batches(3), first_batches(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_activations_and_gradients_share_the_row_permutation(store):
    loader = ShuffledLoader(store, fields=("row", "activations", "gradients"), batch_size=512)
    for batch in [next(iter(loader))]:
        rows = batch["row"].numpy()
        order = np.argsort(rows)
        first, last = rows[order[0]], rows[order[-1]] + 1
        truth = store.read_tensors(["activations", "gradients"], first, last)
        assert torch.equal(batch["activations"], truth["activations"][rows - first])
        assert torch.equal(batch["gradients"], truth["gradients"][rows - first])
        assert batch["activations"].dtype == torch.float32


def test_batches_mix_many_sequences_and_chunks(store):
    loader = ShuffledLoader(store, fields=("row", "sequence"), batch_size=512, buffer_rows=8192)
    batch = next(iter(loader))
    chunks = np.unique(batch["row"].numpy() // store.spec.layout.rows_per_chunk)
    sequences, counts = np.unique(batch["sequence"].numpy(), return_counts=True)
    assert len(chunks) >= 12, "a batch draws on many chunks"
    assert len(sequences) >= 200, "and on many sequences"
    assert counts.max() <= 6, "no sequence dominates a batch"


def test_epochs_repeat_and_are_numbered(store):
    loader = ShuffledLoader(
        store, fields=("row",), batch_size=500, epochs=3, buffer_rows=2048, drop_last=False
    )
    batches = list(loader)
    rows = torch.cat([b["row"] for b in batches]).numpy()
    _, counts = np.unique(rows, return_counts=True)
    assert set(counts) == {3}, "each row once per epoch"
    epochs = [b.epoch for b in batches]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1, 2}


def test_endless_loader_can_be_abandoned(store):
    loader = ShuffledLoader(store, fields=("row",), batch_size=1000, epochs=None)
    seen = 0
    for batch in loader:
        seen += len(batch["row"])
        if seen > 3 * 15000:
            break
    assert seen > 3 * 15000


def test_memory_stays_bounded_by_the_buffer(tmp_path):
    """A store ~60 MB in size streams with a few MB of buffers."""
    path = tmp_path / "big.zarr"
    write_synthetic_store(path, synthetic_spec(1 << 17, rows_per_chunk=1024, chunks_per_block=8))
    store = ActivationStore.open(path)
    loader = ShuffledLoader(
        store,
        fields=("activations", "gradients"),
        batch_size=256,
        buffer_rows=4096,
        threads=LoaderThreads(read=2),
        prefetch_batches=2,
    )
    tracemalloc.start()
    rows = sum(len(b["activations"]) for b in loader)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    store_bytes = store.n_rows_committed * 64 * 2 * 2
    assert rows > 0.9 * store.n_rows_committed
    assert peak < store_bytes / 8, (
        f"peak {peak / 1e6:.1f} MB for a {store_bytes / 1e6:.0f} MB store"
    )


def test_gradients_from_a_store_without_them(tmp_path):
    from saekit.cache_format import HookSpec

    write_synthetic_store(tmp_path / "s", synthetic_spec(1024, hooks={"h": HookSpec(8, False)}))
    with pytest.raises(SaekitError, match="no gradients"):
        ShuffledLoader(ActivationStore.open(tmp_path / "s"), fields=("activations", "gradients"))
