"""Model-based randomised tests: CancelTracker and Timers run side by side with plain, slow
reference models over thousands of seeded random operation sequences, compared after every step."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import pytest

from bybit_cancel import CancelResult
from bybit_cancel._core import _EVICT_SLACK, CancelTracker, Pending
from bybit_cancel._models import WireOrder
from bybit_cancel._timers import _GRANULARITY, DEADLINE, GRACE, Timers

FINAL = ["Cancelled", "PartiallyFilledCanceled", "Deactivated", "Filled", "Rejected"]
OPEN = ["New", "PartiallyFilled", "Untriggered", "Triggered", "PendingCancel"]
Mem = tuple[WireOrder, str, float]  # a final state as remembered: the order, its source, when


class E(Pending):
    __slots__ = ("n",)

    def __init__(self, n: int, category: str, order_id: str, link: str) -> None:
        super().__init__(category, "S", order_id, link)
        self.n = n


@dataclass
class ME:  # the model's view of an entry
    cat: str
    oid: str  # given, or learnt from the ack
    link: str  # given, or learnt from the ack when it had none
    key: str | None  # the link id it was registered by (no order id given), else None


def readable(o: WireOrder) -> bool:
    try:
        return all(Decimal(q) is not None for q in (o.cum_exec_qty, o.leaves_qty) if q)
    except InvalidOperation:
        return False


def ms(text: str) -> int:
    return int(text) if text.isdigit() else 0


def result_of(m: Mem) -> CancelResult:
    o, cum, leaves = m[0], m[0].cum_exec_qty, m[0].leaves_qty
    return CancelResult(
        o.order_id, o.order_link_id, o.category, o.symbol, cast(Any, o.order_status),
        o.cancel_type, o.reject_reason, Decimal(cum or 0), Decimal(leaves) if leaves else None,
        ms(o.updated_time), cast(Any, m[1]),
    )  # fmt: skip


class Model:
    """The tracker's documented rules, plainly. The memory is never trimmed by the model itself:
    the test drops what the tracker dropped, after checking that the bounds allowed it."""

    def __init__(self, age: float, size: int) -> None:
        self.age, self.size = age, size
        self.pend: dict[int, ME] = {}
        self.mem: dict[str, Mem] = {}  # order id -> its first final state, oldest first
        self.links: dict[tuple[str, str], str] = {}  # (category, link id) -> order id
        self.last: dict[int, tuple[int, str]] = {}

    def fresh(self, m: Mem, now: float) -> bool:
        return m[2] >= now - self.age

    def recall(self, cat: str, oid: str, link: str, now: float) -> Mem | None:
        rid = oid or self.links.get((cat, link))
        m = None if rid is None else self.mem.get(rid)
        ok = m is not None and m[0].category in ("", cat) and self.fresh(m, now)
        return m if m is not None and ok and readable(m[0]) else None

    def matches(self, e: ME, o: WireOrder) -> bool:
        if e.oid:
            return o.order_id == e.oid and o.category in ("", e.cat)
        return bool(e.key) and (o.category, o.order_link_id) == (e.cat, e.key)

    def remember(self, m: Mem) -> Mem:
        old = self.mem.pop(m[0].order_id, None)
        if old is not None and old[0].order_link_id:  # its link id is forgotten with it
            key = (old[0].category, old[0].order_link_id)
            if self.links.get(key) == m[0].order_id:
                del self.links[key]
        self.mem[m[0].order_id] = m
        if m[0].order_link_id:
            self.links[(m[0].category, m[0].order_link_id)] = m[0].order_id
        return m

    def on_orders(self, orders: list[WireOrder], src: str, now: float) -> dict[int, Mem]:
        done: dict[int, Mem] = {}
        for o in orders:
            hit = [n for n, e in self.pend.items() if self.matches(e, o)]
            if o.order_status not in FINAL:
                for n in hit:
                    if n not in self.last or ms(o.updated_time) >= self.last[n][0]:
                        self.last[n] = (ms(o.updated_time), o.order_status)
                continue
            own, known = (o, src, now), self.mem.get(o.order_id)
            if not self.size:  # recent_size=0: nothing remembered, each update answers itself
                final = own
            elif known is None or not self.fresh(known, now):  # (one past recent_age: forgotten)
                final = self.remember(own)
            elif not o.order_id or known[0].category not in ("", o.category):
                final = own  # another order's: not remembered, and not answered with the first
            elif not readable(known[0]) and readable(o):
                final = self.remember(own)  # an unreadable state gives way
            else:
                final = known  # sticky: the first final state wins
            for n in hit:
                done[n] = final
                self.drop(n)
        return done

    def drop(self, n: int) -> None:
        self.pend.pop(n, None)
        self.last.pop(n, None)

    def evicted(self, oids: list[str]) -> None:
        for oid in oids:
            o = self.mem.pop(oid)[0]
            if o.order_link_id and self.links.get((o.category, o.order_link_id)) == oid:
                del self.links[(o.category, o.order_link_id)]


def run_tracker(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    size, age = rng.choice([0, 1, 3, 40, 10_000]), rng.choice([5.0, 50.0])
    t: CancelTracker[E] = CancelTracker(recent_size=size, recent_age=age)
    model, now = Model(age, size), 0.0
    cats, ids, links = ["linear", "spot"], ["A", "B", "C", ""], ["L1", "L2", ""]
    link_of = {(c, i): rng.choice(links) for c in [*cats, ""] for i in ids}
    entries: dict[int, E] = {}
    views: dict[int, ME] = {}
    bulk: list[str] = []  # a few ids of the last bulk push: oldest, evicted or not, newest

    def wire(oid: str, cat: str, final: bool) -> WireOrder:
        return WireOrder(
            oid, link_of.get((cat, oid), "L1") if rng.random() < 0.7 else "", cat, "S",
            rng.choice(FINAL if final else OPEN), "C", "R", rng.choice(["0", "0.5", "", "n/a"]),
            rng.choice(["0", "1", "", "n/a"]), rng.choice(["1000", "2000", "", "x"]),
        )  # fmt: skip

    for step in range(steps):
        op = rng.random()
        now += rng.choice([0.0, 0.0, 0.5, age * 0.4])
        # (An ack comes before the call ends: not for an entry forgotten while pending.)
        ackable = [n for n, e in entries.items() if n in model.pend or e.final or e.error]
        if op < 0.3:  # a cancel by order id, or by link id only (adversarial: neither)
            n, cat = len(views), rng.choice(cats)
            oid = rng.choice(ids + bulk) if op < 0.15 else ""
            link = "" if oid else rng.choice(["L1", "L2", "L1", "L2", ""])
            got = t.start(E(n, cat, oid, link), now=now)
            m = model.recall(cat, oid, link, now)
            if m is not None:
                assert got == result_of(m)
                continue
            assert isinstance(got, E) and got.n == n
            entries[n], views[n] = got, ME(cat, oid, link, None if oid else link)
            model.pend[n] = views[n]
        elif op < 0.45 and ackable:  # an ack naming any order id, maybe not the expected one
            n = rng.choice(ackable)
            e, me = entries[n], views[n]
            oid, link = rng.choice(ids), rng.choice(links)
            r = t.acknowledge(e, order_id=oid, order_link_id=link, now=now)
            if link and not me.link and (n not in model.pend or me.key is None):
                me.link = link  # (not while it is indexed by its empty link id)
            want = None
            if oid and not me.oid and n in model.pend:
                me.oid = oid
                m = model.recall(me.cat, oid, me.link, now)
                if m is not None:
                    want = result_of(m)
                    model.drop(n)
            assert r == want
            assert (e.order_id, e.order_link_id) == (me.oid, me.link)
        elif op < 0.83:  # a push or a REST answer; now and then many new orders at once
            orders = [
                wire(rng.choice(ids), rng.choice([*cats, *cats, ""]), rng.random() < 0.7)
                for _ in range(rng.choice([1, 1, 2, 3]))
            ]
            if op >= 0.81:  # (link ids reused, in both categories)
                orders = [
                    WireOrder(f"Z{step}_{i}", f"L{i % 3}", cats[i % 2], "S", "Filled")
                    for i in range(300)
                ]
                bulk = [orders[0].order_id, orders[40].order_id, orders[-1].order_id]
            src = rng.choice(["websocket", "rest"])
            done = t.on_orders(orders, cast(Any, src), now)
            want_done = model.on_orders(orders, src, now)
            seen = {e.n: (id(e.final.order), e.final.source, e.final.at) for e in done if e.final}
            assert len(seen) == len(done) == len({id(e) for e in done})
            assert seen == {n: (id(m[0]), m[1], m[2]) for n, m in want_done.items()}
            for e in done:
                assert e.final is not None and e.final.order.category in ("", e.category)
            # The memory: the tracker's, in the model's order, less only what the bounds allow.
            mine, kept = list(model.mem), set(t._recent)
            assert list(t._recent) == [k for k in mine if k in kept]
            gone = [(len(mine) - i, k) for i, k in enumerate(mine) if k not in kept]
            for rank, k in gone:  # older than the newest `size`, or past recent_age
                assert rank > size or not model.fresh(model.mem[k], now)
            model.evicted([k for _, k in gone])
            assert len(t._recent) <= size + _EVICT_SLACK + len(orders)
            assert t._recent_link == model.links
        elif op < 0.97 and entries:  # forget any entry: pending, resolved, failed or forgotten
            n = rng.choice(list(entries))
            t.forget(entries[n])
            model.drop(n)
        elif op >= 0.97:
            failed = t.fail_all(RuntimeError())
            assert sorted(e.n for e in failed) == sorted(model.pend)
            for n in list(model.pend):
                model.drop(n)
        assert len(t) == len(model.pend)
        assert sorted(e.n for e in t.pending()) == sorted(model.pend)
        for n in model.pend:
            last = model.last.get(n)
            assert t.last_status(entries[n]) == (None if last is None else last[1])


@pytest.mark.parametrize("seed", range(6))
def test_tracker_agrees_with_model(seed: int) -> None:
    for k in range(160):
        run_tracker(seed * 1000 + k, 60)


class Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.off = when, callback, False

    def cancel(self) -> None:
        self.off = True


class Loop:
    """What Timers uses of a loop, on a clock the test moves; `after` checks each batch."""

    def __init__(self, after: Callable[[], None]) -> None:
        self.now, self.handle, self.after = 100.0, Handle(0.0, after), after
        self.handle.off = True

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Handle:
        assert self.handle.off  # at most one armed loop timer
        self.handle = Handle(when, callback)
        return self.handle

    def run(self, until: float) -> None:  # a punctual loop: each timer at its time
        while not self.handle.off and self.handle.when <= until:
            self.handle.off = True
            self.now = max(self.now, self.handle.when)
            self.handle.callback()
            self.after()
        self.now = max(self.now, until)


@dataclass
class Item:
    due: float  # as queued (rounded up to the millisecond on the FIFO queues)
    reach: float  # the latest time a loop could run it: its time, or later (added late, busy)
    fired: bool = False


@dataclass
class Call:
    entry: Pending
    items: dict[tuple[int, Any], Item] = field(default_factory=dict)  # (kind, payload) -> item


def run_timers(seed: int, steps: int, in_flight: int, slow: float = 1.0) -> None:
    rng = random.Random(seed)
    calls: list[Call] = []  # in flight, oldest first
    by_entry: dict[int, Call] = {}
    batch: list[tuple[Pending, int, Any, bool]] = []
    bounded: list[bool] = []  # after each release: memory proportional to the calls in flight

    def on_due(e: Pending, kind: int, payload: Any) -> None:
        # (Checked after the batch: Timers logs and swallows what a callback raises.)
        batch.append((e, kind, payload, e.closed))
        if rng.random() < 0.1:  # the call ends from the callback
            finish(by_entry[id(e)])

    def after_batch() -> None:
        dues = []
        for e, kind, payload, closed in batch:
            item = by_entry[id(e)].items[(kind, payload)]
            assert not closed and not item.fired  # once, never for a closed entry
            assert item.due <= loop.now <= item.reach + _GRANULARITY + 1e-9
            item.fired = True
            dues.append(item.due)
        assert dues == sorted(dues)  # in the order they came due
        batch.clear()
        for call in calls:  # and all that were due came
            assert all(i.fired or i.due > loop.now for i in call.items.values())
        assert all(bounded)

    def finish(call: Call) -> None:
        call.entry.closed = True
        calls.remove(call)
        timers.release(call.entry)
        bounded.append(len(timers) <= max(1024, 4 * len(calls)))

    def queued(call: Call, kind: int, payload: Any, when: float, due: float) -> None:
        assert when <= due <= when + 0.001 + 1e-9  # rounded up, never down
        call.items[(kind, payload)] = Item(due, max(due, loop.now))

    loop = Loop(after_batch)
    timers: Timers[Pending] = Timers(cast(asyncio.AbstractEventLoop, loop), on_due)
    timeouts = [slow * t for t in (0.01, 0.02, 0.05)]  # and ten more: past the eight queues
    timeouts += [round(slow * rng.uniform(0.001, 0.3), 4) for _ in range(10)]
    for step in range(steps):
        op, now = rng.random(), loop.now
        back = rng.choice([0.0, 0.0, 0.0, -rng.uniform(0, 0.002)])  # a time out of order
        if op < 0.35 and len(calls) < in_flight:  # a call: its deadline and first grace
            call = Call(Pending("linear", "S", str(step), ""))
            calls.append(call)
            by_entry[id(call.entry)] = call
            timeout = rng.choice(timeouts)
            timers.add_deadline(call.entry, now + timeout + back, timeout)
            queued(call, DEADLINE, timeout, now + timeout + back, call.entry.deadline_at)
            if rng.random() < 0.8:
                timers.add_grace(call.entry, now + slow * 0.005 + back)
                queued(call, GRACE, 0, now + slow * 0.005 + back, call.entry.grace_at)
        elif op < 0.45 and calls:  # a later wait of a call (one at a time), on the heap
            call = rng.choice(calls)
            if all(i.fired for k, i in call.items.items() if k[0] == GRACE and k[1] != 0):
                when = now + slow * rng.uniform(0, 0.05) + back
                timers.add(when, GRACE, call.entry, step)
                call.items[(GRACE, step)] = Item(when, max(when, now))
        elif op < 0.7 and calls:  # a call ends: the newest, the oldest or any
            finish(calls[rng.choice([-1, 0, rng.randrange(len(calls))])])
            assert all(bounded)
        elif op < 0.95:  # time passes
            loop.run(now + rng.choice([0.0005, 0.002, 0.01, 0.03]))
        elif op < 0.97:  # the clock goes back a little
            loop.now -= rng.uniform(0, 0.001)
        else:  # a busy loop: nothing runs until it gets back
            loop.now += rng.uniform(0, 0.05)
            for item in (i for call in calls for i in call.items.values()):
                item.reach = max(item.reach, loop.now)
            loop.run(loop.now)
        if step % 50 == 0 or in_flight < 50:
            for call in calls:  # none overdue
                assert all(
                    i.fired or loop.now <= i.reach + _GRANULARITY for i in call.items.values()
                )
            queues = sum(len(q) for q in timers._deadlines.values())
            assert len(timers) == queues + len(timers._graces) + len(timers._heap)
            waiting = [
                c for c in calls if not all(i.fired for k, i in c.items.items() if k[0] == DEADLINE)
            ]
            assert {id(e) for e in timers.open_entries()} == {id(c.entry) for c in waiting}
    loop.run(loop.now + 10 * slow)
    assert all(i.fired for call in calls for i in call.items.values())
    assert len(timers) == 0 and loop.handle.off
    timers.close()


@pytest.mark.parametrize("seed", range(4))
def test_timers_agree_with_model(seed: int) -> None:
    for k in range(250):
        run_timers(seed * 1000 + k, 60, 8)
    run_timers(seed, 5000, 200, slow=1000.0)  # long timeouts, many in flight: compactions
