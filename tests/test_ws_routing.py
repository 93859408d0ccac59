"""The private stream's connection routes each push as websockets parses it (_RoutingConnection):
in the order the messages came, recv() keeping whatever was queued before, and a router's own bug
ending the connection instead of being lost in ``data_received``.

The unit tests feed bytes straight into the connection (a handshake answer, then frames), so the
order of events is exact; the last test runs the client against the fake exchange."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import accept_key

from bybit_cancel._models import WireOrder
from bybit_cancel._stream import _RoutingConnection
from bybit_cancel.testing import FakeExchange

from .conftest import make_client
from .helpers import make_stream, wait_until


class _Transport(asyncio.Transport):
    """Just enough of a socket transport: records writes, and an abort closes the connection
    as asyncio's would (connection_lost on the next turn of the loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.conn: _RoutingConnection | None = None
        self.written = bytearray()
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written += data

    def abort(self) -> None:
        if not self.aborted and self.conn is not None:
            self.aborted = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)

    def close(self) -> None:
        self.abort()

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _open() -> tuple[_RoutingConnection, _Transport]:
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/v5/private"))
    conn = _RoutingConnection(protocol, ping_interval=None, close_timeout=1.0, max_queue=None)
    transport = _Transport()
    transport.conn = conn
    conn.connection_made(transport)
    request = protocol.connect()
    protocol.send_request(request)
    key = request.headers["Sec-WebSocket-Key"]
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    assert protocol.state is State.OPEN
    return conn, transport


Raw = bytes | bytearray | memoryview


def _into(routed: list[bytes]) -> Callable[[Raw], None]:
    """A router that records what it was given (as bytes: it gets websockets' bytearray)."""
    return lambda raw: routed.append(bytes(raw))


def _frame(text: str, opcode: Opcode = Opcode.TEXT, *, fin: bool = True) -> bytes:
    return Frame(opcode, text.encode(), fin=fin).serialize(mask=False)


async def test_messages_are_routed_in_the_order_they_came() -> None:
    async with asyncio.timeout(5):
        conn, _ = _open()
        routed: list[bytes] = []
        # Before the router is set (auth and subscribe are read with recv()): queued.
        conn.data_received(_frame("a") + _frame("b"))
        conn.route = _into(routed)
        # Set now, but two messages wait for recv(): this one goes behind them, not ahead.
        conn.data_received(_frame("c"))
        assert routed == [] and conn.backlog == 3
        assert [await conn.take() for _ in range(3)] == [b"a", b"b", b"c"]
        assert conn.backlog == 0
        # Nothing queued: routed as parsed, nothing for recv().
        conn.data_received(_frame("d") + _frame("e", Opcode.BINARY))
        assert routed == [b"d", b"e"] and conn.backlog == 0
        # A fragmented message is assembled by websockets, and what follows it waits its turn.
        conn.data_received(_frame('{"x":', fin=False) + _frame("1}", Opcode.CONT))
        conn.data_received(_frame("f"))
        assert routed == [b"d", b"e"] and conn.backlog == 2
        assert [await conn.take(), await conn.take()] == [b'{"x":1}', b"f"]
        conn.data_received(_frame("g"))
        assert routed == [b"d", b"e", b"g"]


async def test_control_frames_are_left_to_websockets() -> None:
    conn, transport = _open()  # (nothing here awaits: no timeout needed)
    routed: list[bytes] = []
    conn.route = _into(routed)
    conn.data_received(_frame("hi", Opcode.PING))
    assert routed == [] and conn.backlog == 0
    # websockets answered the ping: a pong (0x8A) with the ping's data, masked as a client's
    # frames are.
    pong = transport.written[-8:]
    assert pong[:2] == b"\x8a\x82"
    assert bytes(b ^ pong[2 + i % 4] for i, b in enumerate(pong[6:])) == b"hi"


async def test_a_router_error_ends_the_connection_and_is_kept() -> None:
    """The router catches what a frame can cause; anything else is a bug, which must reach the
    stream task (which fails the client loudly) rather than asyncio's "data_received() failed"
    log, and nothing after it is routed."""
    async with asyncio.timeout(5):
        conn, transport = _open()
        seen: list[bytes] = []

        def boom(raw: Raw) -> None:
            seen.append(bytes(raw))
            raise RuntimeError("bug")

        conn.route = boom
        conn.data_received(_frame("a") + _frame("b"))
        # "b", in the same chunk, is dropped: not queued for the reader task to route again.
        assert seen == [b"a"] and transport.aborted and conn.backlog == 0
        assert isinstance(conn.error, RuntimeError)
        conn.data_received(_frame("c"))
        assert seen == [b"a"] and conn.backlog == 0
        await conn.wait_closed()


def _push(order_id: str) -> bytes:
    return _frame(
        '{"topic":"order","data":[{"category":"linear","symbol":"BTCUSDT",'
        f'"orderId":"{order_id}","orderStatus":"Cancelled"}}]}}'
    )


async def test_the_stream_task_raises_the_first_router_error() -> None:
    """Through PrivateStream._serve: the first bug is the one raised (the supervisor reports it
    and fails the client), the pushes after it in the same chunk reach nobody, and the error is
    not left on the connection (its traceback would hold the connection in a cycle)."""
    seen: list[str] = []

    def on_orders(orders: list[WireOrder]) -> None:
        seen.append(orders[0].order_id)
        raise RuntimeError(f"bug on {orders[0].order_id}")

    stream = make_stream(on_orders)
    stream._last_pong = asyncio.get_running_loop().time()  # (the heartbeat stays quiet)
    conn, _ = _open()
    async with asyncio.timeout(5):
        serve = asyncio.ensure_future(stream._serve(conn))
        await wait_until(lambda: conn.route is not None)
        conn.data_received(_push("a") + _push("b") + _push("c"))
        with pytest.raises(RuntimeError, match="bug on a"):
            await serve
    assert seen == ["a"] and conn.error is None and conn.route is None


async def test_pushes_do_not_wake_the_reader_task(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the client on the fake exchange, confirmed cancels were routed as parsed: recv() saw
    the auth and subscribe replies and no push."""
    takes: list[bytes] = []
    real_take = _RoutingConnection.take

    async def counting_take(self: _RoutingConnection) -> bytes:
        raw = await real_take(self)
        takes.append(raw)
        return raw

    monkeypatch.setattr(_RoutingConnection, "take", counting_take)
    orders = [fx.seed_order() for _ in range(5)]
    async with make_client(fx) as client:
        for o in orders:
            r = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=o.order_id)
            assert r.order_id == o.order_id and r.source == "websocket"
    assert len(takes) == 2 and all(b'"op":"auth"' in t or b'"subscribe"' in t for t in takes)
