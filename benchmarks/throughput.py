"""Throughput: order-update frames per second, in process and through a loopback websocket.

    python benchmarks/throughput.py     # in process: 5 rounds of 100,000 updates; ws: 11 x 3,000
    python benchmarks/throughput.py -n 20000 --chunk 1000 --ws-n 2000 [--uvloop] [--inproc]

(a) In process, one core: the recorded Bybit push (fixtures ws-private/order.push.linear-cancelled.json)
    as a frame of 1 order and of 10 orders, each order resolving a pending cancel. Six paths:
    bybit_cancel's stream router (``PrivateStream._route`` -> ``CancelTracker.on_orders`` -> the
    waiter) with every update resolving a registered cancel; ``json.loads`` + dict routing;
    untyped ``msgspec.json.decode`` + dict routing (the floor's decoder); typed+dict, our own
    decoder (``WsMessage``) with the floor's dict of futures and none of the tracker's rules (no
    memory of final states, no category check, no layers); and typed+memory, the same keeping the
    last 10,000 final states in a dict as the tracker does by default. The last two show what the
    4 x target leaves for the tracker's rules, and what its memory alone takes; recent_size=0 is
    ours again with the memory off (``recent_size=0``), every other rule kept: what the rest of
    the tracker and its layers cost (item 39). In every path a
    result is dropped once routed, as a caller drops it once taken, but for one in 1,000 kept to
    be checked after the round. The paths take the frames in chunks (2,000 updates), each chunk
    by every path in turn, so that a ratio compares runs a few milliseconds apart (this VM's
    speed swings by up to 2 x within seconds); the figures are medians over the chunks, the
    ratios those of each chunk's own runs. The chunks before both memories are full are a
    warm-up, not counted.
(b) Loopback websocket: N cancels are parked (acknowledged, the fake holding their pushes), then
    the fake releases every final state at once, 1 or 10 orders per frame, and the time until
    every ``cancel_order`` returned gives frames/s. Same for the hand-written floor, in the same
    round: both park first, then each is released in turn, back to back (which goes first
    alternates); the verdict is the median over the rounds of each round's ratio.

(c) In process, the path (b) measures without its socket: N ``cancel_order`` calls parked on one
    client (the REST answer stubbed), then every push routed at once; the time until every call
    returned, against N tasks awaiting futures fed by the floor's decode and dict. Our own code
    after the push, next to the floor's, without this VM's loopback noise (no target of its own).

Targets: (a) >= 150,000 updates/s and >= 4 x json+dict; (b) >= 0.95 x the floor's frames/s.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from benchmarks._clients import FINAL, Floor, Ours
from benchmarks._common import (
    machine,
    median,
    median_interval,
    pct,
    positive_int,
    run,
    verdict,
)
from benchmarks._fake import FakeHandle
from bybit_cancel import BybitCancelClient
from bybit_cancel._call import Call
from bybit_cancel._client import _State
from bybit_cancel._models import AckEnvelope, CancelAck, ws_decoder
from bybit_cancel._signing import Credentials
from bybit_cancel._stream import PrivateStream
from bybit_cancel._timers import Timers

# The tracker's default recent_size (CancelTracker), for typed+memory.
RECENT_SIZE = 10_000
# In process, one call (or future) in this many is kept to check its result after the round.
_SAMPLE = 1000

FIXTURE = (
    Path(__file__).resolve().parent.parent.parent
    / "shared/fixtures/bybit/ws-private/order.push.linear-cancelled.json"
)
_FALLBACK_FIXTURE = Path("/work/shared/fixtures/bybit/ws-private/order.push.linear-cancelled.json")


@functools.cache
def recorded_frames(n_updates: int, per_frame: int) -> tuple[list[bytes], list[str]]:
    """Frames built from the recorded push: its data[0] repeated with distinct order ids."""
    path = FIXTURE if FIXTURE.exists() else _FALLBACK_FIXTURE
    template = json.loads(path.read_text())
    order = template["data"][0]
    frames: list[bytes] = []
    ids: list[str] = []
    for start in range(0, n_updates, per_frame):
        data = []
        for k in range(start, min(start + per_frame, n_updates)):
            oid = f"f38c5e38-46ef-4a8a-b115-{k:012d}"
            ids.append(oid)
            data.append({**order, "orderId": oid})
        frame = {**template, "data": data}
        frames.append(json.dumps(frame, separators=(",", ":")).encode())
    return frames, ids


def _noop(*_a: object) -> None:
    return None


def _router_for(client: BybitCancelClient) -> PrivateStream:
    """The real stream router (never connected) feeding the client's push callback."""
    return PrivateStream(
        "ws://x",
        Credentials("k", "s"),
        now_ms=lambda: 0,
        on_orders=client._on_push,
        on_reconnected=_noop,
        on_failed=_noop,
        resync_clock=None,
        ping_interval=20.0,
        handshake_timeout=10.0,
        auth_expiry_ms=10_000,
        reconnect_backoff=(0.1, 1.0),
        rng=random.Random(1),
    )


def _floor_route(
    frames: list[bytes], decode: Callable[[bytes], Any], pending: dict[str, asyncio.Future[Any]]
) -> None:
    """The floor's router (benchmarks/_clients.py Floor._read): decode, then a dict of futures."""
    for raw in frames:
        msg = decode(raw)
        for order in msg.get("data") or ():
            if order["orderStatus"] in FINAL:
                fut = pending.pop(order["orderId"], None)
                if fut is not None and not fut.done():
                    fut.set_result(order)


def _typed_route(
    frames: list[bytes], pending: dict[str, asyncio.Future[Any]], recent: dict[str, Any] | None
) -> None:
    """The floor's router with bybit_cancel's typed decoder: the least a typed router does. With
    ``recent``, it also keeps the last RECENT_SIZE final states there, oldest first, trimmed in
    batches of 256 as the tracker's memory is (and nothing else of the tracker's rules)."""
    decode = ws_decoder.decode
    for raw in frames:
        for order in decode(raw).data or ():
            if order.order_status in FINAL:
                if recent is not None:
                    recent.setdefault(order.order_id, order)
                    if len(recent) > RECENT_SIZE + 256:
                        for order_id in list(islice(recent, 256)):
                            del recent[order_id]
                fut = pending.pop(order.order_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(order)


PATHS = (
    "bybit_cancel",
    "json+dict",
    "msgspec+dict",
    "typed+dict",
    "typed+memory",
    "recent_size=0",
)
# Per path: (order updates, seconds) of each chunk timed.
Timed = dict[str, list[tuple[int, float]]]


async def in_process(n: int, per_frame: int, chunk: int) -> Timed:
    """(a), one round: per path, (updates, seconds) for each chunk of about ``chunk`` updates.

    Every path takes the same chunk in turn (which goes first rotates), so that the figures of
    one chunk share this VM's speed of the moment (it swings by up to 2 x within seconds, item
    35). Each path keeps its state from chunk to chunk: ours its client, with the tracker's
    memory of final states, and typed+memory its dict. When the round is long enough, the first
    chunks, until both memories are full, are a warm-up and not counted.
    """
    loop = asyncio.get_running_loop()
    frames, ids = recorded_frames(n, per_frame)
    # bybit_cancel: the real stream router feeding the real client callback.
    ours: dict[str, tuple[Any, Callable[[bytes], object]]] = {}
    for name, size in (("bybit_cancel", RECENT_SIZE), ("recent_size=0", 0)):
        client = BybitCancelClient(
            api_key="k", api_secret="s", rest_url="http://x", ws_url="ws://x", recent_size=size
        )
        client._loop = loop
        ours[name] = (client._tracker, _router_for(client)._route)
    recent: dict[str, Any] = {}
    step = max(1, chunk // per_frame)  # frames per chunk
    full = RECENT_SIZE + 256
    warm = -(-full // per_frame) if n >= 2 * full else 0  # frames of warm-up
    out: Timed = {name: [] for name in PATHS}
    turn = 0
    for first in range(0, len(frames), step):
        batch = frames[first : first + step]
        batch_ids = ids[first * per_frame : (first + step) * per_frame]
        gc.collect()
        for name in PATHS[turn:] + PATHS[:turn]:
            if name in ours:
                seconds = _ours_chunk(*ours[name], batch, batch_ids)
            else:
                seconds = _floor_chunk(loop, name, batch, batch_ids, recent)
            if first >= warm:
                out[name].append((len(batch_ids), seconds))
        if first >= warm:
            turn = (turn + 1) % len(PATHS)
    return out


def _ours_chunk(
    tracker: Any, route: Callable[[bytes], object], frames: list[bytes], ids: list[str]
) -> float:
    """Ours on one chunk: its cancels registered, then the router timed over its frames."""
    now = time.monotonic()
    entries = [tracker.start(Call("linear", "SOLUSDT", oid, ""), now=now) for oid in ids]
    calls = [e for e in entries if isinstance(e, Call)]
    if len(calls) != len(ids):
        raise RuntimeError("in-process: a cancel was answered from memory")
    # Like the other paths' futures, an entry is kept only by the router until it is resolved
    # (then by nobody, as once its caller has taken the result); a sample is kept to be checked.
    # Keeping every entry held all 100,000 results and cost ours 3-6 % (item 31).
    sample = calls[::_SAMPLE]
    del entries, calls
    t0 = time.perf_counter()
    for raw in frames:
        route(raw)
    seconds = time.perf_counter() - t0
    if len(tracker) != 0 or any(
        (e.outcome is None or e.outcome.order_id != oid)
        for e, oid in zip(sample, ids[::_SAMPLE], strict=True)
    ):
        raise RuntimeError(f"in-process: {len(tracker)} left, or a sampled call unresolved")
    return seconds


def _floor_chunk(
    loop: asyncio.AbstractEventLoop,
    name: str,
    frames: list[bytes],
    ids: list[str],
    recent: dict[str, Any],
) -> float:
    """A reference path on one chunk: a future per update, then the router timed."""
    pending: dict[str, asyncio.Future[Any]] = {oid: loop.create_future() for oid in ids}
    futures = list(pending.values())[::_SAMPLE]
    t0 = time.perf_counter()
    if name == "json+dict":
        _floor_route(frames, json.loads, pending)
    elif name == "msgspec+dict":
        _floor_route(frames, msgspec.json.decode, pending)
    else:
        _typed_route(frames, pending, recent if name == "typed+memory" else None)
    seconds = time.perf_counter() - t0
    if pending or any(
        _order_id(f.result()) != oid for f, oid in zip(futures, ids[::_SAMPLE], strict=True)
    ):
        raise RuntimeError(f"{name}: {len(pending)} left, or a sampled future unresolved")
    return seconds


def _order_id(update: Any) -> str:
    return update["orderId"] if isinstance(update, dict) else str(update.order_id)


class _AckAtOnce:
    """Stands in for the RestClient: every cancel is acknowledged at once."""

    async def cancel(self, body: dict[str, str]) -> AckEnvelope:
        return AckEnvelope(0, "OK", CancelAck(body["orderId"], ""))


async def parked_in_process(n: int, per_frame: int) -> dict[str, float]:
    """(c): updates/s from the routed pushes to every caller resumed, ours and the floor's."""
    loop = asyncio.get_running_loop()
    frames, ids = recorded_frames(n, per_frame)
    out: dict[str, float] = {}

    client = BybitCancelClient(
        api_key="k", api_secret="s", rest_url="http://x", ws_url="ws://x", push_grace=600.0
    )
    client._loop = loop
    client._timers = Timers(loop, client._on_timer)
    client._rest = _AckAtOnce()  # type: ignore[assignment]
    client._state = _State.OPEN
    stream = _router_for(client)
    calls = [
        loop.create_task(client.cancel_order(category="linear", symbol="SOLUSDT", order_id=oid))
        for oid in ids
    ]
    for _ in range(5):  # each call: start, the (stubbed) request, the ack, the park
        await asyncio.sleep(0)
    parked = client._tracker.pending()
    if len(parked) != n or not all(e.acknowledged and not e.done() for e in parked):
        raise RuntimeError("parked in process: the calls did not all park")
    del parked
    gc.collect()
    route = stream._route
    t0 = time.perf_counter()
    for raw in frames:
        route(raw)
    results = await asyncio.gather(*calls)
    out["bybit_cancel"] = n / (time.perf_counter() - t0)
    client._timers.close()
    if len(results) != n or any(r.order_id != oid for r, oid in zip(results, ids, strict=True)):
        raise RuntimeError("parked in process: wrong results")

    pending: dict[str, asyncio.Future[Any]] = {}

    async def floor_cancel(oid: str) -> Any:
        fut = loop.create_future()
        pending[oid] = fut
        return await fut

    waits = [loop.create_task(floor_cancel(oid)) for oid in ids]
    await asyncio.sleep(0)
    if len(pending) != n:
        raise RuntimeError("parked in process: the floor's calls did not all park")
    gc.collect()
    t0 = time.perf_counter()
    _floor_route(frames, msgspec.json.decode, pending)
    await asyncio.gather(*waits)
    out["floor"] = n / (time.perf_counter() - t0)
    return out


async def park(
    fake: FakeHandle, book: int, client: Any, n: int, per_frame: int
) -> tuple[list[asyncio.Future[Any]], int]:
    """Park n cancels on ``client`` (acknowledged, the fake holding their pushes) and have the fake
    build their pushes, ``per_frame`` orders to a frame; returns the calls and the frame count."""
    ids = (await fake.call("seed", book=book, n=n))["ids"]
    await fake.call("park", book=book, on=True)
    client.acked = 0
    # Each library's own call, with no benchmark wrapper (the floor's call is its own `cancel`).
    tasks = [asyncio.ensure_future(client.cancel_direct(oid)) for oid in ids]
    async with asyncio.timeout(120):
        while client.parked() < n:  # noqa: ASYNC110 (a counter, not worth an Event per client)
            await asyncio.sleep(0.01)
    await fake.call("park", book=book, on=False)
    frames = (await fake.call("prepare", book=book, ids=ids, per_frame=per_frame))["frames"]
    return tasks, frames


async def release(
    fake: FakeHandle,
    book: int,
    tasks: list[asyncio.Future[Any]],
    frames: int,
    mark: Callable[[str], object] = lambda _when: None,
) -> tuple[float, float]:
    """Release a parked book's pushes at once; returns (frames/s, client CPU us/frame) until
    every call returned. ``mark("start")`` and ``mark("stop")`` bracket the measured release
    (benchmarks/icache.py)."""
    mark("start")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await fake.call("release", book=book)
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    mark("stop")
    return frames / wall, cpu / frames * 1e6


async def park_and_release(
    fake: FakeHandle,
    book: int,
    client: Any,
    n: int,
    per_frame: int,
    mark: Callable[[str], object] = lambda _when: None,
) -> tuple[float, float]:
    """:func:`park`, then :func:`release`: one client on its own (benchmarks/icache.py)."""
    tasks, frames = await park(fake, book, client, n, per_frame)
    gc.collect()
    return await release(fake, book, tasks, frames, mark)


async def loopback(
    n: int, rounds: int, inproc: bool, uvloop: bool, pin: bool
) -> tuple[dict[int, dict[str, tuple[float, float]]], str]:
    """Per frame size: each client's median (frames/s, CPU us/frame) over the rounds, and under
    "ratio" the median of the per-round ratios ours / floor, under "spread" their range; and
    where the fake ran.

    A round parks both clients' cancels first and then releases them back to back, in turns
    which goes first (and, every other round, which parks first): this VM's speed swings by up to 2 x from one second to the next (a
    client's CPU per frame read 15-19 us in one second and 27-31 us in the next, item 35), and
    a pair measured within a tenth of a second mostly shares one speed, where one that parked
    its cancels in between (seconds) often did not."""
    fake = await FakeHandle.start(2, inproc=inproc, uvloop=uvloop, pin=pin)
    ours = Ours(fake.books[0]["rest_url"], fake.books[0]["ws_url"], push_grace=600.0)
    floor = Floor(fake.books[1]["rest_url"], fake.books[1]["ws_url"], recv_window=600_000)
    out: dict[int, dict[str, tuple[float, float]]] = {}
    try:
        await ours.open()
        await floor.open()
        await fake.wait_subscribed(0)
        await fake.wait_subscribed(1)
        for per_frame in (1, 10):
            runs: dict[str, list[tuple[float, float]]] = {"bybit_cancel": [], "floor": []}
            for r in range(rounds):
                order: list[tuple[int, Any]] = [(0, ours), (1, floor)]
                # Which client parks first alternates too, every other round, so that every four
                # rounds each pairing of (parks first, released first) comes up once (over the
                # default 11: 3, 3, 3 and 2 times): the one parked last has its calls' memory
                # the most recently touched.
                parks = [0, 1] if (r // 2) % 2 == 0 else [1, 0]
                parked: list[Any] = [None, None]
                for i in parks:
                    book, client = order[i]
                    parked[i] = await park(fake, book, client, n, per_frame)
                gc.collect()
                turns = [0, 1] if r % 2 == 0 else [1, 0]
                for i in turns:
                    (book, client), (tasks, frames) = order[i], parked[i]
                    runs[client.name].append(await release(fake, book, tasks, frames))
                del parked
            ours_runs, floor_runs = runs["bybit_cancel"], runs["floor"]
            out[per_frame] = {
                name: (median([r[0] for r in rs]), median([r[1] for r in rs]))
                for name, rs in runs.items()
            }
            # The ratio of each round's two runs, taken back to back: this VM's speed drifts
            # within seconds, which a ratio of medians over the whole run would also measure.
            ratios = [o[0] / f[0] for o, f in zip(ours_runs, floor_runs, strict=True)]
            out[per_frame]["ratio"] = (median(ratios), 0.0)
            out[per_frame]["spread"] = (min(ratios), max(ratios))
            out[per_frame]["interval"] = median_interval(ratios)
    finally:
        await ours.close()
        await floor.close()
        await fake.close()
    return out, fake.placement


async def _best_of(
    rounds: int, measure: Callable[[int], Awaitable[dict[str, float]]]
) -> dict[int, dict[str, float]]:
    """Each path's best rate at 1 and 10 orders per frame over `rounds` interleaved rounds (as
    timeit reports: a round that a neighbour on this shared VM slowed down says nothing about
    the code)."""
    best: dict[int, dict[str, float]] = {1: {}, 10: {}}
    for _ in range(rounds):
        for pf in (1, 10):
            for name, rate in (await measure(pf)).items():
                best[pf][name] = max(rate, best[pf].get(name, 0.0))
    return best


def _print_rates(
    rates: dict[int, dict[str, float]], names: tuple[str, ...], column: str, unit: str
) -> None:
    """One row per name, one column per frame size (a best or a median, as the caller says)."""
    print(f"{column:<16}{'1/frame':>14}{'10/frame':>14}   ({unit})")
    for name in names:
        print(f"{name:<16}{rates[1][name]:>14,.0f}{rates[10][name]:>14,.0f}")


def _versus_json(timed: Timed, path: str) -> list[float]:
    """Each chunk's rate of ``path`` over json+dict's on the same chunk."""
    return [b / t for (_, t), (_, b) in zip(timed[path], timed["json+dict"], strict=True)]


def _per_update(timed: Timed, path: str, base: str, scale: float = 1.0) -> float:
    """The median over the chunks of (path's time - scale x base's) per update, in us."""
    pairs = zip(timed[path], timed[base], strict=True)
    return median([(t - scale * b) / u * 1e6 for (u, t), (_, b) in pairs])


async def throughput(
    n: int,
    ws_n: int,
    rounds: int,
    chunk: int,
    ws_rounds: int,
    inproc: bool,
    uvloop: bool,
    pin: bool,
) -> bool:
    loop_name = "uvloop" if uvloop else "asyncio"
    print(f"throughput on {machine()}, {loop_name}")
    ok = True
    print(
        f"(a) in process, one core, {rounds} rounds of {n} order updates, recorded Bybit frames, "
        f"taken in chunks of {chunk} updates by each path in turn; medians over the chunks"
    )
    chunks: dict[int, Timed] = {pf: {name: [] for name in PATHS} for pf in (1, 10)}
    for _ in range(rounds):
        for pf in (1, 10):
            for name, runs in (await in_process(n, pf, chunk)).items():
                chunks[pf][name].extend(runs)
    rates = {
        pf: {name: median([u / t for u, t in runs]) for name, runs in by.items()}
        for pf, by in chunks.items()
    }
    _print_rates(rates, PATHS, "path", "order updates/s")
    for pf in (1, 10):
        timed = chunks[pf]
        # The rate is the machine's as much as the code's: it counts at the 90th percentile of
        # the chunks (a fast stretch, as timeit's best of several runs; not one outlier chunk).
        # The ratio is paired, each chunk's own, and counts at the median.
        ours = pct([u / t for u, t in timed["bybit_cancel"]], 90)
        ratios = _versus_json(timed, "bybit_cancel")
        ratio = median(ratios)
        low, high = median_interval(ratios)
        ok_abs, ok_rel = ours >= 150_000, ratio >= 4
        ok = ok and ok_abs and ok_rel
        print(
            f"{verdict(ok_abs)} {pf:>2}/frame: {ours:,.0f} updates/s in the fastest tenth of the "
            f"chunks (median {rates[pf]['bybit_cancel']:,.0f}; target >= 150,000)   "
            f"{verdict(ok_rel)} {ratio:.2f} x json+dict (target >= 4; 95 % interval "
            f"{low:.2f}-{high:.2f}, {len(ratios)} chunks)"
        )
        # Per update: what 4 x json+dict allows beyond the bare typed router, what the memory of
        # final states alone takes, and what all of the tracker's rules take (each the median of
        # the chunks' own differences).
        typed = median(_versus_json(timed, "typed+dict"))
        memory = median(_versus_json(timed, "typed+memory"))
        room = -_per_update(timed, "typed+dict", "json+dict", 0.25)
        print(
            f"INFO {pf:>2}/frame: typed+dict {typed:.2f} x json+dict, typed+memory {memory:.2f} x;"
            f" beyond typed+dict, 4 x leaves {room:+.2f} us per update, the memory alone takes "
            f"{_per_update(timed, 'typed+memory', 'typed+dict'):.2f} us, all of the tracker's "
            f"rules {_per_update(timed, 'bybit_cancel', 'typed+dict'):.2f} us"
        )
        # Ours with the memory off: what the rest of the rules cost (item 39).
        print(
            f"INFO {pf:>2}/frame: with the memory off (recent_size=0), ours runs at "
            f"{median(_versus_json(timed, 'recent_size=0')):.2f} x json+dict; the rest of the "
            f"rules take {_per_update(timed, 'recent_size=0', 'typed+dict'):.2f} us per update "
            "beyond typed+dict"
        )
    lb, placement = await loopback(ws_n, ws_rounds, inproc, uvloop, pin)
    print(
        f"(b) loopback websocket, {placement}: {ws_n} parked cancels released at once, "
        f"median of {ws_rounds} rounds"
    )
    print(f"{'client':<14}{'frame':>7}{'frames/s':>12}{'updates/s':>12}{'CPU us/frame':>14}")
    for pf, by in lb.items():
        for name in ("bybit_cancel", "floor"):
            fps, cpu = by[name]
            print(f"{name:<14}{pf:>7}{fps:>12,.0f}{fps * pf:>12,.0f}{cpu:>14.1f}")
    for pf, by in lb.items():
        ratio = by["ratio"][0]
        low, high = by["spread"]
        ok = ok and ratio >= 0.95
        print(
            f"{verdict(ratio >= 0.95)} {pf:>2}/frame: {ratio:.3f} x the floor's frames/s, median of "
            f"the rounds' ratios (they ranged {low:.2f}-{high:.2f}; target >= 0.95)"
        )
    for pf, by in lb.items():
        lo, hi = by["interval"]
        cpu = by["bybit_cancel"][1] / by["floor"][1]
        print(
            f"INFO {pf:>2}/frame: 95 % bootstrap interval of that median {lo:.3f}-{hi:.3f} x; "
            f"CPU per frame {cpu:.3f} x the floor's (medians)"
        )
    print(
        f"(c) in process, one core: {ws_n} parked cancel_order calls resumed by routed pushes, "
        f"best of {rounds} rounds"
    )
    parked = await _best_of(rounds, lambda pf: parked_in_process(ws_n, pf))
    _print_rates(parked, ("bybit_cancel", "floor"), "client", "calls resumed/s")
    for pf in (1, 10):
        ours, base = parked[pf]["bybit_cancel"], parked[pf]["floor"]
        print(
            f"INFO {pf:>2}/frame: {ours / base:.3f} x the floor's rate; from the frame to the "
            f"returned call, ours takes {(1 / ours - 1 / base) * 1e6:+.2f} us per call against it"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "-n", type=positive_int, default=100_000, help="order updates per round, in process"
    )
    p.add_argument(
        "--ws-n", type=positive_int, default=3_000, help="parked cancels per loopback round"
    )
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds in process")
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=2_000,
        help="order updates per chunk in process (a): each path takes a chunk in turn",
    )
    # Many short rounds: each round's two runs are close in time, and the median of 11 ratios
    # moves less with this VM's drift than that of a few long ones.
    p.add_argument("--ws-rounds", type=positive_int, default=11, help="rounds over the loopback")
    p.add_argument("--inproc", action="store_true", help="run the fake in this process")
    p.add_argument("--no-pin", action="store_true", help="leave the fake and clients unpinned")
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    return run(
        lambda: throughput(
            a.n, a.ws_n, a.rounds, a.chunk, a.ws_rounds, a.inproc, a.uvloop, not a.no_pin
        ),
        a.uvloop,
    )


if __name__ == "__main__":
    raise SystemExit(main())
