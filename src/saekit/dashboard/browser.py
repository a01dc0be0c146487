"""Open a site in the operating system's headless Chromium, driven by Playwright (a dev extra).

Used by the browser test, the benchmark's time to first paint and the docs' screenshots. No
browser is downloaded: Chromium comes from the OS packages (Debian: `apt-get install chromium`).
The flags keep it off the network: with background networking on, Chromium's own connections are
refused on closed networks and it logs errors.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    """The OS's Chromium executable, if one is installed."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def missing_browser_reason() -> str | None:
    """Why a site cannot be opened here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return (
            "no Chromium on this machine: install the OS package (Debian: apt-get install "
            "chromium; `make test` does this when run as root)"
        )
    return None


@contextmanager
def open_browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium context (its own profile directory); yields it, closes it."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError(missing_browser_reason())
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(FLAGS),
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()
