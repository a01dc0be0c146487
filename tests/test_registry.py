"""A team registry: `sae publish` then `sae ls` then `sae eval` / `sae inspect` / `load_sae` of
the published URL, on a shared directory, the local S3 server and a static HTTP server; the
model card parsed by huggingface_hub's own `ModelCard`; publishes killed part-way leave nothing
listed or loadable; refusals write nothing."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from RangeHTTPServer import RangeRequestHandler

from helpers import assert_one_line_error, harvest_small_store, snapshot
from saekit.base.published import INTENT, MANIFEST
from saekit.train import load_sae

SPECS = ("topk:k=4,latents=32", "relu:latents=32")


@pytest.fixture
def trained(run_cli, small_store, tmp_path):
    """A run of two SAEs on the small store and its offline evaluation."""
    run, report = tmp_path / "run", tmp_path / "report"
    specs = [arg for spec in SPECS for arg in ("--sae", spec)]
    result = run_cli("train", "--store", small_store, "--out", run, "--batch-size", "256",
                     "--tokens", "1024", "--device", "cpu", *specs)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = run_cli("eval", run, "--out", report, "--no-online", "--device", "cpu",
                     "--tokens", "256")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return run, report


def ls(run_cli, url, *options):
    result = run_cli("ls", url, "--json", *options)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_publish_ls_load_and_eval_on_a_shared_directory(run_cli, trained, tmp_path):
    from huggingface_hub import ModelCard

    run, report = trained
    registry = tmp_path / "registry"
    before = snapshot(run), snapshot(report)
    result = run_cli("publish", run, "--to", registry, "--report", report)
    assert result.exit_code == 0, result.stderr
    assert (snapshot(run), snapshot(report)) == before, "publishing only reads its sources"
    rows = json.loads((report / "report.json").read_text())["rows"]
    records = {r["url"]: r for r in ls(run_cli, registry)}
    assert sorted(records) == [str(registry / "relu-l1_5-32"), str(registry / "topk-k4-32")]
    for sae_dir in sorted((run / "saes").iterdir()):
        published = registry / sae_dir.name
        record = records[str(published)]
        row = next(r for r in rows if r["name"] == sae_dir.name)
        assert record["metrics"]["inference"]["nmse"] == row["offline"]["nmse"]
        assert record["d_sae"] == 32 and record["training_tokens"] == 1024
        manifest = json.loads((published / MANIFEST).read_text())
        for relative, expected in manifest["files"].items():
            data = (published / relative).read_bytes()
            assert hashlib.sha256(data).hexdigest() == expected["sha256"], relative
        assert (published / "sae.safetensors").read_bytes() == (
            sae_dir / "sae.safetensors"
        ).read_bytes()
        assert json.loads((published / "report.json").read_text())["rows"][0]["name"] == (
            sae_dir.name
        )
        assert (published / "training" / "config.json").is_file()
        card = ModelCard.load(published / "README.md", ignore_metadata_errors=False)
        assert card.data.library_name == "saekit"
        metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert metrics["nmse"] == row["offline"]["nmse"] and metrics["l0"] == row["offline"]["l0"]
        assert card.data.to_dict()["saekit"]["store_fingerprint"] == record["store_fingerprint"]
        original, copy = load_sae(sae_dir), load_sae(published)
        assert all(torch.equal(original.state_dict()[k], v) for k, v in copy.state_dict().items())

    out = tmp_path / "report-of-published"
    result = run_cli("eval", registry / "topk-k4-32", "--out", out, "--no-online",
                     "--device", "cpu", "--tokens", "256")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    again = json.loads((out / "report.json").read_text())["rows"]
    assert (
        again[0]["offline"]["nmse"]
        == next(r for r in rows if r["name"] == "topk-k4-32")["offline"]["nmse"]
    )


def test_publishing_refusals_write_nothing(run_cli, trained, tmp_path):
    run, report = trained
    registry = tmp_path / "registry"
    sae = run / "saes" / "topk-k4-32"
    assert run_cli("publish", sae, "--to", registry).exit_code == 0
    (tmp_path / "foreign" / "topk-k4-32").mkdir(parents=True)
    (tmp_path / "foreign" / "topk-k4-32" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for args, fragments in (
        ((sae, "--to", registry), ("is already published", "--replace")),
        ((sae, "--to", tmp_path / "foreign"), ("holds something else than a published SAE",)),
        ((sae, "--to", registry, "--name", "a/b"), ("cannot be published as a folder name",)),
        ((run, "--to", registry, "--name", "one"), ("--name names one SAE, but 2",)),
        ((sae, "--to", registry, "--report", run), ("is neither a report",)),
        (("s3://bucket/x", "--to", registry), ("sae publish copies local runs",)),
        ((sae, "--to", registry, "--replace", "--store", tmp_path / "nowhere.zarr"), ("nowhere",)),
    ):
        assert_one_line_error(run_cli("publish", *args), *fragments)
        assert snapshot(tmp_path) == before, args
    result = run_cli("publish", sae, "--to", registry, "--replace", "--report", report)
    assert result.exit_code == 0, result.stderr
    assert (registry / "topk-k4-32" / "report.json").is_file()


KILLER = """
import os, signal, sys
import saekit.base.published as published
from saekit.cli import main

write, count, kill_at = published._write, [0], int(sys.argv[1])

def killing_write(*args):
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return write(*args)

published._write = killing_write
main(sys.argv[2:])
"""


def publish_killed(kill_at: int, *args) -> int:
    """`sae publish ARGS` in a child process that SIGKILLs itself at its kill_at-th file write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, sys.path))}
    child = subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), "publish", *map(str, args)],
        env=env,
        capture_output=True,
    )
    return child.returncode


def assert_cut_short_publish_is_invisible(run_cli, folder_url, registry, *options):
    assert ls(run_cli, registry, *options) == []
    result = run_cli("eval", folder_url, "--out", Path(registry).parent / "x", *options)
    assert_one_line_error(result, "is being published, or its publish was cut short")


@pytest.mark.slow  # publishes in child processes killed part-way (~40 s)
def test_a_publish_killed_at_any_write_is_never_listed(run_cli, trained, tmp_path):
    run, report = trained
    sae, registry = run / "saes" / "relu-l1_5-32", tmp_path / "registry"
    writes = len(list(sae.rglob("*.*"))) + 5  # intent, training files, report, card, manifest
    for kill_at in (2, writes // 2, writes):  # the first write is the intent file
        assert publish_killed(kill_at, sae, "--to", registry, "--report", report) == -signal.SIGKILL
        assert_cut_short_publish_is_invisible(run_cli, registry / sae.name, registry)
        assert (registry / sae.name / INTENT).exists()
    result = run_cli("publish", sae, "--to", registry)  # a cut-short publish is published over
    assert result.exit_code == 0, result.stderr
    assert not (registry / sae.name / INTENT).exists()
    assert [r["url"] for r in ls(run_cli, registry)] == [str(registry / sae.name)]
    # a replace killed half-way: the old version is gone from the listing, the new one not there
    code = publish_killed(writes // 2, sae, "--to", registry, "--replace", "--report", report)
    assert code == -signal.SIGKILL
    assert_cut_short_publish_is_invisible(run_cli, registry / sae.name, registry)


@pytest.fixture
def lm_run(run_cli, tiny_lm, corpus, tmp_path):
    """A store of the tiny LM, a run of one SAE on it and its report with dashboards."""
    store = harvest_small_store(tiny_lm, corpus, tmp_path / "store.zarr")
    run, report = tmp_path / "run", tmp_path / "report"
    result = run_cli("train", "--store", store, "--out", run, "--sae", "topk:k=4,latents=64",
                     "--batch-size", "256", "--tokens", "2048", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = run_cli(
        "eval", run, "--out", report, "--device", "cpu", "--inspect", "--tokens", "512"
    )
    assert result.exit_code == 0, result.stderr
    return store, run, report


@pytest.mark.slow  # a local S3 server, a harvest of the tiny LM, eval and inspect (~40 s)
def test_the_team_workflow_on_the_local_s3_server(run_cli, lm_run, s3_bucket, tmp_path):
    s3fs = pytest.importorskip("s3fs")
    store, run, report = lm_run
    bucket, options = s3_bucket
    s3 = ["--storage-options", json.dumps(options)]
    s3fs.S3FileSystem(**options).put(str(store), f"{bucket}/team/store.zarr", recursive=True)
    team, shared_store = f"s3://{bucket}/team", f"s3://{bucket}/team/store.zarr"
    result = run_cli("publish", run, "--to", f"{team}/saes", "--report", report,
                     "--store", shared_store, *s3)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = {r["kind"]: r for r in ls(run_cli, team, *s3)}
    assert records["store"]["url"] == shared_store
    published = records["sae"]["url"]
    assert published == f"{team}/saes/topk-k4-64"
    assert records["sae"]["store_fingerprint"] == records["store"]["fingerprint"]
    site = s3fs.S3FileSystem(**options).ls(f"{bucket}/team/saes/topk-k4-64/inspect")
    assert any(path.endswith("index.html") for path in site)

    out = tmp_path / "teammate-report"
    result = run_cli("eval", published, "--out", out, "--device", "cpu", "--tokens", "512", *s3)
    assert result.exit_code == 0, result.stderr
    mine = json.loads((report / "report.json").read_text())["rows"][0]
    theirs = json.loads((out / "report.json").read_text())
    assert theirs["store"]["location"] == shared_store, "the published cfg names the team's store"
    assert theirs["rows"][0]["offline"]["nmse"] == pytest.approx(mine["offline"]["nmse"], rel=1e-6)
    assert theirs["rows"][0]["online"]["loss_added"] == pytest.approx(
        mine["online"]["loss_added"], rel=1e-5, abs=1e-6
    )
    result = run_cli("inspect", published, "--out", tmp_path / "site", "--latents", "4", *s3)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()

    code = publish_killed(3, run, "--to", f"{team}/more", "--storage-options", json.dumps(options))
    assert code == -signal.SIGKILL
    assert_cut_short_publish_is_invisible(run_cli, f"{team}/more/topk-k4-64", f"{team}/more", *s3)
    assert [r["url"] for r in ls(run_cli, team, *s3) if r["kind"] == "sae"] == [published]


class QuietRangeHandler(RangeRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # a local HTTP server
def test_a_registry_served_over_http_is_listed_and_loaded(run_cli, trained, tmp_path):
    run, report = trained
    registry = tmp_path / "registry"
    assert run_cli("publish", run, "--to", registry, "--report", report).exit_code == 0
    handler = functools.partial(QuietRangeHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/registry"
        before = snapshot(registry)
        urls = [r["url"] for r in ls(run_cli, base)]
        assert urls == [f"{base}/relu-l1_5-32", f"{base}/topk-k4-32"]
        remote, local = load_sae(urls[1]), load_sae(registry / "topk-k4-32")
        assert all(torch.equal(local.state_dict()[k], v) for k, v in remote.state_dict().items())
        out = tmp_path / "from-http"
        result = run_cli("eval", urls[1], "--out", out, "--no-online", "--device", "cpu",
                         "--tokens", "256")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert snapshot(registry) == before, "readers never write"
        assert_one_line_error(run_cli("publish", run, "--to", base), "is read-only")
    finally:
        server.shutdown()
        server.server_close()
