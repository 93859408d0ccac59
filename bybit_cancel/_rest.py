"""aiohttp adapter: signed REST calls, error mapping and the REST retry policy.

Every retry decision for REST lives in :meth:`RestClient._call` (README "Failure handling"):

* connection errors, HTTP timeouts and HTTP 5xx: re-send with exponential backoff and full jitter,
  at most ``max_retries`` times (a re-sent cancel of an order that is already gone answers 110001,
  which the client resolves with a lookup);
* 10006 / HTTP 429: wait until ``X-Bapi-Limit-Reset-Timestamp`` (or a short pause), then retry;
* 10002 (timestamp outside recv_window): measure the clock offset from ``/v5/market/time``, apply it
  to every later timestamp, retry once;
* HTTP 403 (IP ban, §7), other HTTP errors, auth errors and other retCodes: raised at once.

The caller bounds the whole loop with its own deadline (``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from ._exceptions import (
    HTTPStatusError,
    RateLimitError,
    TransportError,
    error_from_ret_code,
)
from ._models import (
    CancelAck,
    WireOrder,
    ack_decoder,
    encoder,
    envelope_decoder,
    order_list_decoder,
    server_time_decoder,
)
from ._signing import Credentials, rest_headers

__all__ = ["Clock", "RateLimiter", "RestClient", "RestStats"]

log = logging.getLogger("bybit_cancel")

_TIMESTAMP_ERROR = 10002
_RATE_LIMITED = frozenset({10006, 10018})


class Clock:
    """Local wall clock corrected by the offset measured against Bybit's ``/v5/market/time``."""

    __slots__ = ("offset_ms",)

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def to_local_seconds(self, server_ms: int) -> float:
        """Seconds from now until ``server_ms`` (server time), at least 0."""
        return max(0.0, (server_ms - self.now_ms()) / 1000)


@dataclass
class RestStats:
    """Counters for observability and benchmarks."""

    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    clock_resyncs: int = 0


class RateLimiter:
    """Per-(endpoint, category) limiter fed by Bybit's ``X-Bapi-Limit-*`` headers (§7).

    Bybit counts requests in a rolling one-second window and reports how many are left
    (``X-Bapi-Limit-Status``). When none is left, the reset header only says "about now" (§7), so
    the limiter keeps its own log of when answers arrived: the window frees a slot one second
    after Bybit received the request answered ``X-Bapi-Limit`` answers ago, and Bybit received it
    before we got its answer, so waiting until that answer's time + 1 s is never early. Later requests to that endpoint and category wait
    until then instead of being refused with 10006. After a 10006, Bybit's reset timestamp rules.
    """

    __slots__ = ("_blocked_until", "_clock", "_sent")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._blocked_until: dict[tuple[str, str], float] = {}
        self._sent: dict[tuple[str, str], deque[float]] = {}

    def delay(self, key: tuple[str, str]) -> float:
        """Seconds to wait before the next request for ``key`` (0 when free)."""
        until = self._blocked_until.get(key)
        if until is None:
            return 0.0
        wait = until - time.monotonic()
        if wait <= 0:
            del self._blocked_until[key]
            return 0.0
        return wait

    def block_until_server_ms(self, key: tuple[str, str], server_ms: int) -> None:
        self._block(key, time.monotonic() + self._clock.to_local_seconds(server_ms))

    def _block(self, key: tuple[str, str], until: float) -> None:
        if until > self._blocked_until.get(key, 0.0):
            self._blocked_until[key] = until

    def feed(self, key: tuple[str, str], headers: Any) -> None:
        """Learn from one answer's headers (call it for every answer, as it arrives)."""
        now = time.monotonic()
        sent = self._sent.get(key)
        if sent is None:
            sent = self._sent[key] = deque(maxlen=256)
        sent.append(now)
        if headers.get("X-Bapi-Limit-Status") != "0":
            return
        limit = headers.get("X-Bapi-Limit", "")
        if limit.isdigit() and sent is not None and 0 < int(limit) <= len(sent):
            until = sent[-int(limit)] + 1.0
        else:
            until = now + 1.0
        self._block(key, until)


class RestClient:
    """Signed Bybit v5 REST calls over one ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        creds: Credentials,
        *,
        recv_window: int,
        clock: Clock,
        http_timeout: float,
        max_retries: int,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._base = base_url
        self._creds = creds
        self._recv_window = recv_window
        self.clock = clock
        self.limiter = RateLimiter(clock)
        # Per-socket bounds, not `total`: aiohttp's total (and `connect`) include the wait for a
        # free pooled connection, so a burst of cancels would time out while merely queued.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=http_timeout, sock_read=http_timeout
        )
        self._max_retries = max_retries
        self._rng = rng
        self.stats = RestStats()
        self._resync_lock = asyncio.Lock()
        self._last_resync = -1e9
        # Sign only once a pooled connection is (about to be) free: aiohttp would otherwise queue
        # an already-signed request while a burst drains, and a request signed more than
        # recv_window before Bybit reads it is refused with 10002 (§1 Timestamp window).
        connector = session.connector
        limits = [] if connector is None else [connector.limit, connector.limit_per_host]
        slots = min((n for n in limits if n), default=0)
        self._gate = asyncio.Semaphore(slots) if slots else None

    # -- endpoints -----------------------------------------------------------------------------

    async def cancel(self, body: dict[str, str]) -> CancelAck:
        """``POST /v5/order/cancel``. Returns the acknowledgement; raises a typed error otherwise."""
        raw = await self._call("POST", "/v5/order/cancel", body, body["category"])
        return ack_decoder.decode(raw)

    async def create(self, body: dict[str, Any]) -> CancelAck:
        """``POST /v5/order/create`` (used by the demo). Same acknowledgement shape as a cancel."""
        raw = await self._call("POST", "/v5/order/create", body, str(body["category"]))
        return ack_decoder.decode(raw)

    async def find_order(
        self,
        *,
        category: str,
        symbol: str,
        order_id: str,
        order_link_id: str,
        order_filter: str | None,
    ) -> WireOrder | None:
        """Look an order up: ``/v5/order/realtime`` by id first, then ``/v5/order/history``.

        realtime answers for open orders and recent closed ones, but forgets closed ones when Bybit
        restarts; history keeps closed orders (cancelled ones for about 24 h) but may lag (§8).
        Returns ``None`` when neither knows the order.
        """
        params = {"category": category, "symbol": symbol}
        if order_id:
            params["orderId"] = order_id
        else:
            params["orderLinkId"] = order_link_id
        if order_filter is not None:
            params["orderFilter"] = order_filter
        for path in ("/v5/order/realtime", "/v5/order/history"):
            raw = await self._call("GET", path, params, category)
            result = order_list_decoder.decode(raw)
            for order in result.orders:
                if (order_id and order.order_id == order_id) or (
                    not order_id and order.order_link_id == order_link_id
                ):
                    if not order.category:
                        order.category = result.category or category
                    return order
        return None

    async def server_time_ms(self) -> int:
        """Bybit's clock, from the public ``/v5/market/time`` (no signature)."""
        try:
            async with self._session.get(
                self._base + "/v5/market/time", timeout=self._timeout
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"GET /v5/market/time failed: {exc!r}") from exc
        if status != 200:
            raise HTTPStatusError(status, _snippet(body))
        env = envelope_decoder.decode(body)
        if env.ret_code != 0:
            raise error_from_ret_code(env.ret_code, env.ret_msg)
        nano = server_time_decoder.decode(env.result).time_nano
        return int(nano) // 1_000_000 if nano else env.time

    async def resync_clock(self) -> None:
        """Measure the offset between the local clock and Bybit's, and apply it from now on.

        Concurrent callers (a burst that all got 10002) share one measurement.
        """
        async with self._resync_lock:
            if time.monotonic() - self._last_resync < 1.0:
                return
            await self._measure_clock()
            self._last_resync = time.monotonic()

    async def _measure_clock(self) -> None:
        t0 = time.time()
        server_ms = await self.server_time_ms()
        t1 = time.time()
        local_mid_ms = int((t0 + t1) * 500)
        self.clock.offset_ms = server_ms - local_mid_ms
        self.stats.clock_resyncs += 1
        log.info("clock offset to Bybit measured: %d ms", self.clock.offset_ms)

    # -- the one retry policy ------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, params: dict[str, Any], category: str
    ) -> msgspec.Raw:
        key = (path, category)
        failures = 0
        resynced = False
        while True:
            wait = self.limiter.delay(key)
            if wait > 0:
                self.stats.rate_limit_waits += 1
                await asyncio.sleep(wait)
            try:
                status, headers, body = await self._once(method, path, params)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                if failures > self._max_retries:
                    raise TransportError(f"{method} {path} failed: {exc!r}") from exc
                await self._backoff(failures, f"{method} {path}: {exc!r}")
                continue
            self.limiter.feed(key, headers)
            if status != 200:
                if status >= 500:
                    failures += 1
                    if failures > self._max_retries:
                        raise HTTPStatusError(status, _snippet(body))
                    await self._backoff(failures, f"{method} {path}: HTTP {status}")
                    continue
                if status == 429:
                    # "System level frequency protection. Please retry" (§1 HTTP status codes).
                    failures += 1
                    if failures > self._max_retries:
                        raise RateLimitError(429, "HTTP 429: " + _snippet(body))
                    self.stats.rate_limit_waits += 1
                    reset = headers.get("X-Bapi-Limit-Reset-Timestamp")
                    if reset and reset.isdigit() and self.clock.to_local_seconds(int(reset)) > 0:
                        self.limiter.block_until_server_ms(key, int(reset))
                    else:
                        await self._backoff(failures, f"{method} {path}: HTTP 429")
                    continue
                if status == 403:
                    # An IP ban lasts at least 10 minutes (§7): retrying only extends it.
                    raise HTTPStatusError(
                        403,
                        "forbidden: IP rate limit breached or region blocked (§7); "
                        "stop and wait at least 10 minutes: " + _snippet(body),
                    )
                raise HTTPStatusError(status, _snippet(body))
            try:
                env = envelope_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise HTTPStatusError(status, "undecodable body: " + _snippet(body)) from exc
            code = env.ret_code
            if code == 0:
                return env.result
            if code in _RATE_LIMITED:
                failures += 1
                if failures > self._max_retries:
                    raise error_from_ret_code(code, env.ret_msg)
                reset = headers.get("X-Bapi-Limit-Reset-Timestamp")
                until = int(reset) if reset and reset.isdigit() else self.clock.now_ms() + 200
                self.limiter.block_until_server_ms(key, until)
                log.debug("%s %s rate limited (10006), waiting for the window", method, path)
                continue
            if code == _TIMESTAMP_ERROR and not resynced:
                resynced = True
                log.warning("%s %s: %s; resyncing the clock", method, path, env.ret_msg)
                await self.resync_clock()
                continue
            raise error_from_ret_code(code, env.ret_msg)

    async def _backoff(self, failures: int, why: str) -> None:
        self.stats.retries += 1
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
        delay = self._rng.uniform(0, min(2.0, 0.05 * 2 ** (failures - 1)))
        log.debug("retrying %s in %.3fs (failure %d)", why, delay, failures)
        await asyncio.sleep(delay)

    async def _once(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any, bytes]:
        gate = self._gate
        if gate is None:
            return await self._send(method, path, params)
        async with gate:
            return await self._send(method, path, params)

    async def _send(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any, bytes]:
        self.stats.requests += 1
        if method == "GET":
            # Bybit signs the query string exactly as sent (§1). Values here are symbols, ids and
            # enum words ([A-Za-z0-9_-]), so no percent-encoding is involved; yarl is told the URL
            # is already encoded so it sends these bytes unchanged.
            query = "&".join(f"{k}={v}" for k, v in params.items())
            payload = query.encode()
            headers = rest_headers(self._creds, self.clock.now_ms(), self._recv_window, payload)
            url = URL(f"{self._base}{path}?{query}", encoded=True)
            ctx = self._session.get(url, headers=headers, timeout=self._timeout)
        else:
            payload = encoder.encode(params)
            headers = rest_headers(self._creds, self.clock.now_ms(), self._recv_window, payload)
            headers["Content-Type"] = "application/json"
            ctx = self._session.post(
                self._base + path, data=payload, headers=headers, timeout=self._timeout
            )
        async with ctx as resp:
            return resp.status, resp.headers, await resp.read()


def _snippet(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace")
