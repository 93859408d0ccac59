"""The REST adapter's retry policy, one fault at a time (aioresponses: narrow unit faults only)."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import aioresponses.core as aioresponses_core
import pytest
from aiohttp.client_reqrep import ClientResponse
from aioresponses import CallbackResult, aioresponses

from bybit_cancel import (
    AuthenticationError,
    BybitAPIError,
    HTTPStatusError,
    TransportError,
    _rest,
)
from bybit_cancel._rest import Clock, RateLimiter, RestClient, header_int

from .helpers import make_rest

BASE = "https://api.example.test"
CANCEL = f"{BASE}/v5/order/cancel"
BODY = {"category": "linear", "symbol": "BTCUSDT", "orderId": "o1"}
OK = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {"orderId": "o1", "orderLinkId": ""},
    "retExtInfo": {},
    "time": 1,
}


def env(code: int, msg: str) -> dict[str, object]:
    return {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": 1}


@pytest.fixture
async def rest() -> AsyncIterator[RestClient]:
    async with aiohttp.ClientSession() as session:
        yield make_rest(session, BASE, max_retries=3)


class _CompatResponse(ClientResponse):
    """aiohttp 3.14 made ``stream_writer`` a required argument that aioresponses 0.7.9 does
    not pass (pnuckowski/aioresponses#289, open); aiohttp 3.14 is a security release, so the
    shim lives here instead of a pin. Used only where aiohttp has the argument: 3.11 (our floor)
    refuses it."""

    class _NoWriter:
        output_size = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", self._NoWriter())
        super().__init__(*args, **kwargs)


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    if _NEEDS_STREAM_WRITER:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as m:
        yield m


async def test_5xx_then_ok(rest: RestClient, mock: aioresponses) -> None:
    mock.post(CANCEL, status=502, body="<html>bad gateway</html>")
    mock.post(CANCEL, status=503, body="")
    mock.post(CANCEL, payload=OK)
    ack = (await rest.cancel(BODY)).result
    assert (
        ack is not None
        and ack.order_id == "o1"
        and rest.stats.retries == 2
        and rest.stats.requests == 3
    )


async def test_5xx_past_retries(rest: RestClient, mock: aioresponses) -> None:
    for _ in range(4):
        mock.post(CANCEL, status=500, body="oops")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    assert info.value.status == 500 and rest.stats.requests == 4


async def test_connection_errors_past_retries(rest: RestClient, mock: aioresponses) -> None:
    for _ in range(4):
        mock.post(CANCEL, exception=aiohttp.ClientConnectionError("reset"))
    with pytest.raises(TransportError):
        await rest.cancel(BODY)
    assert rest.stats.requests == 4


async def test_403_not_retried(rest: RestClient, mock: aioresponses) -> None:
    mock.post(CANCEL, status=403, body="access too frequent")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    assert info.value.status == 403 and "10 minutes" in str(info.value)
    assert rest.stats.requests == 1


async def test_401_and_404_are_typed(rest: RestClient, mock: aioresponses) -> None:
    mock.post(CANCEL, status=401, body="Unauthorized")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    assert info.value.status == 401


async def test_auth_codes_not_retried(rest: RestClient, mock: aioresponses) -> None:
    mock.post(CANCEL, payload=env(10003, "API key is invalid."))
    with pytest.raises(AuthenticationError) as info:
        await rest.cancel(BODY)
    assert (info.value.ret_code, info.value.ret_msg) == (10003, "API key is invalid.")
    assert rest.stats.requests == 1


async def test_10006_waits_for_reset_header(rest: RestClient, mock: aioresponses) -> None:
    reset = rest.clock.now_ms() + 300
    mock.post(
        CANCEL,
        payload=env(10006, "Too many visits!"),
        headers={
            "X-Bapi-Limit": "10",
            "X-Bapi-Limit-Status": "0",
            "X-Bapi-Limit-Reset-Timestamp": str(reset),
        },
    )
    mock.post(CANCEL, payload=OK)
    t0 = time.monotonic()
    await rest.cancel(BODY)
    assert time.monotonic() - t0 >= 0.25
    assert rest.stats.rate_limit_waits == 1


async def test_10006_waits_are_bounded_by_the_deadline_not_a_count(
    rest: RestClient, mock: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Throttling never turns into an error by itself: it waits, as long as the caller allows.
    (The first wait is 0.01 s here, not 0.1 s: the doubling waits took 1.5 s of the test.)"""
    monkeypatch.setattr(_rest, "_THROTTLE_FIRST", 0.01)
    for _ in range(4):  # more than max_retries (3)
        mock.post(CANCEL, payload=env(10006, "Too many visits!"))
    mock.post(CANCEL, payload=OK)
    ack = (await rest.cancel(BODY)).result
    assert ack is not None and ack.order_id == "o1" and rest.stats.requests == 5
    mock.post(CANCEL, payload=env(10006, "Too many visits!"), repeat=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await rest.cancel(BODY)


async def test_10002_resyncs_once(rest: RestClient, mock: aioresponses) -> None:
    server_ms = int(time.time() * 1000) + 42_000
    mock.get(
        f"{BASE}/v5/market/time",
        payload={
            "retCode": 0,
            "retMsg": "OK",
            "result": {
                "timeSecond": str(server_ms // 1000),
                "timeNano": str(server_ms * 1_000_000),
            },
            "retExtInfo": {},
            "time": server_ms,
        },
    )
    mock.post(CANCEL, payload=env(10002, "invalid request, please check your server timestamp"))
    mock.post(CANCEL, payload=env(10002, "invalid request, please check your server timestamp"))
    with pytest.raises(BybitAPIError) as info:
        await rest.cancel(BODY)
    assert info.value.ret_code == 10002  # retried once only
    assert abs(rest.clock.offset_ms - 42_000) < 1_000 and rest.stats.clock_resyncs == 1


async def test_undecodable_200(rest: RestClient, mock: aioresponses) -> None:
    mock.post(CANCEL, status=200, body="<html>maintenance</html>")
    with pytest.raises(HTTPStatusError, match="undecodable") as info:
        await rest.cancel(BODY)
    assert info.value.may_have_landed  # Bybit answered: it may have acted on the request


@pytest.mark.parametrize(
    ("code", "landed"),
    [(10000, True), (10016, True), (170147, True), (170150, True), (110079, False), (30035, False)],
)
async def test_server_errors_are_sent_again(
    rest: RestClient, mock: aioresponses, code: int, landed: bool
) -> None:
    """§6 codes that say "retry" are sent again like a 5xx; past max_retries the error says
    whether the request may have been applied."""
    mock.post(CANCEL, payload=env(code, "server busy"))
    mock.post(CANCEL, payload=OK)
    assert (await rest.cancel(BODY)).result is not None and rest.stats.requests == 2
    for _ in range(4):  # max_retries is 3
        mock.post(CANCEL, payload=env(code, "server busy"))
    with pytest.raises(BybitAPIError) as info:
        await rest.cancel(BODY)
    assert info.value.ret_code == code and info.value.may_have_landed is landed


async def test_an_error_after_an_ambiguous_attempt_may_have_landed(
    rest: RestClient, mock: aioresponses
) -> None:
    mock.post(CANCEL, status=502, body="bad gateway")
    mock.post(CANCEL, status=403, body="access too frequent")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    assert info.value.status == 403 and info.value.may_have_landed
    mock.post(CANCEL, status=403, body="access too frequent")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    assert not info.value.may_have_landed  # nothing before it could have been applied


async def test_signed_body_is_the_sent_body(rest: RestClient, mock: aioresponses) -> None:
    """The signature covers exactly the bytes sent (§1)."""
    mock.post(CANCEL, payload=OK)
    await rest.cancel(BODY)
    [(_, calls)] = [(k, v) for k, v in mock.requests.items()]
    sent = calls[0].kwargs
    body: bytes = sent["data"]
    h = sent["headers"]
    import hashlib
    import hmac

    expected = hmac.new(
        b"s", (h["X-BAPI-TIMESTAMP"] + "k" + "5000").encode() + body, hashlib.sha256
    ).hexdigest()
    assert h["X-BAPI-SIGN"] == expected
    assert body == b'{"category":"linear","symbol":"BTCUSDT","orderId":"o1"}'


async def test_lookup_falls_back_to_history(rest: RestClient, mock: aioresponses) -> None:
    empty = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {"list": [], "nextPageCursor": "", "category": "linear"},
        "retExtInfo": {},
        "time": 1,
    }
    hist = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {
            "category": "linear",
            "list": [
                {
                    "orderId": "o1",
                    "orderLinkId": "",
                    "symbol": "BTCUSDT",
                    "orderStatus": "Cancelled",
                    "cumExecQty": "0",
                    "leavesQty": "0",
                    "updatedTime": "5",
                }
            ],
        },
        "retExtInfo": {},
        "time": 1,
    }
    mock.get(re.compile(r".*/v5/order/realtime\?.*"), payload=empty)
    mock.get(re.compile(r".*/v5/order/history\?.*"), payload=hist)
    order = await rest.find_order(
        category="linear", symbol="BTCUSDT", order_id="o1", order_link_id="", order_filter=None
    )
    assert order is not None and order.order_status == "Cancelled" and order.category == "linear"


async def test_connection_slots_are_handed_over_in_order() -> None:
    """The signing gate hands a freed slot to the longest waiter; a waiter cancelled after being
    handed a slot gives it back; nobody is starved by newcomers."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        rest = make_rest(session, BASE)
        assert rest._slots == 1
        rest._inflight = 1  # the one slot is taken
        got: list[str] = []

        async def wait(name: str) -> None:
            await rest._wait_for_slot()
            got.append(name)

        a = asyncio.create_task(wait("a"))
        b = asyncio.create_task(wait("b"))
        c = asyncio.create_task(wait("c"))
        await asyncio.sleep(0)
        b.cancel()
        await asyncio.sleep(0)
        rest._release_slot()  # -> a
        await asyncio.sleep(0)
        assert got == ["a"] and rest._inflight == 1
        rest._release_slot()  # -> c (b was cancelled while queued)
        await asyncio.sleep(0)
        assert got == ["a", "c"] and rest._inflight == 1
        d = asyncio.create_task(wait("d"))
        await asyncio.sleep(0)
        rest._release_slot()  # handed to d ...
        d.cancel()  # ... which is cancelled before it runs: the slot comes back
        await asyncio.gather(a, b, c, d, return_exceptions=True)
        assert got == ["a", "c"] and rest._inflight == 0


# ----------------------------------------------------------------- throttling and odd answers


def test_header_int_never_raises() -> None:
    assert header_int("123") == 123 and header_int("0") == 0
    # "²".isdigit() is true and int("²") raises; 5,000 digits exceed int()'s default limit.
    for odd in (None, "", "²", "١٢", "-1", "1.5", "9" * 16, "9" * 5000, " 1"):
        assert header_int(odd) is None, odd


def test_a_throttle_without_a_usable_reset_backs_off_and_holds_the_key() -> None:
    """10006 (or 429) with no reset, one already passed on our clock, or one implausibly far:
    the wait doubles from a floor to a cap, and every request on that key is held back."""
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ("/v5/order/cancel", "linear")
    waits = [limiter.throttled(key, None, http=False) for _ in range(6)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert limiter.reserve(key) > 0.9  # the key itself is blocked, for every caller
    past, far = clock.now_ms() - 800, clock.now_ms() + 10**9
    other = ("/v5/order/cancel", "spot")
    assert [limiter.throttled(other, r, http=False) for r in (past, far)] == [0.1, 0.2]
    soon = ("/v5/order/realtime", "linear")
    assert 0.25 <= limiter.throttled(soon, clock.now_ms() + 300, http=False) <= 0.3
    http = ("/v5/order/history", "linear")
    assert [limiter.throttled(http, None, http=True) for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]


def test_feed_ignores_a_limit_header_that_is_not_a_count() -> None:
    limiter = RateLimiter(Clock())
    for odd in ("²", "9" * 5000, "-3"):
        limiter.feed(("/v5/order/cancel", "linear"), {"X-Bapi-Limit": odd})  # no ValueError
    assert limiter.reserve(("/v5/order/cancel", "linear")) == 0.0


@pytest.mark.parametrize(
    "body",
    [
        "<html>maintenance</html>",
        '{"retCode":0,"retMsg":"OK","result":null,"time":0}',
        '{"retCode":0,"retMsg":"OK","result":{"timeNano":"abc"},"time":1}',
        '{"retCode":0,"retMsg":"OK","result":{"timeNano":""},"time":0}',
    ],
)
async def test_an_odd_server_time_is_an_http_status_error(
    rest: RestClient, mock: aioresponses, body: str
) -> None:
    """Only BybitError leaves server_time_ms: the stream's re-auth and the 10002 retry catch it
    (a DecodeError or ValueError used to crash the stream task for good)."""
    mock.get(f"{BASE}/v5/market/time", status=200, body=body)
    with pytest.raises(HTTPStatusError):
        await rest.server_time_ms()


async def test_a_clock_resync_never_puts_timestamps_ahead(mock: aioresponses) -> None:
    """Bybit refuses a timestamp 1 s ahead of its clock but takes one up to recv_window behind
    (§1). A resync that waited for a connection slot (behind a burst) used to take the middle of
    the whole wait as the moment Bybit answered: here 0.6 s in the queue put every later
    timestamp about 0.3 s ahead. The estimate now maps Bybit's time to when its answer came."""

    def server_time(*_a: object, **_kw: object) -> CallbackResult:
        now = time.time()  # this "server" shares our clock: the true offset is 0
        result = {"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))}
        return CallbackResult(payload={"retCode": 0, "retMsg": "OK", "result": result})

    mock.get(f"{BASE}/v5/market/time", callback=server_time)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        rest = make_rest(session, BASE)
        rest._inflight = 1  # the one connection is busy (a cancel of the burst)
        resync = asyncio.create_task(rest.resync_clock())
        await asyncio.sleep(0.6)
        assert not resync.done()  # queued for the slot
        rest._release_slot()
        await asyncio.wait_for(resync, 5)
    assert rest.stats.clock_resyncs == 1
    assert -250 <= rest.clock.offset_ms <= 0


async def test_no_signature_in_the_locals_of_a_failed_request(
    rest: RestClient, mock: aioresponses
) -> None:
    """A traceback that captures locals (Sentry, rich, loguru's diagnose) must not show the
    signed headers of the request that failed."""
    mock.post(CANCEL, status=403, body="access too frequent")
    with pytest.raises(HTTPStatusError) as info:
        await rest.cancel(BODY)
    tb = info.value.__traceback__
    seen = 0
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            seen += 1
            assert not (isinstance(value, dict) and "X-BAPI-SIGN" in value), name
            assert "X-BAPI-SIGN" not in repr(value)[:10_000], name
        tb = tb.tb_next
    assert seen


def test_none_left_waits_for_a_send_inside_the_window() -> None:
    """`X-Bapi-Limit-Status: 0` holds requests back until our oldest send still inside the
    window leaves it; a send already outside the window (not yet dropped) used to make that
    moment lie in the past, so nothing was held back."""
    limiter = RateLimiter(Clock())
    key = ("/v5/order/cancel", "linear")
    limiter.feed(key, {"X-Bapi-Limit": "10", "X-Bapi-Limit-Status": "9"})
    assert limiter.reserve(key) == 0.0
    limiter._keys[key].sent[0] -= 5.0  # that send is long gone from Bybit's window
    limiter.feed(key, {"X-Bapi-Limit": "10", "X-Bapi-Limit-Status": "0"})
    assert limiter.reserve(key) > 0.9
