"""Numbers as people read them."""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
    """`12.6 MB`, `512 B`; `unknown` for None. Decimal units (1 KB = 1000 B)."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    raise AssertionError("unreachable")
