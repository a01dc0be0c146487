"""One writer at a time, refusals that touch nothing, and resume to identical bytes."""

import pytest

from helpers import assert_same_store, snapshot
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore, StoreWriter
from saekit.cache_format.locking import LOCK_DIR
from saekit.cache_format.synthetic import synthetic_rows, synthetic_spec, write_synthetic_store


def test_second_writer_is_refused(tmp_path):
    spec = synthetic_spec(2048)
    with (
        StoreWriter.open(tmp_path / "s", spec),
        pytest.raises(SaekitError, match="being written by another process"),
        StoreWriter.open(tmp_path / "s", spec),
    ):
        pass


def test_different_settings_are_refused_and_nothing_changes(small_store):
    before = snapshot(small_store)
    other = synthetic_spec(4096, holdout_rows=512, seed=7)
    with (
        pytest.raises(SaekitError, match=r"other settings: .*seed") as error,
        StoreWriter.open(small_store, other),
    ):
        pass
    assert "\n" not in str(error.value)
    assert snapshot(small_store) == before


def test_foreign_directory_and_file_are_refused_untouched(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with (
        pytest.raises(SaekitError, match="not a saekit activation store"),
        StoreWriter.open(foreign, synthetic_spec(1024)),
    ):
        pass
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"], "not even a lock file"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with (
        pytest.raises(SaekitError, match="is a file"),
        StoreWriter.open(a_file, synthetic_spec(1024)),
    ):
        pass
    assert a_file.read_text() == "x"


def test_stopping_early_and_resuming_gives_the_same_store(tmp_path):
    spec = synthetic_spec(4096, holdout_rows=304)  # 19 contexts of 16
    write_synthetic_store(tmp_path / "whole", spec)
    with StoreWriter.open(tmp_path / "parts", spec) as writer:
        block = next(writer.pending_blocks())
        writer.write(block, synthetic_rows(spec, block, 16, 0))
    assert ActivationStore.open(tmp_path / "parts").n_rows_committed == 1024
    write_synthetic_store(tmp_path / "parts", spec)
    assert_same_store(tmp_path / "whole", tmp_path / "parts")


def test_a_complete_store_is_left_alone(small_store):
    before = snapshot(small_store)
    write_synthetic_store(small_store, synthetic_spec(4096, holdout_rows=512))
    after = snapshot(small_store)
    assert {k: v for k, v in after.items() if not k.startswith(LOCK_DIR)} == {
        k: v for k, v in before.items() if not k.startswith(LOCK_DIR)
    }


def test_writer_errors_surface_and_keep_committed_rows(tmp_path):
    spec = synthetic_spec(4096)
    path = tmp_path / "s"
    with pytest.raises(SaekitError, match="NaN or Inf"), StoreWriter.open(path, spec) as writer:
        for block in writer.pending_blocks():
            rows = synthetic_rows(spec, block, 16, 0)
            if block.index == 2:
                hook = next(iter(rows.activations))
                rows.activations[hook][5, 0] = float("nan")
            writer.write(block, rows)
        writer.finish()
    store = ActivationStore.open(path)
    assert store.n_rows_committed == 2048 and not store.complete
    write_synthetic_store(path, spec)  # resuming continues after the committed rows
    assert ActivationStore.open(path).complete


def test_no_chunk_is_written_through_a_link_inside_the_store(tmp_path):
    spec = synthetic_spec(4096)
    path = tmp_path / "s"
    with StoreWriter.open(path, spec) as writer:
        block = next(writer.pending_blocks())
        writer.write(block, synthetic_rows(spec, block, 16, 0))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chunk_dir = path / "hooks/synthetic.hook_resid/activations/c/5"  # block 1's rows
    chunk_dir.symlink_to(elsewhere, target_is_directory=True)
    with (
        pytest.raises(SaekitError, match="c/5 is a symbolic link; saekit never writes through"),
        StoreWriter.open(path, spec) as writer,
    ):
        for block in writer.pending_blocks():
            writer.write(block, synthetic_rows(spec, block, 16, 0))
        writer.finish()
    assert not list(elsewhere.iterdir()), "nothing written where the link points"
    assert ActivationStore.open(path).n_rows_committed == 1024
