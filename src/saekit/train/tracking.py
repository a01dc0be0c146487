"""A training run tracked in wandb and/or TensorBoard (`--wandb`, `--tensorboard`).

Every metrics line goes to the trackers at its step, each number as `<sae>/<key>` (the values
`metrics.jsonl` holds), and the run's config.json with them. `RUN/tracking.json` keeps the
tracked run's name and its wandb run id per project, so that a resumed run (rewound to its
checkpoint: see `saekit.base.tracking`) and `sae eval` of the run continue the same tracked run:

    {"name": "l7", "group": null, "wandb": {"PROJECT": "1a2b3c4d"}}

Anything that trains (sae train, sae recipe, a fine-tune) uses `track_training` around its
`Trainer` and adds the observer it yields to the trainer's observers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saekit.base.atomic import write_json
from saekit.base.errors import SaekitError
from saekit.base.tracking import Tracker, Tracking, new_run_id, numbers, open_tracker
from saekit.train.trainer import Observer

TRACKING_FILE = "tracking.json"


@dataclass(frozen=True)
class TrackedRun:
    """How a training run is known to the trackers."""

    name: str  # wandb's run name, TensorBoard's DIR/<name>
    group: str | None = None  # wandb's group (a recipe's runs share one)
    wandb: dict[str, str] = field(default_factory=dict)  # run id per project

    @classmethod
    def read(cls, run_dir: Path) -> TrackedRun | None:
        """The run's tracking.json, or None when it was never tracked."""
        path = run_dir / TRACKING_FILE
        try:
            values = json.loads(path.read_bytes())
            return cls(str(values["name"]), values.get("group"), dict(values.get("wandb", {})))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise SaekitError(
                f"{path} is not a tracking record; the run directory is damaged, remove that "
                "file to track the run anew"
            ) from None

    def write(self, run_dir: Path) -> None:
        write_json(run_dir / TRACKING_FILE, asdict(self))


def tracked_as(run_dir: Path, name: str | None = None) -> TrackedRun:
    """How a run is (or will be) tracked: as recorded, else as `name` (default: its
    directory's name)."""
    return TrackedRun.read(run_dir) or TrackedRun(name or run_dir.name)


def metric_values(records: list[dict[str, Any]]) -> dict[str, float]:
    """`<sae>/<key>` for every number of each SAE's metrics line (its step aside)."""
    return {
        f"{record['sae']}/{key}": value
        for record in records
        for key, value in numbers(record).items()
        if key != "step"
    }


class TrainingTracker(Observer):
    """Sends each metrics line to the trackers; `begin` records the run and its config."""

    def __init__(self, tracker: Tracker, tracked: TrackedRun) -> None:
        self.tracker = tracker
        self.tracked = tracked

    @property
    def where(self) -> list[str]:
        return self.tracker.where

    def begin(self, run_dir: Path, config: dict[str, Any]) -> None:
        """Once the run directory holds config.json: keep tracking.json beside it."""
        self.tracked.write(run_dir)
        self.tracker.configure(config)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        self.tracker.log(step, metric_values(records))


@contextlib.contextmanager
def track_training(
    tracking: Tracking,
    run_dir: Path,
    start_step: int,
    name: str | None = None,
    group: str | None = None,
) -> Iterator[TrainingTracker | None]:
    """The tracked run of a training run that starts (or resumes) at `start_step`; None when
    nothing is tracked. A run tracked before keeps its name and wandb id, and is rewound to
    `start_step`; call `begin` once the run directory exists."""
    if not tracking:
        yield None
        return
    recorded = TrackedRun.read(run_dir)
    tracked = recorded or TrackedRun(name or run_dir.name, group)
    known = tracking.wandb is None or tracking.wandb in tracked.wandb
    rewind_to = start_step if recorded is not None and known and start_step else None
    if tracking.wandb is not None and not known:
        tracked = replace(tracked, wandb={**tracked.wandb, tracking.wandb: new_run_id()})
    wandb_id = tracked.wandb.get(tracking.wandb or "", "")
    with open_tracker(tracking, tracked.name, wandb_id, rewind_to, tracked.group) as tracker:
        yield TrainingTracker(tracker, tracked)
