"""Shared bits of the benchmark scripts (not part of the library)."""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import resource
import statistics
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a count of cancels, rounds, samples)."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0 (a warm-up, which may be skipped)."""
    return _whole(text, 0)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number from 0 to 1 (a rate)."""
    return _real(text, lambda v: 0 <= v <= 1, "from 0 to 1")


def positive_seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    return _real(text, lambda v: 0 < v < math.inf, "a positive number of seconds")


def _real(text: str, ok: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not ok(value):  # (NaN fails every comparison)
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


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


def interval(
    resampled: Callable[[random.Random], float], rounds: int = 1000, seed: int = 20261201
) -> tuple[float, float]:
    """A 95 % bootstrap interval: the 2.5th and 97.5th percentiles of ``resampled(rng)`` over
    ``rounds`` draws (seeded: the same figures give the same interval)."""
    rng = random.Random(seed)
    draws = sorted(resampled(rng) for _ in range(rounds))
    return draws[int(0.025 * rounds)], draws[int(0.975 * rounds) - 1]


def paired_ratio_interval(
    ours: Sequence[float], base: Sequence[float], stat: Callable[[Sequence[float]], float]
) -> tuple[float, float]:
    """A 95 % interval for ``stat(ours) / stat(base)`` where ``ours[i]`` and ``base[i]`` ran
    together (one interleaved iteration): pairs are resampled whole, so the drift of this VM,
    which a pair shares, stays out of the interval's width."""
    n = len(ours)

    def draw(rng: random.Random) -> float:
        picks = [rng.randrange(n) for _ in range(n)]
        return stat([ours[i] for i in picks]) / stat([base[i] for i in picks])

    return interval(draw)


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A 95 % interval for the median of ``values`` (e.g. the rounds' own ratios)."""
    n = len(values)
    return interval(lambda rng: median([values[rng.randrange(n)] for _ in range(n)]))


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
