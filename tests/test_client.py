"""End-to-end: BybitCancelClient against FakeExchange over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import types
import warnings
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from bybit_cancel import (
    AuthenticationError,
    BybitAPIError,
    BybitCancelClient,
    BybitError,
    CancelResult,
    ClientClosedError,
    ConfirmationTimeout,
    ConnectionState,
    HTTPStatusError,
    OrderNotFound,
    OrderStatus,
    cancel_and_confirm,
)
from bybit_cancel.testing import FakeExchange, FakeOrder, Fault

from .conftest import KEY, SECRET, client_tasks, make_client
from .helpers import cancel_until_acked, wait_until


def cancels(fx: FakeExchange) -> int:
    return sum(1 for r in fx.requests if r.path == "/v5/order/cancel")


async def test_confirm_by_order_id(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A resting order's cancel resolves to Cancelled, delivered by the websocket push."""
    o = fx.seed_order(category="linear", symbol="BTCUSDT", qty="0.010")
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.CANCELLED and r.cancelled
    assert r.source == "websocket"
    assert (r.order_id, r.category, r.symbol) == (o.order_id, "linear", "BTCUSDT")
    assert r.cancel_type == "CancelByUser" and r.reject_reason == "EC_PerCancelRequest"
    assert r.cum_exec_qty == 0 and r.updated_time == fx.order(o.order_id).updated_time
    assert fx.order(o.order_id).status == "Cancelled"
    assert client.pending_count == 0


async def test_confirm_by_order_link_id(fx: FakeExchange, client: BybitCancelClient) -> None:
    """Given only orderLinkId, the push is matched by it and the result names the order id."""
    o = fx.seed_order(category="spot", symbol="BTCUSDT", order_link_id="my-quote-17")
    r = await client.cancel_order(category="spot", symbol="BTCUSDT", order_link_id="my-quote-17")
    assert r.status is OrderStatus.CANCELLED
    assert r.order_id == o.order_id and len(r.order_id) == 19 and r.order_link_id == "my-quote-17"
    sent = [x for x in fx.requests if x.path == "/v5/order/cancel"][-1]
    assert b'"orderLinkId":"my-quote-17"' in sent.body and b"orderId" not in sent.body


async def test_both_ids_given_the_order_id_wins(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """Given both ids, the order id is the one acted on and sent (it wins on Bybit)."""
    o = fx.seed_order(order_link_id="mine-1")
    other = fx.seed_order(order_link_id="mine-2")
    r = await client.cancel_order(
        category="linear", symbol="BTCUSDT", order_id=o.order_id, order_link_id="mine-2"
    )
    assert r.status is OrderStatus.CANCELLED and r.order_id == o.order_id
    assert fx.order(other.order_id).status == "New"
    sent = [x for x in fx.requests if x.path == "/v5/order/cancel"][-1]
    assert o.order_id.encode() in sent.body and b"orderLinkId" not in sent.body


async def test_an_on_ack_error_propagates_as_is(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """An exception raised by on_ack comes out of cancel_order unchanged (the docstring's
    promise), not taken for a failed send: no confirming, nothing left pending."""
    o = fx.seed_order()
    boom = KeyError("the bot's own bug")

    def on_ack(order_id: str, order_link_id: str) -> None:
        assert order_id == o.order_id
        raise boom

    with pytest.raises(KeyError) as info:
        await client.cancel_order(
            category="linear", symbol="BTCUSDT", order_id=o.order_id, on_ack=on_ack
        )
    assert info.value is boom
    assert client.pending_count == 0
    assert [r.path for r in fx.requests if r.path.startswith("/v5/order/")] == ["/v5/order/cancel"]


async def test_push_before_ack(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A final push written before the REST ack is not lost."""
    o = fx.seed_order()
    fx.add_fault(Fault.PUSH_BEFORE_ACK, order_id=o.order_id)
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.CANCELLED and r.source == "websocket"
    assert fx.fault_log == [(o.order_id, Fault.PUSH_BEFORE_ACK)]


async def test_several_orders_in_one_push(fx: FakeExchange) -> None:
    """One push carrying three orders resolves three pending cancels."""
    orders = [fx.seed_order(symbol="BTCUSDT") for _ in range(3)]
    for o in orders:
        fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)
    async with make_client(fx, push_grace=30.0) as client:
        tasks = [
            asyncio.create_task(
                client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
            )
            for o in orders
        ]
        await wait_until(lambda: all(fx.order(o.order_id).status == "Cancelled" for o in orders))
        before = fx.pushes_sent
        fx.push_batch([o.order_id for o in orders])
        results = await asyncio.gather(*tasks)
    assert fx.pushes_sent == before + 1
    assert {r.order_id for r in results} == {o.order_id for o in orders}
    assert all(r.status is OrderStatus.CANCELLED and r.source == "websocket" for r in results)


async def test_not_found_for_filled_order_reports_filled(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """110001 for an order that filled (no push seen) is looked up and reported as Filled."""
    o = fx.seed_order(qty="0.02")
    fx.fill(o.order_id, push=False)
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.FILLED and not r.cancelled
    assert r.source == "rest" and r.cum_exec_qty == Decimal("0.02")
    paths = [x.path for x in fx.requests]
    assert paths[-2:] == ["/v5/order/cancel", "/v5/order/realtime"]


async def test_fill_racing_cancel_is_filled(fx: FakeExchange, client: BybitCancelClient) -> None:
    """The order fills just before the cancel lands: Filled, not an error and not a cancel."""
    o = fx.seed_order()
    fx.add_fault(Fault.FILL_BEFORE_CANCEL, order_id=o.order_id)
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.FILLED and fx.order(o.order_id).status == "Filled"


async def test_unknown_order_raises_order_not_found(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """Neither the cancel, realtime nor history knows the order: OrderNotFound."""
    with pytest.raises(OrderNotFound) as info:
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id="no-such-order")
    assert info.value.ret_code == 110001 and info.value.ret_msg == "Order does not exist"
    paths = [x.path for x in fx.requests if x.path.startswith("/v5/order")]
    assert paths == ["/v5/order/cancel", "/v5/order/realtime", "/v5/order/history"]


async def test_unknown_spot_order_170213(fx: FakeExchange, client: BybitCancelClient) -> None:
    """Spot answers 170213 for a missing order; it is treated like 110001."""
    with pytest.raises(OrderNotFound) as info:
        await client.cancel_order(category="spot", symbol="BTCUSDT", order_id="1234567890123456789")
    assert info.value.ret_code == 170213


async def test_conditional_order_deactivated(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A cancelled untriggered conditional order ends Deactivated (a cancel)."""
    o = fx.seed_order(trigger_price="35000")
    assert o.status == "Untriggered"
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.DEACTIVATED and r.cancelled


async def test_a_cancel_under_the_wrong_symbol_says_which_symbol(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """Bybit answers 110001 to a cancel under another symbol, while a lookup by id finds the
    order open: the error names the order's symbol, at once, and does not point at orderFilter or
    a race. The order is left alone."""
    o = fx.seed_order(symbol="ETHUSDT", order_link_id="eth-1")
    for oid, link in ((o.order_id, None), (None, "eth-1")):
        with pytest.raises(BybitAPIError) as info:
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=oid, order_link_id=link, timeout=5
            )
        assert not isinstance(info.value, OrderNotFound)
        assert info.value.ret_code == 110001
        assert "the order is on ETHUSDT, not BTCUSDT" in str(info.value), info.value
        assert "order_filter" not in str(info.value)
    assert fx.order(o.order_id).status == "New"
    assert client.pending_count == 0


async def test_spot_stop_order_needs_order_filter(fx: FakeExchange) -> None:
    """A spot stop order cancelled with the right orderFilter is Deactivated; without it Bybit
    says 170213 while the order is open, and the client says so instead of OrderNotFound.
    (Before saying so it gives a racing fill push_grace to show: 0.1 s here, not 1 s twice.)"""
    o = fx.seed_order(category="spot", trigger_price="50000", order_filter="StopOrder")
    async with make_client(fx, push_grace=0.1) as client:
        with pytest.raises(BybitAPIError) as info:
            await client.cancel_order(
                category="spot", symbol="BTCUSDT", order_id=o.order_id, timeout=5
            )
        assert not isinstance(info.value, OrderNotFound)
        assert info.value.ret_code == 170213 and "order_filter" in str(info.value)
        # Bybit's retMsg as sent (scripts match on it); the client's hint is in the message only.
        assert info.value.ret_msg == "Order does not exist."
        assert "yet the order is Untriggered" in str(info.value)
        assert "pass order_filter" in str(info.value)
        # A filter naming another book: the hint says so, instead of asking for a filter.
        with pytest.raises(BybitAPIError) as info:
            await client.cancel_order(
                category="spot", symbol="BTCUSDT", order_id=o.order_id, order_filter="tpslOrder"
            )
        assert info.value.ret_code == 170213 and info.value.hint is not None
        assert "order_filter='tpslOrder' may name the wrong book" in info.value.hint
        assert "pass order_filter" not in str(info.value)
        r = await client.cancel_order(
            category="spot", symbol="BTCUSDT", order_id=o.order_id, order_filter="StopOrder"
        )
        assert r.status is OrderStatus.DEACTIVATED


async def test_partially_filled_spot(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A partially filled spot order ends PartiallyFilledCanceled with its filled quantity."""
    o = fx.seed_order(category="spot", qty="1.000000")
    fx.fill(o.order_id, "0.250000")
    r = await client.cancel_order(category="spot", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.PARTIALLY_FILLED_CANCELED and r.cancelled
    assert r.cum_exec_qty == Decimal("0.25")


async def test_partially_filled_linear(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A partially filled linear order ends Cancelled, carrying its filled quantity."""
    o = fx.seed_order(category="linear", qty="0.100")
    fx.fill(o.order_id, "0.040")
    r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert r.status is OrderStatus.CANCELLED
    assert r.cum_exec_qty == Decimal("0.04") and r.leaves_qty == 0


async def test_bad_rest_signature_raises_authentication_error(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """REST 10004 (error sign) is an AuthenticationError carrying retCode and retMsg."""
    o = fx.seed_order()
    fx.add_credentials(KEY, "a-different-secret")
    with pytest.raises(AuthenticationError) as info:
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert info.value.ret_code == 10004 and "error sign" in info.value.ret_msg
    assert fx.order(o.order_id).status == "New"
    assert cancels(fx) == 1  # no retry of a refused signature


async def test_10004_message_does_not_carry_the_api_key(
    fx: FakeExchange, client: BybitCancelClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Bybit's 10004 echoes the signed string with the API key in it (fixtures
    rest/error-10004*): the error shows the key as the client's repr does, by its first four
    characters, in its ret_msg, its str and its repr, and so in any log line quoting it."""
    o = fx.seed_order()
    fx.add_credentials(KEY, "a-different-secret")
    caplog.set_level(logging.DEBUG, logger="bybit_cancel")
    with pytest.raises(AuthenticationError) as info:
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    err = info.value
    assert err.ret_msg.startswith("error sign! origin_string[")
    assert KEY[:4] + "***" in err.ret_msg
    for text in (err.ret_msg, str(err), repr(err), repr(err.args), caplog.text):
        assert KEY not in text


async def test_unknown_api_key_10003(fx: FakeExchange) -> None:
    """An unknown key is refused at the websocket auth, before any cancel."""
    c = BybitCancelClient(
        api_key="unknown", api_secret=SECRET, rest_url=fx.rest_url, ws_url=fx.ws_url
    )
    with pytest.raises(AuthenticationError):
        async with c:
            pass


async def test_refused_ws_auth_raises_from_aenter(fx: FakeExchange) -> None:
    """A refused websocket auth raises AuthenticationError from __aenter__; nothing is left."""
    fx.refuse_auth = True
    client = make_client(fx)
    with pytest.raises(AuthenticationError) as info:
        async with asyncio.timeout(10):
            await client.__aenter__()
    assert "Params Error" in info.value.ret_msg
    assert client_tasks() == []
    assert client.connection_state is ConnectionState.CLOSED
    # the client tried once more after measuring the clock (an expired `expires` looks the same)
    assert any(r.path == "/v5/market/time" for r in fx.requests)
    subscribed = [m for m in fx.ws_received if m.get("op") == "subscribe"]
    assert subscribed == []  # never subscribes before a successful auth


async def test_auth_waits_for_reply_before_subscribe(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """The stream authenticates, then subscribes to `order`, in that order, once each."""
    ops = [m.get("op") for m in fx.ws_received]
    assert ops[:2] == ["auth", "subscribe"]
    sub = fx.ws_received[1]
    assert sub["args"] == ["order"]
    auth = fx.ws_received[0]
    expires = auth["args"][1]
    assert isinstance(expires, int) and expires - fx.now_ms() > 5_000  # a ~10 s margin, not 1 s
    assert client.connection_state is ConnectionState.CONNECTED


BAD_INPUTS = [
    {"category": "", "symbol": "BTCUSDT", "order_id": "x"},
    {"category": "futures", "symbol": "BTCUSDT", "order_id": "x"},
    {"category": "linear", "symbol": "", "order_id": "x"},
    {"category": "linear", "symbol": "btcusdt", "order_id": "x"},
    {"category": "linear", "symbol": "BTCUSDT"},
    {"category": "linear", "symbol": "BTCUSDT", "order_id": "x", "order_filter": "StopOrder"},
    {"category": "linear", "symbol": "BTCUSDT", "order_id": "x", "timeout": 0},
    {"category": "linear", "symbol": "BTCUSDT", "order_id": "x", "timeout": -3},
    # Of the wrong type and unhashable: a TypeError out of a set lookup, before.
    {"category": ["linear"], "symbol": "BTCUSDT", "order_id": "x"},
    {"category": "spot", "symbol": "BTCUSDT", "order_id": "x", "order_filter": ["Order"]},
]


@pytest.mark.parametrize("kwargs", BAD_INPUTS)
async def test_bad_input_sends_nothing(
    fx: FakeExchange, client: BybitCancelClient, kwargs: dict[str, object]
) -> None:
    """Every bad input raises ValueError before any request."""
    before = len(fx.requests)
    with pytest.raises(ValueError):
        await client.cancel_order(**kwargs)  # type: ignore[arg-type]
    assert len(fx.requests) == before


async def test_an_on_ack_that_cannot_be_called_is_refused_before_the_cancel(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """on_ack is called only once Bybit has acknowledged: one that is not callable used to fail
    the call with a TypeError after the order had been cancelled."""
    o = fx.seed_order()
    before = len(fx.requests)
    with pytest.raises(ValueError, match="on_ack"):
        await client.cancel_order(
            category="linear",
            symbol="BTCUSDT",
            order_id=o.order_id,
            on_ack="print",  # type: ignore[arg-type]
        )
    assert len(fx.requests) == before and fx.order(o.order_id).status == "New"


async def _async_on_ack(order_id: str, order_link_id: str) -> None:
    raise AssertionError("never run")


class _AsyncCall:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def __call__(self, order_id: str, order_link_id: str) -> None:
        self.ran.append(order_id)


@pytest.mark.parametrize(
    "on_ack", [_async_on_ack, _AsyncCall()], ids=["async-def", "async-dunder-call"]
)
async def test_an_async_on_ack_is_refused_before_the_cancel(
    fx: FakeExchange, client: BybitCancelClient, on_ack: object
) -> None:
    """on_ack is called synchronously: an `async def` one was called, its coroutine dropped
    unawaited (a RuntimeWarning at best), and the caller's code never ran, though the order was
    cancelled. It is refused before anything is sent; so is an object whose ``__call__`` is
    ``async def`` (iscoroutinefunction of the object itself says no)."""
    o = fx.seed_order()
    before = len(fx.requests)
    with pytest.raises(ValueError, match="on_ack is called synchronously"):
        await asyncio.wait_for(
            client.cancel_order(
                category="linear",
                symbol="BTCUSDT",
                order_id=o.order_id,
                on_ack=on_ack,  # type: ignore[arg-type]
            ),
            5,
        )
    assert len(fx.requests) == before and fx.order(o.order_id).status == "New"


@pytest.mark.parametrize("kwargs", BAD_INPUTS[:3])
async def test_bad_input_one_shot_sends_nothing(
    fx: FakeExchange, kwargs: dict[str, object]
) -> None:
    """The one-shot helper validates before it even connects."""
    with pytest.raises(ValueError):
        await cancel_and_confirm(
            api_key=KEY,
            api_secret=SECRET,
            rest_url=fx.rest_url,
            ws_url=fx.ws_url,
            **kwargs,  # type: ignore[arg-type]
        )
    assert fx.requests == [] and fx.ws_received == []


async def test_timeout(fx: FakeExchange) -> None:
    """No final state within the timeout: ConfirmationTimeout with what was seen."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=5.0)
    async with make_client(fx, push_grace=30.0) as client:
        with pytest.raises(ConfirmationTimeout) as info:
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=0.3
            )
        assert client.pending_count == 0
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.order_id == o.order_id and err.acknowledged and err.may_have_landed


async def test_timeout_names_the_last_open_status_seen(fx: FakeExchange) -> None:
    """A partial fill pushed while the cancel waits shows up in the timeout, with the caller's
    own timeout (from the timer's queue for that timeout)."""
    o = fx.seed_order(qty="1")
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=5.0)
    async with make_client(fx, push_grace=30.0) as client:
        task = asyncio.create_task(
            client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=0.7
            )
        )
        await wait_until(lambda: client.pending_count == 1)
        fx.fill(o.order_id, "0.4")
        with pytest.raises(ConfirmationTimeout) as info:
            await asyncio.wait_for(task, 5)
        assert client.pending_count == 0
        assert client._tracker._last == {}  # nothing kept for the finished call
    err = info.value
    assert err.last_status == "PartiallyFilled" and err.timeout == 0.7


async def test_caller_cancellation_leaves_nothing(fx: FakeExchange) -> None:
    """Cancelling the awaiting task removes its pending entry and starts no task."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=5.0)
    async with make_client(fx, push_grace=30.0) as client:
        await wait_until(lambda: len(client_tasks()) == 2)  # the stream and its heartbeat
        tasks_before = set(asyncio.all_tasks())
        task = await cancel_until_acked(client, o.order_id)
        assert client.pending_count == 1
        new = {t for t in asyncio.all_tasks() - tasks_before if "RequestHandler" not in repr(t)}
        assert new == {task}  # the caller's own task only: no task per cancel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pending_count == 0
        assert client._tracker.pending() == []


async def test_a_parked_caller_resumes_in_its_own_context(fx: FakeExchange) -> None:
    """The stream task wakes the parked caller: the caller still sees its own contextvars (a
    bot's request id, a tracing span), and cancelling it carries the cancel's message."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    slow, stuck = fx.seed_order(), fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=slow.order_id, delay=0.2)
    fx.add_fault(Fault.DELAY_PUSH, order_id=stuck.order_id, delay=30.0)
    async with make_client(fx, push_grace=30.0) as client:

        async def confirm(order_id: str) -> str:
            var.set(f"caller-{order_id}")
            await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=order_id)
            return var.get()

        assert await asyncio.wait_for(confirm(slow.order_id), 5) == f"caller-{slow.order_id}"
        task = asyncio.create_task(confirm(stuck.order_id))
        # acknowledged: the caller is parked on its entry (nothing awaits between the two)
        await wait_until(lambda: [e.acknowledged for e in client._tracker.pending()] == [True])
        task.cancel("bot shutting down")
        with pytest.raises(asyncio.CancelledError, match="bot shutting down"):
            await asyncio.wait_for(task, 5)
        assert client.pending_count == 0


def _from_the_client(obj: object, call_type: type) -> bool:
    """An entry, a frame of the client's code, a task running it, or an error raised through it
    (the fake exchange in this process may leave garbage of its own: that is not counted)."""

    def client_code(code: types.CodeType) -> bool:
        path = code.co_filename.replace("\\", "/")
        return "/bybit_cancel/" in path and "/testing/" not in path

    if isinstance(obj, call_type):
        return True
    if isinstance(obj, types.FrameType):
        return client_code(obj.f_code)
    if isinstance(obj, asyncio.Task):
        coro = obj.get_coro()
        return isinstance(coro, types.CoroutineType) and client_code(coro.cr_code)
    if isinstance(obj, BaseException):
        tb = obj.__traceback__
        while tb is not None:
            if client_code(tb.tb_frame.f_code):
                return True
            tb = tb.tb_next
    return False


def _client_garbage() -> list[object]:
    """After running with the collector off: one collection, keeping what it finds, and the
    client's share of that (then the collector is back on)."""
    from bybit_cancel._call import Call

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [o for o in gc.garbage if _from_the_client(o, Call)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_cancelled_and_timed_out_calls_leave_no_reference_cycle(fx: FakeExchange) -> None:
    """A cancelled caller, and one whose deadline fired, leave nothing for the cycle collector:
    no cycle through the raised error's traceback (error -> frame -> error) keeps the entry,
    the caller's task or the client alive until a collection."""

    orders = [fx.seed_order() for _ in range(4)]
    for o in orders:
        fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=30.0)
    async with make_client(fx, push_grace=30.0) as client:
        gc.collect()
        gc.disable()
        try:
            tasks = [
                asyncio.create_task(
                    client.cancel_order(
                        category="linear",
                        symbol="BTCUSDT",
                        order_id=o.order_id,
                        timeout=0.3 if i % 2 else 30.0,
                    )
                )
                for i, o in enumerate(orders)
            ]
            await wait_until(lambda: sum(e.acknowledged for e in client._tracker.pending()) == 4)
            for t in tasks[::2]:
                t.cancel()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
            assert [type(r) for r in results] == [asyncio.CancelledError, ConfirmationTimeout] * 2
            del tasks, results, t
        finally:
            found = _client_garbage()
        print(
            "FOUND",
            [(type(o).__name__, getattr(getattr(o, "f_code", None), "co_name", "")) for o in found],
        )
        assert found == []


@pytest.mark.parametrize("fault", [Fault.HTTP_403, Fault.HTTP_502])
async def test_a_failed_send_leaves_no_reference_cycle(
    fx: FakeExchange, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """A send that fails for good, with nothing landed (403) or after one look found nothing
    (a 502 with max_retries=0), raises its error without a cycle through the traceback (the
    error -> the frame that re-raised it -> its local holding the error) keeping the entry and
    the caller's frame alive until a collection."""

    # (No warning records: a captured record would hold the error, and what it reaches, alive.)
    caplog.set_level(logging.ERROR, logger="bybit_cancel")
    o = fx.seed_order()
    fx.add_fault(fault, order_id=o.order_id)
    async with make_client(fx, push_grace=0.05, max_retries=0) as client:
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(HTTPStatusError) as info:
                await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
            assert info.value.status == (403 if fault is Fault.HTTP_403 else 502)
            del info
        finally:
            found = _client_garbage()
        assert found == []


async def test_aclose_fails_pending_and_leaves_no_task(fx: FakeExchange) -> None:
    """aclose() with cancels pending: each gets ClientClosedError; no library task survives."""
    orders = [fx.seed_order() for _ in range(20)]
    for o in orders:
        fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=30.0)
    client = make_client(fx, push_grace=30.0)
    await client.__aenter__()
    tasks = [
        asyncio.create_task(
            client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
        )
        for o in orders
    ]
    await wait_until(lambda: len(fx.fault_log) == len(orders))
    assert client_tasks()
    await asyncio.wait_for(client.aclose(), 5)
    await client.aclose()  # idempotent
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, ClientClosedError) for r in results)
    assert client_tasks() == []
    assert client.pending_count == 0
    with pytest.raises(RuntimeError):
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id="x")


async def test_caller_owned_session_left_open(fx: FakeExchange) -> None:
    """A session passed in is used and never closed."""
    async with aiohttp.ClientSession() as session:
        o = fx.seed_order()
        async with make_client(fx, session=session) as client:
            r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
            assert r.cancelled
        assert not session.closed
        async with session.get(fx.rest_url + "/v5/market/time") as resp:
            assert resp.status == 200


def one_shot(
    fx: FakeExchange,
    order_id: str,
    *,
    category: str = "linear",
    symbol: str = "BTCUSDT",
    timeout: float = 5,
) -> Awaitable[CancelResult]:
    """cancel_and_confirm against the fake."""
    return cancel_and_confirm(
        api_key=KEY,
        api_secret=SECRET,
        rest_url=fx.rest_url,
        ws_url=fx.ws_url,
        category=category,
        symbol=symbol,
        order_id=order_id,
        timeout=timeout,
    )


async def test_one_shot_helper(fx: FakeExchange) -> None:
    """cancel_and_confirm opens, cancels, confirms and closes."""
    o = fx.seed_order(category="inverse", symbol="BTCUSD")
    r = await one_shot(fx, o.order_id, category="inverse", symbol="BTCUSD")
    assert r.status is OrderStatus.CANCELLED
    assert client_tasks() == []
    await wait_until(lambda: fx.connections == 0)


async def test_one_shot_timeout_names_the_callers_timeout(fx: FakeExchange) -> None:
    """cancel_and_confirm's ConfirmationTimeout says the timeout the caller gave, not the part of
    it left after connecting (which the call's own timeout was)."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=20)
    with pytest.raises(ConfirmationTimeout) as info:
        await one_shot(fx, o.order_id, timeout=0.5)
    assert info.value.timeout == 0.5 and "within 0.5s" in str(info.value)
    assert info.value.acknowledged and info.value.may_have_landed


async def test_already_final_resolves_at_once(fx: FakeExchange, client: BybitCancelClient) -> None:
    """A cancel for an order whose final push was already seen resolves without a request."""
    o = fx.seed_order()
    first = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    before = len(fx.requests)
    again = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert again == first and len(fx.requests) == before


async def test_no_secret_in_debug_logs(fx: FakeExchange, caplog: pytest.LogCaptureFixture) -> None:
    """Across success, errors and a refused auth, the secret and signatures never reach a log,
    a repr or an exception."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with make_client(fx) as client:
        seen.append(repr(client))
        o = fx.seed_order()
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
        with pytest.raises(OrderNotFound) as not_found:
            await client.cancel_order(category="linear", symbol="BTCUSDT", order_id="nope")
        seen.append(repr(not_found.value) + str(not_found.value))
        fx.add_credentials(KEY, "other")
        with pytest.raises(AuthenticationError) as bad_sign:
            await client.cancel_order(category="linear", symbol="BTCUSDT", order_id="nope2")
        seen.append(repr(bad_sign.value) + str(bad_sign.value))
        fx.add_credentials(KEY, SECRET)
    fx.refuse_auth = True
    with pytest.raises(AuthenticationError) as refused:
        async with make_client(fx):
            pass
    seen.append(repr(refused.value) + str(refused.value))
    rest_signatures = [r.headers["X-BAPI-SIGN"] for r in fx.requests if "X-BAPI-SIGN" in r.headers]
    ws_signatures = [str(m["args"][2]) for m in fx.ws_received if m.get("op") == "auth"]
    assert rest_signatures and ws_signatures  # (the loop below checks something)
    signatures = [*rest_signatures, *ws_signatures]
    text = caplog.text + "\n".join(seen)
    assert caplog.records  # DEBUG logging really was captured
    assert SECRET not in text
    for sig in signatures:
        assert sig not in text


async def test_an_unreadable_push_does_not_outlive_bybits_readable_answer(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Cancelled push whose cumExecQty is not a number: that call fails with a BybitError
    (its answer cannot be read). The retry is not answered from memory; it asks Bybit, whose
    answer (110001, then the lookup) is readable, and returns it. (It used to fail the same way,
    and would have for as long as the memory kept the unreadable state: recent_age, 600 s.)"""
    o = fx.seed_order()
    make_ws_order = fx._ws_order
    spoiled: list[str] = []

    def ws_order(order: FakeOrder) -> dict[str, Any]:
        d = make_ws_order(order)
        if d["orderStatus"] == "Cancelled" and not spoiled:
            spoiled.append(order.order_id)
            d["cumExecQty"] = "n/a"
        return d

    monkeypatch.setattr(fx, "_ws_order", ws_order)
    async with asyncio.timeout(10), make_client(fx, push_grace=0.1) as client:
        with pytest.raises(BybitError, match="malformed"):
            await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
        assert spoiled == [o.order_id]
        result = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
    assert result.status is OrderStatus.CANCELLED and result.source == "rest"
    assert result.cum_exec_qty == 0


async def test_an_on_ack_returning_a_coroutine_is_a_clear_error(
    fx: FakeExchange, client: BybitCancelClient
) -> None:
    """A plain function that returns a coroutine (a lambda around an async function) cannot be
    told before the call: its coroutine is closed, not left to warn "never awaited", and the call
    raises a TypeError that says so, as any error of on_ack's own does once Bybit acknowledged."""
    o = fx.seed_order()
    target = _AsyncCall()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="on_ack returned a coroutine"):
            await asyncio.wait_for(
                client.cancel_order(
                    category="linear",
                    symbol="BTCUSDT",
                    order_id=o.order_id,
                    on_ack=lambda oid, link: target(oid, link),  # type: ignore[arg-type]
                ),
                5,
            )
        gc.collect()
    # (No "coroutine ... was never awaited": it was closed.)
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert target.ran == []
    # The cancel itself went out and was acknowledged: the order ends cancelled on the fake.
    await wait_until(lambda: fx.order(o.order_id).status == "Cancelled", timeout=5)
