"""Dictionaries built and saved by other libraries in their own environments, for the import
tests: a script run by that library's Python writes each dictionary with the library's own save
function and, beside it, the library's own codes and outputs on shared inputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.train import load_sae

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def library_python(variable: str, package: str) -> str:
    """The Python named by `variable`; the test is skipped, saying why, when it is not set."""
    python = os.environ.get(variable)
    if not python:
        pytest.skip(f"{variable} is not set (a Python that can import {package})")
    return python


def run_library(python: str, script: str, tmp_path: Path, x_BD: torch.Tensor, *args: str) -> Path:
    """Run `script` (argv: the inputs file, the output folder, `args`) in the library's Python;
    the folder holds one subfolder per dictionary and `outputs.safetensors`."""
    save_file({"x": x_BD.contiguous()}, tmp_path / "x.safetensors")
    (tmp_path / "make.py").write_text(script)
    out = tmp_path / "saved"
    out.mkdir()
    subprocess.run(
        [python, str(tmp_path / "make.py"), str(tmp_path / "x.safetensors"), str(out), *args],
        check=True,
    )
    return out


def assert_same(directory: Path, outputs: dict[str, torch.Tensor], case: str, x_BD) -> None:
    """saekit's import of `directory` gives the library's codes (`codes_<case>`), outputs
    (`out_<case>`) and, where the library has one, its batch-mode codes (`batch_<case>`)."""
    sae = load_sae(directory)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x_BD), outputs[f"codes_{case}"], **TOLERANCE)
        torch.testing.assert_close(sae(x_BD), outputs[f"out_{case}"], **TOLERANCE)
        if f"batch_{case}" in outputs:
            torch.testing.assert_close(
                sae.encode_batch(x_BD), outputs[f"batch_{case}"], **TOLERANCE
            )


def library_outputs(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "outputs.safetensors")
