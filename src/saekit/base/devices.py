"""Which device a stage runs on: one resolver for `--device` in harvest, train and eval.

`auto` is the current CUDA device when there is one, else the CPU; `cuda` is the current CUDA
device; `cuda:N` is GPU N. A CUDA device is always returned with an explicit index, so tensors
made on other threads (the loader's, the harvest writer's) land on the same GPU as the model,
whatever those threads' current device is.
"""

from __future__ import annotations

import os
import re

import torch

from saekit.base.errors import SaekitError

DEVICE_HELP = "auto, cpu, cuda (the current GPU) or cuda:N"
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def check_device_name(device: str) -> None:
    """Refuse anything but `auto`, `cpu`, `cuda` or `cuda:N` (availability is not checked)."""
    if device not in ("auto", "cpu", "cuda") and not _CUDA_INDEX.fullmatch(device):
        raise SaekitError(f"--device must be {DEVICE_HELP}, not {device!r}")


def resolve_device(device: str) -> torch.device:
    """The torch device `--device` names, CUDA ones with an explicit index; one-line errors for
    a malformed name, CUDA where there is none, or a GPU index this machine does not have."""
    check_device_name(device)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SaekitError(
            f"--device {device} was asked for but this machine has no CUDA GPU; use --device "
            "cpu or auto"
        )
    if device in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    index, count = int(device.partition(":")[2]), torch.cuda.device_count()
    if index >= count:
        raise SaekitError(
            f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to "
            f"cuda:{count - 1}; choose one of them"
        )
    return torch.device("cuda", index)


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value of a tensor on `device` from Python costs nothing.

    True on the CPU. On a GPU every such read (`.item()`, `bool()`, a boolean-mask index, an
    output whose size depends on the data) waits until all queued kernels have run, so the hot
    loops use fixed-size, masked formulations there and keep data-dependent shortcuts for the CPU.
    """
    return device.type == "cpu"


def device_memory(device: torch.device) -> int:
    """Total memory of the device (CUDA) or of the machine (CPU), in bytes."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
