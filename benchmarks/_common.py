"""Shared bits of the benchmark scripts (not part of the library)."""

from __future__ import annotations

import asyncio
import platform
import resource
import statistics
import sys
from collections.abc import Sequence


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or ''} python {sys.version.split()[0]}".strip()
    )


def run(main: object, use_uvloop: bool) -> None:
    """Run a coroutine function under asyncio or uvloop."""
    if use_uvloop:
        import uvloop

        uvloop.run(main())  # type: ignore[operator]
    else:
        asyncio.run(main())  # type: ignore[operator]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
