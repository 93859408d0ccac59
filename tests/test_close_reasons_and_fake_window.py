"""A peer's close reason quoting the API key stays out of errors, chained errors and logs; the
fake forgets no finished order while realtime finds every closed one (realtime_closed_limit=None)."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from bybit_cancel import TransportError
from bybit_cancel._stream import PrivateStream

from .conftest import client_tasks
from .helpers import make_stream, serve

KEY18 = "AbCdEfGhIjKlMnOpQr"


def stream_to(url: str, key: str = KEY18) -> PrivateStream:
    # (No second attempt within the test.)
    return make_stream(url=url, key=key, handshake_timeout=2.0, reconnect_backoff=(5.0, 5.0))


def closing_peer(
    at: str, closed: asyncio.Event, go: asyncio.Event | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Answers auth and subscribe; closes with a reason quoting the API key at `at`
    ("after-subscribe": once `go` is set, when the test has seen the stream open)."""

    async def peer(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        key = ""
        async for frame in ws:
            msg = json.loads(frame.data)
            op = msg["op"]
            if op == "auth":
                key = msg["args"][0]
            if op == at:
                await ws.close(code=1008, message=f"bad key {key}".encode())
                closed.set()
                break
            reply = {"req_id": msg.get("req_id"), "op": op, "success": True, "ret_msg": ""}
            await ws.send_str(json.dumps({**reply, "conn_id": "c"}))
            if op == "subscribe" and at == "after-subscribe":
                assert go is not None
                await go.wait()
                await ws.close(code=1008, message=f"bad key {key}".encode())
                closed.set()
                break
        return ws

    return peer


async def test_a_close_reason_quoting_the_key_is_not_behind_the_error() -> None:
    """The TransportError's own text is scrubbed, but it chains websockets' ConnectionClosed
    (``from exc``), whose text is the close reason as sent: a traceback of the error (what
    ``log.exception`` or an error reporter prints) shows the API key."""
    closed = asyncio.Event()
    runner, host = await serve(closing_peer("auth", closed))
    stream = stream_to(f"ws://{host}/v5/private")
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TransportError, match="closed during auth") as info:
                await stream.open()
        assert KEY18 not in str(info.value)  # (what the change set tested)
        printed = "".join(traceback.format_exception(info.value))
        assert KEY18 not in printed, printed
        chain: list[BaseException | None] = [info.value.__cause__, info.value.__context__]
        assert all(KEY18 not in str(e) for e in chain if e is not None)
    finally:
        await stream.close()
        await runner.cleanup()


async def test_a_close_reason_quoting_the_key_after_subscribe_is_not_logged() -> None:
    """A close after the handshake is logged by the supervisor (``private stream closed: %s``)
    with the close reason as the peer sent it: the key reached the log, where a close during the
    handshake shows it scrubbed."""
    lines: list[str] = []
    logged = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if "private stream closed" in record.getMessage():
                logged.set()

    handler = Catch(logging.DEBUG)
    logger = logging.getLogger("bybit_cancel")
    logger.addHandler(handler)
    closed, go = asyncio.Event(), asyncio.Event()
    runner, host = await serve(closing_peer("after-subscribe", closed, go))
    stream = stream_to(f"ws://{host}/v5/private")
    try:
        async with asyncio.timeout(5):
            await stream.open()
            go.set()  # (closed before open() had the subscribe reply, it would fail the open)
            await logged.wait()
        text = "\n".join(lines)
        assert "bad key AbCd***" in text, text
        assert KEY18 not in text, text
    finally:
        logger.removeHandler(handler)
        await stream.close()
        await runner.cleanup()
    assert client_tasks() == []


def test_an_unbounded_realtime_window_forgets_no_closed_order() -> None:
    """realtime_closed_limit=None means /v5/order/realtime finds every closed order by id; the
    default history_limit (or any) forgot them past its bound all the same, so the fake
    contradicted its own knob (and the constructor accepted history_limit=0 beside it)."""
    from bybit_cancel.testing import FakeExchange

    for history_limit in (3, 0):
        fx = FakeExchange("k" * 18, "s", realtime_closed_limit=None, history_limit=history_limit)
        ids = []
        for _ in range(5):
            o = fx.seed_order()
            ids.append(o.order_id)
            fx.fill(o.order_id, push=False)
        assert all(fx.order(i).status == "Filled" for i in ids)
        assert list(fx._rt_closed["linear"]) == ids
