"""Shared bits of the benchmark scripts (not part of the library)."""

from __future__ import annotations

import asyncio
import platform
import resource
import statistics
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


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


def run(main: Callable[[], Coroutine[Any, Any, bool]], use_uvloop: bool) -> int:
    """Run a benchmark coroutine under asyncio or uvloop; exit status 0 if every target passed."""
    if use_uvloop:
        import uvloop

        ok = uvloop.run(main())
    else:
        ok = asyncio.run(main())
    return 0 if ok else 1


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
