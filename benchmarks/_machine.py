"""The CPU a benchmark ran on, as its results record it (Linux's /proc/cpuinfo, else `platform`)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block ends
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def cpu_name(info: dict[str, str] | None = None) -> str:
    """The CPU's model name (Linux), else what platform says."""
    return (info if info is not None else cpuinfo()).get("model name") or platform.processor()
