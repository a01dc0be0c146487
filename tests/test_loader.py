"""The shuffled loader: exactly-once epochs, determinism, mixing, splits, bounded memory, and
encoded batches that decode to exactly the float32 batches, held batches that stay intact."""

import tracemalloc

import numpy as np
import pytest
import torch
import zarr

from saekit.base.errors import SaekitError
from saekit.cache_format import (
    ActivationStore,
    EncodedBatch,
    LoaderThreads,
    ShuffledLoader,
    encoding,
)
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store

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


@pytest.mark.slow  # writes and streams a ~60 MB store, measuring memory
@pytest.mark.parametrize("encoded", [False, True])
def test_memory_stays_bounded_by_the_buffer(tmp_path, encoded):
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
        encoded=encoded,
    )
    tracemalloc.start()  # numpy's buffers are traced: the group buffers, the carry, the batches
    rows = sum(len(b) if encoded else len(b["activations"]) for b in loader)
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


DTYPES = ("float16", "bfloat16", "float32", "float8")
FIELDS = ("row", "activations", "gradients", "tokens", "position")


@pytest.fixture(scope="module", params=DTYPES)
def dtype_store(request, tmp_path_factory):
    """6144 rows (512 held out) in the given activation dtype."""
    path = tmp_path_factory.mktemp(request.param) / "store.zarr"
    spec = synthetic_spec(6144, holdout_rows=512, activation_dtype=request.param)
    write_synthetic_store(path, spec)
    return ActivationStore.open(path)


def small_batches(store, **options):
    """Batches that straddle groups (300 rows; groups of 1024 rows hold 960 servable ones)."""
    return ShuffledLoader(
        store, fields=FIELDS, batch_size=300, buffer_rows=1024, drop_last=False, **options
    )


def assert_rows_of_the_store(store, batch):
    """The batch holds exactly the store's (decoded) values of the rows it names."""
    truth = store.read_tensors(FIELDS[1:], 0, store.n_rows_committed)
    for name in FIELDS[1:]:
        assert torch.equal(batch[name], truth[name][batch["row"]]), name


def test_encoded_batches_decode_to_exactly_the_float32_batches(dtype_store):
    """Same seed, same rows in the same batches; an encoded batch holds the stored bits and
    decodes on the CPU to the float32 batch bit for bit."""
    decoded = list(small_batches(dtype_store))
    encoded = list(small_batches(dtype_store, encoded=True))
    assert len(decoded) == len(encoded) == -(-(5632 - 5632 // CONTEXT) // 300)
    stored = dtype_store.read(["activations"], 0, dtype_store.n_rows_committed)["activations"]
    for plain, packed in zip(decoded, encoded, strict=True):
        assert isinstance(packed, EncodedBatch) and packed.epoch == plain.epoch
        raw = packed.raw()
        assert raw["activations"].dtype == encoding.torch_dtype(stored.dtype), "not decoded"
        np.testing.assert_array_equal(
            encoding.as_numpy(raw["activations"]), stored[plain["row"].numpy()]
        )
        on_cpu = packed.on("cpu")
        assert set(on_cpu) == set(plain) == set(FIELDS)
        for name in FIELDS:
            assert on_cpu[name].dtype == plain[name].dtype
            assert torch.equal(on_cpu[name], plain[name]), name
    assert plain["activations"].dtype == torch.float32
    for batch in decoded[:3] + decoded[-1:]:
        assert_rows_of_the_store(dtype_store, batch)


@pytest.mark.cuda
def test_encoded_batches_decode_on_cuda_to_the_cpu_values(dtype_store):
    decoded = list(small_batches(dtype_store))
    encoded = list(small_batches(dtype_store, encoded=True, pin_device="cuda"))
    for plain, packed in zip(decoded, encoded, strict=True):
        assert packed.records_RY.is_pinned()
        on_device = packed.on("cuda")
        for name in FIELDS:
            assert on_device[name].device.type == "cuda"
            assert torch.equal(on_device[name].cpu(), plain[name]), name


@pytest.mark.parametrize("encoded", [False, True])
def test_held_batches_stay_intact_while_the_loader_reuses_its_buffers(store, encoded):
    """Two batches kept while the loader serves three more epochs (its two group buffers, its
    carry and, for decoded batches, its batch buffer are refilled again and again) still hold
    their rows' values."""
    batches = iter(
        ShuffledLoader(
            store, fields=FIELDS, batch_size=300, buffer_rows=1024, epochs=3, encoded=encoded
        )
    )
    held = [batch for i, batch in zip(range(7), batches, strict=False) if i in (3, 6)]
    rows = [as_float32(batch)["row"].clone() for batch in held]
    assert sum(1 for _ in batches) > 100
    for batch, rows_then in zip(held, rows, strict=True):
        # batches 3 and 6 each take the carry of one group and rows of the next
        assert torch.equal(as_float32(batch)["row"], rows_then)
        assert_rows_of_the_store(store, as_float32(batch))


def as_float32(batch):
    return batch.on("cpu") if isinstance(batch, EncodedBatch) else batch


def test_gather_threads_do_not_change_the_batches(store):
    def batches(threads):
        loader = ShuffledLoader(store, fields=FIELDS, batch_size=500, threads=threads)
        return list(loader)

    one, three = batches(LoaderThreads(read=1, gather=1)), batches(LoaderThreads(read=3, gather=3))
    assert len(one) == len(three) > 20
    for a, b in zip(one, three, strict=True):
        assert all(torch.equal(a[name], b[name]) for name in FIELDS)


def test_record_fields_are_aligned_and_disjoint(dtype_store):
    fields = (*FIELDS, "loss", "sequence")
    layout = ShuffledLoader(dtype_store, fields=fields).layout
    assert layout.row_bytes % 8 == 0
    taken = np.zeros(layout.row_bytes, bool)
    for field in layout.fields.values():
        assert field.offset % field.dtype.itemsize == 0
        assert not taken[field.offset : field.offset + field.nbytes].any()
        taken[field.offset : field.offset + field.nbytes] = True
    assert layout.row_bytes - taken.sum() < 8, "no more padding than the alignment needs"


def test_threads_are_sized_from_the_machine():
    local = "/data/store.zarr"
    assert LoaderThreads.for_machine(local, "cpu", cpus=2) == LoaderThreads(read=1, gather=1)
    assert LoaderThreads.for_machine(local, "cpu", cpus=64) == LoaderThreads(read=4, gather=1)
    assert LoaderThreads.for_machine(local, "cuda", cpus=16) == LoaderThreads(read=12, gather=4)
    assert LoaderThreads.for_machine(local, "cuda", cpus=2) == LoaderThreads(read=2, gather=1)
    assert LoaderThreads.for_machine("s3://bucket/store.zarr", "cpu", cpus=2).read == 16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float8"])
def test_both_paths_name_the_rows_holding_nan_from_the_stored_bits(tmp_path, dtype):
    """Rows with a NaN activation or a non-positive gradient scale travel with the batch (the
    trainer's policy stops on them or leaves them out), encoded or not, whatever the dtype."""
    path = tmp_path / f"{dtype}.zarr"
    write_synthetic_store(path, synthetic_spec(2048, activation_dtype=dtype))
    store = ActivationStore.open(path)
    hook = store.resolve_hook(None)
    nan_values, _ = encoding.encode_activations(torch.full((1, 1), float("nan")), dtype, False)
    group = zarr.open_group(path, mode="r+")
    group[f"hooks/{hook}/activations"][100, 3] = encoding.as_numpy(nan_values)[0, 0]
    group[f"hooks/{hook}/gradient_scale"][700] = 0.0
    assert 100 % CONTEXT and 700 % CONTEXT, "rows the loader serves (not at position 0)"
    for encoded in (False, True):
        loader = ShuffledLoader(
            store, fields=("activations", "gradients"), batch_size=256, encoded=encoded
        )
        batches = [batch.on("cpu") for batch in loader]  # an encoded batch decodes here
        assert {int(row) for batch in batches for row in batch.nonfinite_rows} == {100, 700}
        for batch in batches:
            kept = batch.without_nonfinite()
            assert len(kept["activations"]) == len(batch["activations"]) - len(
                batch.nonfinite_index
            )
            assert torch.isfinite(kept["activations"]).all()
            assert torch.isfinite(kept["gradients"]).all()
