"""``BybitCancelClient``: lifecycle and orchestration. No parsing, signing or URL logic here.

The flow of one cancel (docs/architecture.md):

1. validate the input (``ValueError`` before any I/O);
2. register the pending cancel in the core **before** the REST request, so a push that beats the
   acknowledgement is not lost;
3. ``POST /v5/order/cancel``; "order does not exist" (110001/170213) is ambiguous, so look the order
   up and return its real final state, or raise ``OrderNotFound`` when nobody knows it;
4. park on the entry (it is awaitable: ``_call.py``) until the stream delivers a final state;
   when no push comes within ``push_grace`` (lost push, dead stream), look the order up over REST
   with backoff;
5. the whole call is bounded by ``timeout``; every exit path removes the pending entry.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import inspect
import logging
import random
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from ._call import DONE, Call, wake_all
from ._core import ACKNOWLEDGED, CancelTracker
from ._exceptions import (
    FINISHED_RET_CODES,
    NOT_FOUND_RET_CODES,
    PROCESSING_RET_CODE,
    AuthenticationError,
    BybitAPIError,
    BybitError,
    ClientClosedError,
    ConfirmationTimeout,
    HTTPStatusError,
    OrderNotFound,
    TransportError,
)
from ._models import CancelAck, CancelResult, WireOrder
from ._rest import Clock, RestClient, RestStats
from ._signing import Credentials, redact_key
from ._stream import ConnectionState, PrivateStream
from ._timers import GRACE, Timers
from ._urls import resolve_urls

__all__ = ["BybitCancelClient", "cancel_and_confirm"]

log = logging.getLogger("bybit_cancel")

CATEGORIES = frozenset({"linear", "inverse", "spot", "option"})
# orderFilter is spot only for a cancel (bybit-protocol.md §6).
SPOT_ORDER_FILTERS = frozenset({"Order", "tpslOrder", "StopOrder"})
# orderLinkId: at most 36 characters of letters, digits, "-" and "_" (§6, create-order.mdx).
_LINK_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9_.-]{0,63}")
_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = (int, float)  # (built once: `int | float` would build a union on every call)
# The longest duration accepted (about 31 years): any longer one is "never" in practice, and the
# timers' millisecond arithmetic on loop time + duration must stay finite.
MAX_SECONDS = 1e9


def _is_seconds(value: object) -> bool:
    """A positive, finite number of seconds, at most 1e9 (NaN fails the comparison)."""
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and 0 < value <= MAX_SECONDS


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_NO_ACK = CancelAck()
R = TypeVar("R")
# How soon after interrupting a call inside REST we look whether the cancel reached it (see
# _check_interrupt): a few milliseconds, as the deadline's own granularity.
_INTERRUPT_CHECK = 0.005


class _State(enum.Enum):
    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


def _handled() -> Exception:
    """The exception being handled (``sys.exception()``, typed for an ``except Exception``)."""
    exc = sys.exception()
    assert isinstance(exc, Exception)
    return exc


def validate_cancel(
    *,
    category: str,
    symbol: str,
    order_id: str | None,
    order_link_id: str | None,
    order_filter: str | None,
    timeout: float,
) -> dict[str, str]:
    """Check a cancel's arguments and build the request body. Raises ``ValueError``; no I/O."""
    _check_order(category, symbol, order_id, order_link_id)
    _check_options(category, order_filter, timeout, None)
    # (The link id only when there is no order id: the id wins on Bybit.)
    return _body(
        category, symbol, order_id or "", "" if order_id else order_link_id or "", order_filter
    )


def _check_order(
    category: str, symbol: str, order_id: str | None, order_link_id: str | None
) -> None:
    """The order half of :func:`validate_cancel` (cancel_order calls the halves itself: a call
    with fewer arguments keeps a smaller frame for every parked cancel, item 32)."""
    # (The common case passes each test with one check: the messages are sorted out after.)
    try:
        known = category in CATEGORIES
    except TypeError:  # unhashable (a list, a dict): no category either
        known = False
    if not known:
        if not category:
            raise ValueError("category is required (linear, inverse, spot or option)")
        raise ValueError(f"unknown category {category!r}: use linear, inverse, spot or option")
    if not (isinstance(symbol, str) and _SYMBOL.fullmatch(symbol)):
        if not symbol or not isinstance(symbol, str):
            raise ValueError("symbol is required, e.g. 'BTCUSDT'")
        raise ValueError(
            f"symbol must be upper case, as Bybit lists it (e.g. 'BTCUSDT'): {symbol!r}"
        )
    if not order_id and not order_link_id:
        raise ValueError("give order_id or order_link_id")
    if order_id is not None and not (isinstance(order_id, str) and _ORDER_ID.fullmatch(order_id)):
        # Bybit's ids are UUIDs or decimal digits; nothing else may reach a signed query string.
        raise ValueError("order_id must be 1-64 characters of letters, digits, '-' or '_'")
    if order_link_id is not None and not (
        isinstance(order_link_id, str) and _LINK_ID.fullmatch(order_link_id)
    ):
        raise ValueError("order_link_id must be 1-36 characters of letters, digits, '-' or '_'")


def _check_options(
    category: str,
    order_filter: str | None,
    timeout: float,
    on_ack: Callable[[str, str], None] | None,
) -> None:
    """The rest of :func:`validate_cancel`: the spot order filter, the timeout and ``on_ack``."""
    if order_filter is not None:
        if category != "spot":
            raise ValueError("order_filter applies to spot orders only")
        if not (isinstance(order_filter, str) and order_filter in SPOT_ORDER_FILTERS):
            raise ValueError(f"order_filter must be one of {sorted(SPOT_ORDER_FILTERS)}")
    if (
        not isinstance(timeout, _NUMBER)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_SECONDS  # (also refuses NaN and infinity)
    ):
        raise ValueError(
            f"timeout must be a positive number of seconds, at most 1e9, got {timeout!r}"
        )
    if on_ack is not None and (
        not callable(on_ack)
        or inspect.iscoroutinefunction(on_ack)
        # (an object whose __call__ is async)
        or inspect.iscoroutinefunction(type(on_ack).__call__)
    ):
        # Refused here: called only once Bybit has acknowledged, it would fail the call after
        # the cancel was sent; an async one would be called and its coroutine never run.
        if callable(on_ack):
            raise ValueError(
                "on_ack is called synchronously: pass a plain function, not an async one"
            )
        raise ValueError(f"on_ack must be a callable or None, got {type(on_ack).__name__}")


def _body(
    category: str, symbol: str, order_id: str, order_link_id: str, order_filter: str | None
) -> dict[str, str]:
    """The cancel request's body: one id, the order id when there is one (it wins on Bybit)."""
    body = {"category": category, "symbol": symbol}
    if order_id:
        body["orderId"] = order_id
    else:
        body["orderLinkId"] = order_link_id
    if order_filter is not None:
        body["orderFilter"] = order_filter
    return body


class BybitCancelClient:
    """Cancel Bybit v5 orders and await their confirmed final state.

    Use it as an async context manager; entering connects the private stream (auth, then subscribe
    to ``order``, each waiting for its reply)::

        async with BybitCancelClient(api_key=key, api_secret=secret) as client:
            result = await client.cancel_order(category="linear", symbol="BTCUSDT", order_id=oid)

    Args:
        api_key, api_secret: the API credentials (HMAC). The secret is never logged or shown.
        testnet, demo: pick Bybit's testnet and/or demo-trading hosts.
        rest_url, ws_url: override the hosts completely (e.g. a :class:`~bybit_cancel.testing.FakeExchange`).
        recv_window: ``X-BAPI-RECV-WINDOW`` in ms.
        session: a caller-owned ``aiohttp.ClientSession``; used, never closed.
        push_grace: seconds to wait for the websocket push after the ack before asking REST.
        ping_interval: seconds between heartbeats; two missed pongs mean a dead stream.
        http_timeout: seconds for one HTTP request before it counts as failed and is retried.
        max_retries: at most this many re-sends after network errors and HTTP 5xx; ``None`` (the
            default) re-sends until the call's deadline. Throttling (10006, 429) is always
            waited out until the deadline.
        handshake_timeout: seconds for the websocket connect, auth and subscribe.
        reconnect_backoff: (base, cap) seconds of the reconnect backoff (each wait drawn between
            half and all of the step).
        recent_size, recent_age: bound of the memory of recent final states (a cancel of an
            order that has already ended is answered from it at once). ``recent_size=0`` keeps
            none: such a cancel then asks Bybit (110001, then a REST lookup).
        seed: seed of the jitter, for reproducible tests.

    Raises:
        ValueError: bad arguments (before any I/O); durations must be positive and at most
            1e9 seconds.
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        testnet: bool = False,
        demo: bool = False,
        rest_url: str | None = None,
        ws_url: str | None = None,
        recv_window: int = 5000,
        session: aiohttp.ClientSession | None = None,
        push_grace: float = 1.0,
        ping_interval: float = 20.0,
        http_timeout: float = 5.0,
        max_retries: int | None = None,
        handshake_timeout: float = 10.0,
        reconnect_backoff: tuple[float, float] = (0.1, 10.0),
        recent_size: int = 10_000,
        recent_age: float = 600.0,
        seed: int | None = None,
    ) -> None:
        for name, cred in (("api_key", api_key), ("api_secret", api_secret)):
            # (Never quote the value: the message would show the secret, or part of it.)
            if not (isinstance(cred, str) and cred and cred.isascii() and cred.isprintable()):
                raise ValueError(f"{name} must be a non-empty string of printable ASCII")
        self._creds = Credentials(api_key, api_secret)
        for name, flag in (("testnet", testnet), ("demo", demo)):
            if not isinstance(flag, bool):  # ("no" would be true, and pick the testnet)
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ValueError(f"session must be an aiohttp.ClientSession or None, got {session!r}")
        if seed is not None and not _is_int(seed):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self._rest_url, self._ws_url = resolve_urls(
            testnet=testnet, demo=demo, rest_url=rest_url, ws_url=ws_url
        )
        # (A bool is an int to Python, and True would read as 1: refused like any other type.)
        if not _is_int(recv_window) or recv_window <= 0:
            raise ValueError(f"recv_window must be a positive number of ms, got {recv_window!r}")
        for name, value in (
            ("push_grace", push_grace),
            ("ping_interval", ping_interval),
            ("http_timeout", http_timeout),
            ("handshake_timeout", handshake_timeout),
            ("recent_age", recent_age),
        ):
            if not _is_seconds(value):
                raise ValueError(
                    f"{name} must be a positive number of seconds, at most 1e9, got {value!r}"
                )
        if max_retries is not None and (not _is_int(max_retries) or max_retries < 0):
            raise ValueError(f"max_retries must be None or an integer >= 0, got {max_retries!r}")
        if not (
            isinstance(reconnect_backoff, tuple)
            and len(reconnect_backoff) == 2
            and all(_is_seconds(v) for v in reconnect_backoff)
            and reconnect_backoff[0] <= reconnect_backoff[1]
        ):
            raise ValueError(
                "reconnect_backoff must be (base, cap) with 0 < base <= cap <= 1e9, "
                f"got {reconnect_backoff!r}"
            )
        self._recv_window = recv_window
        self._session = session
        self._owns_session = session is None
        self._push_grace = push_grace
        self._ping_interval = ping_interval
        self._http_timeout = http_timeout
        self._max_retries = max_retries
        self._handshake_timeout = handshake_timeout
        self._reconnect_backoff = reconnect_backoff
        self._rng = random.Random(seed)
        self._tracker: CancelTracker[Call] = CancelTracker(
            recent_size=recent_size, recent_age=recent_age
        )
        self._clock = Clock()
        self._state = _State.UNOPENED
        self._failure: BybitError | None = None
        self._rest: RestClient | None = None
        self._stream: PrivateStream | None = None
        self._timers: Timers[Call] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._old_reconciles: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by the aclose() that does the clean-up, once it has finished (see aclose).
        self._closed: asyncio.Future[None] | None = None
        # entry -> its caller task's cancel count when the call began, where not 0 (rare: a
        # call made by a task already being cancelled; see _own and _after_interrupt).
        self._interrupt_bases: dict[Call, int] = {}
        # caller task -> the call of its that an interrupt is on its way to (see
        # _resend_lost_interrupt); each is dropped by the _check_interrupt that ends its chain.
        self._interrupting: dict[object, Call] = {}

    def __repr__(self) -> str:
        return (
            f"<BybitCancelClient api_key={redact_key(self._creds.api_key)!r} "
            f"rest={self._rest_url!r} state={self._state.name.lower()} pending={len(self._tracker)}>"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect the private stream: auth and subscribe, each waiting for its reply.

        Raises:
            AuthenticationError: the exchange refused the websocket auth (after one clock
                resync).
            BybitAPIError: the exchange refused the subscription to the ``order`` topic.
            TransportError: the stream could not be reached, refused or redirected the upgrade
                (a redirect is never followed), or did not answer in time (the message names
                the phase: connect, auth or subscribe); or the auth was refused and the clock
                could not be measured.
            ClientClosedError: :meth:`aclose` was called while connecting.
            RuntimeError: the client was opened before.

        On any failure, and when cancelled, it closes the client first: nothing is left running.
        """
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a BybitCancelClient cannot be opened twice; create a new one")
        self._loop = asyncio.get_running_loop()
        self._timers = Timers(self._loop, self._on_timer)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._rest = RestClient(
            self._session,
            self._rest_url,
            self._creds,
            recv_window=self._recv_window,
            clock=self._clock,
            http_timeout=self._http_timeout,
            max_retries=self._max_retries,
            rng=self._rng,
        )
        self._rest.retrying = self._resend_lost_interrupt
        self._stream = PrivateStream(
            self._ws_url,
            self._creds,
            now_ms=self._clock.now_ms,
            on_orders=self._on_push,
            on_reconnected=self._on_reconnected,
            on_failed=self._on_stream_failed,
            resync_clock=self._rest.resync_clock,
            ping_interval=self._ping_interval,
            handshake_timeout=self._handshake_timeout,
            # Bybit rejects an `expires` already in the past; pybit's +1 s fails on some
            # machines, +10 s works (§3 Auth request).
            auth_expiry_ms=10_000,
            reconnect_backoff=self._reconnect_backoff,
            rng=self._rng,
        )
        self._state = _State.OPEN
        try:
            await self._stream.open()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the client. Idempotent, and safe to call with cancels pending.

        Every pending ``cancel_order`` fails with :class:`ClientClosedError`; the stream task stops,
        the socket closes, and the session closes if the client created it. Cancelling it is
        safe: the rest of the clean-up still runs, then ``CancelledError`` propagates. A call
        made while another is closing the client returns once that clean-up has finished
        (cancelling the waiting call leaves the clean-up alone).
        """
        if self._state is _State.CLOSED:
            closing = self._closed
            if closing is not None and not closing.done():
                await asyncio.shield(closing)
            return
        self._state = _State.CLOSED
        self._closed = closing = asyncio.get_running_loop().create_future()
        try:
            await self._close()
        finally:
            closing.set_result(None)

    async def _close(self) -> None:
        closed = ClientClosedError("the client was closed before the cancel was confirmed")
        if self._rest is not None:
            # A request that fails from here on is not retried: what ends a call or a reconcile
            # lookup inside REST no longer depends on a cancel the HTTP layer may take back.
            self._rest.closed = True
        self._fail_pending(closed)
        if self._timers is not None:
            # Every call in flight has a deadline queued, including those already resolved but
            # still inside a REST call: none may outlive the client.
            for entry in self._timers.open_entries():
                self._interrupt(entry, closed)
            self._timers.close()
        # The state is CLOSED from here on, so a later aclose() only waits for this one: if this
        # one is cancelled, the clean-up below still runs to its end before the cancellation
        # goes on.
        try:
            if self._stream is not None:
                # First: a reconnect cannot start a reconcile after this.
                await self._stream.close()
        finally:
            tasks = list(self._old_reconciles)
            if self._reconcile_task is not None:
                tasks.append(self._reconcile_task)
                self._reconcile_task = None
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                if self._owns_session and self._session is not None:
                    await self._session.close()

    # -- observability -------------------------------------------------------------------------

    @property
    def connection_state(self) -> ConnectionState:
        """The private stream's state (connected, reconnecting, failed, closed...)."""
        if self._stream is None:
            return ConnectionState.DISCONNECTED
        return self._stream.state

    @property
    def reconnect_count(self) -> int:
        """How many times the private stream reconnected."""
        return 0 if self._stream is None else self._stream.reconnects

    @property
    def pending_count(self) -> int:
        """Cancels awaiting confirmation right now."""
        return len(self._tracker)

    @property
    def rest_stats(self) -> RestStats:
        """REST request, retry, rate-limit-wait and clock-resync counters."""
        if self._rest is None:
            return RestStats()
        return self._rest.stats

    # -- the call ------------------------------------------------------------------------------

    async def cancel_order(
        self,
        *,
        category: str,
        symbol: str,
        order_id: str | None = None,
        order_link_id: str | None = None,
        order_filter: str | None = None,
        timeout: float = 10.0,
        on_ack: Callable[[str, str], None] | None = None,
    ) -> CancelResult:
        """Cancel an order and return its confirmed final state.

        The result's ``status`` is the truth: ``Cancelled``, ``PartiallyFilledCanceled`` or
        ``Deactivated`` when the cancel took effect, ``Filled`` or ``Rejected`` when the order ended
        otherwise first (``result.cancelled`` tells them apart). ``order_id`` wins when both ids
        are given, as on Bybit. ``on_ack``, if given, is called with ``(order_id, order_link_id)``
        when Bybit acknowledges the request with retCode 0 (which is not yet the outcome); it is
        called synchronously, so an ``async def`` one is refused, and one that returns a
        coroutine raises ``TypeError``; an exception it raises propagates out of this call.

        Cancelling the awaiting task is safe: the pending entry is removed and nothing is left
        behind. The cancel request itself may already have reached Bybit.

        Raises:
            ValueError: bad arguments (no request is sent).
            OrderNotFound: Bybit has no such order (the cancel said so and no lookup knows it).
            AuthenticationError: the credentials were refused.
            BybitAPIError: any other non-zero ``retCode`` (``ret_code``, ``ret_msg``).
            HTTPStatusError: HTTP 403 (IP ban), 401, 404, a redirect, or 5xx past ``max_retries``.
            TransportError: the network kept failing past ``max_retries`` (only when set).
            ConfirmationTimeout: no final state within ``timeout`` seconds.
            ClientClosedError: the client was closed while the call was pending.
            RuntimeError: the client is not open.
            BybitError: the stream task crashed (a bug); the client is then unusable.
        """
        # This frame stays alive while the call is parked: it keeps few locals on purpose (each
        # name is 8 bytes in every parked call; hence no `except ... as exc`, no `outcome`, and
        # the request and its ack in _send's frame, which ends before the park), and no call in
        # it takes more than four arguments (a call's arguments sit on the frame's stack, whose
        # deepest point is also kept in every parked call). performance.md item 32.
        _check_order(category, symbol, order_id, order_link_id)
        _check_options(category, order_filter, timeout, on_ack)
        entry = self._begin(category, symbol, order_id, order_link_id)
        if isinstance(entry, CancelResult):
            return entry  # the order had already ended: no request
        self._arm(entry, timeout)
        try:
            # The fast path: send and note the ack (_send), park until the push.
            self._own(entry)
            try:
                await self._send(entry, order_filter, on_ack)
            except Exception:
                entry.owner = None
                if entry._flags & ACKNOWLEDGED:
                    raise  # on_ack's own error: Bybit had acknowledged, nothing failed to send
                return await self._after_send_error(entry, _handled(), order_filter)
            on_ack = None  # not kept alive while parked
            # (`final` is set if the push beat the ack: then there is nothing to wait for.)
            if entry.final is None and entry.error is None and not entry._flags & DONE:
                self._park_first(entry)
                await entry  # the entry is its own waiter (see _call.py)
            if entry.final is not None and entry.error is None:
                try:
                    return entry.final.result()  # the common end: the push confirmed it
                except (ArithmeticError, ValueError):
                    pass  # malformed: _outcome() below raises the proper error
            # (A CancelResult is always true.) No outcome yet: no push within the grace, a lost
            # push or a dead stream.
            return self._outcome(entry) or await self._await_final(entry, order_filter)
        except asyncio.CancelledError:
            return self._after_interrupt(entry)
        finally:
            self._end(entry)

    def _begin(
        self, category: str, symbol: str, order_id: str | None, order_link_id: str | None
    ) -> Call | CancelResult:
        """Register a cancel before its request is sent (then :meth:`_arm` its deadline)."""
        if self._state is not _State.OPEN:
            raise RuntimeError("the client is not open: use `async with BybitCancelClient(...)`")
        if self._failure is not None:
            raise _fresh(self._failure)
        # (The link id only when there is no order id: the id wins on Bybit.)
        return self._tracker.start(
            Call(category, symbol, order_id or "", "" if order_id else order_link_id or ""),
            now=time.monotonic(),
        )

    def _arm(self, entry: Call, timeout: float) -> None:
        """Bound the whole call by one shared timer (see _timers.py), not asyncio.timeout."""
        loop, timers = self._loop, self._timers
        assert loop is not None and timers is not None  # (open: _begin checked)
        try:
            timers.add_deadline(entry, loop.time() + timeout, timeout)
        except BaseException:
            self._end(entry)  # not left registered (validation keeps this from happening)
            raise

    async def _send(
        self, entry: Call, order_filter: str | None, on_ack: Callable[[str, str], None] | None
    ) -> None:
        """Send the cancel and note Bybit's acknowledgement. Its own frame, which ends before the
        call parks: the request and the ack are not kept while parked. Marks the entry
        acknowledged before calling ``on_ack``, so that an error of ``on_ack`` is told from a
        failed send."""
        body = _body(
            entry.category, entry.symbol, entry.order_id, entry.order_link_id, order_filter
        )
        # (`_rest` is set while the client is open, which _begin checked.)
        ack = (await self._rest.cancel(body)).result or _NO_ACK  # type: ignore[union-attr]
        entry.owner = None
        entry._flags |= ACKNOWLEDGED
        if on_ack is not None:
            returned: object = on_ack(ack.order_id, ack.order_link_id)
            if returned is not None and inspect.iscoroutine(returned):
                # A plain function returning a coroutine (a lambda around an async one): not
                # told from a plain one before the call. Its coroutine would never run; closed,
                # it raises as on_ack's own error would (Bybit has acknowledged the cancel).
                returned.close()
                raise TypeError(
                    "on_ack returned a coroutine, which is never awaited: on_ack is called "
                    "synchronously; the cancel was acknowledged"
                )
        if entry.final is None and entry.error is None:
            # Learns the order id (a cancel by link id); sets `final` if the push beat the ack.
            self._tracker.acknowledge(
                entry, order_id=ack.order_id, order_link_id=ack.order_link_id, now=time.monotonic()
            )

    def _own(self, entry: Call) -> None:
        """The caller's task takes the entry, so that a deadline or a close can interrupt it
        inside a REST call (_interrupt_owner). The task's cancel count now is what such an
        interrupt is measured against, as asyncio.timeout measures at its start: a count taken
        at the interrupt would include a cancel someone else requested just before it."""
        task = entry.owner = asyncio.current_task()
        if task is not None and task.cancelling():  # (0 but in a task being cancelled already)
            self._interrupt_bases[entry] = task.cancelling()

    def _park_first(self, entry: Call) -> None:
        timers, loop = self._timers, self._loop
        assert timers is not None and loop is not None
        timers.add_grace(entry, loop.time() + self._push_grace)

    def _after_interrupt(self, entry: Call) -> CancelResult:
        """The caller was cancelled (called inside the ``except CancelledError`` block). If we did
        it (the deadline, or aclose()), take that cancellation back and return the outcome (the
        final state if one arrived meanwhile, else raise the promised error); otherwise re-raise
        the cancellation."""
        # Bare `raise` below: the cancellation is not bound to a name, so this frame (which the
        # traceback keeps) does not hold it, and no reference cycle outlives the call.
        task = asyncio.current_task()
        if not entry.interrupted or task is None:
            raise
        entry.interrupted = False
        # Ours to take back if the count returns to what it was before we cancelled: not if
        # someone else cancelled the caller too. (Not "to 0": a caller already being cancelled,
        # a shutdown handler cancelling its orders, say, starts above 0; so does a task that
        # 3.12's TaskGroup left a count on. asyncio.timeout compares the same way.)
        taken_back = task.uncancel() <= self._interrupt_bases.get(entry, 0)
        del task
        if not taken_back:
            raise
        if entry.error is not None:
            raise _fresh(entry.error) from None
        outcome = self._outcome(entry)
        if outcome is None:
            raise
        return outcome

    def _end(self, entry: Call) -> None:
        entry.finish()  # closed: no wake-up reaches it any more
        if self._interrupt_bases:  # (a call made by a task already being cancelled)
            self._interrupt_bases.pop(entry, None)
        entry.owner = None  # (a caller cancelled inside a REST call leaves it set)
        if entry.final is None and entry.error is None:
            self._tracker.forget(entry)  # (a resolved or failed entry is already out)
        timers = self._timers
        if timers is not None:
            timers.release(entry)

    async def _after_send_error(
        self, entry: Call, exc: Exception, order_filter: str | None
    ) -> CancelResult:
        if isinstance(exc, BybitAPIError):
            code = exc.ret_code
            if code in NOT_FOUND_RET_CODES or code in FINISHED_RET_CODES:
                return await _keeping_mark(exc, self._resolve_not_found(entry, exc, order_filter))
            if code == PROCESSING_RET_CODE:
                # "Cancel order request processing" (§6: wait for WS): an ack in all but name.
                entry.acknowledged = True
                return self._outcome(entry) or await self._confirm(entry, order_filter)
        outcome = self._outcome(entry)  # closed or timed out meanwhile: raise that instead
        if outcome is not None:
            return outcome  # the order ended anyway; that is the answer
        if not (isinstance(exc, BybitError) and exc.may_have_landed):
            try:
                raise exc
            finally:
                # The traceback holds this frame: without the del, the frame would hold the
                # error and the error this frame, a cycle keeping the call's entry and frames
                # alive until the collector ran (as after every failed send, before).
                del exc
        # A failed send does not mean the cancel did not land (an attempt timed out, got a 5xx
        # or a server error, or its answer was unreadable): confirm before reporting anything.
        log.warning("cancel request failed (%s); the cancel may have landed, confirming", exc)
        if self._max_retries is None:
            return await _keeping_mark(exc, self._confirm(entry, order_filter))
        # max_retries set: the caller asked to give up sooner. One look, after the push grace,
        # tells a cancel that landed from one that did not; then the error is the answer.
        outcome = await _keeping_mark(exc, self._park(entry, self._push_grace))
        if outcome is not None:
            return outcome
        try:
            await self._lookup(entry, order_filter)
        except BybitError:
            pass  # no answer either: report the send's error
        outcome = self._outcome(entry)
        if outcome is not None:
            return outcome
        try:
            raise exc
        finally:
            del exc  # (no cycle through this frame, as above)

    async def _confirm(self, entry: Call, order_filter: str | None) -> CancelResult:
        """Wait for the push, then ask REST until final or the deadline."""
        outcome = await self._park(entry, self._push_grace)
        if outcome is not None:
            return outcome
        return await self._await_final(entry, order_filter)

    @staticmethod
    def _outcome(entry: Call) -> CancelResult | None:
        if entry.error is not None:
            raise _fresh(entry.error)
        try:
            return entry.outcome
        except (ArithmeticError, ValueError) as exc:
            raise BybitError(f"Bybit sent a final state with a malformed field: {exc!r}") from None

    async def _park(self, entry: Call, delay: float) -> CancelResult | None:
        """Wait up to ``delay`` for the entry to be resolved (no task; a shared timer)."""
        if entry.done():
            outcome = self._outcome(entry)
            if outcome is not None:
                return outcome
            entry.rearm()
        timers, loop = self._timers, self._loop
        assert timers is not None and loop is not None
        timers.add(loop.time() + delay, GRACE, entry, entry.wait)
        await entry
        return self._outcome(entry)

    async def _await_final(self, entry: Call, order_filter: str | None) -> CancelResult:
        """The slow path: no push came within the grace. Ask REST (§12.1), then wait for the push
        again with a doubling delay, until final or the deadline. A failed lookup is not an
        answer: keep waiting and ask again later."""
        delay = self._push_grace
        while True:
            try:
                await self._lookup(entry, order_filter)
            except Exception as exc:
                outcome = self._outcome(entry)
                if outcome is not None:
                    return outcome  # the answer came anyway (a push during the lookup)
                if not (isinstance(exc, BybitError) and _transient(exc)):
                    if entry.acknowledged and isinstance(exc, BybitError):
                        # Bybit accepted the cancel: it has most likely been applied, whatever
                        # the lookup's own error (an IP ban, say) says.
                        exc.may_have_landed = True
                    raise
                log.debug("order lookup failed, will ask again: %s", exc)
            outcome = self._outcome(entry)
            if outcome is not None:
                return outcome
            delay = min(delay * 2, 5.0)
            outcome = await self._park(entry, delay)
            if outcome is not None:
                return outcome

    async def _lookup(
        self, entry: Call, order_filter: str | None, *, owned: bool = True
    ) -> WireOrder | None:
        """Look the entry's order up and feed the answer to the core.

        Returns the order, or ``None`` when neither realtime nor history knows it; raises the
        REST error when the lookup itself failed. ``owned``: called from the entry's own caller
        task (so that a close may interrupt it), not from the reconcile task.
        """
        rest = self._rest
        assert rest is not None
        if owned:
            entry.owner = asyncio.current_task()
        try:
            order = await rest.find_order(
                category=entry.category,
                symbol=entry.symbol,
                order_id=entry.order_id,
                order_link_id=entry.order_link_id,
                order_filter=order_filter,
            )
        finally:
            if owned:
                entry.owner = None
        if order is not None:
            self._deliver(self._tracker.on_orders([order], "rest", time.monotonic()))
        return order

    async def _answered_lookup(self, entry: Call, order_filter: str | None) -> WireOrder | None:
        """A lookup that does not take a failure for "not found": transient failures are
        retried (parked on the entry, so a push still wins) until an answer or the deadline."""
        delay = 0.05
        while True:
            try:
                return await self._lookup(entry, order_filter)
            except BybitError as exc:
                if not _transient(exc):
                    raise
                log.debug("order lookup failed, will ask again: %s", exc)
            if await self._park(entry, delay) is not None:
                return None  # resolved meanwhile; the caller reads the entry
            delay = min(delay * 2, 2.0)

    async def _resolve_not_found(
        self, entry: Call, exc: BybitAPIError, order_filter: str | None
    ) -> CancelResult:
        # 110001/170213 is not proof: the order may have just filled or been cancelled (§12.1).
        outcome = self._outcome(entry)
        if outcome is not None:
            return outcome
        if exc.ret_code in FINISHED_RET_CODES:
            # Bybit says the order has ended; learn how. Its final state may not show on REST at
            # once (history lags, §8): ask until it does, or until the deadline.
            return await self._await_final(entry, order_filter)
        order = await self._answered_lookup(entry, order_filter)
        outcome = self._outcome(entry)
        if outcome is not None:
            return outcome
        if order is None:
            if exc.may_have_landed:
                # An earlier attempt may have cancelled it, so it did exist: neither lookup
                # knowing it means a Bybit restart plus history's lag (§8), not "no such order".
                return await self._await_final(entry, order_filter)
            raise OrderNotFound(exc.ret_code, exc.ret_msg) from None
        if order.symbol and order.symbol != entry.symbol:
            # A lookup by id finds the order whatever the symbol (§8: the id wins over the
            # symbol), but a cancel names the symbol too, and under another one Bybit finds no
            # such order. No race to wait for: say which symbol it is on.
            hint = f"the order is on {order.symbol}, not {entry.symbol}"
            raise BybitAPIError(exc.ret_code, exc.ret_msg, hint=hint) from None
        # Bybit knows the order and it is still open, yet it would not cancel it: a cancel aimed
        # at the wrong spot book (orderFilter, §6) or one racing a fill. Give the race a chance.
        outcome = await self._park(entry, self._push_grace)
        if outcome is None:
            await self._answered_lookup(entry, order_filter)
            outcome = self._outcome(entry)
        if outcome is not None:
            return outcome
        hint = f"yet the order is {self._tracker.last_status(entry)}"
        if entry.category == "spot":
            if order_filter is None:
                hint += ": for a spot TP/SL or conditional order pass order_filter (--order-filter)"
            else:  # the filter given may name another book (§6)
                hint += (
                    f": order_filter={order_filter!r} may name the wrong book ('Order' for a plain"
                    " order, 'tpslOrder' for TP/SL, 'StopOrder' for a conditional one)"
                )
        raise BybitAPIError(exc.ret_code, exc.ret_msg, hint=hint) from None

    # -- callbacks from the stream (as a push is parsed, or on the stream task) ----------------

    def _on_push(self, orders: list[WireOrder]) -> None:
        # The router's hot path: one frame wakes every call the push resolved.
        resolved = self._tracker.on_orders(orders, "websocket", time.monotonic())
        if resolved:
            loop = self._loop
            assert loop is not None
            wake_all(resolved, loop.call_soon)

    @staticmethod
    def _deliver(resolved: list[Call]) -> None:
        if resolved:
            wake_all(resolved, asyncio.get_running_loop().call_soon)

    def _on_reconnected(self, settled: bool = True) -> None:
        # Bybit replays nothing missed while disconnected (§12.4): look every pending cancel up,
        # after every reconnect. `settled` is false while the stream's outage is not (a
        # connection of it was lost before it proved stable): a flapping or silent gateway
        # reconnects every few seconds, and the reconcile says so at DEBUG then, as the stream
        # does.
        if self._state is not _State.OPEN:
            return
        old = self._reconcile_task
        if old is not None and not old.done():
            old.cancel()  # superseded; kept until it has finished so aclose() can await it
            self._old_reconciles.add(old)
            old.add_done_callback(self._old_reconciles.discard)
        loop = self._loop
        assert loop is not None
        # The cancels pending now may have missed their push while the stream was down; those
        # registered from here on get theirs on the new connection and need no lookup.
        self._reconcile_task = loop.create_task(
            self._reconcile(self._tracker.pending(), logging.INFO if settled else logging.DEBUG),
            name="bybit_cancel.reconcile",
        )

    def _on_stream_failed(self, exc: BybitError) -> None:
        self._failure = exc
        self._fail_pending(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        # Every pending call has handed its cancel request to REST (_begin is followed by the
        # send with nothing awaited in between), so whatever ends its wait, the cancel may have
        # landed. (Not `exc` itself: as the client's failure it also answers later calls, which
        # send nothing.)
        landed = _fresh(exc)
        landed.may_have_landed = True  # type: ignore[attr-defined]
        for entry in self._tracker.fail_all(landed):
            self._interrupt(entry, landed)

    def _on_timer(self, entry: Call, kind: int, payload: Any) -> None:
        if kind == GRACE:
            if entry.wait == payload:  # not a grace left over from an earlier wait
                entry.wake()
            return
        # DEADLINE. An outcome that arrived first wins: the truth beats the clock. But a caller
        # still inside a REST call (a push beat the ack while the request is being retried) must
        # not wait for that call: interrupt it, and it returns the final state it already has.
        if entry.error is not None:
            return
        if entry.final is not None:
            self._interrupt_owner(entry)
            return
        error = ConfirmationTimeout(
            order_id=entry.order_id or None,
            order_link_id=entry.order_link_id or None,
            last_status=self._tracker.last_status(entry),
            acknowledged=entry.acknowledged,
            timeout=payload,
            # Conservative: the call handed its request to REST when it began; it may still have
            # been waiting there (for a rate limit, a connection, a backoff) when time ran out,
            # but a timeout cannot tell that from an attempt whose answer never came.
            may_have_landed=True,
        )
        self._tracker.forget(entry)
        self._interrupt(entry, error)

    def _interrupt(self, entry: Call, error: BaseException) -> None:
        """Fail one pending call with ``error`` (unless it has its final state) and make its
        caller notice now."""
        if entry.final is None and entry.error is None:
            entry.error = error
        entry.wake()  # a parked caller wakes and raises it
        self._interrupt_owner(entry)

    def _interrupt_owner(self, entry: Call) -> None:
        owner = entry.owner
        # Any Task, not only asyncio.Task: the pure-Python Task (a custom task factory's, say) is
        # no subclass of the C one, and a call it runs must be interrupted just the same.
        if asyncio.isfuture(owner) and not owner.done() and not entry.interrupted:
            # The caller is inside a REST call (perhaps sleeping in a backoff): interrupt it;
            # cancel_order turns this cancellation (and only this one) into the outcome.
            entry.interrupted = True
            owner.cancel()
            self._interrupting[owner] = entry
            # The HTTP layer may take it back: aiohttp does when its own timeout fires in the
            # same turn of the loop (each of its two nested `with timer:` blocks uncancels),
            # and the request then fails as timed out and is retried, with nothing left to end
            # the call. So look whether it arrived.
            loop = self._loop
            assert loop is not None
            loop.call_later(_INTERRUPT_CHECK, self._check_interrupt, entry, owner)

    def _check_interrupt(self, entry: Call, owner: asyncio.Future[Any]) -> None:
        """Send an interrupt again if it was lost on its way to ``cancel_order``. (``owner`` is
        the caller's task, from ``asyncio.current_task()``: a Task of any kind has
        ``cancelling()``.)"""
        if not entry.interrupted or entry.closed or owner.done():
            if self._interrupting.get(owner) is entry:
                del self._interrupting[owner]
            return  # it arrived (cancel_order has taken it back), or the call has ended
        loop = self._loop
        assert loop is not None
        if owner.cancelling() > self._interrupt_bases.get(entry, 0):  # type: ignore[attr-defined]
            loop.call_later(_INTERRUPT_CHECK, self._check_interrupt, entry, owner)
            return  # still on its way
        # Taken back on the way: no cancel of ours is pending any more, so the flag would make
        # cancel_order take the caller's own next cancel for ours. Interrupt again if the call
        # is still inside REST (retrying the request that failed instead).
        entry.interrupted = False
        if self._interrupting.get(owner) is entry:
            del self._interrupting[owner]
        if entry.owner is owner:
            self._interrupt_owner(entry)

    def _resend_lost_interrupt(self) -> bool:
        """REST is about to retry a request that failed, in the caller's task. If an interrupt
        of ours was on its way to that task and the HTTP layer took it back (aiohttp fails the
        request as timed out instead), send it again now, in the same step: found lost only by
        _check_interrupt a few ms later, a cancel the user made meanwhile would be taken for
        ours and swallowed. Returns whether it did (the call then ends at REST's next await,
        with no retry)."""
        task = asyncio.current_task()
        entry = self._interrupting.get(task)
        if entry is None or not entry.interrupted or entry.closed or entry.owner is not task:
            return False
        assert task is not None
        if task.cancelling() <= self._interrupt_bases.get(entry, 0):
            task.cancel()  # (REST's next await raises it; _check_interrupt sees it pending)
            return True
        return False

    async def _reconcile(self, entries: list[Call], level: int) -> None:
        if not entries:
            return
        log.log(level, "reconciling %d pending cancels over REST after a reconnect", len(entries))
        queue = deque(entries)
        loop = self._loop
        assert loop is not None
        # A few lookups at a time: /v5/order/realtime allows 50 requests/s (§7). Tasks of this
        # one's own, not a task group: a group's second cancel does not reach its workers, and
        # the HTTP layer may take the first back (see _end_all).
        workers = [
            loop.create_task(self._reconcile_worker(queue), name=f"bybit_cancel.reconcile-{i}")
            for i in range(min(8, len(entries)))
        ]
        try:
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            queue.clear()  # (no worker takes another entry while they are being ended)
            await _end_all(workers)
            errors = [w.exception() for w in workers if not w.cancelled()]  # (all retrieved)
        for error in errors:
            if error is not None:
                raise error  # a bug: lookup failures are caught in the worker

    async def _reconcile_worker(self, queue: deque[Call]) -> None:
        loop = self._loop
        assert loop is not None
        while queue:
            entry = queue.popleft()
            if entry.final is not None or entry.error is not None:
                continue
            # Bounded: the entry's own caller keeps its own deadline and fallback. A task of the
            # worker's own, ended by _end_all: the HTTP layer may take a cancel back.
            lookup = loop.create_task(
                self._lookup(entry, None, owned=False), name="bybit_cancel.reconcile-lookup"
            )
            try:
                await asyncio.wait((lookup,), timeout=self._http_timeout * 2)
            finally:
                await _end_all([lookup])
            if lookup.cancelled():
                log.debug("reconcile lookup failed: no answer in %.1fs", self._http_timeout * 2)
                continue
            error = lookup.exception()
            if isinstance(error, BybitError):
                log.debug("reconcile lookup failed: %s", error)
            elif error is not None:
                raise error  # a bug


async def _end_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. The HTTP layer may take a cancel back
    (aiohttp does when its own timeout fires in the same turn, see _interrupt_owner) and the task
    then retries the request that failed: a task with no cancel on its way is cancelled again,
    every few ms. (A closed client's requests retry nothing, so on aclose() that ends even
    tasks that lose every cancel.) Cancelling the caller does not cut the wait short: that is
    raised once all have ended, so none outlives its owner."""
    for task in tasks:
        task.cancel()
    interrupted = False
    pending = [task for task in tasks if not task.done()]
    while pending:
        try:
            await asyncio.wait(pending, timeout=_INTERRUPT_CHECK)
        except asyncio.CancelledError:
            interrupted = True
        pending = [task for task in pending if not task.done()]
        for task in pending:
            if not task.cancelling():
                task.cancel()
    # A task may end with an error instead of its cancel (a closed client's ClientClosedError,
    # when the HTTP layer took the cancel back), and a caller being cancelled reads no task's
    # end: each error is retrieved here (the caller may read it again), not left to asyncio's
    # "Task exception was never retrieved" when the task is collected.
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None and interrupted:
            log.debug("%s ended with %r as it was cancelled", task.get_name(), error)
    if interrupted:
        raise asyncio.CancelledError


async def _keeping_mark(sent: BaseException, confirming: Awaitable[R]) -> R:
    """Await a confirmation of a send that failed with ``sent``. If the send may have landed, so
    may the cancel behind whatever error the confirmation raises instead (a lookup's own error
    never landed anything): the mark goes on it."""
    try:
        return await confirming
    except BybitError as err:
        if isinstance(sent, BybitError) and sent.may_have_landed:
            err.may_have_landed = True
        raise


def _transient(exc: BybitError) -> bool:
    """Worth asking again later: the network, throttling, a server error or a clock hiccup."""
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500
    if isinstance(exc, BybitAPIError):
        return not isinstance(exc, AuthenticationError) and exc.ret_code in _TRANSIENT_RET_CODES
    return False


# 10000 server timeout, 10002 timestamp (after one resync), 10016 server error / restarting,
# 10006 rate limit (bybit-protocol.md §6 "retCodes seen on cancel").
_TRANSIENT_RET_CODES = frozenset({10000, 10002, 10006, 10016})


def _fresh(exc: BaseException) -> BaseException:
    """A copy of ``exc`` to raise, so that many callers failed by one error do not share (and
    grow) one traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # an exception class that cannot be rebuilt from its args
        return exc
    clone.__traceback__ = None
    return clone


async def cancel_and_confirm(
    *,
    api_key: str,
    api_secret: str,
    category: str,
    symbol: str,
    order_id: str | None = None,
    order_link_id: str | None = None,
    order_filter: str | None = None,
    timeout: float = 10.0,
    **client_options: Any,
) -> CancelResult:
    """One-shot helper: open a client, cancel one order, await its final state, close.

    Takes the arguments of :meth:`BybitCancelClient.cancel_order` plus any of the client's options
    (``testnet``, ``demo``, ``rest_url``, ``ws_url``, ``session``...). Raises what they raise.
    ``timeout`` bounds connecting too: if the stream is not up in time, :class:`ConfirmationTimeout`
    (nothing was sent). Closing afterwards takes a moment more. For more than one cancel, keep a
    :class:`BybitCancelClient` open instead. Cancelling it is safe: the client is closed and
    nothing is left running (the cancel request may already have reached Bybit).
    """
    validate_cancel(
        category=category,
        symbol=symbol,
        order_id=order_id,
        order_link_id=order_link_id,
        order_filter=order_filter,
        timeout=timeout,
    )
    client = BybitCancelClient(api_key=api_key, api_secret=api_secret, **client_options)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await client.open()
        except TimeoutError as exc:
            if isinstance(exc, ConfirmationTimeout):
                raise
            raise ConfirmationTimeout(
                order_id=order_id,
                order_link_id=order_link_id,
                last_status=None,
                acknowledged=False,
                timeout=timeout,
                may_have_landed=False,  # still connecting: no cancel request has left
            ) from exc
        try:
            return await client.cancel_order(
                category=category,
                symbol=symbol,
                order_id=order_id,
                order_link_id=order_link_id,
                order_filter=order_filter,
                timeout=max(deadline - loop.time(), 0.001),
            )
        except ConfirmationTimeout as exc:
            exc.timeout = timeout  # the caller's, which covered connecting: not what was left
            raise
    finally:
        # Outside the deadline: a close cut short could leave the stream task behind.
        await client.aclose()
