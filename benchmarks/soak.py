"""Soak: one client, window after window of cancels with faults; nothing may grow.

    python benchmarks/soak.py             # 48 windows of 300 cancels, faults at 5%, a drop every 4
    python benchmarks/soak.py --windows 20 -n 100 --rate 0.1 --drop-every 3 --seed 7 [--tracemalloc] [--uvloop]

One BybitCancelClient, kept open for the whole run as a service keeps it, against FakeExchange in
the same process. Each window is a wave of cancels: two thirds at once (one burst), one third by
four sequential callers beside the burst; some orders partly or fully filled first (one of them
with no push), a few cancelled again from the window before (answered from the memory of final
states) and a few unknown ids (OrderNotFound). The fake's faults (all but HTTP 403) hit each
order's first cancel at --rate, and every --drop-every windows the fake drops the websocket in
the middle of the burst. After each window, once the client is quiet (no call pending, the stream
connected, no reconcile running, the fake idle) and after gc.collect(), it samples: RSS,
tracemalloc's current size (--tracemalloc; it slows the run about 2x), asyncio tasks, open file
descriptors (/proc/self/fd), the loop's armed timers, the client's internal sizes (private
attributes, read as documented in the script: not an API) and the fake's, and the log records
of the window by level.

Targets, judged over the windows after the warm-up (the first half; --warmup to change it): tasks,
fds, pending cancels, calls open in the client's timers and the loop's armed timers exactly flat
at window ends; RSS and tracemalloc growing by less than --rss-slope / --traced-slope KiB per
window (least-squares slope); every cancel correct (the fake's own book is the truth) and none
hung; no ERROR record, no secret, and WARNING records at most one per fault fired or drop.

Why those slopes: a window is 300 cancels, so a leak of one small object per cancel (a dict
entry and a 100-byte object) grows tracemalloc by about 40 KiB a window and anything per cancel
by more than 16 KiB (the tracemalloc bound, about 55 bytes a cancel); at window ends the size
still moves by a few hundred KiB (stale timer items kept until their deadline, the fake's
records trimmed in batches), which puts the noise of a slope over 24 windows near 5 KiB. RSS
moves in the allocator's steps and drifts a little after the warm-up (0-40 KiB a window
measured): its bound, 64 KiB a window, catches a leak of about 220 bytes a cancel.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    machine,
    non_negative_int,
    peak_rss_mb,
    positive_int,
    positive_seconds,
    probability,
    run,
    verdict,
)
from bybit_cancel import (
    BybitCancelClient,
    CancelResult,
    ConfirmationTimeout,
    ConnectionState,
    OrderNotFound,
)
from bybit_cancel.testing import FakeExchange, FakeOrder, Fault

KEY, SECRET = "soak-key", "soak-secret-not-for-logs"
SEQUENTIAL_CALLERS = 4
POOL_LIMIT = 100  # aiohttp's connector limit, the client's session being aiohttp's default
# The fake's own memory is bounded, but its default bounds (10,000 records, 10,000 finished
# orders per category) would fill only late in a run of this length, and its growth until then
# would be charged to the client's RSS: small bounds make it reach its plateau in the warm-up.
FAKE_RECORDS = 2_000
FAKE_HISTORY = 1_000  # per category; at least realtime_closed_limit (500)
# Each WARNING the client logs must come from a fault or a drop: a failed cancel request, a
# third retry, a stream lost or silent, a failed reconnect. Most faults cause none (a held,
# dropped or doubled push, a fill first), a stall up to three (the silence, the close, a
# reconnect attempt); over a run about one per four faults and drops. At most one each, over
# the run, leaves a 4x margin, while a WARNING per cancel (20 x the faults) or per timer breaks it.
WARNINGS_PER_FAULT = 1
# The fake's injected delays (a held push, a held REST answer, a rate-limit reset): longer than
# the client's http_timeout below, so that REST_TIMEOUT times a request out.
CHAOS_DELAY = 0.6
HTTP_TIMEOUT = 0.5
# A cancel of an id Bybit never had ends in OrderNotFound; but after a fault that leaves it open
# whether an earlier attempt landed (a 502, a timed-out request, 10016), "not found" could be a
# cancelled order that a restart and history's lag hide (protocol §8), and the client waits for
# its deadline (ConfirmationTimeout): correct too, and bounded by this shorter timeout.
UNKNOWN_TIMEOUT = 3.0
AMBIGUOUS = frozenset({Fault.HTTP_502, Fault.REST_TIMEOUT, Fault.SERVER_ERROR_10016})


class _LogCount(logging.Handler):
    """Counts the records of the client (and of aiohttp/websockets) by level, and the fake's
    fault records apart; flags any record holding the secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: Counter[str] = Counter()
        self.faults = 0
        self.leaks = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if SECRET in text:
            self.leaks += 1
        if record.name.startswith("bybit_cancel.testing"):
            if text.startswith("fault "):
                self.faults += 1
            return
        self.levels[record.levelname] += 1

    def take(self) -> tuple[Counter[str], int]:
        levels, faults = self.levels, self.faults
        self.levels, self.faults = Counter(), 0
        return levels, faults


@dataclass
class Sample:
    window: int
    seconds: float
    cancels: int
    correct: int
    hung: int
    errors: Counter[str]
    faults: int
    dropped: bool
    rss_kib: int
    traced_kib: int | None
    tasks: int
    fds: int
    loop_timers: int | None
    pool: int
    sizes: dict[str, int]
    fake: dict[str, int]
    logs: Counter[str] = field(default_factory=Counter)


def rss_kib() -> int:
    """Resident set size now (not the peak), in KiB, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def loop_timers(loop: asyncio.AbstractEventLoop) -> int | None:
    """Timer handles armed on the loop and not cancelled (asyncio's loop only; uvloop keeps
    them in C)."""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None:
        return None
    return sum(1 for h in scheduled if not h.cancelled())


def client_sizes(client: BybitCancelClient) -> dict[str, int]:
    """The client's internal sizes. Private attributes, read on purpose (they are no API and
    may change with the library): the tracker's indexes and memory of final states, the timers'
    queued items and open calls, the interrupt bookkeeping, REST's slot waiters and limiter
    keys."""
    tracker = client._tracker
    timers = client._timers
    rest = client._rest
    return {
        "pending": client.pending_count,
        "by_id": len(tracker._by_id.one) + len(tracker._by_id.more),
        "by_link": len(tracker._by_link.one) + len(tracker._by_link.more),
        "last": len(tracker._last),
        "remembered": tracker.remembered,
        "remembered_links": len(tracker._recent_link),
        "timer_items": 0 if timers is None else len(timers),
        "timer_open": 0 if timers is None else timers._open,
        "interrupting": len(client._interrupting) + len(client._interrupt_bases),
        "old_reconciles": len(client._old_reconciles),
        "slot_waiters": 0 if rest is None else len(rest._slot_waiters),
        "limiter_keys": 0 if rest is None else len(rest.limiter._keys),
    }


def pooled(client: BybitCancelClient) -> int:
    """HTTP connections aiohttp keeps alive for the client (idle in its pool, or in use).

    Each costs, in this one process, two fds (the client's socket and the fake's), the fake's
    task serving it and its keep-alive timer; the pool holds at most the connector's limit (100)
    and shrinks when a fault makes a connection close: so tasks, fds and loop timers are judged
    net of it, and the pool itself against the limit."""
    session = client._session
    connector = None if session is None else session.connector
    if connector is None:
        return 0
    return sum(len(c) for c in connector._conns.values()) + len(connector._acquired)


def fake_sizes(fx: FakeExchange) -> dict[str, int]:
    """The fake's own sizes (private attributes too): its book, records, tasks and timers."""
    return {
        "orders": len(fx._orders),
        "records": len(fx.requests) + len(fx.ws_received) + len(fx.fault_log),
        "tasks": len(fx._tasks),
        "timers": len(fx._timers),
        "conns": fx.connections,
    }


def slope(ys: Sequence[float]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ... (per window)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


async def wait_quiet(client: BybitCancelClient, fx: FakeExchange, bound: float) -> bool:
    """Until no call is pending, the stream is connected and no reconcile runs (polled: these
    are the client's states, with no event to wait on), then the fake idle."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        reconcile = client._reconcile_task
        if (
            client.pending_count == 0
            and client.connection_state is ConnectionState.CONNECTED
            and (reconcile is None or reconcile.done())
            and not client._old_reconciles
        ):
            await fx.wait_idle()
            # A handler of the fake may still be sleeping out an injected delay (REST_TIMEOUT
            # holds its answer that long after the client gave up and retried): the fake's
            # task and timer, not the client's.
            await asyncio.sleep(CHAOS_DELAY)
            await fx.wait_idle()
            return True
        await asyncio.sleep(0.01)
    return False


class Wave:
    """One window's cancels and their outcomes."""

    def __init__(
        self,
        client: BybitCancelClient,
        fx: FakeExchange,
        rng: random.Random,
        window: int,
        n: int,
        previous: list[FakeOrder],
        timeout: float,
    ) -> None:
        self.client = client
        self.timeout = timeout
        # (order or None for an unknown id, the id to send, whether it is a link id)
        self.jobs: list[tuple[FakeOrder | None, str, bool, str]] = []
        again = min(len(previous), n // 20)
        unknown = n // 50
        for o in rng.sample(previous, again):
            self.jobs.append((o, o.order_id, False, o.category))
        for i in range(unknown):
            category = rng.choice(["linear", "spot", "inverse"])
            self.jobs.append((None, f"unknown-{window}-{i}", True, category))
        self.fresh: list[FakeOrder] = []
        for i in range(n - again - unknown):
            category = rng.choice(["linear", "spot", "inverse"])
            symbol = "BTCUSD" if category == "inverse" else "BTCUSDT"
            o = fx.seed_order(
                category=category, symbol=symbol, qty="1.000", order_link_id=f"s{window}-{i}"
            )
            roll = rng.random()
            if roll < 0.1:
                fx.fill(o.order_id, "0.400")
            elif roll < 0.13:
                fx.fill(o.order_id, push=False)  # filled, and the stream never said so
            elif roll < 0.15:
                fx.fill(o.order_id)  # filled before the cancel: answered from memory
            self.fresh.append(o)
            use_link = bool(i % 2)
            self.jobs.append((o, o.order_link_id if use_link else o.order_id, use_link, category))
        rng.shuffle(self.jobs)
        self.outcomes: list[CancelResult | BaseException | None] = [None] * len(self.jobs)
        self.hung = 0
        self.done = 0
        self.quarter = asyncio.Event()

    async def one(self, i: int) -> None:
        o, ident, use_link, category = self.jobs[i]
        symbol = o.symbol if o is not None else ("BTCUSD" if category == "inverse" else "BTCUSDT")
        timeout = self.timeout if o is not None else min(self.timeout, UNKNOWN_TIMEOUT)
        try:
            # The outer bound only detects a hang; the call's own timeout must fire first.
            self.outcomes[i] = await asyncio.wait_for(
                self.client.cancel_order(
                    category=category,
                    symbol=symbol,
                    order_id=None if use_link else ident,
                    order_link_id=ident if use_link else None,
                    timeout=timeout,
                ),
                timeout + 5,
            )
        except TimeoutError as exc:
            if type(exc) is TimeoutError:  # the outer bound fired: the call hung
                self.hung += 1
            self.outcomes[i] = exc
        except Exception as exc:
            self.outcomes[i] = exc
        self.done += 1
        if self.done * 4 >= len(self.jobs):
            self.quarter.set()

    async def sequential(self, indexes: list[int]) -> None:
        for i in indexes:
            await self.one(i)

    async def run(self, fx: FakeExchange, drop: bool) -> None:
        k = len(self.jobs)
        burst = range(k // 3, k)
        lanes = [list(range(j, k // 3, SEQUENTIAL_CALLERS)) for j in range(SEQUENTIAL_CALLERS)]
        calls = [self.one(i) for i in burst] + [self.sequential(lane) for lane in lanes]
        if drop:

            async def dropper() -> None:
                await self.quarter.wait()
                await fx.disconnect_all()

            calls.append(dropper())
        await asyncio.gather(*calls)

    def judge(self, fx: FakeExchange) -> tuple[int, Counter[str]]:
        correct = 0
        errors: Counter[str] = Counter()
        ambiguous = {name for name, fault in fx.fault_log if fault in AMBIGUOUS}
        for (o, ident, _, _), r in zip(self.jobs, self.outcomes, strict=True):
            if o is None:
                if isinstance(r, OrderNotFound) or (
                    isinstance(r, ConfirmationTimeout) and ident in ambiguous
                ):
                    correct += 1
                else:
                    errors[f"unknown id: {type(r).__name__}"] += 1
            elif isinstance(r, CancelResult):
                if r.status == fx.order(o.order_id).status and r.order_id == o.order_id:
                    correct += 1
                else:
                    errors["wrong state"] += 1
            else:
                errors[type(r).__name__] += 1
        return correct, errors


async def soak(a: argparse.Namespace) -> bool:
    if a.tracemalloc:
        tracemalloc.start()
    rng = random.Random(a.seed)
    counter = _LogCount()
    root = logging.getLogger()
    root.addHandler(counter)
    root.setLevel(logging.INFO)  # aiohttp's and websockets' INFO and up
    logging.getLogger("bybit_cancel").setLevel(logging.DEBUG)  # ours (and the fake's) in full
    warmup = a.windows // 2 if a.warmup is None else min(a.warmup, a.windows - 1)
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    settled = True
    wall0 = time.perf_counter()
    async with FakeExchange(
        api_key=KEY,
        api_secret=SECRET,
        seed=a.seed,
        max_recorded=FAKE_RECORDS,
        history_limit=FAKE_HISTORY,
    ) as fx:
        fx.set_chaos(
            rate=a.rate,
            seed=a.seed,
            faults=[f for f in Fault if f is not Fault.HTTP_403],
            delay=CHAOS_DELAY,
        )
        client = BybitCancelClient(
            api_key=KEY,
            api_secret=SECRET,
            rest_url=fx.rest_url,
            ws_url=fx.ws_url,
            push_grace=0.3,
            ping_interval=0.5,
            http_timeout=HTTP_TIMEOUT,
            reconnect_backoff=(0.05, 0.5),
            recent_size=a.recent_size,
            seed=a.seed,
        )
        previous: list[FakeOrder] = []
        async with client:
            counter.take()  # the connect's records are not a window's
            for w in range(a.windows):
                t0 = time.perf_counter()
                wave = Wave(client, fx, rng, w, a.n, previous, a.timeout)
                drop = a.drop_every > 0 and w % a.drop_every == a.drop_every - 1
                await wave.run(fx, drop)
                if not await wait_quiet(client, fx, a.timeout + 10):
                    settled = False
                seconds = time.perf_counter() - t0
                correct, errors = wave.judge(fx)
                hung = wave.hung
                previous = wave.fresh
                del wave
                gc.collect()
                logs, faults = counter.take()
                s = Sample(
                    window=w,
                    seconds=seconds,
                    cancels=a.n,
                    correct=correct,
                    hung=hung,
                    errors=errors,
                    faults=faults,
                    dropped=drop,
                    rss_kib=rss_kib(),
                    traced_kib=tracemalloc.get_traced_memory()[0] // 1024
                    if a.tracemalloc
                    else None,
                    tasks=len(asyncio.all_tasks()),
                    fds=open_fds(),
                    loop_timers=loop_timers(loop),
                    pool=pooled(client),
                    sizes=client_sizes(client),
                    fake=fake_sizes(fx),
                    logs=logs,
                )
                samples.append(s)
                print_row(s, header=w == 0)
                if not settled:
                    break
            reconnects = client.reconnect_count
            stats = client.rest_stats
    root.removeHandler(counter)
    wall = time.perf_counter() - wall0
    return report(a, samples, warmup, settled, reconnects, stats, wall, counter.leaks)


def print_row(s: Sample, header: bool) -> None:
    if header:
        print(
            f"{'win':>4} {'s':>5} {'ok':>9} {'flt':>4} {'drop':>4} {'RSS KiB':>8} {'traced':>7} "
            f"{'pool':>4} {'tasks':>5} {'fds':>4} {'ltim':>4} {'pend':>4} {'t.items':>7} {'t.open':>6} "
            f"{'memory':>6} {'fk.ord':>6} {'fk.rec':>6} {'fk.tk':>5} {'INFO':>4} {'WARN':>4} "
            f"{'ERR':>3}"
        )
    z = s.sizes
    traced = "-" if s.traced_kib is None else str(s.traced_kib)
    ltim = "-" if s.loop_timers is None else str(s.loop_timers - s.pool)
    err = s.logs["ERROR"] + s.logs["CRITICAL"]
    print(
        f"{s.window:>4} {s.seconds:>5.2f} {f'{s.correct}/{s.cancels}':>9} {s.faults:>4} "
        f"{'yes' if s.dropped else '':>4} {s.rss_kib:>8} {traced:>7} "
        f"{s.pool:>4} {s.tasks - s.pool:>5} {s.fds - 2 * s.pool:>4} "
        f"{ltim:>4} {z['pending']:>4} {z['timer_items']:>7} {z['timer_open']:>6} "
        f"{z['remembered']:>6} {s.fake['orders']:>6} {s.fake['records']:>6} "
        f"{s.fake['tasks']:>5} {s.logs['INFO']:>4} {s.logs['WARNING']:>4} {err:>3}"
    )
    for kind, count in sorted(s.errors.items()):
        print(f"     error: {kind} x{count}")


def report(
    a: argparse.Namespace,
    samples: list[Sample],
    warmup: int,
    settled: bool,
    reconnects: int,
    stats: object,
    wall: float,
    leaks: int,
) -> bool:
    after = samples[warmup:]
    print(
        f"soak: {len(samples)} windows of {a.n} cancels, faults at {a.rate:.0%}, a drop every "
        f"{a.drop_every or 'never'} windows, seed {a.seed}, recent_size {a.recent_size}, "
        f"warm-up {warmup} windows, on {machine()}{' (uvloop)' if a.uvloop else ''}"
    )
    total = sum(s.cancels for s in samples)
    correct = sum(s.correct for s in samples)
    faults = sum(s.faults for s in samples)
    hung = sum(s.hung for s in samples)
    drops = sum(s.dropped for s in samples)
    logs: Counter[str] = Counter()
    for s in samples:
        logs += s.logs
    print(f"{'cancels / correct / hung':<34}{total} / {correct} / {hung}")
    print(f"{'faults fired / forced drops':<34}{faults} / {drops} (reconnects {reconnects})")
    print(f"{'REST':<34}{stats}")
    print(f"{'log records by level':<34}{dict(sorted(logs.items()))}; secret leaks {leaks}")
    print(f"{'wall time / peak RSS':<34}{wall:.1f} s / {peak_rss_mb():.1f} MiB")

    def spread(name: str, values: list[int | None]) -> bool:
        known = [v for v in values if v is not None]
        if not known:
            print(f"{name:<34}n/a")
            return True
        flat = min(known) == max(known)
        print(f"{name:<34}{min(known)}..{max(known)} after the warm-up{'' if flat else ' (moved)'}")
        return flat

    ok_pool = (
        spread("HTTP connections kept", [s.pool for s in after])
        or max(s.pool for s in after) <= POOL_LIMIT
    )
    ok_tasks = spread("asyncio tasks net of them", [s.tasks - s.pool for s in after])
    ok_fds = spread("open fds net of them (2 each)", [s.fds - 2 * s.pool for s in after])
    ok_pending = spread("pending cancels", [s.sizes["pending"] for s in after])
    ok_timers = spread("calls open in the client's timers", [s.sizes["timer_open"] for s in after])
    ok_loop = spread(
        "loop timers armed net of them",
        [None if s.loop_timers is None else s.loop_timers - s.pool for s in after],
    )
    # (A list, not all() over a generator: every line is printed.)
    ok_indexes = all(
        [
            spread(f"client {key}", [s.sizes[key] for s in after])
            for key in (
                "by_id",
                "by_link",
                "last",
                "interrupting",
                "old_reconciles",
                "slot_waiters",
            )
        ]
    )
    spread("client timer items (stale incl.)", [s.sizes["timer_items"] for s in after])
    spread("client memory of final states", [s.sizes["remembered"] for s in after])
    spread("fake tasks", [s.fake["tasks"] for s in after])
    spread("fake timers", [s.fake["timers"] for s in after])
    rss_slope = slope([s.rss_kib for s in after])
    print(f"{'RSS slope':<34}{rss_slope:+.1f} KiB/window (bound {a.rss_slope:g})")
    ok_rss = rss_slope < a.rss_slope
    ok_traced = True
    if a.tracemalloc:
        traced_slope = slope([s.traced_kib or 0 for s in after])
        print(f"{'tracemalloc slope':<34}{traced_slope:+.2f} KiB/window (bound {a.traced_slope:g})")
        ok_traced = traced_slope < a.traced_slope
    warnings = logs["WARNING"]
    errors = logs["ERROR"] + logs["CRITICAL"]
    bound = WARNINGS_PER_FAULT * (faults + drops)
    print(
        f"{'WARNING records':<34}{warnings} (bound {bound}: {WARNINGS_PER_FAULT} per fault or drop)"
    )
    ok_correct = correct == total and hung == 0 and settled
    ok_logs = warnings <= bound and errors == 0 and leaks == 0
    print(
        f"{verdict(ok_correct)} every cancel correct, none hung{'' if settled else ' (a window never settled)'}"
        f"   {verdict(ok_tasks)} tasks flat   {verdict(ok_fds)} fds flat"
        f"   {verdict(ok_pool)} HTTP connections <= {POOL_LIMIT}"
        f"   {verdict(ok_pending and ok_timers and ok_loop)} pending and timers flat"
        f"   {verdict(ok_indexes)} client indexes flat"
    )
    rss_line = f"{verdict(ok_rss)} RSS slope < {a.rss_slope:g} KiB/window"
    if a.tracemalloc:
        rss_line += f"   {verdict(ok_traced)} tracemalloc slope < {a.traced_slope:g} KiB/window"
    print(rss_line)
    print(f"{verdict(ok_logs)} logs bounded (WARNINGs by faults, no ERROR, no secret)")
    return (
        ok_pool
        and ok_correct
        and ok_tasks
        and ok_fds
        and ok_pending
        and ok_timers
        and ok_loop
        and ok_indexes
        and (ok_rss and ok_traced and ok_logs)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--windows", type=positive_int, default=48)
    p.add_argument("-n", type=positive_int, default=300, help="cancels per window")
    p.add_argument("--rate", type=probability, default=0.05)
    p.add_argument("--drop-every", type=non_negative_int, default=4, help="0: never")
    p.add_argument("--warmup", type=non_negative_int, default=None, help="default: half")
    p.add_argument("--recent-size", type=non_negative_int, default=2_000)
    p.add_argument("--rss-slope", type=float, default=64.0, help="KiB per window")
    p.add_argument("--traced-slope", type=float, default=16.0, help="KiB per window")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=positive_seconds, default=10.0)
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    return run(lambda: soak(a), a.uvloop)


if __name__ == "__main__":
    raise SystemExit(main())
