"""Resumable checkpoints of a run: every SAE's state plus the trainer's position.

Layout: `RUN/checkpoints/step-<N>/{trainer.pt, <sae name>.pt}` and `RUN/checkpoints/latest.json`
naming the newest complete one. A checkpoint directory is written in full first, then
`latest.json` is replaced atomically, then older directories are removed: a kill at any moment
leaves `latest.json` pointing at a complete checkpoint (or absent: nothing to resume).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.base.atomic import link_or_copy, write_json, write_torch
from saekit.base.errors import SaekitError
from saekit.base.outputs import make_directory, remove_directory

LATEST = "latest.json"
TRAINER_STATE = "trainer.pt"
_STEP_DIR = re.compile(r"step-\d{9}")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the trainer's state and each SAE's state by name."""

    step: int
    complete: bool
    trainer: dict[str, Any]
    members: dict[str, dict[str, Any]]


class Checkpoints:
    """The checkpoints directory of one run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "checkpoints"

    def _refuse_links(self, path: Path) -> None:
        """Checkpoints are read and written only in real directories of the run, never through
        a symbolic link (which could redirect the writes and the removal of old checkpoints)."""
        if path.is_symlink():
            raise SaekitError(
                f"{path} is a symbolic link; saekit never writes through links in a run: "
                "remove the link, or start a new run in another --out"
            )

    def save(
        self,
        step: int,
        trainer: dict[str, Any],
        members: dict[str, dict[str, Any]],
        complete: bool = False,
    ) -> None:
        def write_members(directory: Path) -> None:
            for name, state in members.items():
                write_torch(directory / f"{name}.pt", state)

        self._write(step, trainer, write_members, complete)

    def gather(
        self, step: int, trainer: dict[str, Any], files: dict[str, Path], complete: bool
    ) -> None:
        """A checkpoint of SAE states saved in other checkpoints (by the groups of a distributed
        run): each SAE's file, by name, linked where the file system allows it, else copied."""

        def link_members(directory: Path) -> None:
            for name, source in files.items():
                link_or_copy(source, directory / f"{name}.pt")

        self._write(step, trainer, link_members, complete)

    def _write(
        self,
        step: int,
        trainer: dict[str, Any],
        write_members: Callable[[Path], None],
        complete: bool,
    ) -> None:
        latest = self.latest()
        if latest is not None and (latest["step"], latest["complete"]) == (step, complete):
            return  # the state at a step is deterministic: this one is saved already
        directory = self.root / f"step-{step:09d}"
        make_directory(self.root, self.run_dir)
        remove_directory(directory)  # a partial one from a killed run
        make_directory(directory, self.root)
        try:
            write_torch(directory / TRAINER_STATE, trainer)
            write_members(directory)
        except BaseException:  # a full disk, a file-size limit, Ctrl-C: no half checkpoint left
            remove_directory(directory)
            raise
        write_json(
            self.root / LATEST, {"step": step, "directory": directory.name, "complete": complete}
        )
        for other in self.root.iterdir():  # only the checkpoints saekit names, nothing else
            if other != directory and _STEP_DIR.fullmatch(other.name):
                remove_directory(other)

    def member_file(self, name: str) -> Path:
        """The file of SAE `name` in the latest checkpoint (which must exist)."""
        latest = self.latest()
        assert latest is not None, "a checkpoint was completed"
        self._refuse_links(self.root / latest["directory"])
        return self.root / latest["directory"] / f"{name}.pt"

    def latest(self) -> dict[str, Any] | None:
        """What `latest.json` says, or None when no checkpoint was completed."""
        path = self.root / LATEST
        self._refuse_links(self.root)
        try:
            latest = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise self._damaged(f"{path} cannot be read as JSON") from None
        if not _names_a_checkpoint(latest):
            raise self._damaged(f"{path} does not name a checkpoint")
        return latest

    def _damaged(self, what: str) -> SaekitError:
        return SaekitError(
            f"{what}; the run's checkpoints are damaged, start a new run in another --out"
        )

    def load(self, names: list[str]) -> Checkpoint | None:
        """The latest checkpoint, tensors on the CPU; None when there is none.

        Loading states to their devices is the job of each `load_state_dict`: parameters and
        buffers are copied into tensors already on the device, and Adam keeps its `step` counts
        on the CPU as torch expects (a `step` on the GPU costs a host sync every step)."""
        latest = self.latest()
        if latest is None:
            return None
        directory = self.root / latest["directory"]
        self._refuse_links(directory)

        def load(path: Path) -> dict[str, Any]:
            try:
                with warnings.catch_warnings():  # torch warns about files it then refuses
                    warnings.simplefilter("ignore")
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise self._damaged(f"checkpoint {directory} lacks {path.name}") from None
            except Exception as error:  # unpickling and zip errors of all kinds
                raise self._damaged(f"{path} is not a checkpoint ({error})") from None
            if not isinstance(state, dict):
                raise self._damaged(f"{path} is not a checkpoint")
            return state

        return Checkpoint(
            step=latest["step"],
            complete=latest["complete"],
            trainer=load(directory / TRAINER_STATE),
            members={name: load(directory / f"{name}.pt") for name in names},
        )


def _names_a_checkpoint(latest: Any) -> bool:
    """`latest.json` holds {"step": N, "directory": "step-00000000N", "complete": bool}."""
    if not isinstance(latest, dict):
        return False
    step, directory = latest.get("step"), latest.get("directory")
    return (
        isinstance(step, int)
        and not isinstance(step, bool)
        and step >= 0
        and isinstance(directory, str)
        and _STEP_DIR.fullmatch(directory) is not None
        and isinstance(latest.get("complete"), bool)
    )


def run_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` trained to its end (its last checkpoint is complete)."""
    latest = Checkpoints(run_dir).latest()
    return latest is not None and bool(latest["complete"])
