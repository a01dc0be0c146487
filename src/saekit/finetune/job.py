"""One fine-tuned SAE on disk: its state while it trains, and the SAE it becomes.

    RUN/finetunes/<name>/config.json     what the fine-tune is (compared when it is re-run)
    RUN/finetunes/<name>/metrics.jsonl   one line every `log_every` steps
    RUN/finetunes/<name>/checkpoints/    the newest complete checkpoint (`saekit.train`'s)
    RUN/saes/<name>/                     the fine-tuned SAE, written at the end like any other

Re-running the same fine-tune continues it from its checkpoint (or, when it is finished, saves
its SAE again); a different fine-tune into the same name, or a name the run already uses for
another SAE, is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from saekit import __version__
from saekit.base.atomic import write_json
from saekit.base.errors import SaekitError
from saekit.base.outputs import make_directory
from saekit.finetune.objective import Finetuning
from saekit.train import (
    CFG_FILE,
    METRICS_FILE,
    Checkpoints,
    MetricsLog,
    differing_keys,
    read_metrics,
    sae_directory,
    save_sae,
)

FINETUNES_DIR = "finetunes"
CONFIG_FILE = "config.json"
FORMAT = "saekit.finetune"
SHOWN_DIFFERENCES = 4


def state_directory(run: Path, name: str) -> Path:
    """Where the fine-tune that makes SAE `name` keeps its state."""
    return run / FINETUNES_DIR / name


class Job:
    """The fine-tune that makes SAE `name` of `run` (its training is `finetuning`)."""

    def __init__(
        self,
        run: Path,
        name: str,
        finetuning: Finetuning,
        identity: dict[str, Any],
        environment: dict[str, Any],
    ) -> None:
        self.run, self.name, self.finetuning = run, name, finetuning
        self.identity, self.environment = identity, environment
        self.state = state_directory(run, name)
        self.checkpoints = Checkpoints(self.state)
        self.metrics: MetricsLog | None = None
        self.start = 0

    def check_destination(self) -> None:
        """Refuse a name the run uses for another SAE or for a different fine-tune, and a state
        directory that would be written through a symbolic link."""
        for path in (self.state.parent, self.state, self.state / "checkpoints"):
            if path.is_symlink():
                raise SaekitError(
                    f"{path} is a symbolic link; saekit never writes through links in a run: "
                    "remove the link"
                )
        stored = self._stored_identity()
        if stored is not None:
            changed = differing_keys(stored, self.identity)
            if changed:
                shown = ", ".join(changed[:SHOWN_DIFFERENCES])
                more = ", ..." if len(changed) > SHOWN_DIFFERENCES else ""
                raise SaekitError(
                    f"{self.state} holds a different fine-tune (it differs in {shown}{more}); "
                    "choose another --suffix, or repeat that fine-tune's settings to continue it"
                )
        elif (sae_directory(self.run, self.name) / CFG_FILE).exists():
            raise SaekitError(
                f"run {self.run} already holds an SAE named {self.name}; choose another --suffix"
            )
        elif self.state.exists() and any(self.state.iterdir()):
            raise SaekitError(f"{self.state} holds something else than a fine-tune; remove it")

    def _stored_identity(self) -> dict[str, Any] | None:
        path = self.state / CONFIG_FILE
        try:
            stored = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise SaekitError(f"{path} cannot be read as JSON; remove {self.state}") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise SaekitError(f"{path} does not describe a fine-tune; remove {self.state}")
        return stored.get("finetune")

    def open(self) -> int:
        """Start the fine-tune, or continue it from its checkpoint; return its first step."""
        make_directory(self.state, self.run)  # RUN/finetunes/NAME, never through a link
        if not (self.state / CONFIG_FILE).exists():
            write_json(self.state / CONFIG_FILE, self._config())
        checkpoint = self.checkpoints.load([self.name])
        offset = 0
        if checkpoint is not None:
            try:
                self.finetuning.member.load_state_dict(checkpoint.members[self.name])
                offset = checkpoint.trainer["metrics_offset"]
            except (KeyError, RuntimeError, ValueError, TypeError) as error:
                raise SaekitError(
                    f"the checkpoint in {self.checkpoints.root} does not fit this fine-tune "
                    f"({type(error).__name__}); remove {self.state} to start it again"
                ) from None
            self.start = checkpoint.step
        self.metrics = MetricsLog(self.state / METRICS_FILE, offset)
        return self.start

    def _config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": 1,
            "saekit_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "finetune": self.identity,
            "environment": self.environment,
        }

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write the metrics since the last line (`record`: the step, tokens and timing); a
        non-finite loss stops the fine-tune."""
        assert self.metrics is not None
        member = self.finetuning.member
        metrics = member.take_metrics()
        if not all(map(math.isfinite, metrics.values())):
            raise self._diverged(record["step"], f"loss {metrics['loss']}")
        lr = member.base_lr * member.plan.lr_factor(record["step"] - 1)
        line = {"sae": self.name, **record, "lr": lr, **metrics}
        self.metrics.write(line)
        return line

    def last_metrics(self) -> dict[str, Any] | None:
        """The last metrics line written (by this call or an earlier one)."""
        records = read_metrics(self.state / METRICS_FILE)
        return records[-1] if records else None

    def _diverged(self, step: int, sign: str) -> SaekitError:
        return SaekitError(
            f"fine-tuning {self.name} diverged by step {step} ({sign}); the last checkpoint in "
            f"{self.checkpoints.root} is kept; start again with a lower --lr and another "
            f"--suffix, or after removing {self.state}"
        )

    def checkpoint(self, step: int, complete: bool = False) -> None:
        """Checkpoint the fine-tune; a non-finite weight (possible between two metric lines)
        stops it instead, so that the checkpoint kept is the last finite one."""
        assert self.metrics is not None
        parameters = self.finetuning.sae.parameters()
        if not all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
            raise self._diverged(step, "non-finite weights")
        state = {"step": step, "metrics_offset": self.metrics.offset}
        members = {self.name: self.finetuning.member.state_dict()}
        self.checkpoints.save(step, state, members, complete)

    def save(self, record: dict[str, Any]) -> Path:
        """Save the fine-tuned SAE into `RUN/saes/<name>` (its cfg records the fine-tune)."""
        if self.metrics is not None:
            self.metrics.close()
        cfg = dataclasses.replace(
            self.finetuning.cfg, name=self.name, finetune=record, saekit_version=__version__
        )
        directory = sae_directory(self.run, self.name)
        save_sae(self.finetuning.sae, directory, cfg)
        return directory
