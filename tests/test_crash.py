"""kill -9 a writer at random points of its progress: the store opens, verifies and resumes to
the same bytes (float16 stores, and float8 ones)."""

import random
import subprocess

import pytest

from helpers import assert_same_store
from kill_switch import KILLED, child_command, count_events
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.cache_format.verify import verify_store

pytestmark = pytest.mark.slow  # kill -9 of writer processes at random points, then resumes

N_ROWS = 48 * 1024
WRITER = """
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
spec = synthetic_spec({n_rows}, holdout_rows=1008, activation_dtype="{dtype}")
write_synthetic_store(sys.argv[1], spec)
"""


def spec(dtype):
    return synthetic_spec(N_ROWS, holdout_rows=1008, activation_dtype=dtype)  # 63 contexts


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Per dtype: the store written without interruption, and the number of writes that took."""
    made = {}

    def reference(dtype):
        if dtype not in made:
            path = tmp_path_factory.mktemp("reference") / "store.zarr"
            with count_events() as events:
                write_synthetic_store(path, spec(dtype))
            made[dtype] = path, len(events)
        return made[dtype]

    return reference


@pytest.mark.parametrize(
    ("dtype", "trial"), [("float16", 0), ("float16", 1), ("float16", 2), ("float8", 0)]
)
def test_kill_minus_nine_then_verify_and_resume(tmp_path, references, dtype, trial):
    reference_path, n_writes = references(dtype)
    writer = WRITER.format(n_rows=N_ROWS, dtype=dtype)
    rng = random.Random(trial)
    path = tmp_path / "store.zarr"
    for _ in range(2):  # kill the first run, then kill the resumed run too
        # A resumed run makes at least the writes left after the first kill, so a kill within
        # the first third of a full run's writes always lands before either run ends.
        kill_at = rng.randint(1, n_writes // 3)
        command = child_command(kill_at, writer, path, torn=rng.random() < 0.5)
        assert subprocess.run(command).returncode == KILLED, "the writer must die mid-write"
        try:
            store = ActivationStore.open(path)
        except SaekitError as error:  # killed before the store existed, or while creating it
            assert "not a saekit activation store" in str(error) or "interrupted" in str(error)
            continue
        assert verify_store(store) == [], "committed rows are intact after the kill"
        assert store.n_rows_committed % 1024 == 0 and not store.complete
    write_synthetic_store(path, spec(dtype))
    assert ActivationStore.open(path).complete
    assert_same_store(reference_path, path)
