"""Shared fixtures: the CLI in-process, synthetic stores, a tiny LM and corpus, a local S3."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.cli import main

# Tests never reach the network: Hugging Face libraries fail fast instead of retrying (~20 s per
# lookup). Set for the whole session, not per test: huggingface_hub and datasets read these once,
# when first imported, and that can be while collecting a test module or in a session fixture.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run `sae ARGS...` in this process; return its exit code and output."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def small_store(tmp_path):
    """A complete synthetic store: 4096 rows (512 held out), d=64, chunks of 256, blocks of 1024."""
    path = tmp_path / "small.zarr"
    write_synthetic_store(path, synthetic_spec(4096, holdout_rows=512))
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny GPT-2 (2 layers, d=64, context 128) and its BPE tokenizer, saved like any HF model."""
    from saekit.demo import build_tiny_lm, generate_documents

    path = tmp_path_factory.mktemp("tiny_lm") / "model"
    return build_tiny_lm(path, generate_documents(300, seed=1), vocab_size=300)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A .txt corpus of 200 generated documents separated by blank lines (~25k tokens)."""
    from saekit.demo import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt", 200, seed=2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where torch sees a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (on one: python benchmarks/gpu_check.py)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible server (moto) on 127.0.0.1, for the whole test session."""
    pytest.importorskip("moto")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.kill()
    server.wait()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the local S3 server: (bucket name, fsspec storage options)."""
    s3fs = pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    bucket = f"team-{time.time_ns()}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return bucket, options
