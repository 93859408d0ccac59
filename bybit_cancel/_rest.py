"""aiohttp adapter: signed REST calls, error mapping and the REST retry policy.

Every retry decision for REST lives in :meth:`RestClient._call` (README "Failure handling"):

* connection errors, HTTP timeouts and HTTP 5xx: re-send with exponential backoff and full jitter,
  until the caller's deadline (or ``max_retries`` times, if set); a re-sent cancel of an order that
  is already gone answers 110001, which the client resolves with a lookup;
* 10006 / HTTP 429: wait until ``X-Bapi-Limit-Reset-Timestamp`` (or a short pause), then retry,
  until the caller's deadline; the limiter paces requests so that Bybit rarely has to refuse;
* 10002 (timestamp outside recv_window): measure the clock offset from ``/v5/market/time``, apply it
  to every later timestamp, retry once;
* HTTP 403 (IP ban, §7), other HTTP errors, auth errors and other retCodes: raised at once.

The caller bounds the whole loop with its own deadline (the client's shared timers interrupt it);
once the client closes (``RestClient.closed``), a request that fails is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import msgspec
from yarl import URL

from ._exceptions import (
    BybitAPIError,
    BybitError,
    ClientClosedError,
    HTTPStatusError,
    TransportError,
    error_from_ret_code,
)
from ._models import (
    AckEnvelope,
    OrderList,
    WireOrder,
    ack_envelope_decoder,
    encoder,
    envelope_decoder,
    orders_envelope_decoder,
    server_time_decoder,
)
from ._signing import Credentials, RestSigner, scrub_key, scrubbed_snippet

__all__ = ["Clock", "RateLimiter", "RestClient", "RestStats"]

E = TypeVar("E", bound="_HasRetCode")


class _HasRetCode(Protocol):
    ret_code: int
    ret_msg: str


log = logging.getLogger("bybit_cancel")

_TIMESTAMP_ERROR = 10002
_RATE_LIMITED = frozenset({10006, 10018})
# Sent again with backoff, like a 5xx (§6 "retCodes seen on cancel"): 10000 server timeout,
# 10016 server error or restarting, 110079 "The order is processing ... try again later", 30035
# option "Too fast to cancel", 170147 "Order cancellation timeout", 170150 "Cancel order failed".
_RETRY_RET_CODES = frozenset({10000, 10016, 110079, 30035, 170147, 170150})
# Of those, the ones after which the request may have been applied ("verify", §6).
_AMBIGUOUS_RET_CODES = frozenset({10000, 10016, 170147, 170150})


class Clock:
    """Local wall clock corrected by the offset measured against Bybit's ``/v5/market/time``."""

    __slots__ = ("offset_ms",)

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


@dataclass(slots=True)
class RestStats:
    """Counters for observability and benchmarks."""

    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    clock_resyncs: int = 0


# Bybit's per-endpoint limits are tens of requests per second (§7). Above this, the client does
# not keep a log of its sends (it would only cost memory); Status 0 and 10006 still hold it back.
_PACED_LIMIT = 1000

# A throttled request (10006 or HTTP 429) waits for Bybit's reset timestamp when it is plausible:
# at most 2 s ahead (§7: the windows are one second; the reset is in ms of Bybit's clock, not
# verified for 429). Otherwise, or when it has passed, the wait doubles with each throttle in a
# row, from 0.1 s up to 1 s (a window's length) after a 10006, and from 0.5 s up to 2 s after a
# 429 ("System level frequency protection", §1: no reset to go by).
_THROTTLE_MAX = 2.0
_THROTTLE_FIRST, _THROTTLE_CAP = 0.1, 1.0
_THROTTLE_FIRST_429, _THROTTLE_CAP_429 = 0.5, 2.0
# Throttles further apart than this start the doubling again.
_THROTTLE_MEMORY = 5.0


def header_int(value: str | None) -> int | None:
    """A non-negative integer header (ASCII digits, at most 15 of them), or ``None``: never raises
    (``"²".isdigit()`` is true, and ``int()`` refuses it)."""
    if value and len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    return None


class RateLimiter:
    """Per-(endpoint, category) pacing fed by Bybit's ``X-Bapi-Limit-*`` headers (§7).

    Bybit allows ``X-Bapi-Limit`` requests per rolling second per endpoint and category. Once an
    answer has told us that limit, the limiter keeps a log of our own sends and holds a request
    back until the window has room, so a burst is paced instead of refused with 10006. When Bybit
    says none is left (``X-Bapi-Limit-Status: 0``, e.g. other programs share the key) it waits for
    our oldest send to leave the window; after a 10006 it waits for Bybit's reset timestamp.
    """

    # A little more than Bybit's one second: Bybit counts a request when it arrives, after we sent it.
    WINDOW = 1.05

    __slots__ = ("_clock", "_keys")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._keys: dict[tuple[str, str], _KeyState] = {}

    def reserve(self, key: tuple[str, str]) -> float:
        """Take a slot for one request now and return 0, or return how long to wait first."""
        state = self._keys.get(key)
        if state is None:
            return 0.0  # nothing learnt yet: send
        now = time.monotonic()
        wait = state.blocked_until - now
        if wait > 0:
            return wait
        limit = state.limit
        if limit > _PACED_LIMIT:
            return 0.0  # no log of sends kept (see _PACED_LIMIT)
        sent = state.sent
        horizon = now - self.WINDOW
        while sent and sent[0] <= horizon:
            sent.popleft()
        if len(sent) >= limit:
            return sent[0] - horizon
        sent.append(now)
        return 0.0

    def throttled(self, key: tuple[str, str], reset_server_ms: int | None, *, http: bool) -> float:
        """Bybit refused a request for its rate (10006, or HTTP 429 when ``http``): hold every
        request on ``key`` back, and return for how long.

        The wait is Bybit's reset timestamp when it lies ahead by at most 2 s; otherwise (none
        given, already passed on our clock, or implausibly far) it doubles with each throttle in
        a row, from 0.1 s up to 1 s (from 0.5 s up to 2 s for a 429). So a reset that is wrong,
        or a clock that is off, can neither make the client hammer Bybit nor block it for good.
        """
        state = self._state(key)
        now = time.monotonic()
        if now - state.throttled_at > _THROTTLE_MEMORY:
            state.strikes = 0
        state.strikes += 1
        state.throttled_at = now
        first, cap = (
            (_THROTTLE_FIRST_429, _THROTTLE_CAP_429) if http else (_THROTTLE_FIRST, _THROTTLE_CAP)
        )
        wait = min(cap, first * (1 << min(state.strikes - 1, 8)))
        if reset_server_ms is not None:
            ahead = (reset_server_ms - self._clock.now_ms()) / 1000
            if 0 < ahead <= _THROTTLE_MAX:
                # Bybit's own word on when its window reopens (a 429 keeps its own floor).
                wait = max(ahead, wait) if http else ahead
        state.blocked_until = max(state.blocked_until, now + wait)
        return wait

    def feed(self, key: tuple[str, str], headers: Any) -> None:
        """Learn from one answer's headers."""
        limit = headers.get("X-Bapi-Limit")
        if limit is None:
            return
        if not (limit.isascii() and limit.isdigit()) or len(limit) > 9:
            return  # (not a count Bybit would send; int() would refuse "²")
        state = self._keys.get(key)
        if state is None:
            state = self._state(key)
        state.limit = int(limit) or 1
        if state.limit > _PACED_LIMIT and state.sent:
            state.sent.clear()  # not kept above that (see reserve)
        if headers.get("X-Bapi-Limit-Status") == "0":
            now = time.monotonic()
            sent = state.sent
            horizon = now - self.WINDOW
            while sent and sent[0] <= horizon:  # (dropped lazily by reserve: not in the window)
                sent.popleft()
            until = (sent[0] if sent else now) + self.WINDOW
            state.blocked_until = max(state.blocked_until, until)

    def _state(self, key: tuple[str, str]) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state


class _KeyState:
    __slots__ = ("blocked_until", "limit", "sent", "strikes", "throttled_at")

    def __init__(self) -> None:
        self.limit = 1 << 30  # unknown until an answer names it
        self.sent: deque[float] = deque()
        self.blocked_until = 0.0
        self.strikes = 0  # throttles in a row (see RateLimiter.throttled)
        self.throttled_at = -1e9


class RestClient:
    """Signed Bybit v5 REST calls over one ``aiohttp.ClientSession``."""

    # (Slots: every request reads several of these, and a cancel usually finds the caches cold.)
    __slots__ = (
        "_api_key",
        "_base",
        "_inflight",
        "_last_resync",
        "_max_retries",
        "_resync_lock",
        "_rng",
        "_session",
        "_signer",
        "_slot_waiters",
        "_slots",
        "_timeout",
        "clock",
        "closed",
        "limiter",
        "retrying",
        "stats",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        creds: Credentials,
        *,
        recv_window: int,
        clock: Clock,
        http_timeout: float,
        max_retries: int | None,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._base = base_url
        self._signer = RestSigner(creds, recv_window)
        self._api_key = creds.api_key  # (only to take it out of Bybit's error messages)
        self.clock = clock
        self.limiter = RateLimiter(clock)
        # One timer per request (aiohttp re-arms a sock_read timer on every read). `total` also
        # counts the wait for a pooled connection, but requests pass the gate below first, so
        # they do not queue inside aiohttp.
        self._timeout = aiohttp.ClientTimeout(total=http_timeout)
        self._max_retries = max_retries
        self._rng = rng
        self.stats = RestStats()
        # Set when the client closes: a request that fails then is not retried (see _backoff).
        self.closed = False
        # Called (in the task of the request that failed) before a failed request is retried:
        # the client's look whether its own interrupt was taken back on the way, true when it
        # sent it again (see _backoff).
        self.retrying: Callable[[], bool] | None = None
        self._resync_lock = asyncio.Lock()
        self._last_resync = -1e9
        # Sign only once a pooled connection is (about to be) free: aiohttp would otherwise queue
        # an already-signed request while a burst drains, and a request signed more than
        # recv_window before Bybit reads it is refused with 10002 (§1 Timestamp window).
        connector = session.connector
        limits = [] if connector is None else [connector.limit, connector.limit_per_host]
        self._slots = min((n for n in limits if n), default=0)
        self._inflight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    # -- endpoints -----------------------------------------------------------------------------

    def cancel(self, body: dict[str, str]) -> Coroutine[Any, Any, AckEnvelope]:
        """``POST /v5/order/cancel``: awaits to the answer (``.result`` is the acknowledgement);
        raises a typed error otherwise. (A plain function returning the request's coroutine: one
        frame less on the hot path.)"""
        return self._call("POST", "/v5/order/cancel", body, body["category"], ack_envelope_decoder)

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
            env = await self._call("GET", path, params, category, orders_envelope_decoder)
            result = env.result or OrderList()
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
        return (await self._server_time())[0]

    async def _server_time(self) -> tuple[int, float]:
        """Bybit's clock in ms, and the local ``time.time()`` at which its answer arrived."""
        # Through the connection gate like every request (the timeout counts pool waits).
        if self._slots:
            if self._inflight < self._slots and not self._slot_waiters:
                self._inflight += 1
            else:
                await self._wait_for_slot()
        try:
            async with self._session.get(
                self._base + "/v5/market/time", timeout=self._timeout, allow_redirects=False
            ) as resp:
                body = await resp.read()
                arrived = time.time()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"GET /v5/market/time failed: {_describe(exc)}") from None
        finally:
            if self._slots:
                self._release_slot()
        if status != 200:
            raise HTTPStatusError(status, self._snippet(body))
        try:
            env = envelope_decoder.decode(body)
            if env.ret_code != 0:
                raise self._api_error(env.ret_code, env.ret_msg)
            nano = server_time_decoder.decode(env.result).time_nano
            server_ms = int(nano) // 1_000_000 if nano else env.time
        except (msgspec.DecodeError, ValueError, RecursionError):  # (ValidationError is a
            # DecodeError; msgspec raises RecursionError past its nesting limit.)
            # Only BybitError leaves here: the stream's re-auth and the 10002 retry catch that.
            raise HTTPStatusError(
                status, "undecodable server time: " + self._snippet(body)
            ) from None
        if server_ms <= 0:
            raise HTTPStatusError(status, "no server time in: " + self._snippet(body))
        return server_ms, arrived

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
        # Bybit takes a timestamp up to recv_window behind its clock but only 1 s ahead (§1), so
        # the estimate errs behind: Bybit's time is mapped to when its answer arrived, not to the
        # middle of the round trip. A midpoint would put every timestamp ahead by half of any
        # wait before the request left (for a connection slot behind a burst, or a busy loop): a
        # wait over 2 s, and every signed request is refused with 10002 until the next resync.
        server_ms, arrived = await self._server_time()
        self.clock.offset_ms = server_ms - int(arrived * 1000)
        self.stats.clock_resyncs += 1
        log.info("clock offset to Bybit measured: %d ms", self.clock.offset_ms)

    # -- the one retry policy ------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        category: str,
        decoder: msgspec.json.Decoder[E],
    ) -> E:
        key = (path, category)
        failures = 0  # network errors, timeouts, 5xx: bounded by max_retries, if set
        resynced = False
        # Set once an attempt may have reached Bybit and been applied without our learning so (a
        # network error or timeout, a 5xx, a server error, an unreadable answer): whatever this
        # call raises then carries `may_have_landed`, and the caller confirms before reporting.
        landed = False
        try:
            while True:
                wait = self.limiter.reserve(key)
                while wait > 0:
                    # Rate-limit waits are bounded by the caller's deadline only (§7: the window
                    # reopens within a second).
                    self.stats.rate_limit_waits += 1
                    await asyncio.sleep(wait)
                    wait = self.limiter.reserve(key)
                # One request, in this frame (no coroutine per attempt: it is the hot path).
                # Wait for a connection slot, then sign (only now: §1 timestamp window) and send.
                slots = self._slots
                if slots:
                    if self._inflight < slots and not self._slot_waiters:
                        self._inflight += 1  # the common case: a free slot, no await, no allocation
                    else:
                        await self._wait_for_slot()
                failed = ""
                try:
                    try:
                        self.stats.requests += 1
                        # Signed now (§1 timestamp window), in this frame (`Clock.now_ms` inlined).
                        now_ms = int(time.time() * 1000) + self.clock.offset_ms
                        if method == "GET":
                            # Bybit signs the query string exactly as sent (§1). Values here are
                            # symbols, ids and enum words ([A-Za-z0-9_.-], validated), so no
                            # percent-encoding is involved; yarl is told the URL is already encoded
                            # so it sends these bytes unchanged.
                            query = "&".join(f"{k}={v}" for k, v in params.items())
                            ctx = self._session.get(
                                URL(f"{self._base}{path}?{query}", encoded=True),
                                headers=self._signer.headers(now_ms, query.encode()),
                                timeout=self._timeout,
                                # Never follow a redirect: it would re-send the signed headers to
                                # another host.
                                allow_redirects=False,
                            )
                        else:
                            payload = encoder.encode(params)
                            # (The signed headers are passed inline, never bound to a local of this
                            # frame: a traceback that captures locals would show the signature.)
                            ctx = self._session.post(
                                self._base + path,
                                data=payload,
                                headers=self._signer.headers(now_ms, payload, True),
                                timeout=self._timeout,
                                allow_redirects=False,
                            )
                        async with ctx as resp:
                            status, headers, body = resp.status, resp.headers, await resp.read()
                    finally:
                        if slots:
                            self._release_slot()  # before any backoff below
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # Describe, never repr: aiohttp's reprs carry the request headers (signature).
                    failed = f"{method} {path} failed: {_describe(exc)}"
                    # (A refused or failed connect sent nothing; anything later may have.)
                    landed = landed or not isinstance(exc, aiohttp.ClientConnectorError)
                if failed:
                    # Out of the except block: raised there, the error would keep aiohttp's
                    # (its __context__), whose traceback holds the frames with the signed headers.
                    failures += 1
                    if self._max_retries is not None and failures > self._max_retries:
                        raise TransportError(failed)
                    await self._backoff(failures, failed)
                    continue
                self.limiter.feed(key, headers)
                if status != 200:
                    if status >= 500:
                        failures += 1
                        landed = True
                        if self._max_retries is not None and failures > self._max_retries:
                            raise HTTPStatusError(status, self._snippet(body))
                        await self._backoff(failures, f"{method} {path}: HTTP {status}")
                        continue
                    if status == 429:
                        # "System level frequency protection. Please retry" (§1 HTTP status codes):
                        # the limiter holds every request on this key back, longer each time.
                        self.stats.rate_limit_waits += 1
                        reset = header_int(headers.get("X-Bapi-Limit-Reset-Timestamp"))
                        self.limiter.throttled(key, reset, http=True)
                        continue
                    if status == 403:
                        # An IP ban lasts at least 10 minutes (§7): retrying only extends it.
                        raise HTTPStatusError(
                            403,
                            "forbidden: IP rate limit breached or region blocked (§7); "
                            "stop and wait at least 10 minutes: " + self._snippet(body),
                        )
                    raise HTTPStatusError(status, self._snippet(body))
                try:
                    env = decoder.decode(body)
                except (msgspec.DecodeError, RecursionError):  # (RecursionError: deep nesting)
                    landed = True  # Bybit answered: it may have acted on the request
                    raise HTTPStatusError(
                        status, "undecodable body: " + self._snippet(body)
                    ) from None
                code = env.ret_code
                if code == 0:
                    return env
                if code in _RATE_LIMITED:
                    reset = header_int(headers.get("X-Bapi-Limit-Reset-Timestamp"))
                    wait = self.limiter.throttled(key, reset, http=False)
                    log.debug("%s %s rate limited (%d), waiting %.2fs", method, path, code, wait)
                    continue
                if code in _RETRY_RET_CODES:
                    # A server error or "try again later" (§6): send again, as after a 5xx. A
                    # cancel sent twice is harmless: the second answers 110001, which the
                    # client's lookup resolves.
                    failures += 1
                    landed = landed or code in _AMBIGUOUS_RET_CODES
                    if self._max_retries is not None and failures > self._max_retries:
                        raise self._api_error(code, env.ret_msg)
                    await self._backoff(failures, f"{method} {path}: retCode {code}")
                    continue
                if code == _TIMESTAMP_ERROR and not resynced:
                    resynced = True
                    log.warning("%s %s: %s; resyncing the clock", method, path, env.ret_msg)
                    try:
                        await self.resync_clock()
                    except BybitError as exc:
                        # The clock could not be measured: transient, like a failed send (the
                        # refused request did not land). Measure again on the next 10002.
                        resynced = False
                        failures += 1
                        if self._max_retries is not None and failures > self._max_retries:
                            raise
                        await self._backoff(failures, f"clock resync failed: {exc}")
                    continue
                raise self._api_error(code, env.ret_msg)
        except BybitError as err:
            if landed:
                err.may_have_landed = True
            raise

    def _snippet(self, body: bytes) -> str:
        """The start of an answer, for an error: the API key scrubbed, should a server (a proxy,
        a gateway's error page) echo the request's headers."""
        return scrubbed_snippet(body, self._api_key)

    def _api_error(self, ret_code: int, ret_msg: str) -> BybitAPIError:
        # A 10004 retMsg echoes the API key (scrub_key); the error shows it as the repr does.
        return error_from_ret_code(ret_code, scrub_key(ret_msg, self._api_key))

    async def _backoff(self, failures: int, why: str) -> None:
        if self.closed:
            # The client interrupts its calls by cancelling them, and the HTTP layer may take
            # such a cancel back (aiohttp does when its own timeout fires in the same turn) and
            # fail the request instead: retrying it then would outlast the close, for as long
            # as requests kept failing. (Here, not on every request: only a failure pays.)
            raise ClientClosedError(f"{why}; not retried: the client is closed")
        if self.retrying is not None and self.retrying():
            # In the same step as the failure: when the HTTP layer turned an interrupt of the
            # client's into this failure, the client sends it again before anyone else's cancel
            # can land, so that the two are not taken one for the other. It lands at this
            # await: the call ends here, and there is no retry to count or log.
            await asyncio.sleep(0)
            # (Not reached while that cancel is pending; if it somehow was not, a retry.)
        self.stats.retries += 1
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
        delay = self._rng.uniform(0, min(2.0, 0.05 * 2 ** (failures - 1)))
        # Loud once, when it is more than a blip: the deadline bounds the retries, not a count.
        level = logging.WARNING if failures == 3 else logging.DEBUG
        log.log(level, "retrying %s in %.3fs (failure %d)", why, delay, failures)
        await asyncio.sleep(delay)

    def _release_slot(self) -> None:
        # Hand the slot straight to the longest waiter (FIFO, so nobody starves in a burst).
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._inflight -= 1

    async def _wait_for_slot(self) -> None:
        """Queue for a connection slot; :meth:`_release_slot` hands it over (FIFO)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot, then cancelled before using it
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            raise


def _describe(exc: BaseException) -> str:
    """Name an aiohttp/OS error without its repr (which can hold the request headers)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__} (HTTP {exc.status}: {exc.message})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{type(exc).__name__} ({exc.os_error.strerror or exc.os_error})"
    text = str(exc) if isinstance(exc, OSError | TimeoutError) else ""
    return f"{type(exc).__name__} ({text})" if text else type(exc).__name__
