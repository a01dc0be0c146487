"""The training loop: several SAEs trained on each batch of one stream of rows.

Every batch is read once, moved to the device (an encoded batch is copied as stored and decoded
there) and handed to every dictionary (each hook's activations scaled by its c, gradients by 1/c,
read only at the targets of dictionaries that need them; each takes the hooks it reads and
reconstructs). Rows holding NaN or Inf stop the run with the offending store rows named, or
are left out and counted (`--skip-nonfinite`); metrics go to `metrics.jsonl` every `log_every`
steps, with the throughput and the fraction of the time the trainer waited on the loader;
checkpoints are written every `checkpoint_every` tokens and at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.cache_format import Batch, EncodedBatch
from saekit.cache_format.nonfinite import NonFinitePolicy, NonFiniteRows
from saekit.train.checkpoint import Checkpoints
from saekit.train.member import Member, RunReads
from saekit.train.metrics import METRICS_FILE, MetricsLog
from saekit.train.schedule import Plan


class Observer:
    """Hooks for progress reporting (the CLI draws a progress bar); every method is optional."""

    def split(self, groups: list[list[str]], time_fraction: float) -> None:
        """A distributed run's SAEs split into groups, one per device; the slowest group should
        take `time_fraction` of one device's time."""

    def started(self, plan: Plan, start_step: int) -> None: ...

    def stepped(self, step: int, epoch: int) -> None: ...

    def epoch_started(self, epoch: int, plan: Plan) -> None: ...

    def logged(self, step: int, records: list[dict[str, Any]]) -> None: ...

    def checkpointed(self, step: int) -> None: ...


class Observers(Observer):
    """Several observers as one (a progress bar and a tracker, say), told in their order."""

    def __init__(self, *observers: Observer | None) -> None:
        self.observers = [observer for observer in observers if observer is not None]

    def started(self, plan: Plan, start_step: int) -> None:
        for observer in self.observers:
            observer.started(plan, start_step)

    def stepped(self, step: int, epoch: int) -> None:
        for observer in self.observers:
            observer.stepped(step, epoch)

    def epoch_started(self, epoch: int, plan: Plan) -> None:
        for observer in self.observers:
            observer.epoch_started(epoch, plan)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        for observer in self.observers:
            observer.logged(step, records)

    def checkpointed(self, step: int) -> None:
        for observer in self.observers:
            observer.checkpointed(step)


class Throughput:
    """Tokens/s since the last lap, and the fraction of that time spent waiting on the loader.

    Work queued on an accelerator runs asynchronously, so the device is synchronised at each lap
    (the logging steps) and never per step for timing: the time of the queued work is counted
    when it runs, and `next(batches)` blocks only when the loader has no batch ready.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._restart()

    def _restart(self) -> None:
        self._started = time.perf_counter()
        self._waited = 0.0
        self._tokens = 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent inside this block counts as waiting on data."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self._waited += time.perf_counter() - began

    def count(self, tokens: int) -> None:
        self._tokens += tokens

    def lap(self) -> tuple[float, float]:
        """(tokens/s, fraction of the time waiting on data) since the last lap."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self._started
        result = self._tokens / elapsed, self._waited / elapsed
        self._restart()
        return result


@dataclass(frozen=True)
class Cadence:
    log_every: int  # steps between metric lines
    checkpoint_every: int  # tokens between checkpoints (0: only at the end)


def checkpoint_due(done: int, tokens_per_step: int, every: int) -> bool:
    """Whether the step that brought a run to `done` steps crossed a mark of `every` tokens (0:
    never; the end of a run is checkpointed anyway)."""
    return every > 0 and done * tokens_per_step // every > (done - 1) * tokens_per_step // every


class Trainer:
    """Runs the steps of a plan for a group of SAEs and keeps the run directory current."""

    def __init__(
        self,
        members: list[Member],
        plan: Plan,
        cadence: Cadence,
        reads: RunReads,
        scales: dict[str, float],
        run_dir: Path,
        observer: Observer | None = None,
        nonfinite: NonFinitePolicy | None = None,
    ) -> None:
        self.members = members
        self.device = members[0].sae.device  # where the SAEs live: batches go there
        self.plan = plan
        self.cadence = cadence
        self.reads, self.scales = reads, scales
        self.run_dir = run_dir
        self.observer = observer or Observer()
        self.nonfinite = nonfinite or NonFinitePolicy()
        self.checkpoints = Checkpoints(run_dir)
        self.epoch = -1
        self.metrics: MetricsLog | None = None
        self._metrics_offset = 0

    def restore(self, trainer_state: dict[str, Any], members: dict[str, dict[str, Any]]) -> int:
        """Load a checkpoint's state; return the step to continue from."""
        for member in self.members:
            member.load_state_dict(members[member.name])
        self.epoch = trainer_state["epoch"]
        self._metrics_offset = trainer_state["metrics_offset"]
        self.nonfinite.skipped = trainer_state.get("nonfinite_rows_skipped", 0)
        return trainer_state["step"]

    def run(self, batches: Iterator[Batch] | Iterator[EncodedBatch], start_step: int = 0) -> None:
        """Train from `start_step` to the end of the plan; `batches` starts at batch 0."""
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE, self._metrics_offset)
        try:
            self.observer.started(self.plan, start_step)
            for _ in range(start_step):  # the loader is deterministic: skip what was trained
                next(batches)
            self._loop(batches, start_step)
        finally:
            self.metrics.close()

    def _loop(self, batches: Iterator[Batch] | Iterator[EncodedBatch], start_step: int) -> None:
        throughput = Throughput(self.device)
        for step in range(start_step, self.plan.steps):
            with throughput.waiting():
                batch = next(batches)
            x_by_hook, g_by_hook = self._inputs(batch.on(self.device), step)
            for member in self.members:
                x_BD, y_BE, g_BE = member.inputs(x_by_hook, g_by_hook)
                member.step(x_BD, g_BE, step, y_BE)
            done = step + 1
            throughput.count(len(next(iter(x_by_hook.values()))))
            if batch.epoch != self.epoch:
                self.epoch = batch.epoch
                self.observer.epoch_started(self.epoch, self.plan)
            self.observer.stepped(done, self.epoch)
            if done % self.cadence.log_every == 0 or done == self.plan.steps:
                self._log(done, *throughput.lap())
            if self._checkpoint_due(done) and done < self.plan.steps:
                self.checkpoint(done)
        self.checkpoint(self.plan.steps, complete=True)

    def _checkpoint_due(self, done: int) -> bool:
        return checkpoint_due(done, self.plan.batch_size, self.cadence.checkpoint_every)

    def _inputs(self, batch: Batch, step: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The batch in training space (c·x, g/c per hook), after the non-finite policy: rows
        holding NaN or Inf (found by the loader, on the CPU) stop the run after checkpointing
        the state before this batch, or are left out and counted."""
        advice = (
            f"training stopped, the state before it is checkpointed in {self.checkpoints.root}; "
            "repair or re-harvest the store and resume with --resume, or resume with "
            "--skip-nonfinite to leave such rows out"
        )
        try:
            batch = self.nonfinite.apply(batch, f"batch {step}", advice)
        except NonFiniteRows:
            self.checkpoint(step)
            raise
        return self.reads.scaled(batch, self.scales)

    def _log(self, step: int, tokens_per_s: float, data_wait_fraction: float) -> None:
        assert self.metrics is not None
        records = []
        for member in self.members:
            metrics = member.take_metrics()
            if not all(map(math.isfinite, metrics.values())):
                raise SaekitError(
                    f"SAE {member.name} diverged by step {step} (loss {metrics['loss']}); the "
                    f"last checkpoint in {self.checkpoints.root} is kept; lower its lr "
                    "(key lr=...) and start again"
                )
            records.append(
                {
                    "sae": member.name,
                    "step": step,
                    "tokens": step * self.plan.batch_size,
                    "epoch": self.epoch,
                    "lr": member.base_lr * self.plan.lr_factor(step - 1),
                    **metrics,
                    "tokens_per_s": tokens_per_s,
                    "data_wait_fraction": data_wait_fraction,
                    **(
                        {"nonfinite_rows_skipped": self.nonfinite.skipped}
                        if self.nonfinite.skip
                        else {}
                    ),
                }
            )
        for record in records:
            self.metrics.write(record)
        self.observer.logged(step, records)

    def checkpoint(self, step: int, complete: bool = False) -> None:
        assert self.metrics is not None
        trainer_state = {
            "step": step,
            "epoch": self.epoch,
            "input_scales": self.scales,
            "metrics_offset": self.metrics.offset,
            "nonfinite_rows_skipped": self.nonfinite.skipped,
        }
        members = {member.name: member.state_dict() for member in self.members}
        self.checkpoints.save(step, trainer_state, members, complete)
        self.observer.checkpointed(step)
