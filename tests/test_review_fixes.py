"""Edge cases found in review: secrets in transport errors, redirects, failed sends that did land,
bursts under a rate limit, close during open, the one-shot deadline, outside cancellation, odd
frames."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bybit_cancel import (
    BybitCancelClient,
    CancelResult,
    ClientClosedError,
    ConfirmationTimeout,
    HTTPStatusError,
    OrderStatus,
    TransportError,
    cancel_and_confirm,
)
from bybit_cancel._core import CancelTracker, Pending
from bybit_cancel._models import WireOrder
from bybit_cancel.testing import FakeExchange, Fault

from .conftest import KEY, SECRET, client_tasks, make_client
from .helpers import cancel_until_acked, make_rest, make_stream


async def _raw_server(handler: Any) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _one_cancel(base_url: str, key: str) -> None:
    """One REST cancel, no retries, through a fresh session."""
    async with aiohttp.ClientSession() as session:
        rest = make_rest(session, base_url, key=key, secret=SECRET)
        await rest.cancel({"category": "linear", "symbol": "BTCUSDT", "orderId": "x"})


async def test_transport_error_text_holds_no_signature() -> None:
    """A malformed HTTP answer: the error names the failure, not the request headers."""
    seen: list[bytes] = []

    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await _raw_server(bad)
    async with server:
        with pytest.raises(TransportError) as info:
            await _one_cancel(f"http://127.0.0.1:{port}", "KEYKEYKEY")
    sign = [line for line in seen[0].split(b"\r\n") if line.lower().startswith(b"x-bapi-sign:")]
    signature = sign[0].split(b":", 1)[1].strip().decode()
    text = str(info.value) + repr(info.value)
    assert signature not in text and SECRET not in text and "X-BAPI" not in text
    assert info.value.__cause__ is None


async def test_redirects_are_not_followed() -> None:
    """A redirect would re-send the signed headers elsewhere: it is an error instead."""
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_post("/v5/order/cancel", redirect)
    app.router.add_route("*", "/elsewhere", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(HTTPStatusError) as info:
            await _one_cancel(f"http://127.0.0.1:{port}", "k")
    finally:
        await runner.cleanup()
    assert info.value.status == 302 and hits == ["/v5/order/cancel"]


async def test_failed_send_that_landed_is_confirmed(fx: FakeExchange) -> None:
    """With max_retries=0 a 502 is not re-sent; the cancel did land, and that is the answer."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502, order_id=o.order_id, applied=True)
    async with make_client(fx, max_retries=0, push_grace=0.2) as client:
        r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.CANCELLED


async def test_burst_is_paced_not_refused(fx: FakeExchange) -> None:
    """40 concurrent cancels against a 15/s limit: all confirmed, few or no 10006."""
    fx.rate_limits["/v5/order/cancel"] = 15
    orders = [fx.seed_order() for _ in range(40)]
    async with make_client(fx) as client:
        results = await asyncio.gather(
            *(
                client.cancel_order(
                    category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=20
                )
                for o in orders
            )
        )
        assert client.rest_stats.rate_limit_waits > 0
    assert all(r.cancelled for r in results)
    sent = sum(1 for r in fx.requests if r.path == "/v5/order/cancel")
    # only the first volley, sent before any answer named the limit, can be refused
    assert sent < len(orders) * 2


async def test_aclose_during_open_leaves_nothing() -> None:
    """A service stopped while starting: open() fails with ClientClosedError at once, and no
    task or socket remains."""
    accepted = asyncio.Event()
    closed = asyncio.Event()

    async def mute(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.set()
        async for _ in ws:  # never answers auth
            pass
        closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/v5/private", mute)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = BybitCancelClient(
            api_key=KEY,
            api_secret=SECRET,
            rest_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/v5/private",
        )
        opening = asyncio.create_task(client.open())
        await asyncio.wait_for(accepted.wait(), 5)
        await asyncio.wait_for(client.aclose(), 2)
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(opening, 2)
        assert client_tasks() == []
        await asyncio.wait_for(closed.wait(), 2)  # the socket was closed, not left open
    finally:
        await runner.cleanup()


async def test_one_shot_deadline_covers_connecting() -> None:
    """A stream that accepts TCP but never answers: cancel_and_confirm gives up at its timeout."""

    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers the websocket handshake
        finally:
            writer.close()
            hung_up.set()

    server, port = await _raw_server(silent)
    async with server:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConfirmationTimeout) as info:
            await cancel_and_confirm(
                api_key=KEY,
                api_secret=SECRET,
                category="linear",
                symbol="BTCUSDT",
                order_id="x",
                timeout=0.5,
                rest_url=f"http://127.0.0.1:{port}",
                ws_url=f"ws://127.0.0.1:{port}/v5/private",
            )
        assert loop.time() - t0 < 3.0
        # The client closed its socket, and the handler saw it and ended: no task of the test is
        # left for the event loop's close to destroy (on 3.11, closing the server does not wait).
        await asyncio.wait_for(hung_up.wait(), 2)
    assert not info.value.acknowledged
    assert not info.value.may_have_landed  # it never got as far as sending the cancel
    assert client_tasks() == []


async def test_outside_cancellation_is_not_swallowed(fx: FakeExchange) -> None:
    """A caller woken by close and cancelled by its own owner in the same turn is cancelled."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=30)
    async with make_client(fx, push_grace=30.0) as client:
        task = await cancel_until_acked(client, o.order_id)
        await asyncio.sleep(0)  # let it park on its future
        client._fail_pending(ClientClosedError("closing"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_odd_frame_keeps_the_good_orders() -> None:
    """A push with odd orders: one with a number where Bybit sends a string is read with the
    number's text (its final state is not lost); one that fits nothing is skipped; the others
    are still routed."""
    got: list[list[WireOrder]] = []
    stream = make_stream(got.append)
    frame = (
        b'{"topic":"order","id":"x","creationTime":1,"data":['
        b'{"orderId":"good","orderStatus":"Cancelled","category":"linear"},'
        b'{"orderId":1584349189335418625,"orderStatus":"Filled","updatedTime":1727433749095},'
        b'{"orderId":"bad","orderStatus":{"not":"a status"}},'
        b'{"orderId":"nulls","orderStatus":"Cancelled","rejectReason":null},'
        b'["not an order"]]}'
    )
    stream._route(frame)
    [batch] = got
    assert [o.order_id for o in batch] == ["good", "1584349189335418625", "nulls"]
    assert batch[1].order_status == "Filled" and batch[1].updated_time == "1727433749095"
    stream._route(b"not json")  # ignored, no exception
    stream._route(b'{"op":"weird"}')


def test_an_unreadable_update_time_does_not_lose_the_final_state() -> None:
    """updatedTime is informational: one that int() cannot read is unknown (0 in the result), and
    the final state it came with still answers the cancel. (The call used to fail with "a final
    state with a malformed field", and the memory of final states could not answer from it.)"""
    tracker: CancelTracker[Pending] = CancelTracker()
    entries = {
        oid: tracker.start(Pending("linear", "BTCUSDT", oid, ""), now=0.0)
        for oid in ("a", "b", "c", "d", "e", "f")
    }
    resolved: list[Pending] = []
    stream = make_stream(
        lambda orders: resolved.extend(tracker.on_orders(orders, "websocket", 1.0))
    )
    stream._route(
        b'{"topic":"order","data":['
        b'{"orderId":"a","category":"linear","orderStatus":"Cancelled","updatedTime":"soon"},'
        b'{"orderId":"b","category":"linear","orderStatus":"Filled","updatedTime":"\\u00b2"},'
        b'{"orderId":"c","category":"linear","orderStatus":"Cancelled","updatedTime":1.5},'
        b'{"orderId":"d","category":"linear","orderStatus":"Cancelled","updatedTime":"17"},'
        b'{"orderId":"e","category":"linear","orderStatus":"Cancelled","updatedTime":"017"},'
        b'{"orderId":"f","category":"linear","orderStatus":"Cancelled","updatedTime":"'
        + b"9" * 5000  # more digits than int() reads
        + b'"}]}'
    )
    assert resolved == list(entries.values())
    outcomes = [e.outcome for e in resolved]
    assert [(o.status, o.updated_time) for o in outcomes if o is not None] == [
        (OrderStatus.CANCELLED, 0),
        (OrderStatus.FILLED, 0),
        (OrderStatus.CANCELLED, 0),
        (OrderStatus.CANCELLED, 17),
        (OrderStatus.CANCELLED, 17),
        (OrderStatus.CANCELLED, 0),
    ]
    # The memory answers a later cancel of the same order from that state too.
    again = tracker.start(Pending("linear", "BTCUSDT", "a", ""), now=2.0)
    assert isinstance(again, CancelResult) and again.status is OrderStatus.CANCELLED


def test_bad_order_ids_rejected_before_io() -> None:
    from bybit_cancel._client import validate_cancel

    for bad in ["a#b", "x&orderLinkId=y", "", "a" * 65, "ü"]:
        with pytest.raises(ValueError, match="order_id"):
            validate_cancel(
                category="linear",
                symbol="BTCUSDT",
                order_id=bad,
                order_link_id=None,
                order_filter=None,
                timeout=1,
            )


async def test_client_repr_and_errors_hold_no_secret(fx: FakeExchange) -> None:
    client = BybitCancelClient(
        api_key=KEY, api_secret=SECRET, rest_url=fx.rest_url, ws_url=fx.ws_url
    )
    assert SECRET not in repr(client) and KEY not in repr(client)
