"""Shared test helpers: fixture loading and wire-order builders."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bybit_cancel import BybitCancelClient, CancelResult
from bybit_cancel._models import WireOrder
from bybit_cancel._rest import Clock, RestClient
from bybit_cancel._signing import Credentials
from bybit_cancel._stream import PrivateStream

# A copy of the project's shared/fixtures/bybit (real Bybit messages; provenance in its README),
# kept in the repo so the suite runs on a fresh clone.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bybit"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> Any:
    return json.loads(fixture_bytes(name))


async def cancel_until_acked(
    client: BybitCancelClient, order_id: str, **options: Any
) -> asyncio.Task[CancelResult]:
    """Start a linear BTCUSDT cancel in a task of its own and return once Bybit acknowledged
    it (bounded): the call is then waiting for its push."""
    acked = asyncio.Event()
    task = asyncio.create_task(
        client.cancel_order(
            category="linear",
            symbol="BTCUSDT",
            order_id=order_id,
            on_ack=lambda *_: acked.set(),
            **options,
        )
    )
    await asyncio.wait_for(acked.wait(), 5)
    return task


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, bounded, for a condition on the fake's books that offers no event of its own."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - the fake's books expose no event per condition
            await asyncio.sleep(0.002)


def make_rest(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    key: str = "k",
    secret: str = "s",
    max_retries: int | None = 0,
) -> RestClient:
    """The REST adapter alone, with test settings (1 s HTTP timeout, seeded jitter)."""
    return RestClient(
        session,
        base_url,
        Credentials(key, secret),
        recv_window=5000,
        clock=Clock(),
        http_timeout=1.0,
        max_retries=max_retries,
        rng=random.Random(1),
    )


def make_stream(
    on_orders: Callable[[list[WireOrder]], None] = lambda orders: None,
    *,
    url: str = "ws://127.0.0.1:1/v5/private",
    key: str = "k",
    handshake_timeout: float = 1.0,
    reconnect_backoff: tuple[float, float] = (0.1, 1.0),
) -> PrivateStream:
    """The stream adapter alone: never connected with the default url (for feeding frames to
    its router), or pointed at a test server (wall-clock timestamps for its auth)."""
    return PrivateStream(
        url,
        Credentials(key, "s"),
        now_ms=lambda: time.time_ns() // 1_000_000,
        on_orders=on_orders,
        on_reconnected=lambda settled: None,
        on_failed=lambda e: None,
        resync_clock=None,
        ping_interval=20,
        handshake_timeout=handshake_timeout,
        auth_expiry_ms=10_000,
        reconnect_backoff=reconnect_backoff,
        rng=random.Random(1),
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    """An aiohttp server on 127.0.0.1 answering every path with ``handler``; (runner, host:port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def in_shutdown_handler(
    work: Callable[[], Awaitable[object]],
) -> tuple[asyncio.Task[None], list[object]]:
    """Start a task, cancel it, and have its ``except CancelledError:`` block run ``work()``, as
    a bot's shutdown handler does (its Task.cancelling() is 1 there). Returns the task, which
    ends cancelled once ``work()`` is over, and a list that then holds what ``work()`` returned
    or raised."""
    got: list[object] = []
    waiting = asyncio.Event()

    async def handler() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            try:
                got.append(await work())
            except BaseException as exc:  # (what the work raised is its result here)
                got.append(exc)
            raise

    task = asyncio.create_task(handler())
    await asyncio.wait_for(waiting.wait(), 5)
    task.cancel()
    return task, got
