"""The clients the benchmarks compare, behind one small interface.

Every client does the same thing for one cancel: register interest in the order id, ``POST
/v5/order/cancel`` (signed), note the acknowledgement, then wait for the private ``order`` push
carrying a final ``orderStatus`` for that id. ``cancel()`` returns ``(ack_at, confirmed_at)``
as ``time.perf_counter()`` values.

* ``Floor``: the physical limit of the stack, written by hand: a bare aiohttp session, a bare
  ``websockets`` connection and a dict of futures. No validation, no models, no retries.
* ``Ours``: ``BybitCancelClient.cancel_order`` with ``on_ack=``.
* ``Pybit``: the official SDK, as a user of asyncio would drive it: ``HTTP.cancel_order`` in a
  thread (``asyncio.to_thread``), ``WebSocket.order_stream`` callback handed to the loop with
  ``call_soon_threadsafe``.
* ``Ccxt``: ``ccxt.pro.bybit``: ``cancel_order`` and a task looping on ``watch_orders``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import msgspec
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._fake import KEY, SECRET
from bybit_cancel import BybitCancelClient

FINAL = frozenset({"Cancelled", "PartiallyFilledCanceled", "Filled", "Rejected", "Deactivated"})
CATEGORY, SYMBOL = "linear", "BTCUSDT"


class Floor:
    name = "floor"

    def __init__(self, rest_url: str, ws_url: str, recv_window: int = 5000) -> None:
        self.rest_url, self.ws_url = rest_url, ws_url
        # The floor signs at once; with 10,000 requests queued behind aiohttp's 100 pooled
        # connections a request can wait longer than 5 s before it is sent (bybit_cancel signs
        # only once a connection is free), so the concurrent benchmarks give it a longer window.
        self._recv_window = str(recv_window)
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.acked = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._key = KEY
        self._secret = SECRET.encode()
        self._url = rest_url + "/v5/order/cancel"

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()
        ws = await connect(self.ws_url, ping_interval=None, compression=None, max_queue=None)
        expires = int(time.time() * 1000) + 10_000
        sig = hmac.new(self._secret, f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
        await ws.send(f'{{"op":"auth","args":["{self._key}",{expires},"{sig}"]}}')
        await ws.recv()
        await ws.send('{"op":"subscribe","args":["order"]}')
        await ws.recv()
        self._ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        decode = msgspec.json.decode
        pending = self.pending
        while True:
            msg = decode(await ws.recv(decode=False))
            for order in msg.get("data") or ():
                if order["orderStatus"] in FINAL:
                    fut = pending.pop(order["orderId"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(order)

    async def cancel(self, order_id: str) -> tuple[float, float]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[order_id] = fut
        await self._post(order_id)  # nothing of the request stays alive while parked
        ack = time.perf_counter()
        self.acked += 1
        await fut
        return ack, time.perf_counter()

    async def confirm(self, order_id: str) -> Any:
        """The floor's cancel without the latency benchmark's clock readings (a parked `cancel`
        holds its ack time, a float and a frame slot: 32 B per call that the physical limit of
        the stack does not need)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[order_id] = fut
        await self._post(order_id)
        self.acked += 1
        return await fut

    def cancel_direct(self, order_id: str) -> Any:
        """The floor's call itself, as measured for memory and throughput (no wrapper)."""
        return self.confirm(order_id)

    def parked(self) -> int:
        return self.acked

    async def _post(self, order_id: str) -> None:
        assert self._session is not None
        body = f'{{"category":"{CATEGORY}","symbol":"{SYMBOL}","orderId":"{order_id}"}}'
        ts = str(int(time.time() * 1000))
        sig = hmac.new(
            self._secret, f"{ts}{self._key}{self._recv_window}{body}".encode(), hashlib.sha256
        ).hexdigest()
        headers = {
            "X-BAPI-API-KEY": self._key,
            "X-BAPI-SIGN": sig,
            "X-BAPI-TIMESTAMP": ts,
            "X-BAPI-RECV-WINDOW": self._recv_window,
            "Content-Type": "application/json",
        }
        async with self._session.post(self._url, data=body, headers=headers) as resp:
            raw = await resp.read()
        if b'"retCode":0,' not in raw:
            self.pending.pop(order_id, None)
            raise RuntimeError(f"floor: cancel refused: {raw[:200]!r}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()


class Ours:
    name = "bybit_cancel"

    def __init__(self, rest_url: str, ws_url: str, **options: Any) -> None:
        self.client = BybitCancelClient(
            api_key=KEY, api_secret=SECRET, rest_url=rest_url, ws_url=ws_url, **options
        )
        self.acked = 0

    async def open(self) -> None:
        await self.client.open()

    async def cancel(self, order_id: str, timeout: float = 30.0) -> tuple[float, float]:
        ack = 0.0

        def on_ack(_order_id: str, _order_link_id: str) -> None:
            nonlocal ack
            ack = time.perf_counter()
            self.acked += 1

        result = await self.client.cancel_order(
            category=CATEGORY, symbol=SYMBOL, order_id=order_id, timeout=timeout, on_ack=on_ack
        )
        done = time.perf_counter()
        if result.order_id != order_id or not result.status.is_final:
            raise RuntimeError(f"bybit_cancel: unexpected result {result}")
        return (ack or done), done

    def cancel_direct(self, order_id: str, timeout: float = 30.0) -> Any:
        """The library call itself, with no wrapper frame or closure (for memory figures)."""
        return self.client.cancel_order(
            category=CATEGORY, symbol=SYMBOL, order_id=order_id, timeout=timeout
        )

    def parked(self) -> int:
        """Cancels acknowledged and waiting for their push."""
        return sum(1 for e in self.client._tracker.pending() if e.acknowledged)

    async def close(self) -> None:
        await self.client.aclose()


def record_pybit_subscribes_first(ws: Any) -> None:
    """Work around a race in pybit: it sends a subscribe and only then records the req_id that its
    reply handler looks up (``subscriptions[req_id]``). A reply as fast as a local fake's can come
    first; the KeyError makes pybit drop and reopen the connection (over a network, Bybit's reply
    comes later). Record the req_id before the send, on ``ws``'s current connection."""
    send = ws.ws.send

    def send_recorded(data: str, *args: Any, **kwargs: Any) -> Any:
        message = json.loads(data)
        if message.get("op") == "subscribe" and "req_id" in message:
            ws.subscriptions[message["req_id"]] = data
        return send(data, *args, **kwargs)

    ws.ws.send = send_recorded


class Pybit:
    name = "pybit"

    def __init__(self, rest_url: str, ws_url: str) -> None:
        self.rest_url, self.ws_url = rest_url, ws_url
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self._http: Any = None
        self._ws: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        import pybit.unified_trading as ut

        self._loop = asyncio.get_running_loop()
        self._http = ut.HTTP(api_key=KEY, api_secret=SECRET)
        self._http.endpoint = self.rest_url
        ut.PRIVATE_WSS = self.ws_url  # read when WebSocket(channel_type="private") is built

        def connect_ws() -> Any:
            ws = ut.WebSocket(
                channel_type="private",
                testnet=False,
                api_key=KEY,
                api_secret=SECRET,
                private_auth_expire=10,
            )
            record_pybit_subscribes_first(ws)
            ws.order_stream(callback=self._on_message_thread)
            return ws

        self._ws = await asyncio.to_thread(connect_ws)

    def _on_message_thread(self, message: dict[str, Any]) -> None:
        # pybit calls back on its websocket thread: hand the message to the loop.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_message, message)

    def _on_message(self, message: dict[str, Any]) -> None:
        for order in message.get("data") or ():
            if order["orderStatus"] in FINAL:
                fut = self.pending.pop(order["orderId"], None)
                if fut is not None and not fut.done():
                    fut.set_result(order)

    async def cancel(self, order_id: str) -> tuple[float, float]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.pending[order_id] = fut
        await asyncio.to_thread(
            self._http.cancel_order, category=CATEGORY, symbol=SYMBOL, orderId=order_id
        )
        ack = time.perf_counter()
        await fut
        return ack, time.perf_counter()

    async def close(self) -> None:
        if self._ws is not None:
            await asyncio.to_thread(self._ws.exit)
        if self._http is not None:
            self._http.client.close()


class Ccxt:
    name = "ccxt"

    def __init__(self, rest_url: str, ws_url: str) -> None:
        self.rest_url, self.ws_url = rest_url, ws_url
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self._ex: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import ccxt.pro

        ex = ccxt.pro.bybit(
            {
                "apiKey": KEY,
                "secret": SECRET,
                "enableRateLimit": False,
                "options": {
                    # Load only the linear markets, and skip the account-type probe
                    # (/v5/user/query-api, /v5/account/info): a unified account is assumed.
                    "fetchMarkets": {"types": ["linear"]},
                    "enableUnifiedMargin": False,
                    "enableUnifiedAccount": True,
                },
            }
        )
        ex.has["fetchCurrencies"] = False  # /v5/asset/coin/query-info: not served by the fake
        api = ex.urls["api"]
        for key in ("spot", "futures", "v2", "public", "private"):
            api[key] = self.rest_url
        api["ws"]["private"]["contract"] = self.ws_url
        api["ws"]["private"]["spot"]["unified"] = self.ws_url
        self._ex = ex
        await ex.load_markets()
        self.symbol = ex.markets_by_id[SYMBOL][0]["symbol"]  # "BTC/USDT:USDT"
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        ex = self._ex
        while True:
            for order in await ex.watch_orders():
                if order["info"].get("orderStatus") in FINAL:
                    fut = self.pending.pop(order["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(order)

    async def cancel(self, order_id: str) -> tuple[float, float]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[order_id] = fut
        await self._ex.cancel_order(order_id, self.symbol)
        ack = time.perf_counter()
        await fut
        return ack, time.perf_counter()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._ex is not None:
            await self._ex.close()
