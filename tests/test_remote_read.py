"""Train and eval read a store from object storage (local S3 server) and from plain HTTP exactly
as they read it from disk."""

import functools
import http.server
import json
import threading

import pytest
import torch
from RangeHTTPServer import RangeRequestHandler
from safetensors.torch import load_file

from helpers import harvest_small_store, snapshot

pytestmark = pytest.mark.slow  # local S3 and HTTP servers; trains and evaluates through them

s3fs = pytest.importorskip("s3fs")
HOOK = "blocks.1.hook_resid_post"
TRAIN = ["--sae", "topk:k=4,latents=128", "--sae", "gsae:k=4,latents=128", "--tokens", "4096",
         "--batch-size", "512"]  # fmt: skip


class QuietRangeHandler(RangeRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def local_store(tiny_lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("remote-read") / "store.zarr"
    return harvest_small_store(tiny_lm, corpus, out, tokens=3200, holdout_tokens=640)


@pytest.fixture
def http_store(local_store):
    handler = functools.partial(QuietRangeHandler, directory=str(local_store.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{local_store.name}"
    server.shutdown()
    server.server_close()


def weights(run):
    return {p.parent.name: load_file(p) for p in sorted(run.glob("saes/*/sae.safetensors"))}


def train_and_eval(run_cli, store, run, report, *options):
    result = run_cli("train", "--store", store, "--out", run, *TRAIN, *options)
    assert result.exit_code == 0, result.stderr
    result = run_cli("eval", run, "--out", report, "--store", store, *options)
    assert result.exit_code == 0, result.stderr
    return weights(run), json.loads((report / "report.json").read_text())


def assert_same(a, b):
    (weights_a, report_a), (weights_b, report_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        for key in weights_a[name]:
            assert torch.equal(weights_a[name][key], weights_b[name][key]), (name, key)
    for row_a, row_b in zip(report_a["rows"], report_b["rows"], strict=True):
        assert row_a["offline"] == row_b["offline"] and row_a["online"] == row_b["online"]


def test_train_and_eval_from_s3_and_http_equal_local(
    run_cli, local_store, s3_bucket, http_store, tmp_path
):
    before = snapshot(local_store)
    local = train_and_eval(run_cli, local_store, tmp_path / "run", tmp_path / "report")
    bucket, options = s3_bucket
    s3fs.S3FileSystem(**options).put(str(local_store), f"{bucket}/store.zarr", recursive=True)
    on_s3 = train_and_eval(
        run_cli,
        f"s3://{bucket}/store.zarr",
        tmp_path / "run-s3",
        tmp_path / "report-s3",
        "--storage-options",
        json.dumps(options),
    )
    over_http = train_and_eval(run_cli, http_store, tmp_path / "run-http", tmp_path / "report-http")
    assert_same(local, on_s3)
    assert_same(local, over_http)
    assert snapshot(local_store) == before, "readers never write"
