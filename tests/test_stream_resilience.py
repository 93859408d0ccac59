"""The private stream's reconnect loop through long outages, flapping servers and a failed clock
resync: it keeps trying, with a backoff that grows, and gives up only on a real auth refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bybit_cancel import (
    AuthenticationError,
    BybitAPIError,
    BybitError,
    ConnectionState,
    OrderStatus,
    TransportError,
)
from bybit_cancel._signing import Credentials
from bybit_cancel._stream import PrivateStream
from bybit_cancel.testing import FakeExchange, Fault

from .conftest import KEY, SECRET, asyncio_loop_only, client_tasks, make_client
from .helpers import wait_until


class RecordingRandom(random.Random):
    """Seeded jitter that records the (low, high) bounds of each backoff the loop asks for."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return super().uniform(a, b)


def make_stream(
    url: str,
    rng: random.Random,
    *,
    backoff: tuple[float, float],
    ping_interval: float = 20.0,
    on_failed: Callable[[BybitError], None] = lambda exc: None,
    creds: Credentials | None = None,
) -> PrivateStream:
    return PrivateStream(
        url,
        creds or Credentials("k", "s"),
        now_ms=lambda: time.time_ns() // 1_000_000,
        on_orders=lambda orders: None,
        on_reconnected=lambda settled: None,
        on_failed=on_failed,
        resync_clock=None,
        ping_interval=ping_interval,
        handshake_timeout=2.0,
        auth_expiry_ms=10_000,
        reconnect_backoff=backoff,
        rng=rng,
    )


# ------------------------------------------------------------------------------ long outage


async def test_backoff_survives_thousands_of_failed_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ~1025 failed reconnects in a row (hours of outage at the default backoff), the
    exponential backoff overflowed a float and the stream failed for good. It stays at its cap."""
    rng = RecordingRandom(11)
    failures: list[BybitError] = []
    cap = 2e-6  # tiny, so that 1,500 attempts take milliseconds; the arithmetic is the same
    stream = make_stream("ws://127.0.0.1:1/v5/private", rng, backoff=(1e-6, cap))
    stream._on_failed = failures.append
    target = 1500
    attempts = 0

    async def exchange_down(*_: object) -> object:  # (stands in for _connect(outage))
        nonlocal attempts
        attempts += 1
        if attempts == target:
            await asyncio.Event().wait()  # still down: park here until close()
        raise TransportError("websocket connect failed: connection refused")

    monkeypatch.setattr(stream, "_connect", exchange_down)
    # What open() leaves behind once its connection has died: the supervisor, no socket.
    stream._task = asyncio.get_running_loop().create_task(
        stream._supervise(), name="bybit_cancel.stream"
    )
    try:
        await wait_until(lambda: attempts >= target or bool(failures), timeout=20)
        assert failures == []
        assert stream.state is ConnectionState.RECONNECTING
        assert len(rng.bounds) == target
        assert rng.bounds[-1] == (cap / 2, cap)
    finally:
        await stream.close()
    assert client_tasks() == []


# ---------------------------------------------------------------------------- flapping server


class PrivateEndpoint:
    """A /v5/private on 127.0.0.1 that acks auth and subscribe in Bybit's private dialect
    (tests/fixtures/bybit/ws-private/) and then, per connection, as its plan says:
    "flap" closes right after the subscribe ack, "ping" closes on the first ping (so the
    connection outlived a ping interval, but answered no ping), "pong" answers the first ping
    and then closes (it outlived a ping interval and answered one: it proved stable), "mute"
    answers no ping and stays open (a silent gateway: the client's heartbeat cuts it), "hold"
    stays up answering pings, "echo" refuses the
    auth with a ret_msg that quotes the request's arguments, API key included; "echo-sub" does
    the same to the subscribe (quoting the auth's), and "close-key" closes the connection at
    the auth with a close reason that quotes the API key."""

    def __init__(self, plan: list[str]) -> None:
        self.plan = plan
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> PrivateEndpoint:
        app = web.Application()
        app.router.add_get("/v5/private", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self._runner.addresses[0][1]}/v5/private"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        n = self.connections
        self.connections += 1
        mode = self.plan[n] if n < len(self.plan) else "hold"
        conn_id = f"conn-{n}"
        auth_args: list[object] = []
        async for frame in ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            msg = json.loads(frame.data)
            op, req_id = msg.get("op"), msg.get("req_id")
            if op == "ping":
                if mode == "ping":
                    break
                if mode == "mute":
                    continue
                pong = {"req_id": req_id, "op": "pong", "args": [str(time.time_ns() // 10**6)]}
                await ws.send_str(json.dumps({**pong, "conn_id": conn_id}))
                if mode == "pong":
                    break
                continue
            if op == "auth":
                auth_args = msg["args"]
                if mode == "close-key":
                    await ws.close(code=1008, message=f"bad key {auth_args[0]}".encode())
                    break
            ack = {"req_id": req_id, "success": True, "ret_msg": "", "op": op, "conn_id": conn_id}
            if (op, mode) in (("auth", "echo"), ("subscribe", "echo-sub")):
                ack = {**ack, "success": False, "ret_msg": f"Params Error: {auth_args}"}
            await ws.send_str(json.dumps(ack))
            if op == "subscribe" and mode == "flap":
                break
        await ws.close()
        return ws


async def test_refused_auth_quoting_the_api_key_does_not_carry_it() -> None:
    """An auth refusal is an AuthenticationError with Bybit's ret_msg; where that quotes the API
    key (as REST's 10004 does), the error shows the key by its first four characters."""
    key = "AbCdEfGhIjKlMnOpQr"  # 18 characters, as Bybit's keys are
    async with PrivateEndpoint(["echo"]) as server:
        stream = make_stream(
            server.url, random.Random(3), backoff=(0.01, 0.1), creds=Credentials(key, "s")
        )
        with pytest.raises(AuthenticationError) as info:
            await stream.open()
    assert server.connections == 1
    assert "Params Error" in info.value.ret_msg and "AbCd***" in info.value.ret_msg
    assert key not in info.value.ret_msg and key not in str(info.value)
    assert client_tasks() == []


async def test_refused_subscribe_quoting_the_api_key_does_not_carry_it() -> None:
    """A refused subscribe's ret_msg went into its BybitAPIError (and the reconnect loop's log
    line) as sent, key and all, where the auth's was scrubbed: it is scrubbed the same way."""
    key = "AbCdEfGhIjKlMnOpQr"
    async with PrivateEndpoint(["echo-sub"]) as server:
        stream = make_stream(
            server.url, random.Random(3), backoff=(0.01, 0.1), creds=Credentials(key, "s")
        )
        with pytest.raises(BybitAPIError) as info:
            await asyncio.wait_for(stream.open(), 5)
    assert not isinstance(info.value, AuthenticationError)
    assert "Params Error" in info.value.ret_msg and "AbCd***" in info.value.ret_msg
    assert key not in str(info.value) and key not in repr(info.value)
    assert client_tasks() == []


async def test_a_close_reason_quoting_the_api_key_does_not_carry_it() -> None:
    """The peer closes the connection at the auth with a reason that quotes the key: the
    TransportError quoted the close (reason and all) as sent; it shows the key scrubbed."""
    key = "AbCdEfGhIjKlMnOpQr"
    async with PrivateEndpoint(["close-key"]) as server:
        stream = make_stream(
            server.url, random.Random(3), backoff=(0.01, 0.1), creds=Credentials(key, "s")
        )
        with pytest.raises(TransportError, match="closed during auth") as info:
            await asyncio.wait_for(stream.open(), 5)
    assert "bad key AbCd***" in str(info.value)
    assert key not in str(info.value) and key not in repr(info.value)
    assert client_tasks() == []


async def test_a_server_dropping_every_fresh_connection_meets_a_growing_backoff() -> None:
    """A server that completes auth and subscribe, then drops the socket at once, was
    reconnected every 50-100 ms for ever (§3 Connection limits: "Do not frequently connect
    and disconnect"). Only a connection that stayed up a ping interval and answered a ping
    resets the backoff, and the first reconnect after it is quick again."""
    base = 0.004
    rng = RecordingRandom(5)
    failures: list[BybitError] = []
    async with PrivateEndpoint(["flap"] * 5 + ["pong"]) as server:
        stream = make_stream(
            server.url, rng, backoff=(base, 1.0), ping_interval=0.2, on_failed=failures.append
        )
        await stream.open()
        try:
            # connections 0-4 flap, 5 lives one ping interval and answers its ping, 6 holds
            await wait_until(lambda: stream.reconnects >= 6 or bool(failures), timeout=10)
            assert failures == []
            caps = [high for _, high in rng.bounds]
            assert caps == pytest.approx([base, 2 * base, 4 * base, 8 * base, 16 * base, base])
            assert all(low == high / 2 for low, high in rng.bounds)
            assert server.connections == 7
        finally:
            await stream.close()
    assert client_tasks() == []


@contextlib.contextmanager
def coarse_clock(loop: asyncio.AbstractEventLoop, start: float) -> Iterator[None]:
    """Run asyncio's own loop on a clock that stands still while anything is ready and, when
    nothing is, jumps to the next timer instead of sleeping: as a loop whose clock ticks coarsely
    (uvloop's counts whole milliseconds) sees a ping and the close it provokes, read in the same
    tick. Replaces the loop's ``time()`` and its selector's ``select()``: asyncio's own only."""
    selector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select
    now = start

    def time_() -> float:
        return now

    def select(timeout: float | None = None) -> list[Any]:
        nonlocal now
        events: list[Any] = real_select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer: wait for the sockets, for real
            return real_select(None)  # type: ignore[no-any-return]
        now += timeout  # (exact: asyncio's timeout is the next timer's time less ours)
        return []

    loop.time = time_  # type: ignore[method-assign]
    selector.select = select
    try:
        yield
    finally:
        del selector.select
        del loop.time


@asyncio_loop_only("the coarse clock replaces the loop's time() and its selector's select()")
async def test_a_connection_lost_at_its_first_pong_stayed_up_on_a_coarse_clock() -> None:
    """uvloop's clock counts whole milliseconds: a server that answers the connection's first
    ping and drops it often does so in the millisecond the ping went out. The ping had gone out
    because one ping interval had passed since the connection came up, but ``down - up`` came
    out below it (87185.322 - 87185.122 == 0.19999999999708962 < 0.2) and the connection counted
    as lost soon after it came up: the backoff went on growing (the test above failed on uvloop
    in about one run in four). Here asyncio's loop is given such a clock, where that happens
    every time."""
    base = 0.004
    rng = RecordingRandom(5)
    failures: list[BybitError] = []
    loop = asyncio.get_running_loop()
    async with PrivateEndpoint(["flap", "flap", "pong"]) as server:
        # (From any time between 65536 s and 131072 s, "0.2 s later" reads 0.19999999999708962
        # later: the spacing of doubles there.)
        with coarse_clock(loop, 100_000.0):
            stream = make_stream(
                server.url, rng, backoff=(base, 1.0), ping_interval=0.2, on_failed=failures.append
            )
            await stream.open()
            try:
                # connections 0-1 flap, 2 answers its first ping and closes, 3 holds
                await wait_until(lambda: stream.reconnects >= 3 or bool(failures), timeout=10)
                assert failures == []
                assert [high for _, high in rng.bounds] == pytest.approx([base, 2 * base, base])
                assert server.connections == 4
            finally:
                await stream.close()
    assert client_tasks() == []


async def test_a_silent_gateway_meets_a_growing_backoff_as_one_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway that answers the subscribe and then nothing (no pong) keeps each connection up
    until the heartbeat gives up after two ping intervals: longer than the one interval that
    made a connection stable, so each was a new outage (a "silent" and a "closed" WARNING, a
    reconnect INFO) and reset the backoff, reconnecting every two intervals at full speed (§3
    Connection limits). A connection is stable only once it has also answered a ping: the
    silent ones meet a growing backoff and are failed attempts of one outage; one that answers
    its ping resets the backoff."""
    base = 0.004
    rng = RecordingRandom(5)
    failures: list[BybitError] = []
    # connection 0 answers its ping (then closes), 1-3 are silent, 4 answers its ping, 5 holds
    plan = ["pong", "mute", "mute", "mute", "pong"]
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        async with asyncio.timeout(20), PrivateEndpoint(plan) as server:
            stream = make_stream(
                server.url, rng, backoff=(base, 1.0), ping_interval=0.1, on_failed=failures.append
            )
            await stream.open()
            try:
                await wait_until(lambda: stream.reconnects >= 5 or bool(failures), timeout=10)
            finally:
                await stream.close()
    assert failures == []
    assert server.connections == 6
    caps = [high for _, high in rng.bounds]
    assert caps == pytest.approx([base, 2 * base, 4 * base, 8 * base, base])
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "bybit_cancel"]
    warnings = [m for level, m in records if level == "WARNING"]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("private stream closed: ")
    assert warnings[1].startswith("private stream reconnect 1 failed: connection lost ")
    assert warnings[1].endswith(" after it came up: silent for 0.2s (no pong)")
    assert warnings[2].startswith("private stream closed: ")
    silent = [(level, m) for level, m in records if m.endswith("silent for 0.2s (no pong)")]
    assert [level for level, _ in silent] == ["WARNING", "DEBUG", "DEBUG"]
    assert [m.split(" failed")[0] for _, m in silent] == [
        f"private stream reconnect {n}" for n in (1, 2, 3)
    ]
    back = [m for level, m in records if level == "INFO" and "reconnected" in m]
    assert len(back) == 3, back
    assert back[0].endswith(" down and 1 attempt")
    assert back[1].endswith(
        " down and 4 attempts (3 connections lost before proving stable; this one has stayed "
        "up 0.1 s and answered a ping)"
    )
    assert back[2].endswith(" down and 1 attempt")
    assert client_tasks() == []


# ------------------------------------------------------------------------- clock resync fails


@pytest.fixture
async def fx_flaky_time(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FakeExchange, list[int]]]:
    """A FakeExchange whose /v5/market/time answers the HTTP statuses queued in the list, one
    per request, before answering normally again."""
    exchange = FakeExchange(api_key=KEY, api_secret=SECRET, seed=7)
    real = exchange._h_market_time
    queued: list[int] = []

    async def market_time(request: web.Request) -> web.Response:
        if queued:
            return web.Response(status=queued.pop(0), text="bad gateway")
        return await real(request)

    monkeypatch.setattr(exchange, "_h_market_time", market_time)  # start() routes to it
    async with exchange:
        yield exchange, queued


async def test_a_failed_clock_resync_on_reconnect_is_not_final(
    fx_flaky_time: tuple[FakeExchange, list[int]],
) -> None:
    """Bybit's clock moves 30 s ahead (the next auth's `expires` is past: "Params Error", §3)
    and /v5/market/time fails once just then: the stream used to retry the auth with the stale
    clock and give up for good. It reconnects later instead, and the pending cancel resolves."""
    fx, market_time = fx_flaky_time
    o = fx.seed_order()
    fx.add_fault(Fault.DROP_PUSH, order_id=o.order_id)  # its push is lost: the lookup must say
    async with make_client(fx, push_grace=30.0, reconnect_backoff=(0.02, 0.2)) as client:
        task = asyncio.create_task(
            client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=o.order_id, timeout=10
            )
        )
        await wait_until(lambda: fx.order(o.order_id).status == "Cancelled")
        fx.clock_offset_ms = 30_000
        market_time.append(502)
        await fx.disconnect_all()
        await wait_until(
            lambda: client.reconnect_count >= 1 or client.connection_state is ConnectionState.FAILED
        )
        assert client.connection_state is ConnectionState.CONNECTED
        assert market_time == []  # the 502 was served, then a resync succeeded
        r = await asyncio.wait_for(task, 5)
    assert r.status is OrderStatus.CANCELLED and r.source == "rest"
    assert client_tasks() == []


async def test_a_failed_clock_resync_on_open_is_a_transport_error(
    fx_flaky_time: tuple[FakeExchange, list[int]],
) -> None:
    """The same on the first connect: open() raises TransportError (try again), not
    AuthenticationError (the credentials are wrong); a second client then connects."""
    fx, market_time = fx_flaky_time
    fx.clock_offset_ms = 30_000
    market_time.append(502)
    client = make_client(fx)
    with pytest.raises(TransportError, match="resync"):
        async with asyncio.timeout(10):
            await client.__aenter__()
    assert client.connection_state is ConnectionState.CLOSED
    assert client_tasks() == []
    async with make_client(fx) as again:
        assert again.connection_state is ConnectionState.CONNECTED
