"""Shared fixtures: small synthetic stores and a way to run the CLI in-process."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from saekit.cli import main
from saekit.synthetic import synthetic_spec, write_synthetic_store


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


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the network: Hugging Face libraries fail fast instead of retrying."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
