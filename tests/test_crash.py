"""kill -9 a writer at random moments: the store opens, verifies and resumes to the same bytes."""

import random
import subprocess
import sys
import time

import pytest

from helpers import assert_same_store
from saekit.cache_format import ActivationStore
from saekit.cache_format.verify import verify_store
from saekit.errors import SaekitError
from saekit.synthetic import synthetic_spec, write_synthetic_store

N_ROWS = 48 * 1024
WRITER = f"""
import sys
from saekit.synthetic import synthetic_spec, write_synthetic_store
spec = synthetic_spec({N_ROWS}, holdout_rows=1000)
print("writing", flush=True)
write_synthetic_store(sys.argv[1], spec)
print("done", flush=True)
"""


def spec():
    return synthetic_spec(N_ROWS, holdout_rows=1000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "store.zarr"
    write_synthetic_store(path, spec())
    return path


def start_writer(path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "writing"
    return process


@pytest.mark.parametrize("trial", range(3))
def test_kill_minus_nine_then_verify_and_resume(tmp_path, reference, trial):
    rng = random.Random(trial)
    path = tmp_path / "store.zarr"
    kills = 0
    for _ in range(2):  # kill the first run, then kill the resumed run too
        process = start_writer(path)
        time.sleep(rng.uniform(0.0, 1.8))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
        try:
            store = ActivationStore.open(path)
        except SaekitError as error:  # killed before the store existed, or while creating it
            assert "not a saekit activation store" in str(error) or "interrupted" in str(error)
            continue
        assert verify_store(store) == [], "committed rows are intact after the kill"
        assert store.n_rows_committed % 1024 == 0 or store.complete
    write_synthetic_store(path, spec())
    assert ActivationStore.open(path).complete
    assert_same_store(reference, path)
    assert kills >= 1, "the test must actually kill a writer"
