"""Scale: 10,000 concurrent cancels on one client, memory per pending cancel, a 100,000 burst.

    python benchmarks/scale.py                        # N=10,000, burst 100,000
    python benchmarks/scale.py -n 500 --burst 2000 [--uvloop] [--inproc]

1. N concurrent ``cancel_order`` awaits (one caller task each, ``asyncio.gather``), fake with zero
   delay: wall time, the fake process's CPU time while serving them, tasks alive beyond the
   callers at the peak (looked at every 0.25 s). bybit_cancel and the hand-written floor,
   alternately; the verdict is the median of each round's ratio.
2. The same N parked (acknowledged, the fake holding the pushes): tracemalloc and RSS growth per
   pending cancel (caller task included), and tasks alive beyond the callers: there must be none.
3. A burst of B cancels through a bounded number of callers (N in flight at most): throughput,
   confirm p50/p99 and RSS sampled along the way; memory must stay flat after the first quarter
   (at most 64 B of RSS per cancel over the rest).

Targets: all N confirmed; no task per cancel; memory per pending <= 1.1 x the floor's; wall time
<= 1.1 x the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._clients import Floor, Ours
from benchmarks._common import machine, median, pct, peak_rss_mb, positive_int, run, verdict
from benchmarks._fake import FakeHandle

# How often the concurrent run looks at the tasks alive (seconds).
_SAMPLE_EVERY = 0.25
# The burst's memory must stay flat after its first quarter: RSS may grow by at most this much
# per cancel over the rest (pages come and go in steps; a leak of a call's worth of memory, about
# 1 kB, per cancel would show at once).
_BURST_GROWTH_PER_CANCEL = 64


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def extra_tasks(callers: set[asyncio.Task[Any]], before: set[asyncio.Task[Any]]) -> int:
    """Tasks alive now beyond the callers and those alive before. aiohttp runs each in-flight
    request's body writer as a task (at most the connector's 100 connections), for every client."""
    return len(asyncio.all_tasks() - callers - before)


def library_tasks(before: set[asyncio.Task[Any]]) -> int:
    """New tasks running bybit_cancel code (its stream and heartbeat tasks existed before)."""
    n = 0
    for task in asyncio.all_tasks() - before:
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "bybit_cancel" in code.co_filename:
            n += 1
    return n


async def concurrent(fake: FakeHandle, book: int, client: Any, n: int) -> dict[str, float]:
    ids = (await fake.call("seed", book=book, n=n))["ids"]
    before = asyncio.all_tasks()
    gc.collect()
    cpu0 = (await fake.call("cpu"))["cpu"]
    peak = {"extra": 0, "lib": 0}

    async def sample() -> None:
        # Tasks alive, now and then: each look walks every task (a few ms with 10,000 callers),
        # so it is rare and the same for both clients, and the callers are simply gathered.
        while True:
            await asyncio.sleep(_SAMPLE_EVERY)
            peak["extra"] = max(peak["extra"], extra_tasks(callers, before | {sampler}))
            peak["lib"] = max(peak["lib"], library_tasks(before | callers | {sampler}))

    t0 = time.perf_counter()
    callers = {asyncio.ensure_future(client.cancel(oid)) for oid in ids}
    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*callers, return_exceptions=True)
    wall = time.perf_counter() - t0
    sampler.cancel()
    fake_cpu = (await fake.call("cpu"))["cpu"] - cpu0
    confirmed = sum(1 for t in callers if t.exception() is None)
    return {
        "wall": wall,
        "fake_cpu": fake_cpu,
        "confirmed": confirmed,
        "extra": peak["extra"],
        "lib": peak["lib"],
    }


async def parked(fake: FakeHandle, book: int, client: Any, n: int) -> dict[str, float]:
    ids = (await fake.call("seed", book=book, n=n))["ids"]
    await fake.call("park", book=book, on=True)
    client.acked = 0
    before = asyncio.all_tasks()
    gc.collect()
    tracemalloc.start()
    mem0, _ = tracemalloc.get_traced_memory()
    rss0 = rss_mb()
    # The library call itself for both (no benchmark wrapper frame or closure per call).
    callers = {asyncio.ensure_future(client.cancel_direct(oid)) for oid in ids}
    async with asyncio.timeout(120):
        while client.parked() < n:  # noqa: ASYNC110 (a counter, not worth an Event per client)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    gc.collect()
    mem1, _ = tracemalloc.get_traced_memory()
    rss1 = rss_mb()
    extra = extra_tasks(callers, before)
    tracemalloc.stop()
    await fake.call("park", book=book, on=False)
    await fake.call("prepare", book=book, ids=ids, per_frame=1)
    await fake.call("release", book=book)
    async with asyncio.timeout(120):
        await asyncio.gather(*callers)
    return {"bytes": (mem1 - mem0) / n, "rss_kb": (rss1 - rss0) * 1024 / n, "extra": extra}


async def burst(fake: FakeHandle, book: int, client: Any, total: int, width: int) -> dict[str, Any]:
    ids: list[str] = []
    while len(ids) < total:
        chunk = min(50_000, total - len(ids))
        ids += (await fake.call("seed", book=book, n=chunk))["ids"]
    times: list[float] = []
    rss: list[float] = []
    marks = {total * q // 4 for q in (1, 2, 3, 4)}
    it = iter(ids)
    count = 0
    peak_extra = 0
    before = asyncio.all_tasks()

    async def caller() -> None:
        nonlocal count
        for oid in it:
            t0 = time.perf_counter()
            await client.cancel(oid)
            times.append(time.perf_counter() - t0)
            count += 1
            if count in marks:
                rss.append(rss_mb())

    gc.collect()
    t0 = time.perf_counter()
    callers = {asyncio.ensure_future(caller()) for _ in range(width)}
    while True:
        done, _ = await asyncio.wait(callers, timeout=0.2)
        if len(done) == len(callers):
            break
        peak_extra = max(peak_extra, extra_tasks(callers, before))
    wall = time.perf_counter() - t0
    for t in callers:
        t.result()
    return {"wall": wall, "times": times, "rss": rss, "extra": peak_extra}


async def scale(n: int, total: int, rounds: int, inproc: bool, uvloop: bool, pin: bool) -> bool:
    fake = await FakeHandle.start(2, inproc=inproc, uvloop=uvloop, pin=pin)
    ours = Ours(fake.books[0]["rest_url"], fake.books[0]["ws_url"], push_grace=600.0)
    floor = Floor(fake.books[1]["rest_url"], fake.books[1]["ws_url"], recv_window=600_000)
    conc: dict[str, list[dict[str, float]]] = {"bybit_cancel": [], "floor": []}
    park: dict[str, dict[str, float]] = {}
    try:
        await ours.open()
        await floor.open()
        await fake.wait_subscribed(0)
        await fake.wait_subscribed(1)
        pairs: list[tuple[int, Any]] = [(0, ours), (1, floor)]
        for r in range(rounds):
            for book, client in pairs if r % 2 == 0 else pairs[::-1]:
                conc[client.name].append(await concurrent(fake, book, client, n))
        # Twice each, in the order A B B A, keeping each one's smaller figure: the loop's set of
        # all tasks grows in steps, and whoever happens to trigger a step would be charged for it.
        for book, client in pairs + pairs[::-1]:
            got = await parked(fake, book, client, n)
            prev = park.get(client.name)
            park[client.name] = got if prev is None or got["bytes"] < prev["bytes"] else prev
        b = await burst(fake, 0, ours, total, n)
        pending_after = ours.client.pending_count
        remembered = ours.client._tracker.remembered
    finally:
        await ours.close()
        await floor.close()
        await fake.close()

    loop = "uvloop" if uvloop else "asyncio"
    print(f"scale: N={n} concurrent cancels, {loop}, {fake.placement}, on {machine()}")
    print(
        f"{'client':<14}{'confirmed':>10}{'wall s':>9}{'fake CPU s':>12}{'extra tasks':>13}"
        f"{'B/pending':>11}{'RSS KiB/pending':>17}{'tasks parked':>14}"
    )
    summary: dict[str, dict[str, float]] = {}
    for name, rs in conc.items():
        s = {k: median([r[k] for r in rs]) for k in ("wall", "fake_cpu")}
        s["confirmed"] = min(r["confirmed"] for r in rs)
        s["extra"] = max(r["extra"] for r in rs)
        s["lib"] = max(r["lib"] for r in rs)
        summary[name] = s
        p = park[name]
        print(
            f"{name:<14}{s['confirmed']:>10.0f}{s['wall']:>9.2f}{s['fake_cpu']:>12.2f}"
            f"{s['extra']:>13.0f}{p['bytes']:>11.0f}{p['rss_kb']:>17.2f}{p['extra']:>14.0f}"
        )
    ms = [t * 1000 for t in b["times"]]
    print(
        f"burst: {total} cancels, at most {n} in flight: {b['wall']:.1f} s "
        f"({total / b['wall']:,.0f}/s), confirm p50 {median(ms):.1f} ms p99 {pct(ms, 99):.1f} ms, "
        f"extra tasks {b['extra']}, RSS at 25/50/75/100%: "
        + " / ".join(f"{x:.0f}" for x in b["rss"])
        + f" MiB, pending after {pending_after}, remembered {remembered}"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    o, f = summary["bybit_cancel"], summary["floor"]
    ok_all = o["confirmed"] == n
    # No task per cancel: none of bybit_cancel's own, none at all while parked, and in flight no
    # more than the floor's (aiohttp's per-request writers, bounded by the connector).
    ok_tasks = (
        o["lib"] == 0 and park["bybit_cancel"]["extra"] == 0 and o["extra"] <= max(f["extra"], 100)
    )
    mem_ratio = park["bybit_cancel"]["bytes"] / park["floor"]["bytes"]
    # Each round's two runs are seconds apart, and this VM's speed drifts over minutes: the
    # median of the rounds' own ratios, not a ratio of medians.
    ratios = [
        a["wall"] / z["wall"] for a, z in zip(conc["bybit_cancel"], conc["floor"], strict=True)
    ]
    wall_ratio = median(ratios)
    # Growth after the first quarter, per cancel (absolute: against a process of a few hundred
    # MiB, a relative bound would let a leak of hundreds of bytes per cancel through).
    growth = (
        (b["rss"][-1] - b["rss"][0]) * 2**20 / (total - total // 4)
        if len(b["rss"]) == 4
        else float("inf")
    )
    ok_burst = (
        len(b["times"]) == total and growth <= _BURST_GROWTH_PER_CANCEL and pending_after == 0
    )
    print(f"{verdict(ok_all)} all {n} confirmed")
    print(
        f"{verdict(ok_tasks)} no task per cancel: {o['lib']:.0f} bybit_cancel tasks at the peak, "
        f"{park['bybit_cancel']['extra']:.0f} extra with {n} parked, {o['extra']:.0f} aiohttp "
        f"writers in flight (floor {f['extra']:.0f})"
    )
    if inproc:
        # tracemalloc counts the whole process: the fake's own state per parked cancel too.
        print(
            f"INFO memory per pending cancel {mem_ratio:.2f} x floor: not judged with --inproc "
            "(the fake's allocations are counted as well)"
        )
        ok_mem = True
    else:
        ok_mem = mem_ratio <= 1.1
        print(f"{verdict(ok_mem)} memory per pending cancel {mem_ratio:.2f} x floor (<= 1.1)")
    print(
        f"{verdict(wall_ratio <= 1.1)} wall time {wall_ratio:.2f} x floor, median of the rounds' "
        f"ratios (they ranged {min(ratios):.2f}-{max(ratios):.2f}; <= 1.1)"
    )
    print(
        f"{verdict(ok_burst)} burst of {total}: RSS growth after the first quarter "
        f"{growth:+.0f} B per cancel (<= {_BURST_GROWTH_PER_CANCEL})"
    )
    return ok_all and ok_tasks and ok_mem and wall_ratio <= 1.1 and ok_burst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=10_000, help="concurrent cancels")
    p.add_argument("--burst", type=positive_int, default=100_000, help="cancels in the burst")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument(
        "--inproc",
        action="store_true",
        help="run the fake in this process (memory per pending is then not judged)",
    )
    p.add_argument("--no-pin", action="store_true", help="leave the fake and clients unpinned")
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    return run(lambda: scale(a.n, a.burst, a.rounds, a.inproc, a.uvloop, not a.no_pin), a.uvloop)


if __name__ == "__main__":
    raise SystemExit(main())
