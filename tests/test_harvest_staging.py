"""How harvested rows reach the host: the staging ring of a GPU harvest (bounded pinned memory,
copies on a side stream) and the per-row checks made once per block.

The ring runs here on the CPU, with torch.cuda's streams and events replaced by stand-ins that
record what was asked of them; tests marked `cuda` run it for real.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from helpers import harvest_small_store
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.harvest import harvester
from saekit.harvest.harvester import _StagedCopies

FIELDS = ["tokens", "sequence", "position", "loss", "activations", "gradients"]


def assert_same_rows(store: ActivationStore, reference: ActivationStore) -> None:
    assert store.complete and store.n_rows_committed == reference.n_rows_committed
    got, want = (s.read(FIELDS, 0, s.n_rows_committed) for s in (store, reference))
    assert set(got) == {*FIELDS, "gradient_scale"}
    for name, values in got.items():
        np.testing.assert_array_equal(values, want[name], err_msg=name)


class FakeCuda:
    """Streams and events that do nothing but log; copies then happen at once, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def install(self, monkeypatch) -> None:
        fake = self

        class Stream:
            def __init__(self, device):
                fake.log.append("side stream")

            def wait_stream(self, other):
                fake.log.append(f"side waits for {other}")

        class Event:
            def record(self, stream):
                fake.log.append("record")

            def synchronize(self):
                fake.log.append("synchronize")

        @contextlib.contextmanager
        def stream(s):
            fake.log.append("enter side")
            yield
            fake.log.append("leave side")

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device: "compute")
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: fake.log.append("in use"))


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    return fake


def test_staged_copies_land_every_row_through_two_bounded_slots(fake_cuda):
    copies = _StagedCopies(torch.device("cpu"), rows=5)
    src = {"a": torch.arange(69.0).view(23, 3), "b": torch.arange(23, dtype=torch.uint8)}
    dst = {"a": torch.zeros(23, 3), "b": torch.zeros(23, dtype=torch.uint8)}
    copies.copy(dst, src)  # 5 parts of at most 5 rows
    copies.wait()
    assert all(torch.equal(dst[k], src[k]) for k in src)
    assert copies.pinned_bytes == 2 * 5 * (3 * 4 + 1), "two slots of 5 rows, whatever the data"
    log = fake_cuda.log
    assert log.count("side stream") == 1
    assert log.count("side waits for compute") == 5, "each copy after the kernels that made it"
    assert log.count("in use") == 10, "each source kept from the allocator until copied"
    assert log.count("record") == log.count("synchronize") == 5, "each part lands after its event"
    # the third part needs a slot: the first lands (its event waited on) before it is copied
    third = [i for i, entry in enumerate(log) if entry == "side waits for compute"][2]
    assert log[:third].count("synchronize") == 1


@pytest.mark.slow  # two harvests to compare
def test_a_harvest_through_the_staging_ring_writes_the_same_store(
    fake_cuda, monkeypatch, tiny_lm, corpus, tmp_path
):
    """Staging slots of 100 rows: parts straddle batches (256 rows) and blocks (512 rows)."""
    direct = ActivationStore.open(harvest_small_store(tiny_lm, corpus, tmp_path / "direct.zarr"))
    monkeypatch.setattr(harvester, "_HostCopies", lambda: _StagedCopies(torch.device("cpu"), 100))
    staged = ActivationStore.open(harvest_small_store(tiny_lm, corpus, tmp_path / "staged.zarr"))
    assert fake_cuda.log.count("synchronize") > 10, "the harvest went through the ring"
    assert_same_rows(staged, direct)


def poison_batch(monkeypatch, index: int, context: int, position: int, value: float) -> None:
    """Make batch `index` of the harvest give `value` at one activation."""
    calls = {"n": 0}
    run_batch = harvester.run_batch

    def poisoned(*args, **kwargs):
        out = run_batch(*args, **kwargs)
        if calls["n"] == index:
            next(iter(out.activations.values()))[context, position, 0] = value
        calls["n"] += 1
        return out

    monkeypatch.setattr(harvester, "run_batch", poisoned)


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (float("nan"), "float16", "activations contain NaN or Inf (rows [293] of the block)"),
        (float("inf"), "float32", "activations contain NaN or Inf (rows [293] of the block)"),
        (1e5, "float16", "activations exceed the float16 range (65504); harvest into a new"),
    ],
)
def test_a_bad_row_stops_the_harvest_before_its_block(
    monkeypatch, tiny_lm, corpus, tmp_path, value, dtype, message
):
    """Batch 3 (rows 768-1023, 256 per batch) is in block 1 (rows 512-1023); its context 1,
    position 5 is store row 805, row 293 of the block. Block 0 is committed, block 1 is not."""
    poison_batch(monkeypatch, index=3, context=1, position=5, value=value)
    out = tmp_path / "store.zarr"
    with pytest.raises(SaekitError) as error:
        harvest_small_store(tiny_lm, corpus, out, dtype=dtype)
    assert message in str(error.value)
    assert ActivationStore.open(out).n_rows_committed == 512


@pytest.mark.cuda
def test_cuda_harvest_pins_only_its_staging_slots_and_resumes_byte_identical(
    monkeypatch, tiny_lm, corpus, tmp_path
):
    made: list[_StagedCopies] = []
    staged = _StagedCopies

    def recording(device, rows):
        made.append(staged(device, rows))
        return made[-1]

    monkeypatch.setattr(harvester, "_StagedCopies", recording)
    first = harvest_small_store(tiny_lm, corpus, tmp_path / "a.zarr", device="cuda")
    again = harvest_small_store(tiny_lm, corpus, tmp_path / "b.zarr", device="cuda")
    assert_same_rows(ActivationStore.open(first), ActivationStore.open(again))
    batch_rows = 8 * 32
    row_bytes = 64 * 2 + 64 * 2 + 4 + 4 + 4 + 2 + 4 + 1  # activations, gradients, scale, columns
    assert 0 < made[0].pinned_bytes <= 2 * batch_rows * row_bytes
    assert all(t.is_pinned() for slot in made[0]._slots for t in slot.values())
