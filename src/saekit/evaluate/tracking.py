"""`sae eval --wandb/--tensorboard`: a report logged to the tracked run of each run it measured.

Each run's rows go to the run it was trained as (`RUN/tracking.json`: the same wandb run, the
same TensorBoard directory), or to a new tracked run named after it when it was never tracked:
every number of a row as `eval/<sae>/<mode>/<offline|online|steering>/<metric>` (wandb's run
summary; TensorBoard scalars at the SAE's last training step), and the report's plots as
images (`eval/l0_vs_nmse`, ...). Nothing is written into the runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local
from saekit.base.tracking import Tracking, new_run_id, numbers, open_tracker
from saekit.evaluate.report import PLOTS
from saekit.evaluate.targets import run_name
from saekit.train import TrackedRun, tracked_as

MEASURES = ("offline", "online", "steering")


def check_tracking(tracking: Tracking, runs: list[str]) -> None:
    """Refuse a missing tracker library, or TensorBoard events that would land inside one of
    the runs (eval never writes into a run)."""
    tracking.check()
    if tracking.tensorboard is None:
        return
    for run in runs:
        target = (Path(tracking.tensorboard) / tracked_run(run).name).resolve()
        if is_local(run) and Path(run).resolve() in (target, *target.parents):
            raise SaekitError(
                f"--tensorboard {tracking.tensorboard} would write into run {run}; eval never "
                "writes into a run, choose a directory outside it"
            )


def tracked_run(run: str) -> TrackedRun:
    """How a run (or a saved or published SAE) is tracked: as its training recorded, else
    under its own name."""
    if is_local(run) and Path(run).is_dir():
        return tracked_as(Path(run))
    return TrackedRun(run.rstrip("/").rsplit("/", 1)[-1])


def row_values(rows: list[dict[str, Any]]) -> dict[str, float]:
    """`eval/<sae>/<mode>/<measure>/<metric>` for every number of the rows."""
    values: dict[str, float] = {}
    for row in rows:
        for measure in MEASURES:
            prefix = f"eval/{row['name']}/{row['mode']}/{measure}/"
            values.update(numbers(row.get(measure) or {}, prefix))
    return values


def track_report(tracking: Tracking, report_file: Path, runs: list[str]) -> list[str]:
    """Log the report's rows of each run, and its plots, to that run's tracked run; return
    where they were written."""
    report = json.loads(report_file.read_text())
    plots = {f"eval/{name}": report_file.parent / file for name, file in PLOTS.items()}
    where: list[str] = []
    for run in runs:
        rows = [row for row in report["rows"] if row["run"] == run_name(run)]
        if not rows:
            continue
        tracked = tracked_run(run)
        wandb_id = tracked.wandb.get(tracking.wandb or "") or new_run_id()
        step = max(int(row["training"].get("steps", 0)) for row in rows)
        with open_tracker(tracking, tracked.name, wandb_id, group=tracked.group) as tracker:
            tracker.summarize(step, row_values(rows), plots)
            where += tracker.where
    return where
