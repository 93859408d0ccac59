"""Layers: where ours spends its time beyond the bare typed router, in process, layer by layer.

    python benchmarks/layers.py                    # the client's default memory of final states
    python benchmarks/layers.py --recent-size 1    # the memory's work, but not its size (item 39)
    python benchmarks/layers.py --recent-size 0    # the memory off

The recorded Bybit push (as in ``throughput.py`` (a)) as frames of 1 and of 10 orders, each order
resolving a registered cancel. Five paths take each chunk of frames in turn (which goes first
rotates), each adding one layer to the one before:

    typed+dict     our decoder and the floor's dict of futures (``throughput.py``'s typed+dict)
    +tracker       the decode, then ``CancelTracker.on_orders`` (its memory, its rules, the record)
    +wake-up       and ``wake_all`` of the entries it resolved
    +callback      the decode, then the client's push callback (``_on_push``: the clock reading,
                   the tracker, the wake-up)
    +router        the stream's router (``PrivateStream._route``): ours, as a push is routed

Prints each path's time per order update and what each layer adds (medians over the chunks of
each chunk's own differences). No target: it says where the time beyond typed+dict goes, which
the 4 x json+dict target of ``throughput.py`` leaves almost none of.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._clients import FINAL
from benchmarks._common import machine, non_negative_int, positive_int, run
from benchmarks.throughput import _router_for, recorded_frames
from bybit_cancel import BybitCancelClient
from bybit_cancel._call import Call, wake_all
from bybit_cancel._models import ws_decoder

PATHS = ("typed+dict", "+tracker", "+wake-up", "+callback", "+router")


async def layers(n: int, per_frame: int, chunk: int, recent_size: int) -> dict[str, list[float]]:
    """Per path, us per order update of each chunk (after the first two chunks, a warm-up)."""
    loop = asyncio.get_running_loop()
    frames, ids = recorded_frames(n, per_frame)
    # A client per path: each keeps its own memory of final states, as the one path of ours in
    # throughput.py does (shared, the next path's cancels would be answered from it).
    clients: dict[str, BybitCancelClient] = {}
    for name in PATHS[1:]:
        client = clients[name] = BybitCancelClient(
            api_key="k",
            api_secret="s",
            rest_url="http://x",
            ws_url="ws://x",
            recent_size=recent_size,
        )
        client._loop = loop
    routers = {"+router": _router_for(clients["+router"])._route}
    decode = ws_decoder.decode
    call_soon = loop.call_soon

    def typed_dict(batch: list[bytes], batch_ids: list[str]) -> float:
        pending = {oid: loop.create_future() for oid in batch_ids}
        t0 = time.perf_counter()
        for raw in batch:
            for order in decode(raw).data or ():
                if order.order_status in FINAL:
                    fut = pending.pop(order.order_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(order)
        seconds = time.perf_counter() - t0
        if pending:
            raise RuntimeError(f"typed+dict: {len(pending)} left")
        return seconds

    def ours(name: str, batch: list[bytes], batch_ids: list[str]) -> float:
        client = clients[name]
        tracker = client._tracker
        on_orders = tracker.on_orders
        now = time.monotonic()
        for oid in batch_ids:
            if not isinstance(tracker.start(Call("linear", "SOLUSDT", oid, ""), now=now), Call):
                raise RuntimeError("layers: a cancel was answered from memory")
        t0 = time.perf_counter()
        if name == "+tracker":
            for raw in batch:
                on_orders(decode(raw).data or [], "websocket", time.monotonic())
        elif name == "+wake-up":
            for raw in batch:
                resolved = on_orders(decode(raw).data or [], "websocket", time.monotonic())
                if resolved:
                    wake_all(resolved, call_soon)
        elif name == "+callback":
            on_push = client._on_push
            for raw in batch:
                on_push(decode(raw).data or [])
        else:
            route = routers[name]
            for raw in batch:
                route(raw)
        seconds = time.perf_counter() - t0
        if len(tracker) != 0:
            raise RuntimeError(f"{name}: {len(tracker)} cancels left unresolved")
        return seconds

    timed: dict[str, list[float]] = {name: [] for name in PATHS}
    step = max(1, chunk // per_frame)
    turn = 0
    for k, first in enumerate(range(0, len(frames), step)):
        batch = frames[first : first + step]
        batch_ids = ids[first * per_frame : (first + step) * per_frame]
        gc.collect()
        for name in PATHS[turn:] + PATHS[:turn]:
            if name == "typed+dict":
                seconds = typed_dict(batch, batch_ids)
            else:
                seconds = ours(name, batch, batch_ids)
            if k >= 2:
                timed[name].append(seconds / len(batch_ids) * 1e6)
        turn = (turn + 1) % len(PATHS)
    return timed


async def main_async(n: int, chunk: int, recent_size: int) -> bool:
    print(f"layers on {machine()}: {n} order updates per frame size, chunks of {chunk}, "
          f"recent_size={recent_size}; us per order update, medians over the chunks")  # fmt: skip
    print(f"{'path':<14}{'1/frame':>10}{'adds':>8}{'10/frame':>12}{'adds':>8}")
    by_size = {pf: await layers(n, pf, chunk, recent_size) for pf in (1, 10)}
    rows: dict[str, list[str]] = {name: [] for name in PATHS}
    for timed in by_size.values():
        for i, name in enumerate(PATHS):
            cell = f"{median(timed[name]):>10.3f}"
            if i:
                below = timed[PATHS[i - 1]]
                adds = median([a - b for a, b in zip(timed[name], below, strict=True)])
                cell += f"{adds:>+8.3f}"
            else:
                cell += f"{'':>8}"
            rows[name].append(cell)
    for name in PATHS:
        print(f"{name:<14}{rows[name][0]}  {rows[name][1]}")
    for pf, timed in by_size.items():
        beyond = median([a - b for a, b in zip(timed["+router"], timed["typed+dict"], strict=True)])
        print(f"INFO {pf:>2}/frame: ours takes {beyond:+.3f} us per update beyond typed+dict")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=100_000, help="order updates per frame size")
    p.add_argument("--chunk", type=positive_int, default=2_000, help="order updates per chunk")
    p.add_argument(
        "--recent-size",
        type=non_negative_int,
        default=10_000,
        help="the client's memory of final states (0: off; 1: its work, not its size)",
    )
    a = p.parse_args(argv)
    return run(lambda: main_async(a.n, a.chunk, a.recent_size), False)


if __name__ == "__main__":
    raise SystemExit(main())
