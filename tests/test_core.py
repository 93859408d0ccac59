"""The sans-I/O core, tested synchronously: no event loop, no clock, no sockets."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from bybit_cancel import CancelResult, OrderStatus
from bybit_cancel._core import CancelTracker, Pending
from bybit_cancel._models import WireOrder, ws_decoder

from .helpers import fixture_bytes


class Tagged(Pending):
    """An entry with a tag to tell it apart (the client's entries are ``_call.Call``)."""

    __slots__ = ("waiter",)

    def __init__(
        self, waiter: Any, category: str, symbol: str, order_id: str, order_link_id: str
    ) -> None:
        super().__init__(category, symbol, order_id, order_link_id)
        self.waiter = waiter


def register(
    t: CancelTracker[Tagged],
    waiter: Any,
    *,
    category: str,
    symbol: str,
    order_id: str | None,
    order_link_id: str | None,
    now: float,
) -> Tagged | CancelResult:
    """Register a cancel as the client does: the link id only when there is no order id."""
    link = "" if order_id else order_link_id or ""
    return t.start(Tagged(waiter, category, symbol, order_id or "", link), now=now)


def order(
    order_id: str = "o1",
    status: str = "Cancelled",
    *,
    link: str = "",
    category: str = "linear",
    updated: str = "1000",
    cum: str = "0",
    leaves: str = "0",
) -> WireOrder:
    return WireOrder(
        order_id=order_id,
        order_link_id=link,
        category=category,
        symbol="BTCUSDT",
        order_status=status,
        cancel_type="CancelByUser",
        reject_reason="EC_PerCancelRequest",
        cum_exec_qty=cum,
        leaves_qty=leaves,
        updated_time=updated,
    )


def start(
    t: CancelTracker[Tagged],
    waiter: str = "w1",
    *,
    oid: str | None = "o1",
    link: str | None = None,
    category: str = "linear",
) -> Tagged:
    got = register(
        t, waiter, category=category, symbol="BTCUSDT", order_id=oid, order_link_id=link, now=0.0
    )
    assert isinstance(got, Pending)
    return got


def test_push_resolves_by_order_id() -> None:
    """A final push for a pending order id resolves it, with the push's fields."""
    t: CancelTracker[Tagged] = CancelTracker()
    entry = start(t)
    [done] = t.on_orders([order(cum="0.5", leaves="0")], "websocket", 1.0)
    assert done is entry and done.waiter == "w1"
    assert done.outcome  # always true: the client returns `_outcome(entry) or <slow path>`
    assert done.outcome == CancelResult(
        order_id="o1",
        order_link_id="",
        category="linear",
        symbol="BTCUSDT",
        status=OrderStatus.CANCELLED,
        cancel_type="CancelByUser",
        reject_reason="EC_PerCancelRequest",
        cum_exec_qty=Decimal("0.5"),
        leaves_qty=Decimal(0),
        updated_time=1000,
        source="websocket",
    )
    assert len(t) == 0


def test_push_resolves_by_link_id_when_only_link_given() -> None:
    """A caller that gave only orderLinkId is matched by it, even before the ack names the id."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t, oid=None, link="my-link")
    [done] = t.on_orders([order("o9", link="my-link")], "websocket", 1.0)
    assert done.outcome is not None and done.outcome.order_id == "o9"
    assert len(t) == 0


def test_link_id_match_checks_category() -> None:
    """The same orderLinkId in another category does not resolve the cancel."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t, oid=None, link="my-link")
    assert t.on_orders([order("o9", link="my-link", category="spot")], "websocket", 1.0) == []
    assert len(t) == 1


def test_ack_links_order_id() -> None:
    """After the ack names the order id, a push matched by id alone resolves the link-only cancel."""
    t: CancelTracker[Tagged] = CancelTracker()
    entry = start(t, oid=None, link="L")
    assert t.acknowledge(entry, order_id="o7", order_link_id="L", now=0.5) is None
    [done] = t.on_orders([order("o7", link="")], "websocket", 1.0)
    assert done is entry
    assert len(t) == 0 and t.pending() == []


def test_non_final_updates_do_not_resolve_and_track_last_status() -> None:
    """New, PartiallyFilled, Untriggered, Triggered and unknown statuses are not final."""
    t: CancelTracker[Tagged] = CancelTracker()
    entry = start(t)
    for i, status in enumerate(
        ["New", "PartiallyFilled", "Untriggered", "Triggered", "PendingCancel"]
    ):
        assert t.on_orders([order(status=status, updated=str(2000 + i))], "websocket", 1.0) == []
    assert t.last_status(entry) == "PendingCancel"
    assert len(t) == 1


def test_stale_open_update_is_ignored() -> None:
    """An open update older than the last seen one does not overwrite it."""
    t: CancelTracker[Tagged] = CancelTracker()
    entry = start(t)
    t.on_orders([order(status="PartiallyFilled", updated="2000")], "websocket", 1.0)
    t.on_orders([order(status="New", updated="1000")], "websocket", 1.0)
    assert t.last_status(entry) == "PartiallyFilled"


@pytest.mark.parametrize(
    "status", ["Cancelled", "PartiallyFilledCanceled", "Deactivated", "Filled", "Rejected"]
)
def test_every_final_status_resolves(status: str) -> None:
    """Each of Bybit's five final statuses resolves the pending cancel."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t)
    [done] = t.on_orders([order(status=status)], "websocket", 1.0)
    assert done.outcome is not None and done.outcome.status == status
    assert done.outcome.cancelled is (
        status in {"Cancelled", "PartiallyFilledCanceled", "Deactivated"}
    )


def test_final_state_is_sticky_double_filled() -> None:
    """Bybit's second Filled (EC_OrigClOrdIDDoesNotExist) and later pushes change nothing."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t)
    t.on_orders([order(status="Filled", updated="1000")], "websocket", 1.0)
    second = order(status="Filled", updated="1001")
    second.reject_reason = "EC_OrigClOrdIDDoesNotExist"
    t.on_orders([second], "websocket", 1.1)
    t.on_orders([order(status="New", updated="999")], "websocket", 1.2)
    # A new cancel for the same order resolves at once from memory, with the first final state.
    got = register(
        t, "w2", category="linear", symbol="BTCUSDT", order_id="o1", order_link_id=None, now=2
    )
    assert isinstance(got, CancelResult)
    assert got.status is OrderStatus.FILLED and got.reject_reason == "EC_PerCancelRequest"
    assert got.updated_time == 1000


def test_push_before_registration_is_remembered() -> None:
    """A final push that arrived before the cancel was registered resolves it at once."""
    t: CancelTracker[Tagged] = CancelTracker()
    t.on_orders([order("o5", link="L5")], "websocket", 1.0)
    by_id = register(
        t, "w", category="linear", symbol="BTCUSDT", order_id="o5", order_link_id=None, now=2
    )
    by_link = register(
        t, "w", category="linear", symbol="BTCUSDT", order_id=None, order_link_id="L5", now=2
    )
    assert isinstance(by_id, CancelResult) and isinstance(by_link, CancelResult)
    assert len(t) == 0


def test_a_final_state_without_order_id_answers_no_other_cancel() -> None:
    """A malformed final push with no orderId must not answer a link-only cancel of another
    order from memory (it was remembered under "", the lookup's default key)."""
    t: CancelTracker[Tagged] = CancelTracker()
    t.on_orders([order("", "Filled", link="other")], "websocket", 1.0)
    got = register(
        t, "w", category="linear", symbol="BTCUSDT", order_id=None, order_link_id="mine", now=2
    )
    assert isinstance(got, Pending) and len(t) == 1


def test_a_remembered_final_state_of_another_category_answers_nothing() -> None:
    """The same orderId in another category is another order (the id index keeps them apart):
    its remembered final state must not become this order's. A spot X that filled, then the
    linear X cancelled: the linear cancel gets its own Cancelled, not the spot Filled."""
    t: CancelTracker[Tagged] = CancelTracker()
    lin = start(t, "lin", oid="X", category="linear")
    assert t.on_orders([order("X", "Filled", category="spot")], "websocket", 1.0) == []
    [done] = t.on_orders([order("X", "Cancelled", category="linear")], "websocket", 2.0)
    assert done is lin
    got = done.outcome
    assert got is not None and (got.category, got.status) == ("linear", OrderStatus.CANCELLED)
    # The memory keeps the first: a later spot cancel of X is answered with the spot Filled, a
    # later linear one is not answered from memory (another category's state) and goes to Bybit.
    spot = register(
        t, "s", category="spot", symbol="BTCUSDT", order_id="X", order_link_id=None, now=3
    )
    assert isinstance(spot, CancelResult) and spot.status is OrderStatus.FILLED
    again = register(
        t, "l", category="linear", symbol="BTCUSDT", order_id="X", order_link_id=None, now=3
    )
    assert isinstance(again, Pending)


def test_a_final_push_without_order_id_resolves_with_its_own_state() -> None:
    """Final pushes without an orderId (malformed) are not one order: a link-only cancel of
    "mine" gets its own push's Cancelled, not the Filled of "other" seen before it."""
    t: CancelTracker[Tagged] = CancelTracker()
    mine = start(t, "mine", oid=None, link="mine")
    assert t.on_orders([order("", "Filled", link="other")], "websocket", 1.0) == []
    [done] = t.on_orders([order("", "Cancelled", link="mine")], "websocket", 2.0)
    assert done is mine
    got = done.outcome
    assert got is not None and (got.order_link_id, got.status) == ("mine", OrderStatus.CANCELLED)


def test_an_unreadable_final_state_gives_way_to_a_readable_one() -> None:
    """A final push with a quantity that is not a number is remembered but answers nobody (the
    call that got it raises; a new one goes to Bybit). Bybit's readable answer for the same order
    then resolves the new call and replaces it in memory, instead of losing to it for as long
    as the memory keeps it (recent_age)."""
    t: CancelTracker[Tagged] = CancelTracker()
    first = start(t, "first")
    [done] = t.on_orders([order("o1", "Cancelled", cum="n/a")], "websocket", 1.0)
    assert done is first
    with pytest.raises(ArithmeticError):
        _ = done.outcome
    retry = t.start(Tagged("retry", "linear", "BTCUSDT", "o1", ""), now=2.0)
    assert isinstance(retry, Pending)  # not answered from memory: the client asks Bybit
    [done] = t.on_orders([order("o1", "Cancelled", cum="0.25")], "rest", 3.0)
    assert done is retry
    got = done.outcome
    assert got is not None and got.status is OrderStatus.CANCELLED and got.source == "rest"
    assert got.cum_exec_qty == Decimal("0.25")
    # Remembered now: the next cancel is answered at once, with the readable state.
    third = t.start(Tagged("third", "linear", "BTCUSDT", "o1", ""), now=4.0)
    assert isinstance(third, CancelResult) and third.cum_exec_qty == Decimal("0.25")
    # A readable state stays sticky: a later unreadable or different final changes nothing.
    t.on_orders([order("o1", "Filled", cum="x")], "websocket", 5.0)
    fourth = t.start(Tagged("fourth", "linear", "BTCUSDT", "o1", ""), now=6.0)
    assert isinstance(fourth, CancelResult) and fourth.status is OrderStatus.CANCELLED


def test_a_final_state_past_recent_age_gives_way_to_a_new_one() -> None:
    """A remembered state past recent_age is forgotten, only not evicted yet (eviction is
    lazy): the same order's final state seen again (a REST lookup) is remembered afresh and
    answers the next cancel, instead of losing to the forgotten one."""
    t: CancelTracker[Tagged] = CancelTracker(recent_age=10.0)
    t.on_orders([order("o1", link="L1")], "websocket", 0.0)
    t.on_orders([order("o1", link="L2")], "rest", 20.0)
    got = t.start(Tagged("w", "linear", "BTCUSDT", "o1", ""), now=21.0)
    assert isinstance(got, CancelResult) and got.source == "rest" and got.order_link_id == "L2"
    by_old_link = t.start(Tagged("x", "linear", "BTCUSDT", "", "L1"), now=21.0)
    assert isinstance(by_old_link, Pending)  # the forgotten state's link id went with it


def test_an_update_without_a_category_is_not_answered_with_another_categorys_state() -> None:
    """A spot X filled (remembered); an update for X without a category matches the linear X
    cancel (no category matches any): it resolves it with its own state, not the spot Filled."""
    t: CancelTracker[Tagged] = CancelTracker()
    lin = start(t, "lin", oid="X", category="linear")
    assert t.on_orders([order("X", "Filled", category="spot")], "websocket", 1.0) == []
    [done] = t.on_orders([order("X", "Cancelled", category="")], "websocket", 2.0)
    assert done is lin and done.outcome is not None
    assert done.outcome.status is OrderStatus.CANCELLED


def test_forget_after_an_ack_naming_only_a_link_id_for_an_entry_with_no_id() -> None:
    """An entry given neither id (the client never registers one) sits in the link index under
    (category, ""): an ack naming a link id must not move it off that key, or forget() misses
    it and it stays counted for ever."""
    t: CancelTracker[Tagged] = CancelTracker()
    e = t.start(Tagged("w", "linear", "BTCUSDT", "", ""), now=0.0)
    assert isinstance(e, Tagged)
    t.acknowledge(e, order_id="", order_link_id="L1", now=0.0)
    t.forget(e)
    assert len(t) == 0 and t.pending() == []


def test_acknowledge_after_forget_files_nothing() -> None:
    """An ack that arrives for a link-only entry already forgotten (its call timed out or was
    cancelled) files nothing: a later push for the order resolves nobody and the count stays 0."""
    t: CancelTracker[Tagged] = CancelTracker()
    e = start(t, oid=None, link="L")
    t.forget(e)
    assert t.acknowledge(e, order_id="o1", order_link_id="L", now=0.0) is None
    assert len(t) == 0 and t.pending() == []
    assert t.on_orders([order("o1", link="L")], "websocket", 1.0) == []
    assert len(t) == 0
    # The same for one that fail_all() removed.
    f = start(t, oid=None, link="M")
    t.fail_all(RuntimeError("closed"))
    assert t.acknowledge(f, order_id="o2", order_link_id="M", now=0.0) is None
    assert t.on_orders([order("o2", link="M")], "websocket", 1.0) == []
    assert len(t) == 0 and t.pending() == []


def test_push_before_ack_resolves_on_acknowledge() -> None:
    """A link-only cancel whose push was remembered under the id resolves when the ack names it."""
    t: CancelTracker[Tagged] = CancelTracker()
    entry = start(t, oid=None, link="Lx")
    # the push carries no link id (e.g. a REST object): only the id is known
    t.on_orders([order("ox", link="")], "websocket", 1.0)
    assert len(t) == 1
    got = t.acknowledge(entry, order_id="ox", order_link_id="Lx", now=1.5)
    assert got is not None and got.order_id == "ox"
    assert len(t) == 0


def test_several_orders_in_one_push() -> None:
    """One push with several orders resolves each pending cancel."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t, "a", oid="o1")
    start(t, "b", oid="o2")
    start(t, "c", oid="o3")
    done = t.on_orders([order("o1"), order("o2", status="Filled"), order("zz")], "websocket", 1.0)
    assert sorted(e.waiter for e in done) == ["a", "b"]
    assert len(t) == 1


def test_two_cancels_of_one_order_both_resolve() -> None:
    """Two concurrent cancels of the same order are both resolved by its push."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t, "a")
    start(t, "b")
    assert len(t) == 2
    done = t.on_orders([order()], "websocket", 1.0)
    assert sorted(e.waiter for e in done) == ["a", "b"]
    assert len(t) == 0


def test_forget_removes_one_of_two() -> None:
    """Forgetting one of two cancels of the same order leaves the other pending; forget is idempotent."""
    t: CancelTracker[Tagged] = CancelTracker()
    a = start(t, "a")
    start(t, "b")
    t.forget(a)
    t.forget(a)
    assert len(t) == 1
    [done] = t.on_orders([order()], "websocket", 1.0)
    assert done.waiter == "b"


def test_forget_link_only_after_ack() -> None:
    """A link-only entry that learnt its id sits in both indexes and is removed from both."""
    t: CancelTracker[Tagged] = CancelTracker()
    e = start(t, oid=None, link="L")
    t.acknowledge(e, order_id="o1", order_link_id="L", now=0)
    assert len(t.pending()) == 1
    t.forget(e)
    assert len(t) == 0 and t.pending() == []
    assert t.on_orders([order("o1", link="L")], "websocket", 1.0) == []


def test_fail_all_returns_every_entry_with_error() -> None:
    """fail_all empties the tracker and marks each entry with the error."""
    t: CancelTracker[Tagged] = CancelTracker()
    entries = [start(t, str(i), oid=f"o{i}") for i in range(3)]
    entries.append(start(t, "L", oid=None, link="L"))
    err = RuntimeError("closed")
    failed = t.fail_all(err)
    assert {e.waiter for e in failed} == {"0", "1", "2", "L"}
    assert all(e.error is err for e in failed)
    assert len(t) == 0
    for e in entries:
        t.forget(e)
    assert len(t) == 0


def test_recent_memory_bounded_by_size_and_age() -> None:
    """The memory of final states is trimmed to recent_size entries (it may run over by a small
    batch between trims); a state older than recent_age is not answered, and inserts trim it."""
    t: CancelTracker[Tagged] = CancelTracker(recent_size=3, recent_age=10.0)
    for i in range(5):
        t.on_orders([order(f"o{i}", link=f"L{i}")], "websocket", float(i))
    assert t.remembered == 5  # within one batch of the bound: not trimmed yet
    for i in range(5, 5 + 256):
        t.on_orders([order(f"o{i}", link=f"L{i}")], "websocket", 4.0)
    assert 3 <= t.remembered < 3 + 256  # over the bound by a batch: trimmed
    assert isinstance(
        register(
            t, "w", category="linear", symbol="BTCUSDT", order_id="o260", order_link_id=None, now=5
        ),
        CancelResult,
    )
    # o0 was evicted by size: a cancel for it is pending, not answered from memory
    assert isinstance(
        register(
            t, "w", category="linear", symbol="BTCUSDT", order_id="o0", order_link_id=None, now=5
        ),
        Pending,
    )
    # past the age bound, nothing is answered from memory, and the next insert trims it all
    assert isinstance(
        register(
            t,
            "w",
            category="linear",
            symbol="BTCUSDT",
            order_id=None,
            order_link_id="L260",
            now=100,
        ),
        Pending,
    )
    for i in range(128):
        t.on_orders([order(f"p{i}")], "websocket", 100.0)
    assert t._recent and all(order_id.startswith("p") for order_id in t._recent)
    assert not t._recent_link  # the link ids of the evicted went with them


def test_rest_source_is_reported() -> None:
    """A state learnt from a REST lookup says so."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t)
    [done] = t.on_orders([order()], "rest", 1.0)
    assert done.outcome is not None and done.outcome.source == "rest"


def test_fixture_push_with_two_orders() -> None:
    """Bybit's real push of a Deactivated stop and a Filled order resolves both cancels."""
    t: CancelTracker[Tagged] = CancelTracker()
    msg = ws_decoder.decode(
        fixture_bytes("ws-private/order.push.linear-trailing-stop-deactivated-with-fill.json")
    )
    assert msg.data is not None
    for o in msg.data:
        start(t, o.order_status, oid=o.order_id)
    done = t.on_orders(msg.data, "websocket", 1.0)
    statuses = sorted(e.outcome.status for e in done if e.outcome is not None)
    assert statuses == [OrderStatus.DEACTIVATED, OrderStatus.FILLED]


def test_option_empty_leaves_qty_is_none() -> None:
    """Options send leavesQty "" after a fill: the result says None, not zero."""
    t: CancelTracker[Tagged] = CancelTracker()
    msg = ws_decoder.decode(fixture_bytes("ws-private/order.push.option-filled.json"))
    assert msg.data is not None
    start(t, oid=msg.data[0].order_id, category="option")
    [done] = t.on_orders(msg.data, "websocket", 1.0)
    assert done.outcome is not None
    assert done.outcome.leaves_qty is None and done.outcome.cum_exec_qty == Decimal("1")


def test_bad_bounds_rejected() -> None:
    with pytest.raises(ValueError, match="recent_size"):
        CancelTracker(recent_size=-1)
    with pytest.raises(ValueError, match="recent_age"):
        CancelTracker(recent_age=0)


def test_recent_size_zero_remembers_nothing() -> None:
    """With recent_size=0 a push still resolves what is pending, but no final state is kept: a
    later cancel of the same order is registered (start() would fail otherwise), not answered
    from memory, and a repeated push resolves it with its own state."""
    t: CancelTracker[Tagged] = CancelTracker(recent_size=0)
    first = start(t, "w1", oid="X")
    [done] = t.on_orders([order("X", link="L")], "websocket", 1.0)
    assert done is first and done.outcome is not None
    assert t.remembered == 0 and t._recent_link == {}
    start(t, "w2", oid="X")
    start(t, "w3", oid=None, link="L")
    assert len(t) == 2
    again = t.on_orders([order("X", link="L", updated="2000")], "websocket", 2.0)
    assert sorted(e.waiter for e in again) == ["w2", "w3"]
    assert all(e.outcome is not None and e.outcome.updated_time == 2000 for e in again)
    assert t.remembered == 0 and len(t) == 0


def test_order_id_match_checks_category() -> None:
    """A push for order X in another category does not resolve a cancel of X in this one."""
    t: CancelTracker[Tagged] = CancelTracker()
    start(t, oid="X", category="spot")
    assert t.on_orders([order("X", category="linear")], "websocket", 1.0) == []
    assert len(t) == 1


def test_same_link_id_in_two_categories() -> None:
    """orderLinkId is unique per category: spot and linear cancels of "grid-17" stay apart."""
    t: CancelTracker[Tagged] = CancelTracker()
    spot = start(t, "spot", oid=None, link="grid-17", category="spot")
    lin = start(t, "linear", oid=None, link="grid-17", category="linear")
    t.acknowledge(lin, order_id="Y", order_link_id="grid-17", now=0.1)
    [done] = t.on_orders([order("Y", link="grid-17", category="linear")], "websocket", 1.0)
    assert done is lin
    assert len(t) == 1 and t.pending() == [spot]
    # the memory of final states is per category too
    got = register(
        t, "s2", category="spot", symbol="BTCUSDT", order_id=None, order_link_id="grid-17", now=2
    )
    assert isinstance(got, Pending)


def test_two_link_cancels_acked_out_of_order() -> None:
    """Two cancels by the same link id whose acks arrive in either order: no cycle, no leak."""
    t: CancelTracker[Tagged] = CancelTracker()
    a = start(t, "a", oid=None, link="L")
    b = start(t, "b", oid=None, link="L")
    t.acknowledge(b, order_id="X", order_link_id="L", now=0.1)
    t.acknowledge(a, order_id="X", order_link_id="L", now=0.2)
    assert len(t) == 2 and len(t.pending()) == 2
    t.on_orders([order("X", status="New", link="L")], "websocket", 0.5)  # terminates
    done = t.on_orders([order("X", link="L")], "websocket", 1.0)
    assert sorted(e.waiter for e in done) == ["a", "b"]
    assert len(t) == 0 and t.pending() == []


def test_mixed_id_and_link_cancels_of_one_order() -> None:
    """One caller cancels by id, another by link id; forgetting one leaves the other intact."""
    t: CancelTracker[Tagged] = CancelTracker()
    c = start(t, "c", oid="X")
    b = start(t, "b", oid=None, link="L")
    t.acknowledge(b, order_id="X", order_link_id="L", now=0.1)
    t.forget(b)
    assert len(t) == 1 and t.pending() == [c]
    [done] = t.on_orders([order("X", link="L")], "websocket", 1.0)
    assert done is c and len(t) == 0


def test_random_sequences_keep_the_books_consistent() -> None:
    """Random start/ack/push/forget sequences: every entry is resolved or forgotten exactly once,
    the count matches, and nothing is left behind."""
    rng = random.Random(20261122)
    for _ in range(300):
        t: CancelTracker[Tagged] = CancelTracker(recent_size=50)
        live: dict[int, Tagged] = {}
        n = 0
        for _step in range(40):
            op = rng.random()
            oid = f"o{rng.randrange(4)}"
            link = f"L{oid[1:]}"
            cat = rng.choice(["linear", "spot"])
            if op < 0.35:
                by_id = rng.random() < 0.5
                got = register(
                    t,
                    n,
                    category=cat,
                    symbol="S",
                    order_id=oid if by_id else None,
                    order_link_id=None if by_id else link,
                    now=float(_step),
                )
                if isinstance(got, Pending):
                    live[n] = got
                n += 1
            elif op < 0.55 and live:
                e = rng.choice(list(live.values()))
                r = t.acknowledge(
                    e, order_id=e.order_id or oid, order_link_id=e.order_link_id, now=float(_step)
                )
                if r is not None:
                    del live[e.waiter]
            elif op < 0.8:
                status = rng.choice(["New", "PartiallyFilled", "Cancelled", "Filled"])
                for e in t.on_orders(
                    [order(oid, status=status, link=link, category=cat)], "websocket", float(_step)
                ):
                    assert e.outcome is not None and e.category == cat
                    assert e.waiter in live
                    del live[e.waiter]
            elif live:
                e = rng.choice(list(live.values()))
                t.forget(e)
                t.forget(e)
                del live[e.waiter]
            assert len(t) == len(live)
            assert sorted(e.waiter for e in t.pending()) == sorted(live)
        for e in list(live.values()):
            t.forget(e)
        assert len(t) == 0 and t.pending() == [] and t._last == {}


def test_memory_of_final_states_stays_bounded_under_a_stream_of_pushes() -> None:
    """50,000 final pushes for orders nobody waits for: the memory never exceeds the bound by more
    than one batch."""
    t: CancelTracker[Tagged] = CancelTracker(recent_size=1000, recent_age=600.0)
    peak = 0
    for i in range(50_000):
        # every third one with a link id: the link table is trimmed with the memory
        t.on_orders([order(f"x{i}", link=f"L{i}" if i % 3 == 0 else "")], "websocket", 1.0)
        peak = max(peak, t.remembered)
    assert 1000 <= peak <= 1000 + 256 + 1
    assert len(t._recent_link) <= t.remembered // 3 + 1
    # the newest are answered from memory by link id too; the evicted ones are not
    newest = register(
        t, "w", category="linear", symbol="BTCUSDT", order_id=None, order_link_id="L49998", now=2
    )
    assert isinstance(newest, CancelResult) and newest.order_id == "x49998"
    evicted = register(
        t, "w", category="linear", symbol="BTCUSDT", order_id=None, order_link_id="L3", now=2
    )
    assert isinstance(evicted, Pending)


def test_entry_flags_are_independent() -> None:
    """The entry's four flags share one int: setting or clearing one leaves the others alone."""
    entry = Tagged("w", "linear", "BTCUSDT", "o1", "")
    names = ("acknowledged", "closed", "linked", "interrupted")
    assert not any(getattr(entry, n) for n in names)
    for k, name in enumerate(names):
        setattr(entry, name, True)
        assert [getattr(entry, n) for n in names] == [i <= k for i in range(4)]
    for k, name in enumerate(names):
        setattr(entry, name, False)
        assert [getattr(entry, n) for n in names] == [i > k for i in range(4)]
