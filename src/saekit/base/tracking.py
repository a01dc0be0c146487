"""Experiment tracking: numbers, a config and plots sent to Weights & Biases and TensorBoard.

A `Tracking` says where a command sends them (a wandb project, a TensorBoard directory, or
both); `open_tracker` opens one tracked run in each and returns a `Tracker` that writes to all:

- wandb (`pip install 'saekit[wandb]'`): a run of PROJECT named after the tracked run, with the
  id the caller keeps (a training run keeps it in RUN/tracking.json), so that a resumed run and
  its evaluation continue the same wandb run. wandb's own settings apply (`WANDB_MODE`,
  `WANDB_DIR`, `WANDB_ENTITY`): with `WANDB_MODE=offline` nothing touches the network, the run is
  written under `WANDB_DIR/wandb/` and `wandb sync` uploads it later.
- TensorBoard (`pip install 'saekit[tensorboard]'`): event files in `DIR/<name>/` (scalars are
  stored as float32, as TensorBoard stores them).

Resuming at step S continues the same tracked run without duplicating a step: what an interrupted
attempt logged after S is discarded (TensorBoard's `purge_step`, wandb's rewind
`resume_from=ID?_step=S`) and the resumed attempt logs those steps again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saekit.base.errors import SaekitError

EXTRAS = {
    "wandb": ("wandb", "--wandb"),
    "tensorboard": ("torch.utils.tensorboard", "--tensorboard"),
}


@dataclass(frozen=True)
class Tracking:
    """Where a command sends its numbers: a wandb project, a TensorBoard directory, or both."""

    wandb: str | None = None  # project
    tensorboard: str | None = None  # root directory: a tracked run NAME writes to DIR/NAME

    def __bool__(self) -> bool:
        return bool(self.wandb or self.tensorboard)

    def check(self) -> None:
        """Refuse, in one line and before anything is written, a tracker whose library is not
        installed or a TensorBoard directory that is a file."""
        for extra, asked in (("wandb", self.wandb), ("tensorboard", self.tensorboard)):
            if asked is None:
                continue
            module, option = EXTRAS[extra]
            try:
                importlib.import_module(module)
            except ImportError:
                raise SaekitError(
                    f"{option} needs the {extra} package; install it with "
                    f"pip install 'saekit[{extra}]'"
                ) from None
        if self.tensorboard is not None and Path(self.tensorboard).is_file():
            raise SaekitError(f"--tensorboard {self.tensorboard} is a file; give a directory")


def new_run_id() -> str:
    """A fresh wandb run id (8 lowercase hex digits, as wandb makes them)."""
    return secrets.token_hex(4)


class Sink(Protocol):
    """One tracker library's side of a tracked run."""

    where: str  # where the run is written, for a person

    def configure(self, config: Mapping[str, Any]) -> None: ...

    def log(self, step: int, values: Mapping[str, float]) -> None: ...

    def summarize(
        self, step: int, values: Mapping[str, float], images: Mapping[str, Path]
    ) -> None: ...

    def close(self, failed: bool) -> None: ...


class Tracker:
    """One tracked run, written to every sink asked for."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    @property
    def where(self) -> list[str]:
        return [sink.where for sink in self.sinks]

    def configure(self, config: Mapping[str, Any]) -> None:
        """Record the run's configuration (a JSON-able mapping)."""
        for sink in self.sinks:
            sink.configure(config)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Numbers of one step (a curve point per name)."""
        for sink in self.sinks:
            sink.log(step, values)

    def summarize(
        self, step: int, values: Mapping[str, float], images: Mapping[str, Path] | None = None
    ) -> None:
        """Final numbers and plots (PNG files), e.g. an evaluation's: wandb's run summary,
        TensorBoard scalars and images at `step`."""
        for sink in self.sinks:
            sink.summarize(step, values, images or {})

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed)


@contextlib.contextmanager
def open_tracker(
    tracking: Tracking,
    name: str,
    wandb_id: str,
    rewind_to: int | None = None,
    group: str | None = None,
) -> Iterator[Tracker]:
    """The tracked run `name` in every sink of `tracking`, closed on exit (marked failed when
    the block raises). `wandb_id`: the wandb run to continue or start (`new_run_id()` for a new
    one); `rewind_to`: the step a resumed training run restarts after, when the tracked run
    already exists: what was logged after it is discarded."""
    sinks: list[Sink] = []
    try:
        if tracking.wandb is not None:
            sinks.append(WandbSink(tracking.wandb, name, wandb_id, rewind_to, group))
        if tracking.tensorboard is not None:
            sinks.append(TensorboardSink(Path(tracking.tensorboard) / name, rewind_to))
    except BaseException:
        Tracker(sinks).close(failed=True)
        raise
    tracker = Tracker(sinks)
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


class WandbSink:
    """A wandb run: curves with `run.log(step=)`, final numbers and plots in its summary."""

    def __init__(
        self,
        project: str,
        name: str,
        run_id: str,
        rewind_to: int | None,
        group: str | None,
    ) -> None:
        import wandb

        self._wandb = wandb
        self.run_id = run_id
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
        common = {"project": project, "name": name, "group": group, "settings": settings}
        # a resumed training run rewinds to its checkpoint; where the server cannot rewind,
        # the run is continued as it is (wandb then ignores the steps it already holds)
        attempts = [{"id": self.run_id, "resume": "allow"}]
        if rewind_to:
            attempts.insert(0, {"resume_from": f"{run_id}?_step={rewind_to}"})
        for attempt, how in enumerate(attempts, 1):
            try:
                self.run = wandb.init(**how, **common)
                break
            except Exception as error:  # wandb raises its own types (login, network, usage)
                if attempt < len(attempts):
                    continue
                reason = " ".join(str(error).split()) or type(error).__name__
                raise SaekitError(
                    f"wandb cannot start run {name} in project {project} ({reason}); log in "
                    "with wandb login, or set WANDB_MODE=offline to write it locally and "
                    "wandb sync it later"
                ) from None
        offline = self.run.settings.mode == "offline"
        self.where = f"wandb: run {name} ({self.run_id}) of project {project}" + (
            f", offline in {Path(self.run.dir).parent} (upload: wandb sync)" if offline else ""
        )

    def configure(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def summarize(self, step: int, values: Mapping[str, float], images: Mapping[str, Path]) -> None:
        self.run.summary.update(dict(values))
        for key, path in images.items():
            self.run.summary[key] = self._wandb.Image(str(path))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TensorboardSink:
    """TensorBoard event files in one directory: scalars per step, the config as text, plots
    as images."""

    def __init__(self, directory: Path, rewind_to: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = rewind_to + 1 if rewind_to else None
        try:
            self.writer = SummaryWriter(str(directory), purge_step=purge)
        except OSError as error:
            raise SaekitError(
                f"cannot write TensorBoard events into {directory}: {error.strerror}"
            ) from None
        self.where = f"tensorboard: {directory}"
        self._resumed = purge is not None

    def configure(self, config: Mapping[str, Any]) -> None:
        if not self._resumed:  # a resumed run's config is the one already recorded
            text = json.dumps(dict(config), indent=2, default=str)
            self.writer.add_text("config", f"```json\n{text}\n```", global_step=0)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def summarize(self, step: int, values: Mapping[str, float], images: Mapping[str, Path]) -> None:
        import matplotlib.image

        self.log(step, values)
        for key, path in images.items():
            pixels_HWC = matplotlib.image.imread(path)[..., :3]
            self.writer.add_image(key, pixels_HWC, step, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested mapping, keyed `prefix<key>[/<key>...]`; booleans, strings,
    lists and None are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out
