"""FakeExchange's memory stays bounded in a long run (a bot's test suite, a soak run).

``max_recorded`` bounds the diagnostic records (``requests``, ``ws_received``, ``fault_log``, the
chaos draws of unknown ids); ``history_limit`` bounds the finished orders per category, which
age out oldest first as Bybit's order history does (protocol §8). Sizes are counted, never timed.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from bybit_cancel.testing import FakeExchange, Fault

from .test_fake_exchange import KEY, SECRET, Rest, auth_msg, open_ws, recv


def held(fx: FakeExchange) -> dict[str, int]:
    """What the fake keeps that could grow with each cancel, item by item."""
    return {
        "requests": len(fx.requests),
        "ws_received": len(fx.ws_received),
        "fault_log": len(fx.fault_log),
        "orders": len(fx._orders),
        "link ids": len(fx._by_link),
        "history": sum(len(ids) for ids in fx._history.values()),
        "realtime closed": sum(len(ids) for ids in fx._rt_closed.values()),
        "targeted faults": sum(len(specs) for specs in fx._targeted.values()),
        "chaos draws": len(fx._chaos_drawn),
    }


async def ping(ws: Any, req_id: str) -> None:
    """Send a ping and wait for its pong (so the fake has read it), skipping any push."""
    await ws.send(json.dumps({"req_id": req_id, "op": "ping"}))
    while (await recv(ws)).get("req_id") != req_id:
        pass


async def open_quiet_ws(fx: FakeExchange) -> Any:
    """A websocket that is authenticated but subscribed to nothing: no push to read."""
    ws = await connect(fx.ws_url, ping_interval=None, close_timeout=1)
    await ws.send(json.dumps(auth_msg()))
    assert (await recv(ws))["success"] is True
    return ws


async def test_records_keep_the_newest_within_the_bound() -> None:
    limit = 8
    async with (
        FakeExchange(KEY, SECRET, max_recorded=limit) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        rest = Rest(s, fx)
        fx.set_chaos(rate=1.0, seed=3, faults=[Fault.HTTP_429])  # one fault logged per cancel
        orders = [fx.seed_order() for _ in range(60)]
        sizes = []
        for o in orders:
            assert (await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[0] == 429
            sizes.append((len(fx.requests), len(fx.fault_log)))
        # At least the newest `limit` (all while fewer came), at most a quarter more (the oldest
        # go in batches), and still lists.
        for i, (requests, faults) in enumerate(sizes):
            assert min(i + 1, limit) <= requests <= limit + limit // 4
            assert min(i + 1, limit) <= faults <= limit + limit // 4
        assert isinstance(fx.requests, list) and isinstance(fx.fault_log, list)
        # The newest are the ones kept, oldest first.
        kept = [json.loads(r.body)["orderId"] for r in fx.requests]
        assert kept == [o.order_id for o in orders[-len(kept) :]]
        assert fx.fault_log == [(o.order_id, Fault.HTTP_429) for o in orders[-len(fx.fault_log) :]]

        ws = await open_ws(fx)  # auth and subscribe: two messages received
        for i in range(40):
            await ping(ws, str(i))
        await ws.close()
        got = [m.get("req_id") for m in fx.ws_received]
        assert limit <= len(got) <= limit + limit // 4
        assert got == [str(i) for i in range(40 - len(got), 40)]
        assert fx.auth_count == 1  # counters count everything


async def test_max_recorded_zero_records_nothing() -> None:
    async with (
        FakeExchange(KEY, SECRET, max_recorded=0) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(10),
    ):
        rest = Rest(s, fx)
        ws = await open_ws(fx)
        o = fx.seed_order()
        fx.add_fault(Fault.DUPLICATE_PUSH, order_id=o.order_id)
        assert (await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[1]["retCode"] == 0
        await ping(ws, "p")
        await fx.wait_idle()
        await ws.close()
        assert fx.requests == [] and fx.ws_received == [] and fx.fault_log == []
        assert fx.auth_count == 1 and fx.pushes_sent == 2
        assert fx.order(o.order_id).status == "Cancelled"  # the book is not a record


async def test_finished_orders_age_out_oldest_first_per_category() -> None:
    async with (
        FakeExchange(KEY, SECRET, history_limit=4, realtime_closed_limit=2) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        rest = Rest(s, fx)
        keeper = fx.seed_order(order_link_id="keeper")  # the oldest order, and it stays open
        spot = fx.seed_order(category="spot", symbol="BTCUSDT", qty="1.0", price="30000")
        assert (await rest.cancel("spot", "BTCUSDT", orderId=spot.order_id))[1]["retCode"] == 0
        linear = [fx.seed_order(order_link_id=f"l{i}") for i in range(12)]
        for o in linear:
            assert (await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[1]["retCode"] == 0
        await fx.wait_idle()

        # The four linear orders that finished last are known; the eight before are forgotten.
        for o in linear[:8]:
            with pytest.raises(KeyError):
                fx.order(o.order_id)
            with pytest.raises(KeyError):
                fx.order_by_link_id(o.order_link_id)
        assert all(fx.order(o.order_id).status == "Cancelled" for o in linear[8:])
        # Another category's history is its own (Bybit counts per category), and an open order
        # is never forgotten, however old.
        assert fx.order(spot.order_id).status == "Cancelled"
        assert fx.order(keeper.order_id).status == "New"
        assert held(fx) | {"requests": 0} == {
            "requests": 0,
            "ws_received": 0,
            "fault_log": 0,
            "orders": 1 + 1 + 4,
            "link ids": 1 + 4,
            "history": 1 + 4,
            "realtime closed": 1 + 2,
            "targeted faults": 0,
            "chaos draws": 0,
        }

        # REST agrees: history lists the newest four (newest first), realtime finds the last two
        # by id, and a forgotten order is not found anywhere.
        listed = await rest.history("linear", symbol="BTCUSDT")
        assert sorted(o["orderId"] for o in listed) == sorted(o.order_id for o in linear[8:])
        for o, in_realtime in ((linear[-1], True), (linear[-2], True), (linear[-3], False)):
            found = await rest.realtime("linear", orderId=o.order_id)
            assert [x["orderStatus"] for x in found] == (["Cancelled"] if in_realtime else [])
            assert len(await rest.history("linear", orderId=o.order_id)) == 1
        assert await rest.realtime("linear", orderId=linear[0].order_id) == []
        assert await rest.history("linear", orderId=linear[0].order_id) == []
        assert (await rest.cancel("linear", "BTCUSDT", orderId=linear[0].order_id))[1][
            "retCode"
        ] == 110001
        # Undocumented: Bybit's rule for reusing the orderLinkId of an aged-out order. The fake
        # keeps no trace of the order, so it accepts the id again.
        assert fx.seed_order(order_link_id="l0").status == "New"


async def test_targeted_faults_live_as_long_as_their_order() -> None:
    async with (
        FakeExchange(KEY, SECRET, history_limit=2, realtime_closed_limit=1) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        rest = Rest(s, fx)
        a = fx.seed_order(order_link_id="a")
        fx.add_fault(Fault.HTTP_429, order_id="a")  # by link id, armed first
        fx.add_fault(Fault.HTTP_502, order_id=a.order_id)  # by order id
        fx.add_fault(Fault.HTTP_403, order_id="ghost")  # no order has this id
        # Faults armed for orders whose cancel never comes: they fill instead.
        filled = [fx.seed_order() for _ in range(3)]
        for o in filled:
            fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id)
            fx.fill(o.order_id, push=False)
        # history_limit=2: the first filled order is forgotten, and the fault aimed at it too.
        assert set(fx._targeted) == {"a", a.order_id, "ghost"} | {o.order_id for o in filled[1:]}

        # The first armed fires first, whichever of the order's names it is aimed at.
        codes = [(await rest.cancel("linear", "BTCUSDT", orderId=a.order_id))[0] for _ in range(3)]
        assert codes == [429, 502, 200]
        await fx.wait_idle()  # a is Cancelled: the third linear order to finish
        assert set(fx._targeted) == {"ghost", filled[2].order_id}
        for _ in range(2):
            fx.fill(fx.seed_order().order_id, push=False)
        assert set(fx._targeted) == {"ghost"}
        # A fault aimed at an id no order has stays until it fires (or clear_faults()).
        assert (await rest.cancel("linear", "BTCUSDT", orderId="ghost"))[0] == 403
        assert fx._targeted == {}
        assert [f for _, f in fx.fault_log] == [Fault.HTTP_429, Fault.HTTP_502, Fault.HTTP_403]


async def test_chaos_draws_once_per_order_and_bounds_unknown_ids() -> None:
    async with (
        FakeExchange(KEY, SECRET, max_recorded=4) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        rest = Rest(s, fx)
        fx.set_chaos(rate=1.0, seed=1, faults=[Fault.HTTP_502])
        o = fx.seed_order()
        codes = [(await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[0] for _ in range(2)]
        assert codes == [502, 200]  # a re-sent cancel of the same order draws nothing
        assert len(fx._chaos_drawn) == 0  # the draw is noted on the order itself
        for i in range(20):
            assert (await rest.cancel("linear", "BTCUSDT", orderId=f"x{i}"))[0] == 502
        assert list(fx._chaos_drawn) == ["x16", "x17", "x18", "x19"]  # the newest four
        _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId="x19")
        assert data["retCode"] == 110001  # remembered: no second draw
        assert (await rest.cancel("linear", "BTCUSDT", orderId="x0"))[0] == 502  # forgotten
        fx.set_chaos(rate=1.0, seed=1, faults=[Fault.HTTP_502])
        assert (await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[0] == 502  # new draw


async def test_memory_stays_bounded_over_many_cancels() -> None:
    """600 orders with every kind of record growing: after 200, 400 and 600 each count is within
    its bound, and what the book keeps is the same after 400 orders as after 600 (flat, not
    merely slow)."""
    bound = {"max_recorded": 40, "history_limit": 50, "realtime_closed_limit": 20}
    async with (
        FakeExchange(KEY, SECRET, **bound) as fx,  # type: ignore[arg-type]
        aiohttp.ClientSession() as s,
        asyncio.timeout(25),
    ):
        rest = Rest(s, fx)
        ws = await open_quiet_ws(fx)
        # Faults that still cancel the order (so that every order ends), one chaos draw per order
        # and one per unknown id.
        faults = [Fault.DUPLICATE_PUSH, Fault.DROP_PUSH, Fault.STALE_AFTER_FINAL]
        fx.set_chaos(rate=0.5, seed=5, faults=faults)
        counts = []
        for i in range(600):
            o = fx.seed_order(order_link_id=f"o{i}")
            if i % 3 == 0:
                # Armed, never fired: the order fills instead of being cancelled.
                fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_link_id)
                fx.fill(o.order_id)
            else:
                await rest.cancel("linear", "BTCUSDT", orderLinkId=o.order_link_id)
            await rest.cancel("linear", "BTCUSDT", orderId=f"unknown-{i}")
            if i % 10 == 0:
                await ping(ws, str(i))
            if i + 1 in (200, 400, 600):
                await fx.wait_idle()
                counts.append(held(fx))
        await ws.close()
        assert all(fx.order(oid).is_final for oid in fx._orders)
        cap = bound["max_recorded"] + bound["max_recorded"] // 4
        for n in counts:
            # Records: batch-trimmed, so between the bound and a quarter more.
            for name in ("requests", "ws_received", "fault_log", "chaos draws"):
                assert n[name] <= cap, (name, n)
            # The book: exactly the newest finished orders (all linear), and the faults armed
            # for those of them that filled (one order in three).
            assert n["orders"] == n["history"] == n["link ids"] == bound["history_limit"], n
            assert n["realtime closed"] == bound["realtime_closed_limit"], n
            assert n["targeted faults"] <= -(-bound["history_limit"] // 3), n
        assert counts[-1]["ws_received"] >= bound["max_recorded"]  # 61 received: trimmed
        book = ("orders", "history", "link ids", "realtime closed")
        assert [counts[1][k] for k in book] == [counts[2][k] for k in book]


async def test_made_up_categories_share_one_rate_window_per_endpoint() -> None:
    """Requests with 200 distinct made-up categories (and a missing or non-string one) are each
    answered 10001 with the limit headers, and leave one rate window per endpoint, not one per
    category; a real category's window is its own, as before (protocol §7)."""
    async with (
        FakeExchange(KEY, SECRET, rate_limits={"/v5/order/cancel": 2}) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        rest = Rest(s, fx)
        junk: list[Any] = [f"zzz{i}" for i in range(200)] + [None, 5, ""]
        for category in junk:
            body = {"symbol": "BTCUSDT", "orderId": "1"}
            if category is not None:
                body["category"] = category
            _, data, h = await rest.post("/v5/order/cancel", body)
            # Counted before the category is checked: past the endpoint's limit, 10006.
            assert data["retCode"] in (10001, 10006), data
            assert h["X-Bapi-Limit"] == "2"
            if data["retCode"] == 10001:
                assert data["retMsg"] == "params error: Illegal category"
            query = "symbol=BTCUSDT" + ("" if category is None else f"&category={category}")
            _, data, h = await rest.get("/v5/order/realtime", query)
            assert (data["retCode"], data["retMsg"]) == (10001, "params error: Illegal category")
            assert h["X-Bapi-Limit"] == "10000"
        assert set(fx._windows) == {("/v5/order/cancel", ""), ("/v5/order/realtime", "")}
        # A real category still has a window of its own, at the endpoint's limit.
        o = fx.seed_order()
        answers = [await rest.cancel("linear", "BTCUSDT", orderId=o.order_id) for _ in range(3)]
        assert [a[1]["retCode"] for a in answers] == [0, 110001, 10006]
        assert [a[2]["X-Bapi-Limit-Status"] for a in answers] == ["1", "0", "0"]
        assert len(fx._windows) == 3


async def test_defaults_keep_everything_a_test_suite_sends() -> None:
    """Below the default bounds (10,000 records, 10,000 finished orders per category) nothing
    is dropped: the attributes mean what they meant before."""
    async with (
        FakeExchange(KEY, SECRET) as fx,
        aiohttp.ClientSession() as s,
        asyncio.timeout(20),
    ):
        assert (fx.max_recorded, fx.history_limit, fx.realtime_closed_limit) == (
            10_000,
            10_000,
            500,
        )
        rest = Rest(s, fx)
        ws = await open_ws(fx)
        fx.set_chaos(rate=1.0, seed=2, faults=[Fault.DROP_PUSH])
        orders = [fx.seed_order(order_link_id=f"d{i}") for i in range(300)]
        for o in orders:
            await rest.cancel("linear", "BTCUSDT", orderId=o.order_id)
        await fx.wait_idle()
        await ws.close()
        assert fx.requests[0].path == "/v5/private"  # the websocket's upgrade request
        assert [json.loads(r.body)["orderId"] for r in fx.requests[1:]] == [
            o.order_id for o in orders
        ]
        assert fx.fault_log == [(o.order_id, Fault.DROP_PUSH) for o in orders]
        assert [m["op"] for m in fx.ws_received] == ["auth", "subscribe"]
        assert all(fx.order_by_link_id(o.order_link_id).status == "Cancelled" for o in orders)
        assert len(await rest.history("linear", orderId=orders[0].order_id)) == 1


async def test_default_record_bound_applies() -> None:
    """10,000 + a quarter websocket messages: the default bound trims them to the newest."""
    async with FakeExchange(KEY, SECRET) as fx, asyncio.timeout(25):
        ws = await open_ws(fx)
        total = 12_600
        for i in range(total):
            await ws.send(json.dumps({"req_id": str(i), "op": "ping"}))
        while (await recv(ws))["req_id"] != str(total - 1):
            pass
        await ws.close()
        got = [m.get("req_id") for m in fx.ws_received]
        assert 10_000 <= len(got) <= 12_500, len(got)
        assert got == [str(i) for i in range(total - len(got), total)]


@pytest.mark.parametrize("name", ["max_recorded", "history_limit"])
@pytest.mark.parametrize("value", [-1, True, False, 1.5, "100", [10]])
def test_a_bad_bound_is_refused(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be None or an integer >= 0, got "):
        FakeExchange(KEY, SECRET, **{name: value})  # type: ignore[arg-type]


def test_history_limit_must_cover_the_realtime_window() -> None:
    # protocol §8: /v5/order/realtime finds the recent 500 closed orders per category by id.
    with pytest.raises(ValueError, match=r"history_limit \(499\) must be at least realtime_closed"):
        FakeExchange(KEY, SECRET, history_limit=499)
    with pytest.raises(ValueError, match="realtime_closed_limit"):
        FakeExchange(KEY, SECRET, history_limit=5, realtime_closed_limit=6)
    # Accepted: equal bounds, no bound, or a realtime window that is itself unbounded.
    assert FakeExchange(KEY, SECRET, history_limit=500).history_limit == 500
    assert FakeExchange(KEY, SECRET, history_limit=None, max_recorded=None).max_recorded is None
    assert FakeExchange(KEY, SECRET, history_limit=0, realtime_closed_limit=None).history_limit == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_key": ""}, "api_key must be a non-empty string"),
        ({"api_secret": None}, "api_secret must be a non-empty string, got a NoneType"),
        ({"host": 127}, "host must be a non-empty string"),
        ({"recv_window_check": 1}, "recv_window_check must be True or False"),
        ({"seed": "7"}, "seed must be an integer, got '7'"),
        ({"seed": 1.0}, "seed must be an integer"),
        ({"port": -1}, "port must be an integer from 0 to 65535"),
        ({"port": 70_000}, "port must be an integer from 0 to 65535"),
        ({"realtime_closed_limit": -5}, "realtime_closed_limit must be None or an integer >= 0"),
        ({"push_delay": -0.1}, "push_delay must be seconds >= 0"),
        ({"push_delay": float("nan")}, "push_delay must be seconds >= 0"),
        ({"push_delay": None}, "push_delay must be seconds >= 0"),
        ({"idle_timeout": 0}, "idle_timeout must be None or a positive number of seconds"),
        ({"idle_timeout": float("inf")}, "idle_timeout must be None or a positive number"),
        ({"idle_timeout": True}, "idle_timeout must be None or a positive number"),
        ({"rate_limits": {"/v5/order/cancel": 0}}, "rate_limits maps an endpoint"),
        ({"rate_limits": {"/v5/order/cancel": 2.5}}, "rate_limits maps an endpoint"),
    ],
)
def test_a_bad_constructor_argument_is_refused_before_the_server_starts(
    kwargs: dict[str, object], message: str
) -> None:
    """Each option is checked when the fake is made (not when a request meets it), with a
    message naming it; nothing is started, so there is nothing to close."""
    args: dict[str, object] = {"api_key": KEY, "api_secret": SECRET, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        FakeExchange(**args)  # type: ignore[arg-type]


def test_the_documented_options_are_accepted() -> None:
    fx = FakeExchange(
        KEY,
        SECRET,
        push_delay=0,
        recv_window_check=False,
        seed=-3,
        rate_limits={"/v5/order/cancel linear": 5},
        realtime_closed_limit=None,
        idle_timeout=None,
        port=0,
    )
    assert fx.push_delay == 0 and fx.idle_timeout is None and fx.realtime_closed_limit is None
