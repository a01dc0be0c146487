"""Reading a store from an S3-compatible server (moto, on 127.0.0.1) through s3:// URLs."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from saekit.cache_format import ActivationStore

s3fs = pytest.importorskip("s3fs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield endpoint
    server.kill()
    server.wait()


@pytest.fixture
def s3_store(s3_endpoint, small_store, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"team-{time.time_ns()}"
    fs.mkdir(bucket)
    fs.put(str(small_store), f"{bucket}/small.zarr", recursive=True)
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
