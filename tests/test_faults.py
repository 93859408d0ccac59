"""The truth under faults: each fault of FakeExchange, and a seeded chaos run.

Every test compares the client's answer with the fake's own books."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import socket
import sys
from collections import Counter
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

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
    OrderStatus,
    TransportError,
    _client as client_module,
)
from bybit_cancel._rest import RestClient
from bybit_cancel._stream import PrivateStream
from bybit_cancel._timers import DEADLINE
from bybit_cancel.testing import BYBIT_RATE_LIMITS, FakeExchange, Fault

from .conftest import KEY, SECRET, client_tasks, make_client
from .helpers import cancel_until_acked, in_shutdown_handler, wait_until

FAST = {
    "push_grace": 0.2,
    "ping_interval": 0.2,
    "http_timeout": 0.5,
    "reconnect_backoff": (0.02, 0.2),
}


def fast_client(fx: FakeExchange, **extra: object) -> BybitCancelClient:
    return make_client(fx, **{**FAST, **extra})


def cancel_requests(fx: FakeExchange) -> int:
    return sum(1 for r in fx.requests if r.path == "/v5/order/cancel")


async def cancel(client: BybitCancelClient, order_id: str, **kw: object):  # type: ignore[no-untyped-def]
    return await client.cancel_order(
        category="linear",
        symbol="BTCUSDT",
        order_id=order_id,
        timeout=10,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------ lost pushes


async def test_dropped_push_found_over_rest(fx: FakeExchange) -> None:
    """No push after the ack: after the grace the client asks REST, which knows the truth."""
    o = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED and r.source == "rest"
    assert fx.order(o.order_id).status == "Cancelled"


async def test_delayed_push_within_grace(fx: FakeExchange) -> None:
    """A push that is merely slow still confirms over the websocket."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=0.1)
    async with fast_client(fx, push_grace=2.0) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED and r.source == "websocket"


async def test_delayed_push_past_grace_polls_until_final(fx: FakeExchange) -> None:
    """REST still shows the order open during the delay: the client polls with backoff until final."""
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=0.6)
    async with fast_client(fx, push_grace=0.05) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED
    lookups = sum(1 for x in fx.requests if x.path == "/v5/order/realtime")
    assert lookups >= 2


async def test_restart_loses_realtime_history_knows(fx: FakeExchange) -> None:
    """After a Bybit restart only /v5/order/history knows the closed order; the client finds it."""
    o = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)
    async with fast_client(fx, push_grace=0.3) as client:
        task = asyncio.create_task(cancel(client, o.order_id))
        await wait_until(lambda: fx.order(o.order_id).status == "Cancelled")
        fx.restart()
        r = await task
        assert r.status is OrderStatus.CANCELLED and r.source == "rest"
        assert any(x.path == "/v5/order/history" for x in fx.requests)
        await wait_until(lambda: client.connection_state is ConnectionState.CONNECTED)
        assert client.reconnect_count >= 1


# ------------------------------------------------------------------------------- stream loss


async def test_socket_closed_after_ack_reconnects_and_reconciles(fx: FakeExchange) -> None:
    """The stream dies after the ack (the push is lost): the client reconnects, re-auths,
    resubscribes and looks the pending cancel up."""
    o = fx.seed_order()
    fx.add_fault(Fault.CLOSE_WS_AFTER_ACK, order_id=o.order_id)
    async with fast_client(fx, push_grace=30.0) as client:
        r = await cancel(client, o.order_id)
        assert r.status is OrderStatus.CANCELLED and r.source == "rest"
        await wait_until(lambda: client.connection_state is ConnectionState.CONNECTED)
        assert client.reconnect_count == 1
    ops = [m.get("op") for m in fx.ws_received if m.get("op") in ("auth", "subscribe")]
    assert ops == ["auth", "subscribe", "auth", "subscribe"]
    assert fx.auth_count == 2


async def test_stalled_socket_detected_by_missing_pongs(fx: FakeExchange) -> None:
    """A socket that stays open but goes silent is declared dead after two ping intervals."""
    o = fx.seed_order()
    fx.add_fault(Fault.STALL_WS_AFTER_ACK, order_id=o.order_id)
    async with fast_client(fx, push_grace=30.0, ping_interval=0.1) as client:
        r = await cancel(client, o.order_id)
        assert r.status is OrderStatus.CANCELLED and r.source == "rest"
        assert client.reconnect_count == 1


async def test_pending_cancels_survive_reconnect_and_pushes_resume(fx: FakeExchange) -> None:
    """After a drop, pushes on the new connection resolve cancels sent after it."""
    async with fast_client(fx, push_grace=30.0) as client:
        await fx.disconnect_all()
        await wait_until(lambda: client.reconnect_count == 1)
        await wait_until(lambda: client.connection_state is ConnectionState.CONNECTED)
        o = fx.seed_order()
        r = await cancel(client, o.order_id)
    assert r.source == "websocket" and r.status is OrderStatus.CANCELLED


async def test_a_reconnect_looks_up_only_the_cancels_pending_across_it(fx: FakeExchange) -> None:
    """The lookup after a reconnect asks REST about the cancels pending while the stream was down,
    not about one registered after it (its push comes on the new connection)."""
    across, after = fx.seed_order(), fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=across.order_id)  # lost while "down": REST must say
    async with fast_client(fx, push_grace=30.0) as client:
        task = asyncio.create_task(cancel(client, across.order_id))
        await wait_until(lambda: cancel_requests(fx) == 1 and client.pending_count == 1)
        client._on_reconnected()  # as the stream calls it once a new connection is subscribed
        # Registered in the same step, before the lookup task first runs.
        late = client._begin("linear", "BTCUSDT", after.order_id, None)
        assert not isinstance(late, CancelResult)
        client._arm(late, 10.0)
        reconcile = client._reconcile_task
        assert reconcile is not None
        await asyncio.wait_for(reconcile, 5)
        r = await asyncio.wait_for(task, 5)
        client._end(late)
    looked_up = [q.query for q in fx.requests if q.path.startswith("/v5/order/realtime")]
    assert any(across.order_id in q for q in looked_up)
    assert not any(after.order_id in q for q in looked_up)
    assert r.source == "rest" and r.status is OrderStatus.CANCELLED


async def test_auth_refused_on_reconnect_fails_pending_promptly(fx: FakeExchange) -> None:
    """If Bybit refuses the re-auth, pending awaits fail with AuthenticationError at once."""
    orders = [fx.seed_order() for _ in range(5)]
    for o in orders:
        fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=30)
    async with fast_client(fx, push_grace=30.0) as client:
        tasks = [asyncio.create_task(cancel(client, o.order_id)) for o in orders]
        await wait_until(lambda: len(fx.fault_log) == len(orders))
        fx.refuse_auth = True
        await fx.disconnect_all()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert all(isinstance(x, AuthenticationError) for x in results), results
        # Their cancels were sent (and acknowledged): they may have landed. A call made after
        # the failure sends nothing, and its copy of the error says so.
        assert all(getattr(x, "may_have_landed", False) for x in results)
        assert client.connection_state is ConnectionState.FAILED
        assert client.pending_count == 0
        with pytest.raises(AuthenticationError) as later:
            await cancel(client, orders[0].order_id)
        assert not later.value.may_have_landed
    assert client_tasks() == []


# ------------------------------------------------------------------- duplicates and staleness


@pytest.mark.parametrize("fault", [Fault.DUPLICATE_PUSH, Fault.STALE_AFTER_FINAL])
async def test_duplicate_and_stale_pushes_change_nothing(fx: FakeExchange, fault: Fault) -> None:
    """A repeated final push, or an older open state after it, leaves the answer Cancelled."""
    o = fx.seed_order()
    fx.add_fault(fault, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
        await fx.wait_idle()
        again = await cancel(client, o.order_id)  # answered from the memory of final states
    assert r.status is OrderStatus.CANCELLED and again == r


async def test_without_memory_an_ended_order_is_answered_by_bybit(fx: FakeExchange) -> None:
    """recent_size=0 remembers no final state: cancelling an order that has already ended sends
    the cancel, and Bybit's 110001 is followed by a lookup that finds the same final state."""
    o = fx.seed_order()
    async with fast_client(fx, recent_size=0) as client:
        r = await cancel(client, o.order_id)
        await fx.wait_idle()
        sent = cancel_requests(fx)
        again = await cancel(client, o.order_id)
        assert cancel_requests(fx) == sent + 1
    assert r.status is again.status is OrderStatus.CANCELLED
    assert (r.source, again.source) == ("websocket", "rest")
    assert again.order_id == r.order_id and again.cum_exec_qty == r.cum_exec_qty


async def test_double_filled_collision_is_filled(fx: FakeExchange) -> None:
    """Cancel accepted while the order executes: two Filled pushes; the answer is Filled."""
    o = fx.seed_order(qty="0.030")
    fx.add_fault(Fault.DOUBLE_FILLED, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
        await fx.wait_idle()
    assert r.status is OrderStatus.FILLED and not r.cancelled
    assert r.reject_reason == "EC_NoError"  # the first Filled wins
    assert fx.order(o.order_id).status == "Filled"


async def test_fill_before_cancel(fx: FakeExchange) -> None:
    o = fx.seed_order()
    fx.add_fault(Fault.FILL_BEFORE_CANCEL, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.FILLED


# ---------------------------------------------------------------------------- REST failures


@pytest.mark.parametrize("applied", [False, True])
async def test_http_502_resends(fx: FakeExchange, applied: bool) -> None:
    """A 502 is re-sent; if the first cancel did land, the re-send's 110001 is looked up."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502, order_id=o.order_id, applied=applied)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
        assert client.rest_stats.retries >= 1
    assert r.status is OrderStatus.CANCELLED
    assert cancel_requests(fx) == 2


async def test_http_timeout_resends(fx: FakeExchange) -> None:
    """The HTTP answer never comes in time: the cancel is re-sent and the truth still found."""
    o = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=o.order_id, delay=3.0)
    async with fast_client(fx, http_timeout=0.2) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED
    assert cancel_requests(fx) >= 2


async def test_10006_waits_for_reset(fx: FakeExchange) -> None:
    """10006 with a reset timestamp: the client waits until then and retries."""
    o = fx.seed_order()
    fx.add_fault(Fault.RATE_LIMIT_10006, order_id=o.order_id, delay=0.3)
    async with fast_client(fx) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await cancel(client, o.order_id)
        assert loop.time() - t0 >= 0.2
        assert client.rest_stats.rate_limit_waits >= 1
    assert r.status is OrderStatus.CANCELLED and cancel_requests(fx) == 2


async def test_http_429_retried(fx: FakeExchange) -> None:
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_429, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED and cancel_requests(fx) == 2


async def test_limiter_slows_down_before_bybit_refuses(fx: FakeExchange) -> None:
    """Fed by X-Bapi-Limit-Status, the client waits for the window instead of getting 10006."""
    fx.rate_limits["/v5/order/cancel"] = 4
    orders = [fx.seed_order() for _ in range(9)]
    async with fast_client(fx) as client:
        for o in orders:
            r = await cancel(client, o.order_id)
            assert r.cancelled
        assert client.rest_stats.rate_limit_waits >= 1
    # every order was cancelled with exactly one request: Bybit never had to refuse one
    assert cancel_requests(fx) == len(orders)


async def test_10002_resyncs_clock_once(fx: FakeExchange) -> None:
    """10002 once: measure the offset from /v5/market/time, retry once, succeed."""
    o = fx.seed_order()
    fx.add_fault(Fault.TIMESTAMP_10002, order_id=o.order_id)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
        assert client.rest_stats.clock_resyncs == 1
    assert r.cancelled and cancel_requests(fx) == 2


async def test_skewed_clock_applies_offset_to_rest_and_ws(fx: FakeExchange) -> None:
    """The server clock runs 30 s ahead: websocket auth and REST both work after one resync."""
    fx.clock_offset_ms = 30_000
    o = fx.seed_order()
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
        assert abs(client._clock.offset_ms - 30_000) < 1_000
        assert client.rest_stats.clock_resyncs == 1
    assert r.cancelled


async def test_http_403_is_typed_and_not_retried(fx: FakeExchange) -> None:
    """An IP ban (403) raises HTTPStatusError at once: no retry storm."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_403, order_id=o.order_id)
    async with fast_client(fx) as client:
        with pytest.raises(HTTPStatusError) as info:
            await cancel(client, o.order_id)
        assert client.pending_count == 0
    assert info.value.status == 403 and cancel_requests(fx) == 1


# ------------------------------------------------------------------- shutdown and cancellation


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (110008, "The order has been completed or cancelled."),
        (110010, "The order has been cancelled"),
        (170139, "Order has been filled."),
        (170142, "Order has been cancelled"),
        (170190, "Cancel order has been finished"),
    ],
)
async def test_a_cancel_answered_already_finished_returns_the_true_state(
    fx: FakeExchange, code: int, msg: str
) -> None:
    """Bybit may answer the cancel of an order that has just ended with one of the "terminal"
    codes of §6 rather than 110001: the client looks the order up and returns how it ended
    (it used to raise BybitAPIError)."""
    o = fx.seed_order()
    fx.fill(o.order_id, push=False)  # filled; the push never reaches the client
    fx.finished_answer = (code, msg)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.status == "Filled" and not r.cancelled and r.source == "rest"


async def test_not_found_after_an_attempt_that_may_have_landed_is_not_believed(
    fx: FakeExchange,
) -> None:
    """The first attempt gets a 502, the re-send 110001: the first may have cancelled the order,
    so it did exist. With realtime's memory of closed orders gone (a Bybit restart) and history
    lagging (§8), neither lookup knows it at first: the client keeps asking until history shows
    it (it used to raise OrderNotFound)."""
    o = fx.seed_order()
    fx._cancel_in_book(fx.order(o.order_id))  # it ended, and no push tells the client
    fx._rt_closed.clear()  # what restart() does to realtime (without dropping the socket)
    fx.history_delay = 0.6
    fx.add_fault(Fault.HTTP_502)
    async with fast_client(fx) as client:
        r = await client.cancel_order(
            category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=5
        )
    assert r.cancelled and r.source == "rest" and cancel_requests(fx) == 2


async def test_cancel_request_processing_170212_waits_for_the_push(fx: FakeExchange) -> None:
    """170212 "Cancel order request processing" (§6: wait for WS) is taken as an ack."""
    fx.push_delay = 0.3  # the push comes well after the answer
    o = fx.seed_order()
    fx.add_fault(Fault.PROCESSING_170212)
    async with fast_client(fx, push_grace=5.0) as client:
        r = await cancel(client, o.order_id)
    assert r.cancelled and r.source == "websocket" and cancel_requests(fx) == 1


async def test_server_error_10016_is_sent_again(fx: FakeExchange) -> None:
    """10016 (server error, not applied): the cancel is sent again, as after a 5xx (it used to
    be only confirmed, so an order that was never cancelled ran into the deadline)."""
    o = fx.seed_order()
    fx.add_fault(Fault.SERVER_ERROR_10016)
    async with fast_client(fx) as client:
        r = await client.cancel_order(
            category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=3
        )
    assert r.cancelled and cancel_requests(fx) == 2


async def test_a_cancel_that_may_have_landed_is_confirmed_before_an_error(
    fx: FakeExchange,
) -> None:
    """The first attempt is applied but answered 502; the re-send meets a 403. The cancel did
    land: the client confirms and returns Cancelled (it used to raise the 403 at once)."""
    fx.push_delay = 0.5  # the cancel takes effect, and is pushed, after the 403
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502, applied=True)
    fx.add_fault(Fault.HTTP_403)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.cancelled and cancel_requests(fx) == 2


async def test_an_error_met_while_confirming_keeps_the_mark(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 502 (which may have been applied), then a 403 on the re-send, and the confirming
    lookups get 403 too (an IP ban): the error raised says the cancel may have landed, though
    the lookup's own error could not have (it used to say False)."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502)
    fx.add_fault(Fault.HTTP_403)

    async def banned(self: RestClient, **_: object) -> None:
        raise HTTPStatusError(403, "access too frequent")

    monkeypatch.setattr(RestClient, "find_order", banned)
    async with fast_client(fx) as client:
        with pytest.raises(HTTPStatusError) as info:
            await cancel(client, o.order_id)
    assert info.value.status == 403 and info.value.may_have_landed


@pytest.mark.parametrize("answer", ["ack", "170212"])
async def test_an_error_met_while_confirming_an_accepted_cancel_says_it_may_have_landed(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """Bybit accepted the cancel (an ack, or 170212 "processing"), its push is lost and the
    lookups get 403 (an IP ban): the error raised must say the cancel may have landed. It said
    False, so a caller took an order Bybit had cancelled for one still open."""
    o = fx.seed_order()
    if answer == "ack":
        fx.add_fault(Fault.DROP_PUSH)
    else:
        fx.add_fault(Fault.PROCESSING_170212)

    async def banned(self: RestClient, **_: object) -> None:
        raise HTTPStatusError(403, "access too frequent")

    monkeypatch.setattr(RestClient, "find_order", banned)
    async with fast_client(fx) as client:
        fx.stall()  # (no push: the 170212 cancel is pushed otherwise)
        with pytest.raises(HTTPStatusError) as info:
            await cancel(client, o.order_id)
    assert info.value.status == 403 and info.value.may_have_landed
    assert fx.order(o.order_id).status == "Cancelled"


async def test_a_failed_clock_resync_is_transient(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10002 whose clock resync fails (/v5/market/time down): the refused cancel is sent
    again after a backoff, not reported as a TransportError (it used to be, with
    max_retries unset, where the README promises none)."""
    o = fx.seed_order()
    fx.add_fault(Fault.TIMESTAMP_10002)
    measure = RestClient._measure_clock
    failures = [TransportError("GET /v5/market/time failed: TimeoutError")]

    async def flaky(self: RestClient) -> None:
        if failures:
            raise failures.pop()
        await measure(self)

    monkeypatch.setattr(RestClient, "_measure_clock", flaky)
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.cancelled and not failures and cancel_requests(fx) == 2


async def test_max_retries_gives_up_after_one_look(fx: FakeExchange) -> None:
    """With max_retries set, a send that kept failing (5xx, not applied) is reported after the
    push grace and one lookup, well before the deadline; the error says it may have landed.
    (It used to wait for a confirmation until the deadline, so max_retries never gave up.)"""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502, times=None)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with fast_client(fx, max_retries=1) as client:
        with pytest.raises(HTTPStatusError) as info:
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=10
            )
    assert info.value.status == 502 and info.value.may_have_landed
    assert loop.time() - t0 < 3 and cancel_requests(fx) == 2
    assert fx.order(o.order_id).status == "New"


async def test_a_refused_connection_sent_nothing(fx: FakeExchange) -> None:
    """A REST connection refused outright sent no cancel: with max_retries=0 the
    TransportError comes at once, and it does not claim the cancel may have landed."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    o = fx.seed_order()
    client = BybitCancelClient(
        api_key=KEY,
        api_secret=SECRET,
        rest_url=f"http://127.0.0.1:{port}",
        ws_url=fx.ws_url,
        max_retries=0,
    )
    async with client:
        with pytest.raises(TransportError) as info:
            await cancel(client, o.order_id)
    assert not info.value.may_have_landed and fx.order(o.order_id).status == "New"


async def test_a_second_10002_is_raised_not_confirmed(fx: FakeExchange) -> None:
    """A cancel refused twice for its timestamp never reached the book: BybitAPIError(10002)
    at once, as documented (it used to wait for a confirmation until the deadline)."""
    o = fx.seed_order()
    fx.add_fault(Fault.TIMESTAMP_10002, times=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with fast_client(fx) as client:
        with pytest.raises(BybitAPIError) as info:
            await cancel(client, o.order_id)
    assert info.value.ret_code == 10002 and not info.value.may_have_landed
    assert loop.time() - t0 < 5 and fx.order(o.order_id).status == "New"


async def test_a_burst_at_bybits_own_rate_limits_is_paced(fx: FakeExchange) -> None:
    """40 cancels at once against Bybit's default limit (10/s for a linear cancel, §7): the
    first burst meets 30 refusals (nothing is known yet), then the limiter, told the limit by
    those answers, paces the re-sends, so hardly any of them is refused (unpaced, they would
    meet 20 and then 10 more)."""
    fx.rate_limits.update(BYBIT_RATE_LIMITS)
    orders = [fx.seed_order() for _ in range(40)]
    async with fast_client(fx) as client:
        results = await asyncio.gather(*(cancel(client, o.order_id) for o in orders))
    assert all(r.cancelled for r in results)
    refused = sum(1 for r in fx.requests if r.path == "/v5/order/cancel") - len(orders)
    assert 30 <= refused <= 35


async def test_a_10006_reset_far_ahead_does_not_block_the_endpoint(fx: FakeExchange) -> None:
    """A reset timestamp implausibly far ahead (a wrong unit, a clock far off) is not waited
    for: the request goes again within about a second and the cancel completes (it used to
    block every cancel of that category until the process restarted)."""
    o = fx.seed_order()
    fx.add_fault(Fault.RATE_LIMIT_10006, delay=10**6)  # reset 11.6 days ahead
    async with fast_client(fx) as client:
        r = await cancel(client, o.order_id)
    assert r.cancelled and cancel_requests(fx) == 2


async def test_http_429_forever_backs_off_instead_of_hammering(fx: FakeExchange) -> None:
    """HTTP 429 without a reset, answer after answer: the retries space out (0.5 s, 1 s, 2 s)
    until the caller's deadline. They used to come every 0-50 ms, hundreds per second, which
    earns an IP ban (§7)."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_429, times=None)
    async with fast_client(fx) as client:
        with pytest.raises(ConfirmationTimeout):
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=1.2
            )
    assert 2 <= cancel_requests(fx) <= 4


async def test_a_call_failed_by_a_close_may_still_have_cancelled(fx: FakeExchange) -> None:
    """A call waiting for its push when the client closes: its cancel was sent (and here
    applied), so the ClientClosedError it gets says it may have landed; it used to say False.
    A call made after the close sent nothing, and its error says so."""
    o = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)
    client = fast_client(fx, push_grace=30.0)
    await client.open()
    task = await cancel_until_acked(client, o.order_id, timeout=30)
    await client.aclose()
    with pytest.raises(ClientClosedError) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.may_have_landed
    assert fx.order(o.order_id).status == "Cancelled"
    with pytest.raises(RuntimeError):  # closed: refused before any I/O
        await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)


async def test_a_timeout_without_an_ack_may_still_have_cancelled(fx: FakeExchange) -> None:
    """The answer to the cancel never comes within the caller's timeout (and nor does the push),
    yet Bybit applied it. The ConfirmationTimeout must say it may have landed; it used to
    inherit BybitError's False, which a caller checking `may_have_landed` takes as "not
    cancelled"."""
    o = fx.seed_order()
    fx.push_delay = 1.0  # Bybit applies it (and pushes) a second later
    fx.add_fault(Fault.REST_TIMEOUT, order_id=o.order_id, delay=5.0)
    async with fast_client(fx) as client:
        with pytest.raises(ConfirmationTimeout) as info:
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=0.3
            )
    assert not info.value.acknowledged and info.value.may_have_landed
    await wait_until(lambda: fx.order(o.order_id).status == "Cancelled")  # it did land
    assert "may have landed" in str(info.value)


@pytest.mark.parametrize("task_kind", ["c", "python"])
async def test_deadline_interrupts_a_rest_backoff_in_any_task(
    fx: FakeExchange, task_kind: str
) -> None:
    """The deadline ends a call stuck in REST retries (5xx forever), whether it runs in the C
    Task or the pure-Python one (a custom task factory's), which is no subclass of the C one."""
    o = fx.seed_order()
    fx.add_fault(Fault.HTTP_502, times=None)
    loop = asyncio.get_running_loop()
    async with fast_client(fx) as client:
        coro = client.cancel_order(
            category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=0.5
        )
        if task_kind == "python":
            task = asyncio.tasks._PyTask(coro, loop=loop)  # type: ignore[attr-defined]
        else:
            task = loop.create_task(coro)
        t0 = loop.time()
        with pytest.raises(ConfirmationTimeout):
            await asyncio.wait_for(task, 5)
        assert loop.time() - t0 < 2.0
        assert client.pending_count == 0
    assert cancel_requests(fx) >= 2  # it did retry until the deadline


async def _closing_after(
    fx: FakeExchange, steps: int
) -> tuple[BybitCancelClient, aiohttp.ClientSession | None, asyncio.Task[None]]:
    """An open client whose aclose() runs in a task that has had ``steps`` turns of the loop;
    returns the client, its session and that task."""
    client = fast_client(fx)
    await client.__aenter__()
    session = client._session
    closing = asyncio.create_task(client.aclose())
    for _ in range(steps):
        await asyncio.sleep(0)
    return client, session, closing


async def test_cancelling_aclose_still_cleans_up_and_propagates(fx: FakeExchange) -> None:
    """aclose() cancelled at any of its steps: the cancellation propagates (it used to be
    swallowed while the stream task stopped) and the clean-up still runs to its end (it used to
    leave the session open once the state said closed, so a second aclose() did nothing)."""
    for steps in range(1, 8):
        _, session, closing = await _closing_after(fx, steps)
        cancelled = closing.cancel()
        if cancelled:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(closing, 5)
        else:
            await closing  # it had finished
        assert session is not None and session.closed, steps
        assert client_tasks() == [], steps


async def test_a_second_aclose_returns_once_the_first_has_cleaned_up(fx: FakeExchange) -> None:
    """A service closing the client from two places (its shutdown hook and an `async with`):
    the aclose() that finds another one closing returns once everything is closed, not at once
    with the stream's tasks still running and the session open. Cancelling such a waiting call
    leaves the first one's clean-up alone."""
    for steps in range(0, 4):
        client, session, first = await _closing_after(fx, steps)
        await asyncio.wait_for(client.aclose(), 5)
        assert session is not None and session.closed, steps
        assert client_tasks() == [], steps
        await asyncio.wait_for(first, 5)

    client = fast_client(fx)
    await client.__aenter__()
    session = client._session
    first = asyncio.create_task(client.aclose())
    await asyncio.sleep(0)
    second = asyncio.create_task(client.aclose())
    await asyncio.sleep(0)
    assert second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, 5)
    await asyncio.wait_for(first, 5)  # not cancelled with it
    assert not first.cancelled()
    assert session is not None and session.closed and client_tasks() == []


async def test_close_while_the_stream_waits_for_its_heartbeat_does_not_hang(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops, and close() cancels the stream task while it waits for its
    heartbeat task to stop: the stream task must end, not take that cancellation for the
    heartbeat's own, reconnect, and leave close() waiting for ever."""
    heartbeat_stopping = asyncio.Event()
    heartbeat = PrivateStream._heartbeat

    async def slow_to_stop(self: PrivateStream, ws: Any) -> None:
        try:
            await heartbeat(self, ws)
        except asyncio.CancelledError:
            heartbeat_stopping.set()
            await asyncio.Event().wait()  # stops only when cancelled again
            raise

    monkeypatch.setattr(PrivateStream, "_heartbeat", slow_to_stop)
    client = fast_client(fx)
    await client.__aenter__()
    await fx.disconnect_all()
    await asyncio.wait_for(heartbeat_stopping.wait(), 5)
    await asyncio.wait_for(client.aclose(), 5)
    assert client.connection_state is ConnectionState.CLOSED
    assert client_tasks() == []


async def test_aclose_during_backoff_returns_promptly(fx: FakeExchange) -> None:
    """Callers sleeping in a REST backoff get ClientClosedError as soon as the client closes."""
    orders = [fx.seed_order() for _ in range(50)]
    fx.add_fault(Fault.HTTP_502, times=None)
    client = fast_client(fx, max_retries=1000)
    await client.__aenter__()
    tasks = [asyncio.create_task(cancel(client, o.order_id)) for o in orders]
    await wait_until(lambda: cancel_requests(fx) >= 100)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await client.aclose()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
    assert loop.time() - t0 < 1.5
    assert all(isinstance(x, ClientClosedError) for x in results), Counter(map(type, results))
    assert client_tasks() == []


async def test_aclose_while_reconnecting_with_thousands_pending(fx: FakeExchange) -> None:
    """aclose() during reconnect backoff with 2,000 pending: prompt, all fail, nothing left."""
    orders = [fx.seed_order() for _ in range(2000)]
    fx.add_fault(Fault.DELAY_PUSH, times=None, delay=60)
    client = fast_client(fx, push_grace=60.0, reconnect_backoff=(5.0, 5.0))
    await client.__aenter__()
    tasks = [asyncio.create_task(cancel(client, o.order_id)) for o in orders]
    await wait_until(lambda: len(fx.fault_log) >= len(orders), timeout=20)
    await fx.disconnect_all()
    await wait_until(lambda: client.connection_state is ConnectionState.RECONNECTING)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await client.aclose()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert loop.time() - t0 < 2.0
    assert all(isinstance(x, ClientClosedError) for x in results)
    assert client_tasks() == [] and client.pending_count == 0


async def test_pending_removed_on_every_exit_path(fx: FakeExchange) -> None:
    """Success, not-found, API error, timeout and cancellation each leave the tracker empty."""
    async with fast_client(fx, push_grace=30.0) as client:
        o = fx.seed_order()
        await cancel(client, o.order_id)
        with pytest.raises(BybitError):
            await cancel(client, "missing")
        slow = fx.seed_order()
        fx.add_fault(Fault.DELAY_PUSH, order_id=slow.order_id, delay=30)
        with pytest.raises(ConfirmationTimeout):
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=slow.order_id, timeout=0.2
            )
        assert client.pending_count == 0 and client._tracker.pending() == []


# ----------------------------------------------------------------------------------- chaos


async def test_seeded_chaos_200_concurrent(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """200 concurrent cancels with random faults: every answer is the fake's own truth, nothing
    hangs, no task or pending entry is left, and no secret reaches the DEBUG log."""
    caplog.set_level(logging.DEBUG)
    rng = random.Random(2026)
    fx.set_chaos(rate=0.3, seed=11, delay=0.4)
    orders = []
    for i in range(200):
        category = rng.choice(["linear", "spot"])
        o = fx.seed_order(
            category=category, symbol="BTCUSDT", qty="1.000", order_link_id=f"chaos-{i}"
        )
        if rng.random() < 0.2:
            fx.fill(o.order_id, "0.500")
        orders.append(o)
    async with fast_client(fx, http_timeout=0.2) as client:

        async def one(i: int):  # type: ignore[no-untyped-def]
            o = orders[i]
            return await client.cancel_order(
                category=o.category,
                symbol="BTCUSDT",
                order_id=o.order_id if i % 2 else None,
                order_link_id=None if i % 2 else o.order_link_id,
                timeout=15,
            )

        results = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(len(orders))), return_exceptions=True), 25
        )
        assert client.pending_count == 0
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    for o, r in zip(orders, results, strict=True):
        assert isinstance(r, CancelResult)
        truth = fx.order(o.order_id)
        assert r.order_id == o.order_id
        assert r.status == truth.status, (
            o.order_id,
            r,
            truth,
            [f for f in fx.fault_log if f[0] == o.order_id],
        )
        assert r.status.is_final
        # The quantities too, and the ids and place: the final state's, not an earlier push's.
        assert (r.order_link_id, r.category, r.symbol) == (
            o.order_link_id,
            o.category,
            "BTCUSDT",
        )
        assert r.cum_exec_qty == Decimal(truth.cum_exec_qty), (r, truth)
        assert r.leaves_qty == (Decimal(truth.leaves_qty) if truth.leaves_qty else None), (r, truth)
    assert len(fx.fault_log) > 30  # faults really fired
    assert client_tasks() == []
    assert SECRET not in caplog.text


async def test_failed_lookup_is_not_taken_for_not_found(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 110001, a lookup that fails (network) is asked again, not read as "no such order"."""
    o = fx.seed_order()
    fx.fill(o.order_id, push=False)
    async with fast_client(fx) as client:
        real = RestClient.find_order
        calls = 0

        async def flaky(self: RestClient, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise TransportError("connection reset")
            return await real(self, **kw)

        monkeypatch.setattr(RestClient, "find_order", flaky)
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.FILLED and r.source == "rest" and calls == 2


async def test_failed_lookup_after_ack_keeps_waiting(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups failing while the push is lost do not fail the call: it asks again."""
    o = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)
    async with fast_client(fx, push_grace=0.05) as client:
        real = RestClient.find_order
        calls = 0

        async def flaky(self: RestClient, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise HTTPStatusError(502, "bad gateway")
            return await real(self, **kw)

        monkeypatch.setattr(RestClient, "find_order", flaky)
        r = await cancel(client, o.order_id)
    assert r.status is OrderStatus.CANCELLED and calls == 3


async def test_stream_crash_fails_pending_loudly(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the reader (here: routing raises) fails pending calls instead of hanging them."""
    o = fx.seed_order()
    async with fast_client(fx, push_grace=30.0) as client:

        def boom(*_: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(client._tracker, "on_orders", boom)
        with pytest.raises(BybitError, match="crashed"):
            await cancel(client, o.order_id)
        assert client.connection_state is ConnectionState.FAILED
        assert client.pending_count == 0
    assert client_tasks() == []


async def test_deadline_interrupts_a_resolved_call_still_in_rest(fx: FakeExchange) -> None:
    """The push confirms the cancel while the REST answer hangs: at the deadline the call returns
    the confirmed state instead of waiting for (and retrying) the HTTP request."""
    o = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=o.order_id, delay=20.0)
    async with fast_client(fx, http_timeout=10.0) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await client.cancel_order(
            category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=0.5
        )
        assert loop.time() - t0 < 2.0
    assert r.status is OrderStatus.CANCELLED and r.source == "websocket"


async def test_a_caller_cancelled_inside_rest_lets_go_of_its_task(fx: FakeExchange) -> None:
    """Cancelled while its REST request hangs: the entry (which the timers keep until its
    deadline) no longer points at the caller's task, so the finished task is not kept alive."""
    o = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=o.order_id, delay=20.0)
    async with fast_client(fx, http_timeout=10.0, push_grace=30.0) as client:
        task = asyncio.create_task(
            client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=30
            )
        )
        timers = client._timers
        assert timers is not None
        # (The push resolves the entry meanwhile; the timers still hold it, with its deadline.)
        await wait_until(lambda: [e.owner for e in timers.open_entries()] == [task])
        [entry] = timers.open_entries()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert entry.closed and entry.owner is None


async def test_aclose_interrupts_a_resolved_call_still_in_rest(fx: FakeExchange) -> None:
    """aclose() leaves no caller behind, even one whose push arrived while its REST call hangs
    on a caller-owned session (which aclose() does not close)."""
    o = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=o.order_id, delay=20.0)
    async with aiohttp.ClientSession() as session:
        client = fast_client(fx, http_timeout=10.0, session=session)
        await client.__aenter__()
        task = asyncio.create_task(
            client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=30
            )
        )
        await wait_until(
            lambda: fx.order(o.order_id).status == "Cancelled" and client.pending_count == 0
        )
        await asyncio.wait_for(client.aclose(), 3)
        r = await asyncio.wait_for(task, 2)
        assert r.status is OrderStatus.CANCELLED
        assert client_tasks() == []


async def test_bybit_idle_cut_and_our_heartbeat() -> None:
    """Bybit cuts a private connection that saw no ping-pong or data for 10 minutes (§3); the
    fake does so after `idle_timeout`. A silent client is cut; ours, pinging, is not."""
    async with FakeExchange(api_key=KEY, api_secret=SECRET, idle_timeout=0.3) as fx:
        async with connect(fx.ws_url) as silent:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    async for _ in silent:
                        pass
        async with make_client(fx, ping_interval=0.1) as client:
            await asyncio.sleep(1.0)  # several idle periods: the heartbeat keeps it alive
            assert client.reconnect_count == 0
            assert client.connection_state is ConnectionState.CONNECTED


async def _cancel_from_a_shutdown_handler(fx: FakeExchange, *, close: bool) -> object:
    """A bot's task, cancelled at shutdown, cancels its order in its `except CancelledError:`
    block. The cancel request hangs in REST (Bybit applied it; the answer is held back) until
    the call's deadline, or aclose(), interrupts it. Returns what that call returned or raised."""
    order = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=order.order_id, delay=10)
    async with make_client(fx, http_timeout=20) as client:
        task, got = await in_shutdown_handler(
            lambda: client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=0.5
            )
        )
        await wait_until(lambda: any(r.path == "/v5/order/cancel" for r in fx.requests))
        if close:
            await asyncio.wait_for(client.aclose(), 5)
        with pytest.raises(asyncio.CancelledError):  # the bot's own shutdown goes on
            await asyncio.wait_for(task, 5)
    assert client_tasks() == []
    return got[0]


@pytest.mark.parametrize(("push", "close"), [(False, False), (True, False), (False, True)])
async def test_a_call_from_a_shutdown_handler_gets_its_answer(
    fx: FakeExchange, push: bool, close: bool
) -> None:
    """Interrupting a call inside REST cancels the caller's task, and cancel_order takes that
    cancel back; it took it back only when the count came back to 0, so a caller already being
    cancelled got CancelledError instead of its answer: a ConfirmationTimeout, a
    ClientClosedError, or even a final state that had arrived (the order Cancelled, reported
    as a CancelledError)."""
    fx.push_delay = 0.0 if push else 30.0
    got = await _cancel_from_a_shutdown_handler(fx, close=close)
    if push:
        assert isinstance(got, CancelResult) and got.status is OrderStatus.CANCELLED, repr(got)
    elif close:
        assert isinstance(got, ClientClosedError), repr(got)
    else:
        assert isinstance(got, ConfirmationTimeout), repr(got)


async def test_aclose_from_a_cancelled_task_does_not_raise_its_cancel(fx: FakeExchange) -> None:
    """A shutdown handler closes the client: aclose() finishes its clean-up and returns; the
    task's own cancel (already delivered) is not raised again out of aclose()."""
    client = make_client(fx)
    await client.open()
    task, got = await in_shutdown_handler(client.aclose)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert got == [None]  # aclose() returned
    assert client_tasks() == []


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.11's TaskGroup has no such leak")
async def test_aclose_after_a_task_group_whose_child_failed(fx: FakeExchange) -> None:
    """Some 3.12 releases (3.12.1 here) leave a cancel count of 1 on the task of a TaskGroup
    whose child failed, though nobody cancelled it: aclose() in that task used to raise
    CancelledError as if it had been cancelled."""

    async def fails() -> None:
        raise ValueError("a sibling failed")

    async with asyncio.timeout(10):
        client = make_client(fx)
        await client.open()
        with pytest.raises(ExceptionGroup):
            async with asyncio.TaskGroup() as group:
                group.create_task(asyncio.Event().wait())
                group.create_task(fails())
        await client.aclose()
    assert client_tasks() == []


async def test_a_cancel_requested_before_our_interrupt_is_not_swallowed(fx: FakeExchange) -> None:
    """Shutdown written as `worker.cancel(); await client.aclose()`: the worker's cancel is
    requested, not yet delivered, when aclose() interrupts its call inside REST. One
    CancelledError reaches the worker for both; it must stay a cancel (the worker's task ends
    cancelled), not turn into the ClientClosedError that aclose() alone would give."""
    order = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=order.order_id, delay=10)
    got: list[object] = []
    client = make_client(fx, http_timeout=20)
    await client.open()

    async def worker() -> None:
        try:
            got.append(
                await client.cancel_order(
                    category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=5
                )
            )
        except BybitError as exc:  # a worker that logs the library's errors and goes on
            got.append(exc)

    task = asyncio.create_task(worker())
    await wait_until(lambda: any(r.path == "/v5/order/cancel" for r in fx.requests))
    task.cancel()
    async with asyncio.timeout(5):  # (in this task: wait_for would run aclose in another)
        await client.aclose()
    await asyncio.wait_for(asyncio.wait([task]), 5)
    assert task.cancelled() and got == [], got
    assert client_tasks() == []


async def test_a_user_timeout_that_fired_first_is_not_lost(fx: FakeExchange) -> None:
    """The caller's own asyncio.timeout and our deadline fire in the same turn of the loop (a
    busy loop), the call inside REST with its push arrived: the user's timeout is raised,
    not swallowed by our taking our cancel back (the rest of the `async with` block used to
    run on, unbounded)."""
    order = fx.seed_order()
    fx.add_fault(Fault.REST_TIMEOUT, order_id=order.order_id, delay=10)
    client = make_client(fx, http_timeout=20)
    await client.open()
    after: list[str] = []
    user_timeout = asyncio.timeout(30)

    async def caller() -> None:
        async with user_timeout:
            await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=30
            )
            after.append("returned inside the expired timeout")

    task = asyncio.create_task(caller())
    try:
        await wait_until(lambda: any(r.path == "/v5/order/cancel" for r in fx.requests))
        timers = client._timers
        assert timers is not None
        (entry,) = timers.open_entries()
        await wait_until(lambda: entry.final is not None)  # the push beat the held-back ack
        loop = asyncio.get_running_loop()
        user_timeout.reschedule(loop.time() - 1)  # the user's timeout fires...
        loop.call_soon(client._on_timer, entry, DEADLINE, 30.0)  # ...then our deadline
        await asyncio.wait_for(asyncio.wait([task]), 5)
    finally:
        await client.aclose()
    assert after == [] and isinstance(task.exception(), TimeoutError), (after, task)


def _taken_back() -> TimeoutError:
    """What aiohttp 3.14 does with a cancel that reaches a request in the same turn as its own
    timeout: it takes the cancel back (``uncancel()``) and fails the request as timed out."""
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()
    return TimeoutError()


class _TakesBackOneCancel:
    """A stand-in for the client's aiohttp session whose held requests (the subclass says
    which) never get an answer, and the first cancel that reaches one is taken back and turned
    into a TimeoutError. aiohttp 3.14 does that when its own timeout (`http_timeout`) fires in
    the same turn of the loop as another cancel: the request sits in two nested `with timer:`
    blocks of one TimerContext, and each block's exit calls `uncancel()`, so both cancels are
    taken back. ``entered`` is set once a held request has begun."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self.swallowed = 0
        self.entered = asyncio.Event()

    async def __aenter__(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            raise _taken_back() from None

    async def __aexit__(self, *_: object) -> None:
        return None


class _SwallowsOneCancel(_TakesBackOneCancel):
    """Holds every POST (the cancel requests); GETs go to the session."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.get(*args, **kwargs)

    def post(self, *_: Any, **__: Any) -> _SwallowsOneCancel:
        return self


async def _client_through(
    fx: FakeExchange,
    stand_in: _TakesBackOneCancel | _HoldsLookups,
    **options: Any,
) -> BybitCancelClient:
    """An open client whose REST requests go through ``stand_in`` (a stand-in for its session,
    which hands on to the real one what it does not hold)."""
    client = make_client(fx, session=stand_in._session, **options)
    await client.open()
    rest = client._rest
    assert rest is not None
    rest._session = stand_in  # type: ignore[assignment]
    return client


@pytest.mark.parametrize("close", [False, True])
async def test_an_interrupt_the_http_layer_swallowed_is_sent_again(
    fx: FakeExchange, close: bool
) -> None:
    """The deadline (or aclose()) interrupts a call inside REST by cancelling its task; when the
    HTTP layer took that cancel back and failed the request with a TimeoutError instead, the
    call went on retrying with nothing left to stop it: past its timeout, for as long as the
    requests failed (forever here), and a later cancel of its task was taken for ours and
    swallowed too. Seen with aiohttp when `timeout` equals `http_timeout`."""
    order = fx.seed_order()
    async with aiohttp.ClientSession() as session:
        swallower = _SwallowsOneCancel(session)
        client = await _client_through(fx, swallower)
        try:
            task = asyncio.create_task(
                client.cancel_order(
                    category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=0.3
                )
            )
            if close:
                await wait_until(lambda: client.pending_count == 1)
                await asyncio.wait_for(client.aclose(), 5)
            await asyncio.wait_for(asyncio.wait([task]), 5)
            expected = ClientClosedError if close else ConfirmationTimeout
            assert isinstance(task.exception(), expected), task
            assert swallower.swallowed == 1
        finally:
            task.cancel()
            await client.aclose()
    assert client_tasks() == []


async def test_an_interrupt_sent_again_is_no_retry(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline interrupts a call inside REST, the HTTP layer takes that cancel back and
    fails the request, and REST's retry hook sends the interrupt again: the call ends there,
    sending nothing more. REST still logged "retrying POST /v5/order/cancel ..." and counted a
    retry (in rest_stats) for a request it never sent again."""
    order = fx.seed_order()
    async with aiohttp.ClientSession() as session:
        swallower = _SwallowsOneCancel(session)
        client = await _client_through(fx, swallower)
        try:
            with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
                async with asyncio.timeout(5):
                    with pytest.raises(ConfirmationTimeout):
                        await client.cancel_order(
                            category="linear",
                            symbol="BTCUSDT",
                            order_id=order.order_id,
                            timeout=0.3,
                        )
            assert swallower.swallowed == 1
            assert client.rest_stats.retries == 0
            retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
            assert retried == []
        finally:
            await client.aclose()
    assert client_tasks() == []


class _ThenUserCancels(_SwallowsOneCancel):
    """As _SwallowsOneCancel, and the user cancels the caller's task in the next turn of the
    loop after the HTTP layer took the client's cancel back."""

    async def __aenter__(self) -> None:
        try:
            await super().__aenter__()
        except TimeoutError:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)
            raise


async def test_a_user_cancel_after_the_http_layer_took_ours_back_stays_a_cancel(
    fx: FakeExchange,
) -> None:
    """The deadline interrupts a call inside REST; the HTTP layer takes that cancel back and
    the request is retried; the user then cancels the call's task (a shutdown, say) before the
    interrupt was found lost. That cancel is the user's: the task must end cancelled. It used
    to be taken for the deadline's and turned into a ConfirmationTimeout, the cancel
    swallowed (and a CancelResult returned, had the push come)."""
    order = fx.seed_order()
    async with aiohttp.ClientSession() as session:
        swallower = _ThenUserCancels(session)
        client = await _client_through(fx, swallower)
        task = asyncio.create_task(
            client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=0.2
            )
        )
        try:
            await asyncio.wait_for(asyncio.wait([task]), 5)
            assert swallower.swallowed == 1
            assert task.cancelled(), task
        finally:
            task.cancel()
            await client.aclose()
    assert client_tasks() == []


class _HoldsLookups:
    """Stands in for the client's aiohttp session: ``GET /v5/order/realtime`` (the reconcile's
    first lookup) never gets an answer, and a cancel that reaches one is taken back and turned
    into a TimeoutError, as aiohttp 3.14 does when its own timeout fires in the same turn (see
    _TakesBackOneCancel): the first ``swallow`` cancels, or every one when None. Everything else,
    and everything once released, goes to the session."""

    def __init__(self, session: aiohttp.ClientSession, swallow: int | None = 1) -> None:
        self._session = session
        self._swallow = swallow
        self.swallowed = 0
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    def get(self, url: Any, *args: Any, **kwargs: Any) -> Any:
        if self.released.is_set() or "/v5/order/realtime" not in str(url):
            return self._session.get(url, *args, **kwargs)
        return _HeldLookup(self)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.post(*args, **kwargs)


class _HeldLookup:
    def __init__(self, holder: _HoldsLookups) -> None:
        self._holder = holder

    async def __aenter__(self) -> None:
        holder = self._holder
        holder.entered.set()
        try:
            await holder.released.wait()
        except asyncio.CancelledError:
            if holder._swallow is not None and holder.swallowed >= holder._swallow:
                raise
            holder.swallowed += 1
            raise _taken_back() from None
        raise aiohttp.ClientConnectionError("released")  # retried, then sent to the session

    async def __aexit__(self, *_: object) -> None:
        return None


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return 0.0


async def _reconciling(
    fx: FakeExchange, holder: _HoldsLookups, **options: Any
) -> tuple[BybitCancelClient, asyncio.Task[CancelResult]]:
    """A client with one cancel pending (its push lost) and its REST lookups held by ``holder``:
    the stream drops and reconnects, and the reconcile's lookup is inside its GET."""
    order = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=order.order_id)
    client = await _client_through(fx, holder, push_grace=30.0, **options)
    rest = client._rest
    assert rest is not None
    # Retried at once: a cancel sent again then finds the worker inside the GET, as it would
    # in an attempt that waits out http_timeout, not in the backoff's sleep (which keeps it).
    rest._rng = _NoJitter()
    try:
        call = await cancel_until_acked(client, order.order_id, timeout=60)
        await fx.disconnect_all()
        await asyncio.wait_for(holder.entered.wait(), 5)
    except BaseException:
        holder.released.set()
        await client.aclose()
        raise
    return client, call


@pytest.mark.parametrize("swallow", [1, None], ids=["once", "always"])
async def test_aclose_ends_a_reconcile_lookup_that_swallowed_its_cancel(
    fx: FakeExchange, swallow: int | None
) -> None:
    """aclose() cancels the reconnect's reconcile; when the HTTP layer took that cancel back
    from a worker's lookup (a TimeoutError instead), the worker went on retrying and the task
    group, and aclose(), waited for it: for as long as REST kept failing (here until the
    lookup's own bound, 2 x http_timeout). Now the worker is cancelled again, and a closed
    client retries nothing, so even a worker that loses every cancel ends."""
    async with aiohttp.ClientSession() as session:
        holder = _HoldsLookups(session, swallow)
        client, call = await _reconciling(fx, holder, http_timeout=20)
        closing = asyncio.create_task(client.aclose())
        try:
            done, _ = await asyncio.wait([closing], timeout=5)
            assert closing in done, "aclose() is still waiting for the reconcile"
            await asyncio.wait_for(asyncio.wait([call]), 5)
            assert isinstance(call.exception(), ClientClosedError), call
            assert holder.swallowed >= 1
            assert client_tasks() == []
        finally:
            holder.released.set()  # (the old code's aclose() ends once lookups are answered)
            await asyncio.wait_for(closing, 5)
            call.cancel()
    assert client_tasks() == []


async def test_aclose_leaves_no_reconcile_lookup_error_unretrieved(fx: FakeExchange) -> None:
    """aclose() cancels a worker waiting on its lookup; the HTTP layer takes the lookup's cancel
    back and a closed client retries nothing, so the lookup ends with ClientClosedError while
    the worker is itself being cancelled. Nobody read that error: asyncio logged "Task
    exception was never retrieved" once the task was collected."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        async with aiohttp.ClientSession() as session:
            holder = _HoldsLookups(session, None)
            client, call = await _reconciling(fx, holder, http_timeout=20)
            try:
                await asyncio.wait_for(client.aclose(), 5)
                await asyncio.wait_for(asyncio.wait([call]), 5)
                assert holder.swallowed >= 1
            finally:
                holder.released.set()
                await asyncio.wait_for(client.aclose(), 5)
                call.cancel()
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert unretrieved == [], unretrieved


async def test_a_superseded_reconcile_ends_though_its_lookup_swallowed_the_cancel(
    fx: FakeExchange,
) -> None:
    """The next reconnect cancels the reconcile it supersedes; when the HTTP layer took that
    cancel back from a worker's lookup, the old reconcile ran on beside the new one (a second
    cancel of a task group does not reach its workers). Its worker is now cancelled again."""
    async with aiohttp.ClientSession() as session:
        holder = _HoldsLookups(session)
        client, call = await _reconciling(fx, holder, http_timeout=20)
        try:
            old = client._reconcile_task
            assert old is not None
            workers = [
                t for t in client_tasks() if t.get_name().startswith("bybit_cancel.reconcile-")
            ]
            assert workers
            client._on_reconnected()  # as the stream calls it after the next reconnect
            done, _ = await asyncio.wait([old], timeout=5)
            assert old in done, "the superseded reconcile is still running"
            assert all(w.done() for w in workers)
            assert holder.swallowed == 1
            assert client._reconcile_task is not old and client._old_reconciles == set()
        finally:
            holder.released.set()
            await asyncio.wait_for(client.aclose(), 5)
            call.cancel()
    assert client_tasks() == []


async def test_a_reconcile_lookup_ends_though_its_own_timeout_was_swallowed(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """Each reconcile lookup is bounded (2 x http_timeout) by a cancel; when the HTTP layer took
    that cancel back, the lookup went on retrying for as long as REST kept failing, and the
    reconcile with it. The cancel is now sent again until the lookup has ended."""
    caplog.set_level(logging.DEBUG, logger="bybit_cancel")
    async with aiohttp.ClientSession() as session:
        holder = _HoldsLookups(session)
        client, call = await _reconciling(fx, holder, http_timeout=0.25)
        try:
            reconcile = client._reconcile_task
            assert reconcile is not None
            done, _ = await asyncio.wait([reconcile], timeout=5)
            assert reconcile in done, "the reconcile's lookup outlived its bound"
            assert holder.swallowed == 1
            assert "reconcile lookup failed" in caplog.text
            assert not call.done()  # its own caller keeps its own deadline and fallback
        finally:
            holder.released.set()
            await asyncio.wait_for(client.aclose(), 5)
            call.cancel()
    assert client_tasks() == []


class _HoldsServerTime(_TakesBackOneCancel):
    """Holds ``GET /v5/market/time`` (the clock resync the stream runs after a refused auth);
    everything else goes to the session."""

    def get(self, url: Any, *args: Any, **kwargs: Any) -> Any:
        if "/v5/market/time" not in str(url):
            return self._session.get(url, *args, **kwargs)
        return self

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.post(*args, **kwargs)


async def test_aclose_ends_a_stream_whose_clock_resync_swallowed_the_cancel(
    fx: FakeExchange,
) -> None:
    """A reconnect's auth is refused and the stream resyncs the clock over REST; aclose()
    cancels the stream task there, and when the HTTP layer took that cancel back (the resync
    failing as timed out instead), the stream took it for a failed attempt and reconnected
    again: aclose() waited for it for ever, and the state read "reconnecting" after the
    close. The stream now stops once it is closed."""
    async with aiohttp.ClientSession() as session:
        holder = _HoldsServerTime(session)
        client = await _client_through(fx, holder, reconnect_backoff=(0.02, 0.2))
        closing: asyncio.Task[None] | None = None
        try:
            fx.refuse_auth = True
            await fx.disconnect_all()
            await asyncio.wait_for(holder.entered.wait(), 5)
            closing = asyncio.create_task(client.aclose())
            done, _ = await asyncio.wait([closing], timeout=5)
            assert closing in done, "aclose() is still waiting for the stream task"
            assert holder.swallowed == 1
            assert client.connection_state is ConnectionState.CLOSED
        finally:
            fx.refuse_auth = False
            if closing is not None:  # (unset when an earlier step failed)
                closing.cancel()
            await asyncio.wait_for(client.aclose(), 5)
    assert client_tasks() == []


async def test_aclose_during_a_reconnects_clock_resync_logs_no_failed_attempt(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() cancels the stream task inside a reconnect's clock resync and the HTTP layer
    takes that cancel back, failing the resync as timed out: the stream logged that as a
    failed reconnect, a WARNING ("private stream reconnect 1 failed: ... clock resync failed")
    for a failure the close itself caused. It now just stops."""
    async with aiohttp.ClientSession() as session:
        holder = _HoldsServerTime(session)
        client = await _client_through(fx, holder, reconnect_backoff=(0.02, 0.2))
        try:
            fx.refuse_auth = True
            await fx.disconnect_all()
            await asyncio.wait_for(holder.entered.wait(), 5)
            with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
                await asyncio.wait_for(client.aclose(), 5)
            assert holder.swallowed == 1
            failed = [r.getMessage() for r in caplog.records if "reconnect" in r.getMessage()]
            assert failed == []
            assert client.connection_state is ConnectionState.CLOSED
        finally:
            fx.refuse_auth = False
            await asyncio.wait_for(client.aclose(), 5)
    assert client_tasks() == []


async def test_aclose_during_opens_clock_resync_is_a_closed_client(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open()'s auth is refused and it resyncs the clock over REST; aclose() cancels open()
    there, and when the HTTP layer took that cancel back (the resync failing as timed out),
    open() raised TransportError ("clock resync failed"), as if the stream could not be
    reached: it is the ClientClosedError a close during the connect raises."""
    async with aiohttp.ClientSession() as session:
        holder = _HoldsServerTime(session)

        def through(*args: Any, **kwargs: Any) -> RestClient:
            rest = RestClient(*args, **kwargs)
            rest._session = holder  # type: ignore[assignment]
            return rest

        monkeypatch.setattr(client_module, "RestClient", through)
        client = make_client(fx, session=session)
        fx.refuse_auth = True
        opening = asyncio.create_task(client.open())
        try:
            await asyncio.wait_for(holder.entered.wait(), 5)
            await asyncio.wait_for(client.aclose(), 5)
            await asyncio.wait_for(asyncio.wait([opening]), 5)
            assert holder.swallowed == 1
            error = opening.exception()
            assert isinstance(error, ClientClosedError), repr(error)
            # (Shown as the close it is, not as the resync's timeout: as the other close during
            # a connect, it names no cause.)
            assert error.__cause__ is None and error.__suppress_context__
            assert client.connection_state is ConnectionState.CLOSED
        finally:
            fx.refuse_auth = False
            opening.cancel()
            await asyncio.wait_for(client.aclose(), 5)
    assert client_tasks() == []
