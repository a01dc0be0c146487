"""Harvesting into object storage (a local S3 server): the same store, safe locks, clear errors."""

import json
import time

import numpy as np
import pytest

from helpers import assert_one_line_error
from saekit.cache_format import ActivationStore

pytestmark = pytest.mark.slow  # a local S3 server; harvests into it

s3fs = pytest.importorskip("s3fs")

HOOK = "blocks.1.hook_resid_post"


def args(tiny_lm, corpus, out, options, *extra):
    return [
        "harvest", "--model", str(tiny_lm), "--dataset", str(corpus), "--out", str(out),
        "--hook", HOOK, "--tokens", "2400", "--holdout-tokens", "240", "--context-size", "24",
        "--batch-size", "4", "--rows-per-chunk", "96", "--chunks-per-block", "2",
        "--storage-options", json.dumps(options), *extra,
    ]  # fmt: skip


def test_harvest_to_s3_equals_a_local_harvest(run_cli, tiny_lm, corpus, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    url = f"s3://{bucket}/team/store.zarr"
    for shard in ("1/2", "0/2"):  # shards may land in any order, from anywhere
        result = run_cli(*args(tiny_lm, corpus, url, options, "--shard", shard))
        assert result.exit_code == 0, result.stderr
    local = tmp_path / "local.zarr"
    assert run_cli(*args(tiny_lm, corpus, local, {}, "--shards", "2")).exit_code == 0
    remote, reference = ActivationStore.open(url, options), ActivationStore.open(local)
    assert remote.complete and remote.n_rows_committed == reference.n_rows_committed == 2400
    fields = ["tokens", "sequence", "position", "loss", "activations", "gradients"]
    got, want = remote.read(fields, 0, 2400), reference.read(fields, 0, 2400)
    for name in fields:
        np.testing.assert_array_equal(got[name], want[name])
    fs = s3fs.S3FileSystem(**options)
    assert not fs.exists(f"{bucket}/team/store.zarr/locks/shard-00000.json"), "leases released"
    assert run_cli("verify", url, "--storage-options", json.dumps(options)).exit_code == 0


def test_a_live_lease_of_another_writer_is_respected(run_cli, tiny_lm, corpus, s3_bucket):
    bucket, options = s3_bucket
    url = f"s3://{bucket}/store.zarr"
    fs = s3fs.S3FileSystem(**options)
    lease = {
        "owner": "another-cluster",
        "host": "gpu-7",
        "pid": 4242,
        "renewed": time.time(),
        "ttl": 120,
    }
    fs.pipe_file(f"{bucket}/store.zarr/locks/create.json", json.dumps(lease).encode())
    assert_one_line_error(
        run_cli(*args(tiny_lm, corpus, url, options)), "held by another writer", "gpu-7"
    )
    assert fs.cat_file(f"{bucket}/store.zarr/locks/create.json") == json.dumps(lease).encode()


def test_a_stale_lease_of_a_dead_writer_is_taken_over(run_cli, tiny_lm, corpus, s3_bucket):
    bucket, options = s3_bucket
    url = f"s3://{bucket}/store.zarr"
    fs = s3fs.S3FileSystem(**options)
    dead = {"owner": "dead", "host": "gpu-1", "pid": 1, "renewed": time.time() - 3600, "ttl": 120}
    fs.pipe_file(f"{bucket}/store.zarr/locks/shard-00000.json", json.dumps(dead).encode())
    result = run_cli(*args(tiny_lm, corpus, url, options))
    assert result.exit_code == 0, result.stderr
    assert ActivationStore.open(url, options).complete


def test_missing_bucket(run_cli, tiny_lm, corpus, s3_bucket):
    _, options = s3_bucket
    assert_one_line_error(
        run_cli(*args(tiny_lm, corpus, "s3://no-such-bucket/s.zarr", options)),
        "bucket no-such-bucket",
        "does not exist",
    )


def test_missing_credentials(run_cli, tiny_lm, corpus, s3_bucket, monkeypatch):
    bucket, options = s3_bucket
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    no_keys = {"endpoint_url": options["endpoint_url"]}
    assert_one_line_error(
        run_cli(*args(tiny_lm, corpus, f"s3://{bucket}/s.zarr", no_keys)), "credentials"
    )


def test_unreachable_object_store(run_cli, tiny_lm, corpus):
    options = {
        "endpoint_url": "http://127.0.0.1:9",
        "key": "k",
        "secret": "s",
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
    }
    assert_one_line_error(
        run_cli(*args(tiny_lm, corpus, "s3://bucket/s.zarr", options)),
        "cannot use s3://bucket/s.zarr",
    )
