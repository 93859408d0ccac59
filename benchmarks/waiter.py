"""The waiter of a parked cancel: an asyncio.Future beside the entry, or the awaitable entry itself.

    python benchmarks/waiter.py              # 20,000 parked, 3,000 wake-ups
    python benchmarks/waiter.py -n 2000 --wakes 300 [--uvloop]

bybit_cancel parks each cancel on its ``Call`` entry (``bybit_cancel/_call.py``), which speaks the
Future protocol a Task uses, instead of on an ``asyncio.Future`` beside a plain ``Pending`` entry
(the design before; docs/performance.md, items 12 and 15). This prints what that trades:

1. bytes per parked caller: N tasks each parked on its waiter (tracemalloc; the task, its coroutine
   frame, the entry and the waiter), minimum of three rounds;
2. the time from the wake-up to the resumed caller, with warm caches and after evicting them
   (8 MB touched before each wake-up, as between two cancels of a bot), median of each.

No targets: the library's targets are judged by latency.py and scale.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, median, positive_int, run
from bybit_cancel._call import Call
from bybit_cancel._core import Pending

_CACHE_BYTES = 8 * 2**20

# What the library keeps per parked caller, besides the caller's task and frame: the entry (held by
# the tracker) and what the caller awaits. Returns (what to keep, what to await, how to wake it).
Waiter = tuple[list[Any], Any, Callable[[], None]]


def future_waiter(loop: asyncio.AbstractEventLoop) -> Waiter:
    fut: asyncio.Future[None] = loop.create_future()
    entry = Pending("linear", "BTCUSDT", "order-id", "")
    return [entry, fut], fut, lambda: fut.set_result(None)


def call_waiter(loop: asyncio.AbstractEventLoop) -> Waiter:
    entry = Call("linear", "BTCUSDT", "order-id", "")
    return [entry], entry, entry.wake


KINDS: dict[str, Callable[[asyncio.AbstractEventLoop], Waiter]] = {
    "Future + Pending": future_waiter,
    "Call": call_waiter,
}


async def _park(awaitable: Any) -> None:
    await awaitable


async def parked_bytes(make: Callable[[asyncio.AbstractEventLoop], Waiter], n: int) -> float:
    loop = asyncio.get_running_loop()
    kept: list[Any] = []
    awaited: list[Any] = []
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for _ in range(n):
        keep, awaitable, _wake = make(loop)
        kept.extend(keep)  # one list slot per object, as the tracker's dict holds the entry
        awaited.append(awaitable)
    tasks = [loop.create_task(_park(a)) for a in awaited]
    await asyncio.sleep(0)  # every task runs to its await and parks
    del keep, awaitable, _wake
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for a in awaited:
        if isinstance(a, Call):
            a.wake()
        else:
            a.set_result(None)
    await asyncio.gather(*tasks)
    return (after - before) / n


def _evict(buf: bytearray) -> None:
    for i in range(0, len(buf), 4096):
        buf[i] = (buf[i] + 1) & 255
    bytes(buf)  # a copy streams the whole buffer through the caches


async def wake_to_resumed(
    make: Callable[[asyncio.AbstractEventLoop], Waiter], buf: bytearray | None
) -> float:
    loop = asyncio.get_running_loop()
    _keep, awaitable, wake = make(loop)
    resumed = 0.0

    async def caller() -> None:
        nonlocal resumed
        await _park(awaitable)
        resumed = time.perf_counter()

    task = loop.create_task(caller())
    await asyncio.sleep(0)  # parked
    if buf is not None:
        _evict(buf)
    t0 = time.perf_counter()
    wake()
    await task
    return resumed - t0


async def waiter(n: int, wakes: int, uvloop: bool) -> bool:
    print(f"waiter on {machine()}, {'uvloop' if uvloop else 'asyncio'}")
    sizes = {
        name: min([await parked_bytes(make, n) for _ in range(3)]) for name, make in KINDS.items()
    }
    buf = bytearray(_CACHE_BYTES)
    samples: dict[tuple[str, bool], list[float]] = {
        (k, c): [] for k in KINDS for c in (False, True)
    }
    for i in range(wakes):
        # Interleaved, in an order that rotates, so drift and ordering hit both alike.
        names = list(KINDS) if i % 2 else list(KINDS)[::-1]
        for name in names:
            for cold in (False, True):
                got = await wake_to_resumed(KINDS[name], buf if cold else None)
                samples[(name, cold)].append(got)
    print(f"{'waiter':<18}{'B/parked':>10}{'wake->resumed warm':>20}{'cold':>10}   (us, median)")
    for name in KINDS:
        warm_us = median(samples[(name, False)]) * 1e6
        cold_us = median(samples[(name, True)]) * 1e6
        print(f"{name:<18}{sizes[name]:>10.0f}{warm_us:>20.1f}{cold_us:>10.1f}")
    base, ours = "Future + Pending", "Call"
    print(
        f"INFO Call saves {sizes[base] - sizes[ours]:.0f} B per parked caller and costs "
        f"{(median(samples[(ours, True)]) - median(samples[(base, True)])) * 1e6:+.1f} us per "
        "cold wake-up"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=20_000, help="parked callers per memory round")
    p.add_argument(
        "--wakes", type=positive_int, default=3_000, help="wake-ups per kind and cache state"
    )
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    return run(lambda: waiter(a.n, a.wakes, a.uvloop), a.uvloop)


if __name__ == "__main__":
    raise SystemExit(main())
