"""Reading a store from an S3-compatible server (moto, on 127.0.0.1) through s3:// URLs."""

import json

import numpy as np
import pytest

from saekit.cache_format import ActivationStore

pytestmark = pytest.mark.slow  # a local S3 server (moto) in a child process

s3fs = pytest.importorskip("s3fs")


@pytest.fixture
def s3_store(s3_bucket, small_store):
    bucket, options = s3_bucket
    s3fs.S3FileSystem(**options).put(str(small_store), f"{bucket}/small.zarr", recursive=True)
    return f"s3://{bucket}/small.zarr", options


def test_s3_store_reads_like_the_local_one(s3_store, small_store):
    url, options = s3_store
    remote, local = ActivationStore.open(url, options), ActivationStore.open(small_store)
    fields = ["tokens", "sequence", "position", "loss", "activations", "gradients"]
    a, b = remote.read(fields, 0, 4096), local.read(fields, 0, 4096)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name])


def test_info_and_verify_from_s3(run_cli, s3_store):
    url, options = s3_store
    info = run_cli("info", url, "--json", "--storage-options", json.dumps(options))
    assert info.exit_code == 0, info.stderr
    assert json.loads(info.stdout)["rows"]["committed"] == 4096
    assert json.loads(info.stdout)["bytes"] > 0
    verify = run_cli("verify", url, "--storage-options", json.dumps(options))
    assert verify.exit_code == 0, verify.stderr
