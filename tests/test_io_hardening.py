"""The I/O layers against hostile or odd peers (a review of 2026-12-01): deeply nested JSON,
a redirect of the websocket, the auth's signature in a failed open's traceback, proxy settings
in the environment, and one deadline for the whole websocket handshake."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bybit_cancel import (
    BybitCancelClient,
    ClientClosedError,
    ConnectionState,
    HTTPStatusError,
    TransportError,
    _stream,
)
from bybit_cancel._stream import PrivateStream
from bybit_cancel._urls import resolve_urls
from bybit_cancel.testing import FakeExchange

from .conftest import KEY, SECRET, client_tasks, make_client
from .helpers import in_shutdown_handler, make_rest, make_stream, serve, wait_until

# Valid JSON nested deeper than msgspec decodes: it raises RecursionError, not a DecodeError.
# The depth it reaches depends on the Python (about 1,000 levels on 3.11; 1,200 decode on 3.12,
# 5,000 on 3.13): 100,000 (200 kB, under websockets' 1 MiB limit) is past it on each.
DEEP = "[" * 100_000 + "]" * 100_000


def stream_to(url: str, *, handshake_timeout: float = 1.0) -> PrivateStream:
    return make_stream(
        url=url,
        key="a-key-of-18-chars!",
        handshake_timeout=handshake_timeout,
        reconnect_backoff=(0.01, 0.05),
    )


def chained_locals(exc: BaseException) -> Iterator[tuple[str, str, object]]:
    """(function, name, value) of every local in the tracebacks of ``exc`` and of every error
    it chains, as a reporter that shows locals (Sentry, rich, loguru's diagnose) can reach."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                yield tb.tb_frame.f_code.co_name, name, value
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]


# -- deeply nested JSON -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":"pong","args":' + DEEP + "}",  # nested in a field the router never reads
        '{"topic":"order","data":[{"orderId":"x","orderStatus":"Cancelled","v":' + DEEP + "}]}",
        DEEP,
    ],
    ids=["pong", "push", "bare"],
)
def test_a_deeply_nested_frame_is_ignored(frame: str, caplog: pytest.LogCaptureFixture) -> None:
    """The router used to let msgspec's RecursionError out: on a live connection that crashed
    the stream task, and every pending and later call failed with "the private stream task
    crashed"; during open(), open() raised the RecursionError itself. It is ignored and logged,
    as any frame that cannot be read is."""
    routed: list[object] = []
    stream = make_stream(routed.append)
    with caplog.at_level(logging.WARNING, logger="bybit_cancel"):
        assert stream._route(frame.encode()) is None
    assert routed == []
    assert "nested too deeply" in caplog.text


async def test_a_deeply_nested_rest_answer_is_a_typed_error() -> None:
    """A 200 answer nested past msgspec's limit is an undecodable body (HTTPStatusError, and
    the cancel may have landed), not a RecursionError out of the REST call."""
    body = b'{"retCode":0,"retMsg":"OK","result":{},"retExtInfo":' + DEEP.encode() + b"}"

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    runner, host = await serve(answer)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(5):
            rest = make_rest(session, f"http://{host}", max_retries=0)
            with pytest.raises(HTTPStatusError, match="undecodable body") as info:
                await rest.cancel({"category": "linear", "symbol": "BTCUSDT", "orderId": "o1"})
            assert info.value.may_have_landed
            with pytest.raises(HTTPStatusError, match="undecodable server time"):
                await rest.server_time_ms()
    finally:
        await runner.cleanup()


# -- the websocket's connect ----------------------------------------------------------------


async def test_the_websocket_follows_no_redirect() -> None:
    """A redirect of the private stream's URL used to be followed (websockets follows up to
    ten), and the auth, with the API key and a signature, went to whatever host it named. As
    REST does, the stream refuses it: a TransportError, and nothing sent elsewhere."""
    received: list[Any] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            msg = json.loads(frame.data)
            received.append(msg)
            reply = {"op": msg["op"], "success": True, "ret_msg": "", "conn_id": "x"}
            await ws.send_str(json.dumps(reply))
        return ws

    other, other_host = await serve(elsewhere)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"ws://{other_host}/v5/private", text="moved " * 2000)

    origin, origin_host = await serve(redirect)
    stream = stream_to(f"ws://{origin_host}/v5/private")
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TransportError, match=r"redirected \(HTTP 302 to") as info:
                await stream.open()
        assert received == []
        assert len(str(info.value)) < 400  # (not the whole response: its body is 12 kB)
    finally:
        await stream.close()
        await other.cleanup()
        await origin.cleanup()


@pytest.mark.parametrize("peer", ["silent", "closes"])
async def test_no_auth_signature_in_the_locals_of_a_failed_open(peer: str) -> None:
    """The auth request's arguments (key, expires, signature) used to stay in `_request`'s
    frame, which the TransportError of a failed open() chains (`from exc`): a reporter that
    shows locals would show the signature. REST has kept its signed headers out of its
    frames all along."""
    auth: list[Any] = []

    async def peer_side(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            auth.append(json.loads(frame.data))
            if peer == "closes":
                await ws.close(code=1011)
        return ws

    runner, host = await serve(peer_side)
    stream = stream_to(f"ws://{host}/v5/private", handshake_timeout=0.5)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TransportError) as info:
                await stream.open()
        signature = auth[0]["args"][2]
        assert isinstance(signature, str) and len(signature) == 64
        hits = [
            (function, name)
            for function, name, value in chained_locals(info.value)
            if not function.startswith("test_") and signature in repr(value)
        ]
        assert hits == []
    finally:
        await stream.close()
        await runner.cleanup()


async def test_no_signed_headers_behind_a_rest_transport_error() -> None:
    """A REST request that fails (here: the peer closes without answering) raises a
    TransportError that chains nothing: raised inside the except block, it kept aiohttp's
    error as its __context__, whose traceback holds the frames with the signed headers."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, aiohttp.ClientSession() as session, asyncio.timeout(5):
        rest = make_rest(session, f"http://127.0.0.1:{port}", secret=SECRET, max_retries=0)
        with pytest.raises(TransportError) as info:
            await rest.cancel({"category": "linear", "symbol": "BTCUSDT", "orderId": "o1"})
    assert info.value.__context__ is None and info.value.__cause__ is None
    for function, name, value in chained_locals(info.value):
        assert "X-BAPI-SIGN" not in repr(value)[:10_000], (function, name)


async def test_a_redirect_on_a_reconnect_is_retried_never_followed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream lost after open() whose reconnects meet a redirect: the redirect is not
    followed (nothing reaches its target), the stream does not give up (no failed state, no
    error for the calls: a redirect of the stream does not stop REST), a cancel made meanwhile
    gets its final state over REST, the log names the redirect, and the stream comes back
    once the redirect stops."""
    reached: list[str] = []

    async def target(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response(status=404)

    other, other_host = await serve(target)
    exchange = FakeExchange(api_key=KEY, api_secret=SECRET, seed=7)
    real_ws = exchange._h_ws
    redirecting = asyncio.Event()
    redirected = asyncio.Event()

    async def h_ws(request: web.Request) -> web.StreamResponse:
        if redirecting.is_set():
            redirected.set()
            raise web.HTTPFound(f"ws://{other_host}/v5/private")
        return await real_ws(request)

    monkeypatch.setattr(exchange, "_h_ws", h_ws)  # start() routes to it
    try:
        with caplog.at_level(logging.WARNING, logger="bybit_cancel"):
            async with (
                exchange as fx,
                make_client(fx, push_grace=0.2, reconnect_backoff=(0.01, 0.05)) as client,
            ):
                redirecting.set()
                await fx.disconnect_all()
                await asyncio.wait_for(redirected.wait(), 5)
                order = fx.seed_order()
                result = await client.cancel_order(
                    category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=5
                )
                assert result.cancelled and result.source == "rest"
                state = client.connection_state  # (still retrying: not failed)
                assert state is ConnectionState.RECONNECTING and client.reconnect_count == 0
                redirecting.clear()
                await wait_until(lambda: client.reconnect_count == 1)
                assert client.connection_state is ConnectionState.CONNECTED
                again = fx.seed_order()
                result = await client.cancel_order(
                    category="linear", symbol="BTCUSDT", order_id=again.order_id, timeout=5
                )
                assert result.cancelled and result.source == "websocket"
        assert reached == []
        assert any(
            r.levelno == logging.WARNING
            and "redirected (HTTP 302 to" in r.getMessage()
            and "not followed" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        assert client_tasks() == []
    finally:
        await other.cleanup()


async def test_a_403_on_a_reconnect_holds_the_next_attempt_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade refused with HTTP 403 on a reconnect is an IP ban (§7: wait at least 10
    minutes; retrying extends it): the next attempt waits _IP_BAN_HOLD, not the backoff (here
    0.01-0.05 s), the log says why, cancels meanwhile confirm over REST, and the stream comes
    back once the ban is lifted."""
    monkeypatch.setattr(_stream, "_IP_BAN_HOLD", 0.3)
    exchange = FakeExchange(api_key=KEY, api_secret=SECRET, seed=11)
    real_ws = exchange._h_ws
    banned = asyncio.Event()
    refusals: list[float] = []
    second = asyncio.Event()

    async def h_ws(request: web.Request) -> web.StreamResponse:
        if banned.is_set():
            refusals.append(asyncio.get_running_loop().time())
            if len(refusals) == 2:
                banned.clear()  # lifted: the attempt after this one connects
                second.set()
            raise web.HTTPForbidden(text="access too frequent")
        return await real_ws(request)

    monkeypatch.setattr(exchange, "_h_ws", h_ws)  # start() routes to it
    with caplog.at_level(logging.WARNING, logger="bybit_cancel"):
        async with (
            exchange as fx,
            make_client(fx, push_grace=0.05, reconnect_backoff=(0.01, 0.05)) as client,
        ):
            banned.set()
            await fx.disconnect_all()
            await wait_until(lambda: len(refusals) == 1)
            order = fx.seed_order()
            result = await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=order.order_id, timeout=5
            )
            assert result.cancelled and result.source == "rest"
            await asyncio.wait_for(second.wait(), 5)
            # (A sleep never ends early; without the hold the gap is the backoff, <= 0.05 s.)
            assert refusals[1] - refusals[0] >= 0.29
            await wait_until(lambda: client.reconnect_count == 1)
            assert client.connection_state is ConnectionState.CONNECTED
    held = [r.getMessage() for r in caplog.records if "IP ban" in r.getMessage()]
    assert len(held) == 2
    for message in held:
        assert "upgrade refused (HTTP 403 Forbidden): 'access too frequent'" in message
        assert "next attempt in" in message
    assert client_tasks() == []


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1", "ftp://127.0.0.1:1"])
async def test_proxy_settings_in_the_environment_are_not_used(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    """websockets (from 15 on) reads proxy variables from the environment where aiohttp, run
    with trust_env=False, does not: the stream took another path than REST, and a proxy it
    could not use failed open() with an ImportError or websockets' InvalidProxy. Neither
    side uses them: the client connects as if they were unset."""
    for name in ("all_proxy", "ALL_PROXY", "http_proxy", "https_proxy", "ws_proxy"):
        monkeypatch.setenv(name, proxy)
    client = make_client(fx)
    try:
        async with asyncio.timeout(5):
            await client.open()
            order = fx.seed_order()
            result = await client.cancel_order(
                category="linear", symbol="BTCUSDT", order_id=order.order_id
            )
        assert result.cancelled
    finally:
        await client.aclose()
    assert client_tasks() == []


async def test_one_deadline_bounds_the_whole_handshake() -> None:
    """handshake_timeout bounds the connect, the auth and the subscribe together, as documented:
    it used to bound the connect, then again the auth and subscribe (up to twice as long). A
    peer that takes 0.7 s to accept and 0.5 s to answer the auth misses a 1 s deadline."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.7)  # (the peer's latency: what the deadline is measured against)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            msg = json.loads(frame.data)
            if msg["op"] == "auth":
                await asyncio.sleep(0.5)
            reply = {"op": msg["op"], "success": True, "ret_msg": "", "conn_id": "x"}
            await ws.send_str(json.dumps(reply))
        return ws

    runner, host = await serve(slow)
    stream = stream_to(f"ws://{host}/v5/private", handshake_timeout=1.0)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(
                TransportError,
                match=r"^websocket auth got no reply in time .* 0\.[7-9]\ds of it taken by the connect",
            ):
                await stream.open()
    finally:
        await stream.close()
        await runner.cleanup()


@pytest.mark.parametrize("phase", ["upgrade", "late connect", "auth", "subscribe"])
async def test_a_handshake_timeout_names_the_phase_that_timed_out(
    phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error of a handshake past handshake_timeout said "auth/subscribe" whatever was slow,
    even when the connect had used the deadline up: it names the phase that was running when
    the deadline passed. A connect that comes back just as the deadline passed ("late connect":
    the loop stalled, so the deadline's timer had not run) used it up too: no auth is sent."""
    timeout = 0.3
    ops: list[str] = []
    handled = asyncio.Event()

    async def peer(request: web.Request) -> web.StreamResponse:
        try:
            if phase == "upgrade":
                await asyncio.Event().wait()  # never answers the upgrade
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for frame in ws:
                op = json.loads(frame.data)["op"]
                ops.append(op)
                if op != phase:  # (the slow phase gets no reply)
                    reply = {"op": op, "success": True, "ret_msg": "", "conn_id": "x"}
                    await ws.send_str(json.dumps(reply))
            return ws
        finally:
            handled.set()

    if phase == "late connect":
        real = _stream._NoRedirectConnect

        async def late_connect(*args: Any, **kwargs: Any) -> object:
            ws = await real(*args, **kwargs)
            time.sleep(timeout)  # noqa: ASYNC251 - a stalled loop: the connect returns late
            return ws

        monkeypatch.setattr(_stream, "_NoRedirectConnect", late_connect)
    runner, host = await serve(peer)
    stream = stream_to(f"ws://{host}/v5/private", handshake_timeout=timeout)
    named = "connect" if phase in ("upgrade", "late connect") else phase
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TransportError) as info:
                await stream.open()
            if phase != "upgrade":
                await handled.wait()  # the peer has seen all it will see
        message = str(info.value)
        assert message.startswith(f"websocket {named} "), message
        assert f"{timeout:g}s" in message, message
        if named == "connect":
            assert ops == []
        else:
            assert ops == ["auth", "subscribe"][: ops.index(phase) + 1]
    finally:
        await stream.close()
        await runner.cleanup()


async def test_aclose_during_an_open_from_a_shutdown_handler_is_client_closed() -> None:
    """open() run by a task that is already being cancelled (count 1), and aclose() called
    while it connects: open() raises ClientClosedError as documented. It took close()'s cancel
    back only when the count came back to 0, and raised CancelledError."""
    accepted = asyncio.Event()

    async def mute(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.set()
        async for _ in ws:  # never answers the auth
            pass
        return ws

    runner, host = await serve(mute)
    client = BybitCancelClient(
        api_key="a-key-of-18-chars!",
        api_secret=SECRET,
        rest_url=f"http://{host}",
        ws_url=f"ws://{host}/v5/private",
    )
    try:
        task, got = await in_shutdown_handler(client.open)
        await asyncio.wait_for(accepted.wait(), 5)
        await asyncio.wait_for(client.aclose(), 5)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert len(got) == 1 and isinstance(got[0], ClientClosedError), got
        assert client_tasks() == []
    finally:
        await runner.cleanup()


async def test_a_cancel_of_open_requested_before_aclose_stays_a_cancel() -> None:
    """`opening.cancel(); await client.aclose()` while open() connects: the opener's own cancel
    was requested before close()'s; one CancelledError reaches it for both, and it must end
    cancelled, not with the ClientClosedError that close() alone gives."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # never answers the websocket upgrade
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = BybitCancelClient(
            api_key="a-key-of-18-chars!",
            api_secret=SECRET,
            rest_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/v5/private",
            handshake_timeout=30,
        )
        opening = asyncio.create_task(client.open())
        await asyncio.wait_for(accepted.wait(), 5)
        opening.cancel()
        async with asyncio.timeout(5):
            await client.aclose()
        await asyncio.wait_for(asyncio.wait([opening]), 5)
        assert opening.cancelled(), opening
        assert client_tasks() == []


async def test_no_auth_signature_behind_a_send_that_fails() -> None:
    """The peer closes right after the upgrade, so the auth's send() itself may fail: its
    error's traceback held websockets' send() frame, whose `message` is the signed auth."""

    async def hang_up(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=1011)
        return ws

    runner, host = await serve(hang_up)
    stream = stream_to(f"ws://{host}/v5/private", handshake_timeout=0.5)
    try:
        for _ in range(20):  # (whether send() or the read sees the close first is a race)
            async with asyncio.timeout(5):
                with pytest.raises(TransportError) as info:
                    await stream.open()
            hits = [
                (function, name)
                for function, name, value in chained_locals(info.value)
                if not function.startswith("test_") and '"op":"auth"' in repr(value)
            ]
            assert hits == [], hits
    finally:
        await stream.close()
        await runner.cleanup()


@pytest.mark.parametrize("before", ["", "x" * 190, "\u00e9" * 101], ids=["0", "190", "wide"])
async def test_an_error_page_echoing_the_api_key_does_not_show_it(before: str) -> None:
    """A gateway or proxy error page may echo the request's headers: the HTTPStatusError built
    from its start shows the key as the client's repr does, also when the key straddles where
    the snippet is cut (190: it runs past character 200), or starts before character 200 but
    past byte 200, behind multi-byte characters ("wide")."""

    async def echo(request: web.Request) -> web.Response:
        text = before + request.headers["X-BAPI-API-KEY"] + " was refused"
        return web.Response(status=400, text=text)

    runner, host = await serve(echo)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(5):
            rest = make_rest(session, f"http://{host}", key=KEY, secret=SECRET)
            with pytest.raises(HTTPStatusError) as info:
                await rest.cancel({"category": "linear", "symbol": "BTCUSDT", "orderId": "o1"})
    finally:
        await runner.cleanup()
    shown = str(info.value) + repr(info.value)
    assert info.value.status == 400
    assert KEY not in shown and KEY[:8] not in shown, shown
    assert before[:10] in shown  # the page itself is still shown


@pytest.mark.parametrize("which", ["rest_url", "ws_url"])
def test_a_url_with_a_user_and_password_is_refused_without_showing_them(which: str) -> None:
    url = "http://me:hunter2@127.0.0.1:8080" if which == "rest_url" else "ws://me:hunter2@h/ws"
    with pytest.raises(ValueError, match=f"{which} must not carry a user or password") as info:
        resolve_urls(testnet=False, demo=False, **{"rest_url": None, "ws_url": None, which: url})
    assert "hunter2" not in str(info.value)


def test_a_user_and_password_is_found_without_a_scheme_and_only_before_the_path() -> None:
    """Without a scheme, the user and password were let through to the scheme's error, which
    echoes the URL; an "@" in a query with no path before it was taken for a user."""
    with pytest.raises(ValueError, match="rest_url must not carry a user or password") as info:
        resolve_urls(testnet=False, demo=False, rest_url="me:hunter2@127.0.0.1", ws_url=None)
    assert "hunter2" not in str(info.value)
    _, ws = resolve_urls(testnet=False, demo=False, rest_url=None, ws_url="wss://h?to=a@b")
    assert ws == "wss://h?to=a@b"


@pytest.mark.parametrize("refusal", ["status", "redirect"])
async def test_a_refused_upgrade_echoing_the_api_key_does_not_show_it(refusal: str) -> None:
    """A refused websocket upgrade's body, or a redirect's Location, may echo the request (its
    URL, a header): the TransportError shows its start with the key scrubbed, also when the key
    straddles where that start is cut (it was cut first, and half a key was left to show)."""
    key = "a-key-of-18-chars!"

    async def refuse(request: web.Request) -> web.StreamResponse:
        if refusal == "redirect":
            raise web.HTTPFound("http://elsewhere/" + "x" * 170 + key)
        return web.Response(status=400, text="x" * 190 + key + " refused")

    runner, host = await serve(refuse)
    stream = stream_to(f"ws://{host}/v5/private")
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TransportError) as info:
                await stream.open()
    finally:
        await stream.close()
        await runner.cleanup()
    shown = str(info.value) + repr(info.value)
    assert "x" * 20 in shown  # the refusal itself is still shown
    assert key[:8] not in shown, shown
