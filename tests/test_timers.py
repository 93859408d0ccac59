"""The shared timers: ordering, out-of-order deadlines, stale items, compaction, one armed handle."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import pytest

from bybit_cancel._core import Pending
from bybit_cancel._timers import DEADLINE, GRACE, Timers


def entry(name: str) -> Pending:
    return Pending("linear", "BTCUSDT", name, "")


class HandleCountingLoop:
    """The running loop, counting the timers ``call_at`` armed that are still live (neither fired
    nor cancelled), and the most at once: on any loop, where asyncio's ``_scheduled`` heap is
    asyncio's own (uvloop keeps its timers in libuv)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: set[asyncio.TimerHandle] = set()
        self.most_live = 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        def fire() -> None:
            self.live.discard(handle)
            callback(*args)

        handle = self.loop.call_at(when, fire)
        self.live = {h for h in self.live if not h.cancelled()}
        self.live.add(handle)
        self.most_live = max(self.most_live, len(self.live))
        return handle


async def test_items_fire_in_time_order_on_one_handle() -> None:
    counting = HandleCountingLoop(asyncio.get_running_loop())
    loop: asyncio.AbstractEventLoop = counting  # type: ignore[assignment]
    fired: list[tuple[str, int, Any]] = []
    done = asyncio.Event()

    def on_due(e: Pending, kind: int, payload: Any) -> None:
        fired.append((e.order_id, kind, payload))
        if len(fired) == 4:
            done.set()

    timers: Timers[Pending] = Timers(loop, on_due)
    now = loop.time()
    a, b, c = entry("a"), entry("b"), entry("c")
    timers.add_deadline(a, now + 0.05, 0.05)
    timers.add_deadline(b, now + 0.02, 0.02)  # another timeout: a queue of its own
    timers.add_grace(c, now + 0.01)
    timers.add(now + 0.03, GRACE, a, "payload")
    assert len(timers) == 4
    await asyncio.wait_for(done.wait(), 2)
    assert [f[0] for f in fired] == ["c", "b", "a", "a"]
    assert fired[0] == ("c", GRACE, 0)  # the first grace: wait number 0
    assert fired[1] == ("b", DEADLINE, 0.02)
    assert fired[2] == ("a", GRACE, "payload")
    assert len(timers) == 0
    # never more than one loop timer for all of them, and none left
    assert counting.most_live == 1
    assert not [h for h in counting.live if not h.cancelled()]


async def test_items_due_together_fire_in_time_order() -> None:
    """A loop that wakes late (busy with other work) finds items of several queues due at once:
    they still run in the order they came due, not queue by queue (the test above used to fail
    so on a loaded machine)."""
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, int]] = []
    done = asyncio.Event()

    def on_due(e: Pending, kind: int, payload: Any) -> None:
        fired.append((e.order_id, kind))
        if len(fired) == 5:
            done.set()

    timers: Timers[Pending] = Timers(loop, on_due)
    now = loop.time()
    a, b, c, d = entry("a"), entry("b"), entry("c"), entry("d")
    timers.add_deadline(a, now + 0.05, 0.05)
    timers.add_deadline(b, now + 0.02, 0.02)
    timers.add_grace(c, now + 0.01)
    timers.add(now + 0.03, GRACE, a, "payload")
    timers.add(now + 0.04, GRACE, d, "payload")
    time.sleep(0.1)  # noqa: ASYNC251 (on purpose: the loop is busy past every item's time)
    await asyncio.wait_for(done.wait(), 2)
    assert fired == [("c", GRACE), ("b", DEADLINE), ("a", GRACE), ("d", GRACE), ("a", DEADLINE)]


async def test_closed_entries_do_not_fire() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: fired.append(e.order_id))
    now = loop.time()
    a, b = entry("a"), entry("b")
    timers.add_deadline(a, now + 0.01, 0.01)
    timers.add_deadline(b, now + 0.02, 0.02)
    a.closed = True
    timers.release(a)
    flag = asyncio.Event()
    loop.call_at(now + 0.05, flag.set)
    await asyncio.wait_for(flag.wait(), 2)
    assert fired == ["b"]


async def test_compaction_keeps_memory_proportional_to_live_calls() -> None:
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    now = loop.time()
    live = entry("live")
    timers.add_deadline(live, now + 100, 100)
    for i in range(5000):
        e = entry(str(i))
        timers.add_deadline(e, now + 100, 100)
        timers.add_grace(e, now + 50)
        e.closed = True
        timers.release(e)
    assert len(timers) < 3000  # compacted along the way, not 10,001 items
    timers.close()
    assert len(timers) == 0


async def test_calls_finishing_oldest_first_leave_nothing_behind() -> None:
    """A burst released in the order it started (as pushes come): each finished call is at the
    queues' heads and leaves at once, without waiting for a compaction."""
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    now = loop.time()
    window: list[Pending] = []
    for i in range(5_000):
        e = entry(str(i))
        timers.add_deadline(e, now + 100, 100)
        timers.add_grace(e, now + 50)
        window.append(e)
        if len(window) > 500:  # 500 in flight; the oldest finishes
            old = window.pop(0)
            old.closed = True
            timers.release(old)
            assert len(timers) == 2 * len(window)  # its deadline and grace are gone
    assert {id(e) for e in timers.open_entries()} == {id(e) for e in window}
    assert [e.order_id for e in timers._graces] == [e.order_id for e in window]
    timers.close()


async def test_calls_finishing_out_of_order_are_compacted_away() -> None:
    """Calls finishing in any order (neither the newest nor the oldest): the items stay
    proportional to the calls in flight."""
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    now = loop.time()
    rng = random.Random(7)
    window: list[Pending] = []
    peak = 0
    for i in range(20_000):
        e = entry(str(i))
        timers.add_deadline(e, now + 100, 100)
        timers.add_grace(e, now + 50)
        window.append(e)
        if len(window) > 500:  # 500 in flight; one of the middle ones finishes
            old = window.pop(rng.randrange(1, len(window) - 1))
            old.closed = True
            timers.release(old)
        peak = max(peak, len(timers))
    assert peak <= 1024 + 4 * 501 + 2
    assert {id(e) for e in timers.open_entries()} == {id(e) for e in window}
    timers.close()


async def test_each_timeout_gets_a_queue_and_more_go_to_the_heap() -> None:
    """Deadlines fire with their own call's timeout as payload, whatever the mix of timeouts."""
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: fired.append((e.order_id, p)))
    now = loop.time()
    rng = random.Random(5)
    expected = []
    for i in range(40):
        timeout = rng.choice([0.01, 0.02, 0.03]) if i < 20 else 0.001 * (i + 1)
        timers.add_deadline(entry(f"c{i}"), now + timeout, timeout)
        expected.append((f"c{i}", timeout))
    assert len(timers._deadlines) <= 8 and timers._heap
    done = asyncio.Event()
    loop.call_at(now + 0.2, done.set)
    await asyncio.wait_for(done.wait(), 2)
    assert sorted(fired) == sorted(expected)
    assert len(timers) == 0
    timers.close()


async def test_calls_each_with_its_own_timeout_leave_nothing_behind() -> None:
    """Callers computing each timeout (a remaining budget) get a queue after another; past eight
    of them the emptied ones make room, so a finished call still leaves at once."""
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    now = loop.time()
    for i in range(50):
        e = entry(str(i))
        timers.add_deadline(e, now + 30 + i, 30.0 + i * 0.001)
        timers.add_grace(e, now + 1)
        e.closed = True
        timers.release(e)
        assert len(timers) == 0 and not timers._heap
    assert len(timers._deadlines) <= 8
    timers.close()
    timers.release(entry("late"))  # a call ending after close(): nothing to count down
    assert timers._open == 0


async def test_a_finished_newest_call_leaves_nothing_behind() -> None:
    """Sequential callers: each finished call's items are dropped at once, not kept until due."""
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    now = loop.time()
    for i in range(100):
        e = entry(str(i))
        timers.add_deadline(e, now + 30 + i, 30)
        timers.add_grace(e, now + 1 + i)
        e.closed = True
        timers.release(e)
        assert len(timers) == 0
    timers.close()


async def test_queued_times_round_up_to_the_millisecond_and_share_one_float() -> None:
    """A burst's calls in the same millisecond share one float per queue (memory per pending);
    a deadline is rounded up, never down: it may not fire before the caller's timeout."""
    loop = asyncio.get_running_loop()
    timers: Timers[Pending] = Timers(loop, lambda e, k, p: None)
    base = 1000.0
    calls = [entry(str(i)) for i in range(5)]
    for i, e in enumerate(calls[:4]):
        timers.add_deadline(e, base + 0.0101 + i * 0.0001, 10.0)  # all within (1000.010, 1000.011]
        timers.add_grace(e, base + 0.0051 + i * 0.0001)
    timers.add_deadline(calls[4], base + 0.0121, 10.0)
    assert calls[0].deadline_at == pytest.approx(base + 0.011)
    assert calls[0].deadline_at >= base + 0.0104
    assert all(e.deadline_at is calls[0].deadline_at for e in calls[:4])
    assert all(e.grace_at is calls[0].grace_at for e in calls[:4])
    assert calls[4].deadline_at == pytest.approx(base + 0.013)
    timers.close()


async def test_the_first_grace_names_the_first_wait() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[int, Any]] = []
    done = asyncio.Event()

    def on_due(e: Pending, kind: int, payload: Any) -> None:
        fired.append((kind, payload))
        done.set()

    timers: Timers[Pending] = Timers(loop, on_due)
    timers.add_grace(entry("a"), loop.time() + 0.005)
    await asyncio.wait_for(done.wait(), 2)
    assert fired == [(GRACE, 0)]


async def test_rounding_up_to_the_millisecond_never_goes_down() -> None:
    """Queued times are rounded up to the millisecond; k / 1000 can land one float step below a
    time just above a millisecond boundary, and a deadline must never fire early."""
    rng = random.Random(11)
    times = [19.173000000000002] + [
        math.nextafter(rng.randrange(10**9) / 1000, math.inf) for _ in range(20_000)
    ]
    times += [rng.uniform(0, 1e6) for _ in range(20_000)]
    timers: Timers[Pending] = Timers(asyncio.get_running_loop(), lambda e, k, p: None)
    try:
        for when in times:
            # (Each pair of calls starts from empty queues, so both take the queue path.)
            e = entry("r")
            timers.add_deadline(e, when, 1.0)
            timers.add_grace(e, when)
            e.closed = True
            timers.release(e)
            for up in (e.deadline_at, e.grace_at):
                assert when <= up < when + 0.001 + 1e-9
                assert up == round(up, 3)
        assert len(timers) == 0
    finally:
        timers.close()
