"""Locations as saekit records them: a local path or an fsspec URL (s3://, gs://, http(s)://,
memory://). Local paths are recorded absolute; a relative path recorded by an older saekit is
looked for from where it was recorded."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


def is_local(location: str | Path) -> bool:
    """True for plain paths and file:// URLs."""
    return urlparse(str(location)).scheme in ("", "file")


def local_path(location: str | Path) -> Path:
    """The filesystem path of a local location (plain path or file:// URL)."""
    text = str(location)
    if text.startswith("file://"):
        text = urlparse(text).path
    return Path(text).expanduser()


def absolute_location(location: str | Path) -> str:
    """A location as identities and configs record it: a local path made absolute (so that it
    can be found from any working directory), a URL as given."""
    text = str(location)
    if not is_local(text) or text.startswith("file://"):
        return text
    return os.path.abspath(os.path.expanduser(text))


def resolve_recorded_path(recorded: str, anchor: Path) -> str:
    """A local path recorded relative to some working directory (by older saekit versions, or
    by hand): as recorded when it exists from here, else against `anchor` or the nearest of its
    parents where it exists, else as recorded. Absolute paths and URLs are returned as they are."""
    path = Path(recorded).expanduser()
    if not is_local(recorded) or path.is_absolute() or path.exists():
        return recorded
    anchor = Path(os.path.abspath(anchor))
    for base in (anchor, *anchor.parents):
        if (base / path).exists():
            return str(base / path)
    return recorded
