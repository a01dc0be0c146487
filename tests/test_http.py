"""Reading a store served read-only over HTTP by a server that honours Range requests."""

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from RangeHTTPServer import RangeRequestHandler

from helpers import snapshot
from saekit.cache_format import ActivationStore, ShuffledLoader

pytestmark = pytest.mark.slow  # a local HTTP server


class QuietRangeHandler(RangeRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(small_store):
    """The small store's directory served at http://127.0.0.1:PORT/small.zarr."""
    handler = functools.partial(QuietRangeHandler, directory=str(small_store.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{small_store.name}"
    server.shutdown()
    server.server_close()


def test_http_store_reads_like_the_local_one(served, small_store):
    before = snapshot(small_store)
    remote, local = ActivationStore.open(served), ActivationStore.open(small_store)
    assert remote.n_rows_committed == local.n_rows_committed == 4096
    fields = ["tokens", "sequence", "position", "loss", "activations", "gradients"]
    a, b = remote.read(fields, 0, 4096), local.read(fields, 0, 4096)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name])
    batches = [
        next(iter(ShuffledLoader(s, fields=("row", "activations", "gradients"), batch_size=256)))
        for s in (remote, local)
    ]
    for name in ("row", "activations", "gradients"):
        assert torch.equal(batches[0][name], batches[1][name])
    assert snapshot(small_store) == before, "readers never write"


def test_info_and_verify_over_http(run_cli, served):
    info = run_cli("info", served)
    assert info.exit_code == 0 and "4,096 committed" in info.stdout
    verify = run_cli("verify", served)
    assert verify.exit_code == 0, verify.stderr


def test_missing_http_store_is_a_clear_error(run_cli, served):
    result = run_cli("info", served.replace("small.zarr", "other.zarr"))
    assert result.exit_code == 2 and "is not a saekit activation store" in result.stderr
