"""`RUN/metrics.jsonl`: one JSON object per SAE per logged step, flushed line by line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError

METRICS_FILE = "metrics.jsonl"
# Keys that measure the machine rather than the training: they differ between identical runs.
TIMING_KEYS = ("tokens_per_s", "data_wait_fraction")


class MetricsLog:
    """Appends records; a resumed run first cuts the file back to its checkpoint's offset, so the
    file ends up as an uninterrupted run would have written it."""

    def __init__(self, path: Path, resume_offset: int = 0) -> None:
        self.path = path
        try:  # never through a link planted in the run: it would append elsewhere
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise SaekitError(
                f"cannot open {path} ({error.strerror}: a symbolic link or not a file); saekit "
                "never writes through links in a run, remove it or train into another --out"
            ) from None
        self._file = os.fdopen(fd, "ab")
        self._file.truncate(resume_offset)
        self._file.seek(resume_offset)

    @property
    def offset(self) -> int:
        """Bytes written so far (what a checkpoint records)."""
        return self._file.tell()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write((json.dumps(record) + "\n").encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics file."""
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("sae"), str):
            raise SaekitError(
                f"{path}:{number} is not a metrics record; the run directory is damaged"
            )
        records.append(record)
    return records
