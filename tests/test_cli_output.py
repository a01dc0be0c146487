"""Output read by scripts and logs: never broken mid-message or cut, whatever the path length
and the console width."""

import pytest

from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store


@pytest.fixture
def deep(tmp_path, monkeypatch):
    """A directory 200+ characters deep, and a console that claims to be 40 columns wide."""
    monkeypatch.setenv("COLUMNS", "40")
    path = tmp_path.joinpath(*[f"a-rather-long-directory-name-{i}" for i in range(8)])
    path.mkdir(parents=True)
    return path


def test_messages_and_tables_stay_whole_when_piped(deep, run_cli):
    store, run = deep / "store.zarr", deep / "run"
    write_synthetic_store(store, synthetic_spec(4096, holdout_rows=512))
    info = run_cli("info", store)
    assert info.exit_code == 0
    assert f"saekit store {store}\n" in info.stdout, "the title names the whole path"
    assert "4,096 committed of 4096 (complete)" in info.stdout

    train = ["train", "--store", store, "--out", run, "--sae", "topk:k=4,latents=64"]
    train += ["--batch-size", "512"]
    assert run_cli(*train).exit_code == 0
    again = run_cli(*train, "--resume")
    assert again.exit_code == 0
    assert f"run {run} was already complete; SAEs re-exported\n" in again.stdout
    saved = [line for line in again.stdout.splitlines() if "topk-k4-64" in line]
    assert len(saved) == 1 and str(run / "saes" / "topk-k4-64") in saved[0], again.stdout


def test_training_and_evaluation_name_their_dead_latents_apart(run_cli, small_store, tmp_path):
    """Training's dead (no firing in the last dead_tokens training tokens) and eval's (never
    fires on the held-out tokens) are different measures; their tables say which is which."""
    run = tmp_path / "run"
    trained = run_cli("train", "--store", small_store, "--out", run, "--sae",
                      "topk:k=4,latents=32", "--batch-size", "256", "--tokens", "1024")  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    assert "dead in training" in trained.stdout and "dead_tokens" in trained.stdout
    evaluated = run_cli("eval", run, "--out", tmp_path / "report", "--no-online",
                        "--tokens", "256")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "dead (held-out)" in evaluated.stdout and "dead in training" not in evaluated.stdout
