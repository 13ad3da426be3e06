"""This process's resident memory, for admission: a server near its memory bound takes no new sessions."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resident_bytes"]

_STATM = Path("/proc/self/statm")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Resident set size in bytes (Linux /proc), or None where it cannot be read."""
    try:
        fields = _STATM.read_text().split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE_BYTES
