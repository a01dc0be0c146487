"""A write that fails (full disk, file-size limit) ends in one line, and re-running the same
command resumes the store to exactly the store an uninterrupted harvest writes."""

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_same_store, harvest_small_store
from saekit.cache_format import ActivationStore

pytestmark = pytest.mark.slow  # harvests in child processes under a file-size limit, then resumes

# Below one activation chunk (256 rows x 64 x float16 = 32 KiB), above every metadata file.
FILE_SIZE_LIMIT = 16 * 1024


def limit_file_size() -> None:
    """In the child: writing past the limit fails with EFBIG instead of killing the process."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_failed_write_is_one_line_and_the_store_resumes_identically(
    tiny_lm, corpus, tmp_path, run_cli
):
    reference = harvest_small_store(tiny_lm, corpus, tmp_path / "reference.zarr")
    out = tmp_path / "store.zarr"
    args = [
        "harvest", "--model", tiny_lm, "--dataset", corpus, "--hook", "blocks.1.hook_resid_post",
        "--tokens", 4800, "--holdout-tokens", 960, "--context-size", 32, "--batch-size", 8,
        "--rows-per-chunk", 256, "--chunks-per-block", 2, "--out", out,
    ]  # fmt: skip
    sae = Path(sys.executable).parent / "sae"
    failed = subprocess.run(
        [str(sae), *map(str, args)],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.startswith(f"error: cannot write to store {out}: File too large;")
    assert "re-run the same command" in failed.stderr
    assert not ActivationStore.open(out).complete

    resumed = run_cli(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_store(reference, out)
    assert not list(out.rglob("*.partial")), "no temporary file is left behind"
