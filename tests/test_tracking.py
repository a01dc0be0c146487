"""Experiment tracking (`--wandb`, `--tensorboard`): the curves, config and evaluation a run
writes are read back with each library's own reader — wandb's transaction-log inspector
(`wandb leet inspect`) on its offline run files, TensorBoard's `EventAccumulator` — and compared
with `metrics.jsonl` and `report.json`, also across an interrupted and resumed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error
from saekit.base.errors import SaekitError
from saekit.base.tracking import Tracking, open_tracker
from saekit.train import Observer, TrainRequest, TrainSettings, parse_spec, read_metrics, train

wandb = pytest.importorskip("wandb")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

SPECS = ("topk:k=4,latents=32", "relu:latents=32")
PROJECT = "saekit-tests"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb in offline mode, its files under tmp_path/wandb (wandb reads its environment once
    per process setup, so the setup is torn down around each test)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    yield tmp_path / "wandb"
    wandb.teardown()


def wandb_files(wandb_dir: Path, run_id: str) -> list[list[dict]]:
    """The records of every offline run file of `run_id`, oldest first, read by wandb's own
    transaction-log inspector."""
    files = []
    for directory in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")):
        command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(directory)]
        lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        files.append([json.loads(line) for line in lines.splitlines() if line.strip()])
    return files


def wandb_history(files: list[list[dict]]) -> dict[int, dict]:
    """The run's history as wandb's server builds it from its files: a file that rewinds the
    run (`branch_point`) first drops the steps after its branch point."""
    history: dict[int, dict] = {}
    for records in files:
        run = next(r["run"] for r in records if r["type"] == "run")
        if "branch_point" in run:
            kept = run["branch_point"]["value"]
            history = {step: row for step, row in history.items() if step <= kept}
        for record in records:
            if record["type"] == "history":
                row = record["history"]["item"]
                assert row["_step"] not in history, f"step {row['_step']} logged twice"
                history[row["_step"]] = row
    return history


def tensorboard(directory: Path):
    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def assert_curves_equal_metrics(run: Path, history: dict[int, dict], events) -> None:
    """Every number of every metrics line is in both trackers, at its step, with its value
    (TensorBoard holds float32), and nothing else was logged."""
    records = read_metrics(run / "metrics.jsonl")
    steps = sorted({record["step"] for record in records})
    assert sorted(history) == steps
    for record in records:
        for key, value in record.items():
            if key in ("sae", "step"):
                continue
            tag = f"{record['sae']}/{key}"
            assert history[record["step"]][tag] == value, tag
            points = {event.step: event.value for event in events.Scalars(tag)}
            assert len(events.Scalars(tag)) == len(steps), f"{tag}: a step twice or missing"
            assert points[record["step"]] == np.float32(value), tag


def train_command(store, out, *extra):
    specs = [arg for spec in SPECS for arg in ("--sae", spec)]
    return ("train", "--store", store, "--out", out, "--batch-size", "128", "--tokens", "2048",
            "--device", "cpu", *specs, *extra)  # fmt: skip


@pytest.mark.slow  # wandb's service process, a training run and an evaluation (~15 s)
def test_train_and_eval_are_read_back_by_wandb_and_tensorboard(
    run_cli, small_store, tmp_path, offline_wandb
):
    config = tmp_path / "settings.toml"
    config.write_text("log_every = 2\n")
    run, board = tmp_path / "run", tmp_path / "tb"
    trackers = ("--wandb", PROJECT, "--tensorboard", board)
    result = run_cli(*train_command(small_store, run, "--config", config, *trackers))
    assert result.exit_code == 0, result.stderr
    tracked = json.loads((run / "tracking.json").read_text())
    assert tracked["name"] == "run" and f"wandb: run run ({tracked['wandb'][PROJECT]})" in (
        result.stdout
    )
    run_id = tracked["wandb"][PROJECT]
    files = wandb_files(offline_wandb, run_id)
    assert len(files) == 1
    assert_curves_equal_metrics(run, wandb_history(files), tensorboard(board / "run"))
    wandb_config = {}  # given to wandb.init (the run record) or added later (config records)
    for record in files[0]:
        if record["type"] == "run":
            wandb_config.update(record["run"]["config"]["update"])
        elif record["type"] == "config":
            wandb_config.update(record["config"]["update"])
    recorded = json.loads((run / "config.json").read_text())
    assert wandb_config["plan"] == recorded["plan"]
    assert "config/text_summary" in tensorboard(board / "run").Tags()["tensors"]

    report = tmp_path / "report"
    result = run_cli("eval", run, "--out", report, "--no-online", "--device", "cpu", *trackers)
    assert result.exit_code == 0, result.stderr
    rows = json.loads((report / "report.json").read_text())["rows"]
    files = wandb_files(offline_wandb, run_id)
    assert len(files) == 2, "the evaluation continues the training's wandb run"
    summary = {}
    for record in files[1]:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    events = tensorboard(board / "run")
    steps = json.loads((run / "config.json").read_text())["plan"]["steps"]
    for row in rows:
        tag = f"eval/{row['name']}/{row['mode']}/offline/nmse"
        assert summary[tag] == row["offline"]["nmse"]
        [point] = events.Scalars(tag)
        assert (point.step, point.value) == (steps, np.float32(row["offline"]["nmse"]))
    assert summary["eval/l0_vs_nmse"]["_type"] == "image-file"
    assert {"eval/l0_vs_nmse", "eval/dead_latents"} <= set(events.Tags()["images"])


class Interrupt(Observer):
    """Ctrl-C at a given step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def stepped(self, step: int, epoch: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow  # wandb's service process and two training attempts (~15 s)
def test_a_resumed_run_continues_the_same_tracked_run_without_duplicating_a_step(
    small_store, tmp_path, offline_wandb
):
    """Interrupted after step 15 (checkpoint at 10, lines up to 14), then resumed: each tracker
    drops what was logged after the checkpoint and receives it again, once."""
    run, board = tmp_path / "run", tmp_path / "tb"

    def request(resume: bool) -> TrainRequest:
        settings = TrainSettings(
            tokens=40 * 128, batch_size=128, device="cpu", log_every=2, checkpoint_every=10 * 128
        )
        return TrainRequest(
            store=str(small_store),
            hook=None,
            out=run,
            specs=[parse_spec(text) for text in SPECS],
            settings=settings,
            resume=resume,
            tracking=Tracking(PROJECT, str(board)),
        )

    with pytest.raises(KeyboardInterrupt):
        train(request(resume=False), Interrupt(at=15))
    run_id = json.loads((run / "tracking.json").read_text())["wandb"][PROJECT]
    [first] = wandb_files(offline_wandb, run_id)
    assert max(r["history"]["item"]["_step"] for r in first if r["type"] == "history") == 14
    train(request(resume=True))
    files = wandb_files(offline_wandb, run_id)
    assert len(files) == 2
    resumed = next(r["run"] for r in files[1] if r["type"] == "run")
    assert resumed["branch_point"] == {"run": run_id, "metric": "_step", "value": 10}
    assert_curves_equal_metrics(run, wandb_history(files), tensorboard(board / "run"))


def test_a_missing_tracker_library_is_one_line_and_nothing_is_written(
    run_cli, small_store, tmp_path, monkeypatch
):
    for module, option, extra in (
        ("wandb", "--wandb", "wandb"),
        ("torch.utils.tensorboard", "--tensorboard", "tensorboard"),
    ):
        monkeypatch.setitem(sys.modules, module, None)  # `import` now raises ImportError
        out = tmp_path / f"run-{extra}"
        result = run_cli(*train_command(small_store, out, option, str(tmp_path / "x")))
        assert_one_line_error(result, f"{option} needs the {extra} package", f"saekit[{extra}]")
        assert not out.exists() and not (tmp_path / "x").exists()
        monkeypatch.delitem(sys.modules, module)


def test_eval_refuses_tensorboard_events_inside_a_run(run_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    before = sorted(run.rglob("*"))
    result = run_cli("eval", run, "--out", tmp_path / "report", "--tensorboard", run / "tb")
    assert_one_line_error(result, "would write into run", "eval never writes into a run")
    assert sorted(run.rglob("*")) == before and not (tmp_path / "report").exists()


def test_wandb_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    opening = open_tracker(Tracking(wandb=PROJECT), "run", "0123abcd")
    with pytest.raises(SaekitError, match="WANDB_MODE=offline") as caught, opening:
        pass
    assert "api_key not configured" in str(caught.value)


@pytest.mark.slow  # wandb's service process and a run in two groups (~15 s)
def test_a_run_in_groups_is_tracked_once_assembled(run_cli, small_store, tmp_path, offline_wandb):
    """The groups track nothing; the process that started the run sends the assembled metrics
    and config, every step once, as one process would have."""
    config = tmp_path / "settings.toml"
    config.write_text("log_every = 2\n")
    run, board = tmp_path / "run", tmp_path / "tb"
    trackers = ("--wandb", PROJECT, "--tensorboard", board)
    result = run_cli(*train_command(small_store, run, "--config", config, "--groups", "2",
                                    *trackers))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "SAEs in 2 group(s)" in result.stderr
    tracked = json.loads((run / "tracking.json").read_text())
    assert tracked["name"] == "run" and f"wandb: run run ({tracked['wandb'][PROJECT]})" in (
        result.stdout
    )
    files = wandb_files(offline_wandb, tracked["wandb"][PROJECT])
    assert len(files) == 1
    assert_curves_equal_metrics(run, wandb_history(files), tensorboard(board / "run"))
    assert sorted(path.name for path in board.iterdir()) == ["run"], "no group tracked itself"
