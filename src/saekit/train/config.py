"""Run-level training settings, from the command line and from a TOML `--config` file.

A config file holds any of the settings below at its top level and a list of SAEs:

    tokens = 14_000_000
    batch_size = 4096
    [[sae]]
    variant = "topk"
    k = 32
    latents = 15360
    [[sae]]
    variant = "gsae"
    beta_eff = 1.0

Command-line options override the file's settings; `--sae` specs are added to its SAEs.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.base.devices import check_device_name
from saekit.base.errors import SaekitError
from saekit.train.spec import SAESpec, convert, spec_from_table, suggest


@dataclass(frozen=True)
class TrainSettings:
    """Settings of a training run that apply to every SAE in it."""

    tokens: int | None = None  # training tokens; None: one epoch of the store's training rows
    batch_size: int = 4096  # tokens per step
    lr: float | None = None  # learning rate for SAEs without an lr key; None: the lr rule
    seed: int = 0  # loader shuffle and weight initialisation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 5_000_000  # tokens between checkpoints; 0: only at the end
    warmup: float = 0.03  # fraction of the steps with a linear lr warm-up
    decay: float = 0.2  # fraction of the steps, at the end, with a linear lr decay to 0
    grad_clip: float = 1.0  # max gradient norm per SAE
    calibration_rows: int = 32768  # rows sampled for the input scale and b_dec init
    skip_nonfinite: bool = False  # leave store rows holding NaN or Inf out (counted), not stop

    def __post_init__(self) -> None:
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise SaekitError(message)

        require(self.tokens is None or self.tokens > 0, "--tokens must be positive")
        require(self.batch_size > 0, "--batch-size must be positive")
        require(
            self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
            "--lr must be a positive number",
        )
        require(self.seed >= 0, f"--seed must be 0 or more, not {self.seed}")
        check_device_name(self.device)
        require(self.log_every > 0, "log_every must be positive")
        require(self.checkpoint_every >= 0, "--checkpoint-every must be >= 0")
        require(0 <= self.warmup <= 1, "warmup must be a fraction in [0, 1]")
        require(0 <= self.decay <= 1, "decay must be a fraction in [0, 1]")
        require(self.grad_clip > 0, "grad_clip must be positive")
        require(self.calibration_rows > 0, "calibration_rows must be positive")


SETTING_NAMES = [f.name for f in dataclasses.fields(TrainSettings)]


def load_config(path: Path) -> tuple[dict[str, Any], list[SAESpec]]:
    """(settings given in the file, SAE specs) of a TOML config file."""
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SaekitError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SaekitError(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:  # a directory, no permission
        raise SaekitError(f"cannot read config file {path}: {error.strerror or error}") from None
    saes = table.pop("sae", [])
    if not isinstance(saes, list) or not all(isinstance(s, dict) for s in saes):
        raise SaekitError(f"config file {path}: write each SAE as a [[sae]] table")
    hints = typing.get_type_hints(TrainSettings)
    settings = {}
    for key, value in table.items():
        if key not in SETTING_NAMES:
            raise SaekitError(
                f"config file {path}: unknown setting '{key}'"
                + suggest(key, [*SETTING_NAMES, "sae"])
                + f" (settings: {', '.join(SETTING_NAMES)}, and [[sae]] tables)"
            )
        try:
            settings[key] = convert(value, hints[key])
        except ValueError as error:
            raise SaekitError(f"config file {path}: {key}: {error}") from None
    specs = [spec_from_table(s, f"config file {path}, SAE #{i + 1}") for i, s in enumerate(saes)]
    return settings, specs
