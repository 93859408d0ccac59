"""Tests of bybit_cancel.testing.FakeExchange against the Bybit v5 protocol facts and fixtures.

The fake is driven with raw aiohttp (requests signed here with hmac) and a raw
``websockets`` client, and its messages are compared with the real messages in
tests/fixtures/bybit (a copy of the project's shared fixtures).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._clients import record_pybit_subscribes_first
from bybit_cancel.testing import BYBIT_RATE_LIMITS, FakeExchange, FakeOrder, Fault

from .helpers import FIXTURES

KEY = "test-key"
SECRET = "test-secret"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def assert_same_shape(
    actual: dict[str, Any], expected: dict[str, Any], *, order: bool = False
) -> None:
    """Same key set and the same JSON type for every key (and optionally the same key order)."""
    if order:
        assert list(actual) == list(expected)
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for k, v in expected.items():
        assert type(actual[k]) is type(v), (k, actual[k], v)


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


class Rest:
    """A minimal signed Bybit v5 REST client built on aiohttp."""

    def __init__(self, session: aiohttp.ClientSession, fx: FakeExchange) -> None:
        self.session = session
        self.fx = fx

    def headers(
        self,
        payload: str,
        *,
        key: str = KEY,
        secret: str = SECRET,
        ts: int | None = None,
        rw: str | None = "5000",
    ) -> dict[str, str]:
        ts = ts if ts is not None else int(time.time() * 1000)
        h = {
            "X-BAPI-API-KEY": key,
            "X-BAPI-TIMESTAMP": str(ts),
            "X-BAPI-SIGN": sign(secret, f"{ts}{key}{rw or '5000'}{payload}"),
            "X-BAPI-SIGN-TYPE": "2",
            "Content-Type": "application/json",
        }
        if rw is not None:
            h["X-BAPI-RECV-WINDOW"] = rw
        return h

    async def post(
        self,
        path: str,
        body: dict[str, Any] | str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kw: Any,
    ) -> tuple[int, Any, Any]:
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        h = headers if headers is not None else self.headers(text, **kw)
        to = aiohttp.ClientTimeout(total=timeout) if timeout else aiohttp.ClientTimeout(total=10)
        async with self.session.post(
            self.fx.rest_url + path, data=text.encode(), headers=h, timeout=to
        ) as r:
            return await _answer(r)

    async def get(self, path: str, query: str, **kw: Any) -> tuple[int, Any, Any]:
        h = self.headers(query, **kw)
        url = self.fx.rest_url + path + ("?" + query if query else "")
        async with self.session.get(url, headers=h) as r:
            return await _answer(r)

    async def cancel(self, category: str, symbol: str, **ids: str) -> tuple[int, Any, Any]:
        return await self.post("/v5/order/cancel", {"category": category, "symbol": symbol, **ids})

    async def realtime(self, category: str, **q: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in sorted({"category": category, **q}.items()))
        status, data, _ = await self.get("/v5/order/realtime", query)
        assert status == 200 and data["retCode"] == 0, data
        return data["result"]["list"]  # type: ignore[no-any-return]

    async def history(self, category: str, **q: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in sorted({"category": category, **q}.items()))
        status, data, _ = await self.get("/v5/order/history", query)
        assert status == 200 and data["retCode"] == 0, data
        return data["result"]["list"]  # type: ignore[no-any-return]


@pytest.fixture
async def fx() -> AsyncIterator[FakeExchange]:
    async with FakeExchange(KEY, SECRET) as f:
        yield f


@pytest.fixture
async def rest(fx: FakeExchange) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession() as s:
        yield Rest(s, fx)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(msg)  # type: ignore[no-any-return]


async def next_push(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = await recv(ws, timeout)
        if "topic" in msg:
            return msg


async def no_message(ws: ClientConnection, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), within)


def auth_msg(key: str = KEY, secret: str = SECRET, *, expires: int | None = None) -> dict[str, Any]:
    expires = expires if expires is not None else int(time.time() * 1000) + 10_000
    return {"op": "auth", "args": [key, expires, sign(secret, f"GET/realtime{expires}")]}


async def open_ws(fx: FakeExchange, topics: tuple[str, ...] = ("order",)) -> ClientConnection:
    ws = await connect(fx.ws_url, ping_interval=None, close_timeout=1)
    await ws.send(json.dumps(auth_msg()))
    assert (await recv(ws))["success"] is True
    await ws.send(json.dumps({"op": "subscribe", "args": list(topics)}))
    assert (await recv(ws))["success"] is True
    return ws


@pytest.fixture
async def ws(fx: FakeExchange) -> AsyncIterator[ClientConnection]:
    conn = await open_ws(fx)
    try:
        yield conn
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- REST auth


async def test_market_time_shape(fx: FakeExchange, rest: Rest) -> None:
    fx.clock_offset_ms = 60_000
    async with rest.session.get(fx.rest_url + "/v5/market/time") as r:
        assert r.status == 200
        data = await r.json()
    expected = fixture("rest/market-time.response.json")
    assert_same_shape(data, expected, order=True)
    assert_same_shape(data["result"], expected["result"], order=True)
    assert len(data["result"]["timeNano"]) == 19
    assert abs(data["time"] - (int(time.time() * 1000) + 60_000)) < 2_000
    assert int(data["result"]["timeNano"]) // 10**6 - data["time"] in (0, -1, 1)


async def test_signature_accepts_spaced_and_compact_json(fx: FakeExchange, rest: Rest) -> None:
    a = fx.seed_order(order_link_id="a")
    b = fx.seed_order(order_link_id="b")
    # pybit: json.dumps default separators, insertion order (protocol §1).
    spaced = json.dumps({"category": "linear", "symbol": "BTCUSDT", "orderId": a.order_id})
    assert ", " in spaced and ": " in spaced
    status, data, _ = await rest.post("/v5/order/cancel", spaced)
    assert status == 200 and data["retCode"] == 0, data
    # Node SDK: compact JSON, any key order.
    compact = json.dumps(
        {"orderLinkId": "b", "symbol": "BTCUSDT", "category": "linear"}, separators=(",", ":")
    )
    status, data, _ = await rest.post("/v5/order/cancel", compact)
    assert data["retCode"] == 0, data
    assert data["result"] == {"orderId": b.order_id, "orderLinkId": "b"}
    # The body is recorded byte for byte.
    assert fx.requests[-2].body == spaced.encode()
    assert fx.requests[-1].body == compact.encode()
    # GET: the raw query string is signed as received, sorted or not.
    for q in ("category=linear&symbol=BTCUSDT", "symbol=BTCUSDT&category=linear"):
        status, data, _ = await rest.get("/v5/order/realtime", q)
        assert data["retCode"] == 0, data
        assert fx.requests[-1].query == q


async def test_missing_recv_window_defaults_to_5000(fx: FakeExchange, rest: Rest) -> None:
    _, data, _ = await rest.get("/v5/order/realtime", "category=spot", rw=None)
    assert data["retCode"] == 0


async def test_error_10003_unknown_key(fx: FakeExchange, rest: Rest) -> None:
    status, data, _ = await rest.get("/v5/order/realtime", "category=spot", key="nope")
    assert status == 200
    assert data["retCode"] == 10003 and data["retMsg"] == "API key is invalid."
    assert data["result"] == {}
    assert_same_shape(data, fixture("rest/cancel-order.error-110001.response.json"), order=True)


async def test_error_10004_bad_sign(fx: FakeExchange, rest: Rest) -> None:
    h = rest.headers("category=linear", secret="wrong")
    async with rest.session.get(fx.rest_url + "/v5/order/realtime?category=linear", headers=h) as r:
        data = await r.json()
    expected = fixture("rest/error-10004.get-with-query.response.json")
    assert_same_shape(data, expected, order=True)
    assert data["retCode"] == 10004
    origin = f"{h['X-BAPI-TIMESTAMP']}{KEY}5000category=linear"
    assert data["retMsg"] == f"error sign! origin_string[{origin}]"
    assert SECRET not in data["retMsg"]
    # POST: the body is part of the origin string.
    body = '{"category":"linear"}'
    _, data, _ = await rest.post(
        "/v5/order/cancel", body, headers={**rest.headers(body), "X-BAPI-SIGN": "0" * 64}
    )
    assert data["retCode"] == 10004 and data["retMsg"].endswith('5000{"category":"linear"}]')


async def test_error_10002_timestamp_window(fx: FakeExchange, rest: Rest) -> None:
    pattern = re.compile(
        r"invalid request, please check your server timestamp or recv_window param\. "
        r"req_timestamp\[(\d+)\],server_timestamp\[(\d+)\],recv_window\[(\d+)\]"
    )
    assert pattern.fullmatch(fixture("rest/error-10002.response.json")["retMsg"])
    now = int(time.time() * 1000)
    for ts in (now + 1_500, now - 6_000):
        _, data, _ = await rest.get("/v5/order/realtime", "category=spot", ts=ts)
        assert data["retCode"] == 10002 and data["result"] == {}
        m = pattern.fullmatch(data["retMsg"])
        assert m and int(m.group(1)) == ts and m.group(3) == "5000"
    # A larger recv_window admits the old timestamp (protocol §1 rule).
    _, data, _ = await rest.get("/v5/order/realtime", "category=spot", ts=now - 6_000, rw="15000")
    assert data["retCode"] == 0
    # The server clock moves with clock_offset_ms.
    fx.clock_offset_ms = -5_000
    _, data, _ = await rest.get("/v5/order/realtime", "category=spot")
    assert data["retCode"] == 10002
    fx.recv_window_check = False
    _, data, _ = await rest.get("/v5/order/realtime", "category=spot")
    assert data["retCode"] == 0


async def test_missing_auth_headers_401(fx: FakeExchange, rest: Rest) -> None:
    async with rest.session.get(fx.rest_url + "/v5/order/realtime?category=spot") as r:
        assert r.status == 401


async def test_a_get_with_a_body_is_forbidden(fx: FakeExchange, rest: Rest) -> None:
    """protocol §1: a GET sent with a JSON body, even ``{}``, gets HTTP 403; a client that sends
    one must fail here as it would on Bybit."""
    ts = str(fx.now_ms())
    headers = {
        "X-BAPI-API-KEY": KEY,
        "X-BAPI-TIMESTAMP": ts,
        "X-BAPI-RECV-WINDOW": "5000",
        "X-BAPI-SIGN": sign(SECRET, f"{ts}{KEY}5000category=linear&symbol=BTCUSDT"),
        "Content-Type": "application/json",
    }
    url = fx.rest_url + "/v5/order/realtime?category=linear&symbol=BTCUSDT"
    async with rest.session.get(url, headers=headers, data=b"{}") as r:
        assert r.status == 403
    async with rest.session.get(url, headers=headers) as r:
        assert r.status == 200 and (await r.json())["retCode"] == 0


async def test_unknown_path_404(fx: FakeExchange, rest: Rest) -> None:
    async with rest.session.get(fx.rest_url + "/v5/nope") as r:
        assert r.status == 404
    assert fx.requests[-1].path == "/v5/nope"


async def test_rate_limit_headers_and_10006() -> None:
    async with (
        FakeExchange(KEY, SECRET, rate_limits={"/v5/order/cancel": 2}) as fx,
        aiohttp.ClientSession() as s,
    ):
        rest = Rest(s, fx)
        orders = [fx.seed_order() for _ in range(3)]
        results = [await rest.cancel("linear", "BTCUSDT", orderId=o.order_id) for o in orders]
        statuses = [r[2]["X-Bapi-Limit-Status"] for r in results]
        assert [r[1]["retCode"] for r in results] == [0, 0, 10006]
        assert results[2][0] == 200 and results[2][1]["retMsg"] == "Too many visits!"
        assert statuses == ["1", "0", "0"]
        assert all(r[2]["X-Bapi-Limit"] == "2" for r in results)
        reset = int(results[2][2]["X-Bapi-Limit-Reset-Timestamp"])
        assert fx.now_ms() < reset <= fx.now_ms() + 1_100
        # Per (endpoint, category): spot has its own window; other endpoints the default.
        _, data, h = await rest.cancel("spot", "BTCUSDT", orderId="1")
        assert data["retCode"] == 170213 and h["X-Bapi-Limit-Status"] == "1"
        _, data, h = await rest.get("/v5/order/realtime", "category=linear&symbol=BTCUSDT")
        assert h["X-Bapi-Limit"] == "10000"
        assert fx.order(orders[2].order_id).status == "New"


async def test_bybits_own_rate_limits_are_per_category() -> None:
    """protocol §7: a cancel is limited to 10/s on linear, inverse and option and 20/s on spot."""
    async with (
        FakeExchange(KEY, SECRET, rate_limits=BYBIT_RATE_LIMITS) as fx,
        aiohttp.ClientSession() as s,
    ):
        rest = Rest(s, fx)
        codes: dict[str, list[int]] = {}
        for category in ("spot", "linear"):
            answers = [await rest.cancel(category, "BTCUSDT", orderId="1") for _ in range(21)]
            codes[category] = [a[1]["retCode"] for a in answers]
            assert {a[2]["X-Bapi-Limit"] for a in answers} == {"20" if category == "spot" else "10"}
        # (An unknown order: 170213 on spot, 110001 on linear, until the window is full.)
        assert codes["spot"] == [170213] * 20 + [10006]
        assert codes["linear"] == [110001] * 10 + [10006] * 11


async def test_auth_failures_carry_rate_limit_headers_and_count() -> None:
    """protocol §7: the rate-limit headers come on every request, so a 10002, 10003 or 10004 (and
    a body that is not JSON) carries them and is counted, as the injected 10002 fault is."""
    async with (
        FakeExchange(KEY, SECRET, rate_limits={"/v5/order/cancel": 5}) as fx,
        aiohttp.ClientSession() as s,
    ):
        rest = Rest(s, fx)
        body = '{"category":"linear","symbol":"BTCUSDT","orderId":"1"}'
        bad_sign = {**rest.headers(body), "X-BAPI-SIGN": "0" * 64}
        answers = [
            await rest.post("/v5/order/cancel", body, ts=int(time.time() * 1000) + 5_000),
            await rest.post("/v5/order/cancel", body, key="nope"),
            await rest.post("/v5/order/cancel", body, headers=bad_sign),
            await rest.post("/v5/order/cancel", "not json"),
        ]
        assert [a[1]["retCode"] for a in answers] == [10002, 10003, 10004, 10001]
        # (A body with no category counts in the window shared by unknown categories.)
        assert [a[2].get("X-Bapi-Limit-Status") for a in answers] == ["4", "3", "2", "4"]
        assert {a[2].get("X-Bapi-Limit") for a in answers} == {"5"}
        # The injected 10002 answers alike: headers, and one more request counted.
        order = fx.seed_order()
        fx.add_fault(Fault.TIMESTAMP_10002, order_id=order.order_id)
        _, data, h = await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
        assert data["retCode"] == 10002 and h["X-Bapi-Limit-Status"] == "1"
        _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
        assert data["retCode"] == 0
        # A full window still answers the auth error, with nothing left.
        _, data, h = await rest.post("/v5/order/cancel", body, key="nope")
        assert data["retCode"] == 10003 and h["X-Bapi-Limit-Status"] == "0"
        # GET too, on its own window.
        _, data, h = await rest.get("/v5/order/realtime", "category=spot", key="nope")
        assert data["retCode"] == 10003 and h["X-Bapi-Limit-Status"] == "9999"
        # No auth headers at all: the non-JSON 401, without them.
        async with s.get(fx.rest_url + "/v5/order/realtime?category=spot") as r:
            assert r.status == 401 and "X-Bapi-Limit" not in r.headers


# ---------------------------------------------------------------------------- cancel


async def test_cancel_ack_then_push_linear(rest: Rest) -> None:
    async with FakeExchange(KEY, SECRET, push_delay=0.3) as fx:
        rest.fx = fx
        ws = await open_ws(fx)
        order = fx.seed_order(symbol="SOLUSDT", qty="0.1", price="99")
        status, data, headers = await rest.cancel("linear", "SOLUSDT", orderId=order.order_id)
        assert status == 200
        assert_same_shape(data, fixture("rest/cancel-order.response.json"), order=True)
        assert data["result"] == {"orderId": order.order_id, "orderLinkId": ""}
        for h in ("X-Bapi-Limit", "X-Bapi-Limit-Status", "X-Bapi-Limit-Reset-Timestamp"):
            assert h in headers
        # Bybit's cancel is asynchronous: until the push, the order is still open.
        assert fx.pushes_sent == 0
        [open_now] = await rest.realtime("linear", orderId=order.order_id)
        assert open_now["orderStatus"] == "New"
        push = await next_push(ws)
        expected = fixture("ws-private/order.push.linear-cancelled.json")
        assert_same_shape(push, expected)
        assert list(push) == ["topic", "id", "creationTime", "data"]
        assert push["topic"] == "order"
        [o] = push["data"]
        assert_same_shape(o, expected["data"][0], order=True)
        assert o["orderStatus"] == "Cancelled"
        assert (o["cancelType"], o["rejectReason"]) == ("CancelByUser", "EC_PerCancelRequest")
        assert o["leavesQty"] == "0" and o["cumExecQty"] == "0"
        assert int(o["updatedTime"]) > int(o["createdTime"])
        assert fx.order(order.order_id).status == "Cancelled"
        [closed] = await rest.realtime("linear", orderId=order.order_id)
        assert closed["orderStatus"] == "Cancelled"
        assert_same_shape(closed, fixture("rest/order-realtime.response.json")["result"]["list"][0])
        await ws.close()


async def test_cancel_push_delay_zero_arrives(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order = fx.seed_order(order_link_id="lnk-1")
    _, data, _ = await rest.cancel("linear", "BTCUSDT", orderLinkId="lnk-1")
    assert data["retCode"] == 0 and data["result"]["orderLinkId"] == "lnk-1"
    push = await next_push(ws)
    assert push["data"][0]["orderId"] == order.order_id
    assert push["data"][0]["orderLinkId"] == "lnk-1"
    assert fx.pushes_sent == 1


async def test_cancel_errors(fx: FakeExchange, rest: Rest) -> None:
    order = fx.seed_order()
    _, data, _ = await rest.cancel("linear", "BTCUSDT")
    expected = fixture("rest/cancel-order.error-10001.response.json")
    assert_same_shape(data, expected, order=True)
    assert (data["retCode"], data["retMsg"]) == (10001, expected["retMsg"])
    _, data, _ = await rest.cancel("futures", "BTCUSDT", orderId=order.order_id)
    assert data["retCode"] == 10001
    not_found = fixture("rest/cancel-order.error-110001.response.json")
    for cat, sym, oid in (
        ("linear", "BTCUSDT", "c6f055d9-7f21-4079-913d-e6523a9cfffa"),
        ("linear", "ETHUSDT", order.order_id),
        ("inverse", "BTCUSDT", order.order_id),
        ("linear", "btcusdt", order.order_id),
    ):
        _, data, _ = await rest.cancel(cat, sym, orderId=oid)
        assert_same_shape(data, not_found, order=True)
        assert (data["retCode"], data["retMsg"], data["result"]) == (
            110001,
            not_found["retMsg"],
            {},
        )
    _, data, _ = await rest.cancel("spot", "BTCUSDT", orderId="1666800494330512128")
    assert (data["retCode"], data["retMsg"]) == (170213, "Order does not exist.")
    # The documented request sends "orderLinkId": null, which counts as absent.
    body = (
        '{"category": "linear", "symbol": "BTCUSDT", "orderLinkId": null, '
        f'"orderId":"{order.order_id}"}}'
    )
    _, data, _ = await rest.post("/v5/order/cancel", body)
    assert data["retCode"] == 0
    await fx.wait_idle()
    # A second cancel of a now-final order: 110001 (protocol §1 PYBIT note).
    _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
    assert data["retCode"] == 110001


async def test_order_id_wins_over_link_id(fx: FakeExchange, rest: Rest) -> None:
    a = fx.seed_order(order_link_id="a")
    b = fx.seed_order(order_link_id="b")
    _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId=a.order_id, orderLinkId="b")
    assert data["result"] == {"orderId": a.order_id, "orderLinkId": "a"}
    await fx.wait_idle()
    assert fx.order(a.order_id).status == "Cancelled"
    assert fx.order_by_link_id("b") is b and b.status == "New"


async def test_spot_ids_and_partially_filled_canceled(
    fx: FakeExchange, rest: Rest, ws: Any
) -> None:
    order = fx.seed_order(
        category="spot", symbol="DOGEUSDT", side="Sell", qty="10.0", price="0.09284"
    )
    assert re.fullmatch(r"\d{19}", order.order_id) and int(order.order_id) > 2**53
    fx.fill(order.order_id, "4", push=False)
    assert order.status == "PartiallyFilled" and order.cum_exec_qty == "4.0"
    _, data, _ = await rest.cancel("spot", "DOGEUSDT", orderId=order.order_id)
    assert data["retCode"] == 0
    push = await next_push(ws)
    expected = fixture("ws-private/order.push.spot-cancelled.json")
    [o] = push["data"]
    assert_same_shape(o, expected["data"][0], order=True)
    assert o["orderStatus"] == "PartiallyFilledCanceled"
    assert o["leavesQty"] == "6.0" and o["cumExecQty"] == "4.0"
    assert o["isLeverage"] == "0"
    assert re.fullmatch(r"\d+-\d+-\d+", push["id"])
    # An unfilled spot order ends Cancelled and keeps its leavesQty (protocol §4).
    other = fx.seed_order(category="spot", symbol="DOGEUSDT", qty="10.0", price="0.09")
    await rest.cancel("spot", "DOGEUSDT", orderId=other.order_id)
    [o2] = (await next_push(ws))["data"]
    assert (o2["orderStatus"], o2["leavesQty"], o2["cumExecQty"]) == ("Cancelled", "10.0", "0.0")


async def test_linear_partially_filled_cancel_keeps_cum_exec_qty(
    fx: FakeExchange, rest: Rest, ws: Any
) -> None:
    order = fx.seed_order(qty="1", price="100")
    fx.fill(order.order_id, "0.4")
    partial = (await next_push(ws))["data"][0]
    assert (partial["orderStatus"], partial["cumExecQty"], partial["leavesQty"]) == (
        "PartiallyFilled",
        "0.4",
        "0.6",
    )
    await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
    final = (await next_push(ws))["data"][0]
    assert (final["orderStatus"], final["cumExecQty"], final["leavesQty"]) == (
        "Cancelled",
        "0.4",
        "0",
    )
    assert int(final["updatedTime"]) > int(partial["updatedTime"])


async def test_a_fill_finer_than_the_order_qty_is_not_rounded(
    fx: FakeExchange, rest: Rest, ws: Any
) -> None:
    """Quantities are padded to the order qty's decimals (spot, and REST, §4 and §8), never
    rounded below them: 0.003 of a 0.01 order used to read "0.00" over REST while the fake's own
    record said 0.003."""
    for category in ("linear", "spot"):
        order = fx.seed_order(category=category, qty="0.01")
        fx.fill(order.order_id, "0.003")
        [pushed] = (await next_push(ws))["data"]
        [listed] = await rest.realtime(category, orderId=order.order_id)
        assert Decimal(fx.order(order.order_id).cum_exec_qty) == Decimal("0.003")
        for o in (pushed, listed):
            assert (o["cumExecQty"], o["leavesQty"]) == ("0.003", "0.007"), (category, o)


async def test_conditional_orders_deactivate(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    cond = fx.seed_order(trigger_price="31000")
    assert cond.status == "Untriggered" and cond.stop_order_type == "Stop"
    await rest.cancel("linear", "BTCUSDT", orderId=cond.order_id)
    o = (await next_push(ws))["data"][0]
    assert o["orderStatus"] == "Deactivated" and o["triggerPrice"] == "31000"
    # Spot TP/SL: a cancel must name the same orderFilter (protocol §6).
    tpsl = fx.seed_order(category="spot", trigger_price="29000", order_filter="tpslOrder")
    _, data, _ = await rest.cancel("spot", "BTCUSDT", orderId=tpsl.order_id)
    assert data["retCode"] == 170213
    _, data, _ = await rest.cancel(
        "spot", "BTCUSDT", orderId=tpsl.order_id, orderFilter="StopOrder"
    )
    assert data["retCode"] == 170213
    _, data, _ = await rest.cancel(
        "spot", "BTCUSDT", orderId=tpsl.order_id, orderFilter="tpslOrder"
    )
    assert data["retCode"] == 0
    o = (await next_push(ws))["data"][0]
    assert (o["orderStatus"], o["stopOrderType"]) == ("Deactivated", "tpslOrder")
    _, data, _ = await rest.cancel("spot", "BTCUSDT", orderId="1", orderFilter="Bogus")
    assert data["retCode"] == 170201


async def test_trigger_pushes_triggered_then_new(fx: FakeExchange, ws: Any) -> None:
    cond = fx.seed_order(trigger_price="31000")
    fx.trigger(cond.order_id)
    first = (await next_push(ws))["data"][0]
    second = (await next_push(ws))["data"][0]
    assert (first["orderStatus"], second["orderStatus"]) == ("Triggered", "New")
    assert int(second["updatedTime"]) > int(first["updatedTime"])
    assert fx.order(cond.order_id).status == "New"


async def test_fill_pushes_and_coalesces(fx: FakeExchange, ws: Any) -> None:
    a = fx.seed_order()
    b = fx.seed_order(category="spot")
    fx.fill(a.order_id)
    fx.fill(b.order_id)
    push = await next_push(ws)
    assert [o["orderStatus"] for o in push["data"]] == ["Filled", "Filled"]
    assert {o["category"] for o in push["data"]} == {"linear", "spot"}
    assert fx.pushes_sent == 1
    filled = fixture("ws-private/order.push.linear-market-filled.json")["data"][0]
    assert_same_shape(push["data"][0], filled, order=True)
    assert push["data"][0]["avgPrice"] == "30000"


async def test_push_batch_and_categorised_topics(fx: FakeExchange) -> None:
    linear_ws = await open_ws(fx, ("order.linear",))
    spot_ws = await open_ws(fx, ("order.spot",))
    all_ws = await open_ws(fx, ("order",))
    a = fx.seed_order()
    b = fx.seed_order(category="spot")
    c = fx.seed_order()
    fx.push_batch([a.order_id, b.order_id, c.order_id])
    push = await next_push(all_ws)
    assert push["topic"] == "order" and len(push["data"]) == 3
    push = await next_push(linear_ws)
    assert push["topic"] == "order.linear"
    assert [o["orderId"] for o in push["data"]] == [a.order_id, c.order_id]
    push = await next_push(spot_ws)
    assert push["topic"] == "order.spot" and [o["orderId"] for o in push["data"]] == [b.order_id]
    for w in (linear_ws, spot_ws, all_ws):
        await w.close()


async def test_option_orders_read_as_the_documented_option_push(
    fx: FakeExchange, rest: Rest, ws: Any
) -> None:
    """protocol §4: the documented option push has tpslMode, tpLimitPrice and slLimitPrice ""
    (not linear's "UNKNOWN" and "0") and placeType "price", no isLeverage and no createType."""
    expected = fixture("ws-private/order.push.option-filled.json")["data"][0]
    order = fx.seed_order(
        category="option", symbol="ETH-30DEC22-1400-C", qty="1", price="72.5", order_link_id="o-1"
    )
    fx.fill(order.order_id)
    [pushed] = (await next_push(ws))["data"]
    keys = ("tpslMode", "tpLimitPrice", "slLimitPrice", "placeType", "leavesQty", "orderStatus")
    assert {k: pushed[k] for k in keys} == {k: expected[k] for k in keys}
    assert "isLeverage" not in pushed and "createType" not in pushed
    for k in set(pushed) & set(expected):
        assert type(pushed[k]) is type(expected[k]), k
    [listed] = await rest.realtime("option", orderId=order.order_id)
    assert (listed["placeType"], listed["tpslMode"]) == ("price", "")
    linear = fx.seed_order()
    fx.fill(linear.order_id)
    [pushed] = (await next_push(ws))["data"]
    assert (pushed["placeType"], pushed["tpslMode"], pushed["createType"]) == (
        "",
        "UNKNOWN",
        "CreateByUser",
    )


async def test_restart_loses_realtime_history_keeps(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order = fx.seed_order(order_link_id="r-1")
    other = fx.seed_order()
    await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
    assert (await next_push(ws))["data"][0]["orderStatus"] == "Cancelled"
    [rt] = await rest.realtime("linear", orderId=order.order_id)
    assert rt["orderStatus"] == "Cancelled"
    [hist] = await rest.history("linear", orderLinkId="r-1")
    assert_same_shape(
        hist, fixture("rest/order-history.response.json")["result"]["list"][0], order=True
    )
    assert await rest.history("linear", orderId=other.order_id) == []
    fx.restart()
    with pytest.raises(websockets.ConnectionClosed):
        await recv(ws)
    assert fx.connections == 0
    assert await rest.realtime("linear", orderId=order.order_id) == []
    [hist] = await rest.history("linear", orderId=order.order_id)
    assert hist["orderStatus"] == "Cancelled"
    # Open orders are still there.
    [rt] = await rest.realtime("linear", orderId=other.order_id)
    assert rt["orderStatus"] == "New"


async def test_realtime_list_open_orders(fx: FakeExchange, rest: Rest) -> None:
    a = fx.seed_order(symbol="ETHUSDT", qty="0.10", price="1600.00")
    fx.seed_order(symbol="BTCUSDT")
    b = fx.seed_order(symbol="ETHUSDT")
    _, data, _ = await rest.get("/v5/order/realtime", "category=linear&symbol=ETHUSDT")
    expected = fixture("rest/order-realtime.response.json")
    assert_same_shape(data, expected, order=True)
    assert list(data["result"]) == ["list", "nextPageCursor", "category"]
    ids = [o["orderId"] for o in data["result"]["list"]]
    assert set(ids) == {a.order_id, b.order_id}
    row = next(o for o in data["result"]["list"] if o["orderId"] == a.order_id)
    assert_same_shape(row, expected["result"]["list"][0], order=True)
    assert (row["avgPrice"], row["stopOrderType"], row["leavesQty"]) == ("0", "UNKNOWN", "0.10")
    _, data, _ = await rest.get("/v5/order/realtime", "category=linear")
    assert data["retCode"] == 10001  # linear needs symbol/baseCoin/settleCoin
    _, data, _ = await rest.get("/v5/order/realtime", "category=linear&symbol=ETHUSDT&limit=1")
    assert len(data["result"]["list"]) == 1 and data["result"]["nextPageCursor"]
    empty = fixture("rest/order-realtime.response.observed-empty.json")
    _, data, _ = await rest.get("/v5/order/realtime", "category=linear&symbol=XRPUSDT")
    assert data["result"] == {**empty["result"]}


async def test_spot_rest_rows_have_base_price_and_no_tpsl_mode(
    fx: FakeExchange, rest: Rest
) -> None:
    """Bybit's open-order and order-list pages (protocol §8): spot rows add ``basePrice`` and
    have no ``tpslMode``; every key of the observed spot row is there."""
    observed = fixture("rest/order-realtime.response.observed-spot-new.json")["result"]["list"][0]
    order = fx.seed_order(category="spot", qty="0.000040", price="28909.99")
    [row] = await rest.realtime("spot", orderId=order.order_id)
    assert "tpslMode" not in row and row["basePrice"] == "28909.99"
    assert set(observed) <= set(row), set(observed) - set(row)
    keys = list(row)
    assert keys.index("lastPriceOnCreated") + 1 == keys.index("basePrice")
    await rest.cancel("spot", "BTCUSDT", orderId=order.order_id)
    await fx.wait_idle()
    [hist] = await rest.history("spot", orderId=order.order_id)
    assert "tpslMode" not in hist and hist["basePrice"] == "28909.99"
    # Derivatives rows keep tpslMode and have no basePrice.
    linear = fx.seed_order()
    [row] = await rest.realtime("linear", orderId=linear.order_id)
    assert row["tpslMode"] == "" and "basePrice" not in row


@pytest.mark.parametrize("cursor", ["-1", "-20", "abc", "1.5", "page_args%3Dx"])
@pytest.mark.parametrize("path", ["/v5/order/realtime", "/v5/order/history"])
async def test_a_cursor_not_from_the_fake_is_refused(
    fx: FakeExchange, rest: Rest, path: str, cursor: str
) -> None:
    """Undocumented: a negative or malformed cursor gets Bybit's generic 10001, never a slice."""
    for _ in range(3):
        fx.seed_order()
    status, data, h = await rest.get(path, f"category=linear&cursor={cursor}&symbol=BTCUSDT")
    assert status == 200 and data["retCode"] == 10001, data
    assert data["retMsg"] == "params error: invalid cursor" and data["result"] == {}
    assert "X-Bapi-Limit-Status" in h
    # The fake's own cursors still page.
    _, data, _ = await rest.get("/v5/order/realtime", "category=linear&limit=2&symbol=BTCUSDT")
    cursor = data["result"]["nextPageCursor"]
    query = f"category=linear&cursor={cursor}&limit=2&symbol=BTCUSDT"
    _, data, _ = await rest.get("/v5/order/realtime", query)
    assert data["retCode"] == 0 and len(data["result"]["list"]) == 1


async def test_create_order_ack_then_new_push(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    body = {
        "category": "linear",
        "symbol": "BTCUSDT",
        "side": "Buy",
        "orderType": "Limit",
        "qty": "1",
        "price": "25000",
        "timeInForce": "GTC",
        "positionIdx": 0,
        "orderLinkId": "usdt-test-01",
    }
    _, data, headers = await rest.post("/v5/order/create", body)
    assert_same_shape(data, fixture("rest/create-order.response.observed-linear.json"), order=True)
    assert data["result"]["orderLinkId"] == "usdt-test-01"
    assert "X-Bapi-Limit-Status" in headers
    push = await next_push(ws)
    new = push["data"][0]
    assert (new["orderStatus"], new["orderId"]) == ("New", data["result"]["orderId"])
    assert fx.order_by_link_id("usdt-test-01").order_id == data["result"]["orderId"]
    _, dup, _ = await rest.post("/v5/order/create", body)
    assert (dup["retCode"], dup["retMsg"]) == (110072, "OrderLinkedID is duplicate")
    spot = {**body, "category": "spot", "orderLinkId": "spot-1"}
    _, data, _ = await rest.post("/v5/order/create", spot)
    assert re.fullmatch(r"\d{19}", data["result"]["orderId"])
    spot_new = (await next_push(ws))["data"][0]
    assert (spot_new["category"], spot_new["orderStatus"]) == ("spot", "New")
    _, dup, _ = await rest.post("/v5/order/create", spot)
    assert (dup["retCode"], dup["retMsg"]) == (170141, "Duplicate clientOrderId")
    _, bad, _ = await rest.post("/v5/order/create", {k: v for k, v in body.items() if k != "qty"})
    assert bad["retCode"] == 10001 and bad["retMsg"].startswith("params error")
    cond = {**body, "orderLinkId": "cond-1", "triggerPrice": "26000"}
    _, data, _ = await rest.post("/v5/order/create", cond)
    untriggered = (await next_push(ws))["data"][0]
    assert (untriggered["orderId"], untriggered["orderStatus"]) == (
        data["result"]["orderId"],
        "Untriggered",
    )


# ---------------------------------------------------------------------------- websocket


async def test_ws_auth_subscribe_ping_shapes(fx: FakeExchange) -> None:
    async with connect(fx.ws_url, ping_interval=None) as w:
        await w.send(json.dumps({"op": "subscribe", "args": ["order"]}))
        refused = await recv(w)
        assert (refused["success"], refused["ret_msg"], refused["op"]) == (
            False,
            "Request not authorized",
            "subscribe",
        )
        await w.send(json.dumps({"req_id": "LzIP5BH2aBVLUkmsOzg-q", **auth_msg()}))
        ok = await recv(w)
        assert_same_shape(ok, fixture("ws-private/auth.success.with-req-id.json"), order=True)
        assert ok["req_id"] == "LzIP5BH2aBVLUkmsOzg-q" and ok["success"] is True
        assert fx.auth_count == 1
        await w.send(json.dumps(auth_msg()))
        assert_same_shape(await recv(w), fixture("ws-private/auth.success.json"), order=True)
        await w.send(json.dumps({"op": "subscribe", "args": ["order", "order.linear"]}))
        mixed = await recv(w)
        assert mixed["success"] is False
        await w.send(json.dumps(fixture("ws-private/subscribe.request.json")))
        sub = await recv(w)
        assert_same_shape(sub, fixture("ws-private/subscribe.success.json"), order=True)
        await w.send(json.dumps({"op": "subscribe", "req_id": "x", "args": ["execution"]}))
        sub = await recv(w)
        assert_same_shape(sub, fixture("ws-private/subscribe.success.with-req-id.json"), order=True)
        await w.send(json.dumps(fixture("ws-private/ping.request.json")))
        pong = await recv(w)
        assert_same_shape(pong, fixture("ws-private/pong.response.json"), order=True)
        assert pong["req_id"] == "100001" and abs(int(pong["args"][0]) - fx.now_ms()) < 2_000
        await w.send(json.dumps({"op": "ping"}))
        assert list(await recv(w)) == ["op", "args", "conn_id"]
        # RFC6455 pings are answered.
        await asyncio.wait_for(await w.ping(), 2)
    assert fx.ws_received[0] == {"op": "subscribe", "args": ["order"]}


async def test_ws_private_topic_names(fx: FakeExchange) -> None:
    """Bybit's private topics beyond ``order``: position has categorised forms for linear,
    inverse and option only (docs websocket/private/position.mdx), under the same no-mixing rule
    as order (protocol §3); dcp.future, dcp.spot and dcp.option replace dcp (private/dcp.mdx)."""
    async with connect(fx.ws_url, ping_interval=None) as w:
        await w.send(json.dumps(auth_msg()))
        assert (await recv(w))["success"] is True
        for args, ok in (
            (["position.linear", "position.option"], True),
            (["dcp.future", "dcp.spot", "dcp.option"], True),
            (["execution.fast"], True),
            (["position.spot"], False),
            (["position", "position.inverse"], False),
            (["order", "order.spot"], False),
            (["order.BTCUSDT"], False),
        ):
            await w.send(json.dumps({"op": "subscribe", "args": args}))
            ack = await recv(w)
            assert (ack["op"], ack["success"]) == ("subscribe", ok), (args, ack)


@pytest.mark.parametrize("case", ["bad_sig", "unknown_key", "expired", "refused"])
async def test_ws_auth_failure_keeps_socket_open(fx: FakeExchange, case: str) -> None:
    msg = auth_msg()
    if case == "bad_sig":
        msg["args"][2] = "0" * 64
    elif case == "unknown_key":
        msg = auth_msg(key="nope")
    elif case == "expired":
        msg = auth_msg(expires=int(time.time() * 1000) - 1)
    else:
        fx.refuse_auth = True
    async with connect(fx.ws_url, ping_interval=None) as w:
        await w.send(json.dumps(msg))
        fail = await recv(w)
        assert_same_shape(fail, fixture("ws-private/auth.failure.json"), order=True)
        assert (fail["success"], fail["ret_msg"]) == (False, "Params Error")
        await w.send(json.dumps({"op": "ping", "req_id": "1"}))
        assert (await recv(w))["op"] == "pong"
        await w.send(json.dumps({"op": "subscribe", "args": ["order"]}))
        assert (await recv(w))["ret_msg"] == "Request not authorized"
    assert fx.auth_count == 0


async def test_add_credentials_second_account(fx: FakeExchange, rest: Rest) -> None:
    fx.add_credentials("k2", "s2")
    _, data, _ = await rest.get("/v5/order/realtime", "category=spot", key="k2", secret="s2")
    assert data["retCode"] == 0
    async with connect(fx.ws_url, ping_interval=None) as w:
        await w.send(json.dumps(auth_msg("k2", "s2")))
        assert (await recv(w))["success"] is True


async def test_disconnect_all_and_stall(fx: FakeExchange) -> None:
    a = await open_ws(fx)
    b = await open_ws(fx)
    assert fx.connections == 2
    fx.stall(True)
    await a.send(json.dumps({"op": "ping"}))
    await no_message(a)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(await a.ping(), 0.3)
    fx.stall(False)
    await a.send(json.dumps({"op": "ping"}))
    assert (await recv(a))["op"] == "pong"
    await fx.disconnect_all()
    assert fx.connections == 0
    for w in (a, b):
        with pytest.raises(websockets.ConnectionClosed):
            await recv(w)
    c = await open_ws(fx)
    assert fx.connections == 1 and fx.auth_count == 3
    await c.close()


async def test_stall_after_subscribe(fx: FakeExchange) -> None:
    """stall_after_subscribe plays a gateway that goes silent: a websocket opened while it is
    set gets its auth and subscribe replies, then nothing (no pong, JSON or RFC6455), and stays
    open; one opened before it was set, or after it is cleared, answers as usual."""
    ping = json.dumps({"op": "ping"})
    before = await open_ws(fx)
    fx.stall_after_subscribe = True
    silent = await open_ws(fx)
    await silent.send(ping)
    await no_message(silent)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(await silent.ping(), 0.3)
    await before.send(ping)
    assert (await recv(before))["op"] == "pong"
    fx.stall_after_subscribe = False
    after = await open_ws(fx)
    await after.send(ping)
    assert (await recv(after))["op"] == "pong"
    assert fx.connections == 3
    for w in (before, silent, after):
        await w.close()


# ---------------------------------------------------------------------------- faults


async def cancel_with_fault(
    fx: FakeExchange, rest: Rest, fault: Fault, category: str = "linear", **kw: Any
) -> tuple[FakeOrder, tuple[int, Any, Any]]:
    order = fx.seed_order(category=category)
    fx.add_fault(fault, order_id=order.order_id, **kw)
    result = await rest.cancel(category, "BTCUSDT", orderId=order.order_id)
    assert fx.fault_log[-1] == (order.order_id, fault)
    return order, result


async def test_fault_delay_push(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    t0 = time.monotonic()
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.DELAY_PUSH, delay=0.4)
    assert data["retCode"] == 0
    assert order.status == "New"
    [rt] = await rest.realtime("linear", orderId=order.order_id)
    assert rt["orderStatus"] == "New"
    push = await next_push(ws)
    assert push["data"][0]["orderStatus"] == "Cancelled"
    assert time.monotonic() - t0 >= 0.35


async def test_fault_push_before_ack(rest: Rest) -> None:
    async with FakeExchange(KEY, SECRET, push_delay=5.0) as fx:
        rest.fx = fx
        ws = await open_ws(fx)
        order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.PUSH_BEFORE_ACK)
        assert data["retCode"] == 0
        # The push was written before the ack: it is already counted and already queued.
        assert fx.pushes_sent == 1 and order.status == "Cancelled"
        push = await next_push(ws, timeout=0.5)
        assert push["data"][0]["orderStatus"] == "Cancelled"
        await ws.close()


async def test_fault_drop_push(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.DROP_PUSH)
    assert data["retCode"] == 0
    await fx.wait_idle()
    assert order.status == "Cancelled" and fx.pushes_sent == 0
    await no_message(ws)
    [rt] = await rest.realtime("linear", orderId=order.order_id)
    assert rt["orderStatus"] == "Cancelled"


async def test_fault_duplicate_push(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    await cancel_with_fault(fx, rest, Fault.DUPLICATE_PUSH)
    first = await next_push(ws)
    second = await next_push(ws)
    assert first["data"] == second["data"]
    assert first["data"][0]["orderStatus"] == "Cancelled"


async def test_fault_stale_after_final(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    await cancel_with_fault(fx, rest, Fault.STALE_AFTER_FINAL)
    final = (await next_push(ws))["data"][0]
    stale = (await next_push(ws))["data"][0]
    assert (final["orderStatus"], stale["orderStatus"]) == ("Cancelled", "New")
    assert int(stale["updatedTime"]) < int(final["updatedTime"])


async def test_fault_close_ws_after_ack(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.CLOSE_WS_AFTER_ACK)
    assert data["retCode"] == 0
    with pytest.raises(websockets.ConnectionClosed):
        await next_push(ws)
    await fx.wait_idle()
    assert order.status == "Cancelled" and fx.connections == 0 and fx.pushes_sent == 0


async def test_fault_stall_ws_after_ack(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.STALL_WS_AFTER_ACK)
    assert data["retCode"] == 0
    await fx.wait_idle()
    assert order.status == "Cancelled" and fx.pushes_sent == 0 and fx.connections == 1
    await ws.send(json.dumps({"op": "ping"}))
    await no_message(ws)
    # A fresh connection is healthy.
    fresh = await open_ws(fx)
    await fresh.close()


@pytest.mark.parametrize("applied", [False, True])
async def test_fault_http_502(fx: FakeExchange, rest: Rest, ws: Any, applied: bool) -> None:
    order, (status, body, _) = await cancel_with_fault(fx, rest, Fault.HTTP_502, applied=applied)
    assert status == 502 and isinstance(body, str) and "502 Bad Gateway" in body
    await fx.wait_idle()
    if applied:
        assert order.status == "Cancelled"
        assert (await next_push(ws))["data"][0]["orderStatus"] == "Cancelled"
    else:
        assert order.status == "New"
        await no_message(ws)


async def test_fault_rest_timeout(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, delay=5.0)
    with pytest.raises(TimeoutError):
        await rest.post(
            "/v5/order/cancel",
            {"category": "linear", "symbol": "BTCUSDT", "orderId": order.order_id},
            timeout=0.3,
        )
    assert (await next_push(ws))["data"][0]["orderStatus"] == "Cancelled"
    assert order.status == "Cancelled"
    # The retry finds a final order.
    _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
    assert data["retCode"] == 110001


async def test_fault_rate_limit_10006(fx: FakeExchange, rest: Rest) -> None:
    order, (status, data, headers) = await cancel_with_fault(
        fx, rest, Fault.RATE_LIMIT_10006, delay=2.0
    )
    assert status == 200 and (data["retCode"], data["retMsg"]) == (10006, "Too many visits!")
    assert data["result"] == {}
    assert headers["X-Bapi-Limit-Status"] == "0"
    reset = int(headers["X-Bapi-Limit-Reset-Timestamp"])
    assert 1_500 <= reset - fx.now_ms() <= 2_100
    await fx.wait_idle()
    assert order.status == "New"


async def test_fault_timestamp_10002(fx: FakeExchange, rest: Rest) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.TIMESTAMP_10002)
    assert data["retCode"] == 10002 and "req_timestamp[" in data["retMsg"]
    await fx.wait_idle()
    assert order.status == "New"
    _, data, _ = await rest.cancel("linear", "BTCUSDT", orderId=order.order_id)
    assert data["retCode"] == 0  # fires once


@pytest.mark.parametrize(("fault", "code"), [(Fault.HTTP_403, 403), (Fault.HTTP_429, 429)])
async def test_fault_http_403_429(fx: FakeExchange, rest: Rest, fault: Fault, code: int) -> None:
    order, (status, body, _) = await cancel_with_fault(fx, rest, fault)
    assert status == code and isinstance(body, str)
    if fault is Fault.HTTP_403:
        assert body == "access too frequent"
    await fx.wait_idle()
    assert order.status == "New"


@pytest.mark.parametrize(("category", "code"), [("linear", 110001), ("spot", 170213)])
async def test_fault_fill_before_cancel(
    fx: FakeExchange, rest: Rest, ws: Any, category: str, code: int
) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.FILL_BEFORE_CANCEL, category)
    assert data["retCode"] == code
    assert (await next_push(ws))["data"][0]["orderStatus"] == "Filled"
    assert order.status == "Filled"
    [hist] = await rest.history(category, orderId=order.order_id)
    assert hist["orderStatus"] == "Filled"


async def test_fault_double_filled(fx: FakeExchange, rest: Rest, ws: Any) -> None:
    order, (_, data, _) = await cancel_with_fault(fx, rest, Fault.DOUBLE_FILLED)
    assert data["retCode"] == 0
    first = (await next_push(ws))["data"][0]
    second = (await next_push(ws))["data"][0]
    assert (first["orderStatus"], first["rejectReason"]) == ("Filled", "EC_NoError")
    assert (second["orderStatus"], second["cancelType"], second["rejectReason"]) == (
        "Filled",
        "CancelByUser",
        "EC_OrigClOrdIDDoesNotExist",
    )
    assert order.status == "Filled"


async def test_fault_targeting_and_times(fx: FakeExchange, rest: Rest) -> None:
    a = fx.seed_order(order_link_id="target")
    b = fx.seed_order()
    fx.add_fault(Fault.HTTP_429, order_id="target", times=None)
    assert (await rest.cancel("linear", "BTCUSDT", orderId=b.order_id))[0] == 200
    for _ in range(2):
        assert (await rest.cancel("linear", "BTCUSDT", orderId=a.order_id))[0] == 429
    fx.clear_faults()
    fx.add_fault(Fault.HTTP_429, times=2)
    c, d, e = (fx.seed_order() for _ in range(3))
    codes = [(await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[0] for o in (c, d, e)]
    assert codes == [429, 429, 200]
    assert [f for _, f in fx.fault_log] == [Fault.HTTP_429] * 4


async def test_chaos(fx: FakeExchange, rest: Rest) -> None:
    fx.set_chaos(rate=1.0, seed=7, faults=[Fault.DROP_PUSH, Fault.HTTP_502])
    orders = [fx.seed_order() for _ in range(10)]
    for o in orders:
        await rest.cancel("linear", "BTCUSDT", orderId=o.order_id)
    assert len(fx.fault_log) == 10
    assert {f for _, f in fx.fault_log} <= {Fault.DROP_PUSH, Fault.HTTP_502}
    fx.set_chaos(rate=0)
    o = fx.seed_order()
    assert (await rest.cancel("linear", "BTCUSDT", orderId=o.order_id))[1]["retCode"] == 0
    assert len(fx.fault_log) == 10


# ---------------------------------------------------------------------------- lifecycle


async def test_stop_is_prompt_with_many_pending_pushes() -> None:
    fx = FakeExchange(KEY, SECRET, push_delay=30.0)
    await fx.start()
    ws = await open_ws(fx)
    orders = [fx.seed_order() for _ in range(2_000)]
    async with aiohttp.ClientSession() as s:
        rest = Rest(s, fx)
        await asyncio.gather(
            *(rest.cancel("linear", "BTCUSDT", orderId=o.order_id) for o in orders[:500])
        )
    t0 = time.monotonic()
    await fx.stop()
    await fx.stop()  # idempotent
    assert time.monotonic() - t0 < 3.0
    assert fx.connections == 0
    with pytest.raises(websockets.ConnectionClosed):
        await recv(ws)


async def test_many_concurrent_cancels_all_confirmed(fx: FakeExchange, ws: Any) -> None:
    orders = [fx.seed_order() for _ in range(300)]
    conn = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=conn) as s:
        rest = Rest(s, fx)
        acks = await asyncio.gather(
            *(rest.cancel("linear", "BTCUSDT", orderId=o.order_id) for o in orders)
        )
    assert all(a[1]["retCode"] == 0 for a in acks)
    seen: set[str] = set()
    while len(seen) < len(orders):
        push = await next_push(ws)
        assert len(push["data"]) <= 50
        seen.update(o["orderId"] for o in push["data"])
    assert fx.pushes_sent <= len(orders)
    assert all(fx.order(o.order_id).status == "Cancelled" for o in orders)


async def test_pybit_official_client() -> None:
    pybit_ut = pytest.importorskip("pybit.unified_trading")
    async with FakeExchange(KEY, SECRET) as fx:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_order(message: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(received.put_nowait, message)

        def make_ws() -> Any:
            with mock.patch.object(pybit_ut, "PRIVATE_WSS", fx.ws_url):
                # pybit's default expires margin is 1 s, which fails under load (pybit #152,
                # protocol §3); +10 s is the documented workaround.
                return pybit_ut.WebSocket(
                    testnet=False,
                    channel_type="private",
                    api_key=KEY,
                    api_secret=SECRET,
                    private_auth_expire=10,
                )

        ws = await asyncio.wait_for(asyncio.to_thread(make_ws), 10)
        record_pybit_subscribes_first(ws)  # pybit's own race with a fast reply (see there)
        try:
            await asyncio.wait_for(asyncio.to_thread(ws.order_stream, on_order), 10)
            for _ in range(1000):  # bounded poll (10 s) for pybit's auth + subscribe
                if fx.auth_count and any(m.get("op") == "subscribe" for m in fx.ws_received):
                    break
                await asyncio.sleep(0.01)
            assert fx.auth_count == 1, fx.ws_received
            await fx.wait_idle()
            session = pybit_ut.HTTP(api_key=KEY, api_secret=SECRET, testnet=False)
            session.endpoint = fx.rest_url

            def place_and_cancel() -> tuple[dict[str, Any], dict[str, Any]]:
                placed = session.place_order(
                    category="linear",
                    symbol="BTCUSDT",
                    side="Buy",
                    orderType="Limit",
                    qty="0.01",
                    price="30000",
                    orderLinkId="pybit-1",
                )
                cancelled = session.cancel_order(
                    category="linear", symbol="BTCUSDT", orderId=placed["result"]["orderId"]
                )
                return placed, cancelled

            placed, cancelled = await asyncio.wait_for(asyncio.to_thread(place_and_cancel), 10)
            order_id = placed["result"]["orderId"]
            assert cancelled["retCode"] == 0 and cancelled["result"]["orderId"] == order_id
            # pybit signs spaced JSON: the fake verified it over the raw bytes.
            assert b'", "' in fx.requests[-1].body
            statuses = []
            while "Cancelled" not in statuses:
                msg = await asyncio.wait_for(received.get(), 10)
                assert msg["topic"] == "order"
                statuses += [o["orderStatus"] for o in msg["data"] if o["orderId"] == order_id]
            assert statuses == ["New", "Cancelled"]
        finally:
            await asyncio.wait_for(asyncio.to_thread(ws.exit), 10)


def test_testing_package_is_independent() -> None:
    # bybit_cancel.testing must not import the rest of bybit_cancel (it stays usable alone).
    import bybit_cancel.testing._exchange as mod

    src = Path(mod.__file__).read_text()
    assert "from bybit_cancel" not in src and "import bybit_cancel" not in src


async def _answer(r: aiohttp.ClientResponse) -> tuple[int, Any, Any]:
    """Status, body (JSON when it parses, else the text) and headers of one answer."""
    raw = await r.text()
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw
    return r.status, data, r.headers
