"""websockets adapter: the private ``order`` stream, its heartbeat and its reconnects.

One owned supervisor task per open client reads frames, keeps the heartbeat and, when the
connection dies, reconnects with exponential backoff and jitter. Each (re)connection authenticates,
**waits for the auth reply**, subscribes, **waits for the subscribe reply** (§3, §12.5: subscribing
before the auth ack is refused), and only then counts as connected. Bybit replays nothing that was
pushed while a connection was down (§12.4), so the owner is told after every reconnect and looks the
pending cancels up over REST.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from ._exceptions import (
    AuthenticationError,
    BybitAPIError,
    BybitError,
    ClientClosedError,
    TransportError,
)
from ._models import WireOrder, WsMessage, encoder, ws_decoder
from ._signing import Credentials, scrub_key, scrubbed_snippet, scrubbed_start, ws_auth_args

__all__ = ["ConnectionState", "PrivateStream"]

log = logging.getLogger("bybit_cancel")

# A refused websocket auth or subscribe carries no retCode on /v5/private, only ret_msg, e.g.
# "Params Error" (§3); errors built from such replies carry this code.
WS_NO_RET_CODE = -1


class _NoFrameDumps(logging.Filter):
    """websockets logs every frame at DEBUG, auth frame (key and signature) included: drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg[:2] in ("> ", "< "))


# The connection's own logger: its state changes stay visible, its frame dumps do not.
_ws_log = logging.getLogger("bybit_cancel.websocket")
_ws_log.addFilter(_NoFrameDumps())


_CONT, _TEXT, _BINARY = Opcode.CONT, Opcode.TEXT, Opcode.BINARY


class _NoRedirectConnect(connect):
    """websockets' ``connect`` that follows no redirect. A redirect would carry the auth (the API
    key and a signature) to whatever host it names; REST refuses them for the same reason. The
    redirect is raised as the handshake error it is (``InvalidStatus``): a ``TransportError``
    from ``open()``, and on a reconnect a failed attempt, retried as any refused upgrade is
    (see ``_reconnect_forever``)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


# An HTTP 403 is Bybit's IP ban, which lasts at least 10 minutes and which retrying only extends
# (§7 IP limit: "terminate all HTTP sessions and wait for at least 10 minutes"). A reconnect that
# meets one on the upgrade waits this long before the next attempt (REST raises at once for one).
_IP_BAN_HOLD = 600.0

# A reconnect that keeps failing the same way (a redirect, a refused upgrade, a name that does not
# resolve, a refused connection) fails once per backoff cap (10 s by default) for as long as it
# lasts. The first failure of an outage is a WARNING, and so is a different one; the same failure
# again is DEBUG, but at most this often (seconds, on the loop's clock) a WARNING says it goes on.
_STILL_FAILING_EVERY = 300.0

# The handshake's timings in a failure's message ("0.03s of it taken by the connect") change from
# one attempt to the next: failures that differ only there are the same failure.
_TIMINGS = re.compile(r"\d+\.\d+s\b")

# No proxy from the environment (websockets reads it from 15 on; aiohttp runs with
# trust_env=False): REST and the stream take the same path, and a proxy variable meant for
# something else cannot fail the stream with an error that is not a TransportError.
_NO_PROXY: dict[str, Any] = (
    {"proxy": None} if "proxy" in inspect.signature(connect.__init__).parameters else {}
)


class _RoutingConnection(ClientConnection):
    """A websockets client connection that routes each message as it is parsed.

    websockets queues a parsed message for ``recv()`` and wakes the task waiting there, which then
    takes it: per push, a Future, a wake-up of the reader task and a turn of the event loop
    before the push is even decoded. Once subscribed, the stream sets :attr:`route`, and every
    whole message (one frame, text or binary) goes to it at once, inside ``data_received``
    (``process_event`` is websockets' hook for this; ``connect(create_connection=...)`` takes the
    subclass). The reader task still waits in ``recv()``: for the end of the connection, and for
    anything not routed here, which keeps its place in line:

    * messages queued before :attr:`route` was set (while auth and subscribe were read), or
      behind those: nothing is routed here until ``recv()`` has taken every queued message
      (:attr:`backlog`), so messages are routed in the order they came;
    * a fragmented message (Bybit sends none, RFC 6455 allows them): websockets assembles it.

    An error raised by :attr:`route` (a bug: the router catches what a frame can cause) ends the
    connection and is kept in :attr:`error` for the reader task to raise, as it would have raised
    it itself.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # (It gets a bytearray: websockets slices each frame out of its read buffer.)
        self.route: Callable[[bytes | bytearray | memoryview], object] | None = None
        # Whole messages handed to recv() and not yet taken by it (see take()).
        self.backlog = 0
        self.error: Exception | None = None

    def process_event(self, event: Event) -> None:
        route = self.route
        if (
            route is not None
            and type(event) is Frame
            and event.fin
            and (event.opcode is _TEXT or event.opcode is _BINARY)
            and not self.backlog
        ):
            # After an error the connection is closing: later messages (even in the same chunk)
            # are dropped, not queued for the reader task to route with the same router.
            if self.error is None:
                try:
                    route(event.data)
                except Exception as exc:  # a bug: raised by the reader task (see _serve)
                    self.error = exc
                    self.transport.abort()
            return
        if type(event) is Frame and event.fin and event.opcode in (_TEXT, _BINARY, _CONT):
            # A whole message, queued for recv(). (A fragmented one is queued frame by frame;
            # websockets refuses any other data frame between its first and its last, so none
            # is routed ahead of it.)
            self.backlog += 1
        super().process_event(event)

    async def take(self) -> bytes:
        """``recv(decode=False)``, keeping :attr:`backlog`: every read of this connection goes
        through here."""
        # websockets < 15 types recv() as returning str | bytes whatever `decode` says.
        raw: bytes = await self.recv(decode=False)  # type: ignore[assignment, unused-ignore]
        self.backlog -= 1
        return raw


class ConnectionState(enum.StrEnum):
    """State of the private stream."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


class PrivateStream:
    """The private websocket, owned by a client.

    Args:
        on_orders: called synchronously with each push's ``data[]``: as the push is parsed
            (inside the connection's ``data_received``, with no current task), or on the
            reader task for a message that waited in ``recv()``.
        on_reconnected: called after every successful reconnect (not after the first connect),
            with whether it ended its outage as far as is known: False while the outage is not
            settled (a connection of it was lost before it proved stable, and this one may go
            the same way: its INFO line waits until it has stayed up a ping interval and
            answered a ping), when the owner's own lines about the reconnect belong at DEBUG.
        on_failed: called once if the stream gives up for good (auth refused on a reconnect,
            and still refused once the clock was resynced).
        resync_clock: measures Bybit's clock; called once before retrying a refused auth.
    """

    def __init__(
        self,
        url: str,
        creds: Credentials,
        *,
        now_ms: Callable[[], int],
        on_orders: Callable[[list[WireOrder]], None],
        on_reconnected: Callable[[bool], None],
        on_failed: Callable[[BybitError], None],
        resync_clock: Callable[[], Awaitable[None]] | None,
        ping_interval: float,
        handshake_timeout: float,
        auth_expiry_ms: int,
        reconnect_backoff: tuple[float, float],
        rng: random.Random,
    ) -> None:
        self._url = url
        self._creds = creds
        self._now_ms = now_ms
        self._on_orders = on_orders
        self._on_reconnected = on_reconnected
        self._on_failed = on_failed
        self._resync_clock = resync_clock
        self._ping_interval = ping_interval
        self._handshake_timeout = handshake_timeout
        self._auth_expiry_ms = auth_expiry_ms
        self._backoff_base, self._backoff_cap = reconnect_backoff
        self._rng = rng
        self._ws: _RoutingConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opener: asyncio.Task[object] | None = None
        self._opener_cancelled = False
        self._opener_base = 0  # the opener's cancel count when open() began
        self._last_pong = 0.0
        # Whether the peer has answered a ping on this connection (since its subscribe), and
        # what the supervisor wants called when it first does (see _reconnect_forever).
        self._answered = False
        self._on_answered: Callable[[], None] | None = None
        self._req = 0
        self.state = ConnectionState.DISCONNECTED
        self.reconnects = 0
        self.conn_id = ""

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, authenticate and subscribe, then start the supervisor task.

        Raises:
            AuthenticationError: the exchange refused the websocket auth (after a clock resync).
            BybitAPIError: the exchange refused the subscription to ``order``.
            TransportError: the connection or the handshake failed or timed out (the message
                names the phase: connect, auth or subscribe), the upgrade was refused or
                redirected (a redirect is never followed), or the auth was refused and the
                clock resync failed.
        """
        self.state = ConnectionState.CONNECTING
        opener = asyncio.current_task()
        self._opener = opener
        # Its cancel count now is what close()'s cancel is measured against (as asyncio.timeout
        # measures at its start): above 0 in a task being cancelled already.
        self._opener_base = 0 if opener is None else opener.cancelling()
        try:
            ws = await self._connect()
        except asyncio.CancelledError:
            # close() cancels a connect in progress; turn that (and only that) into an error.
            # (Back to the count before close()'s cancel: the opener may have been cancelled
            # already, by a shutdown it is part of; then only someone else's cancel goes on.)
            if (
                self._opener_cancelled
                and opener is not None
                and opener.uncancel() <= self._opener_base
            ):
                raise ClientClosedError("the client was closed while it was connecting") from None
            raise
        except BaseException as exc:
            if self.state is ConnectionState.CLOSED and isinstance(exc, BybitError):
                # close() cancelled the connect and the HTTP layer took that cancel back, failing
                # the clock resync it reached instead (aiohttp does when its own timeout fires in
                # the same turn): the connect failed because the client closed.
                raise ClientClosedError("the client was closed while it was connecting") from None
            if self.state is ConnectionState.CONNECTING:
                self.state = ConnectionState.DISCONNECTED
            raise
        finally:
            self._opener = None
        if self.state is ConnectionState.CLOSED:  # close() ran just as we connected
            await _close_ws(ws)
            raise ClientClosedError("the client was closed while it was connecting")
        self._ws = ws
        self.state = ConnectionState.CONNECTED
        log.info("private stream connected and subscribed to order (conn_id %s)", self.conn_id)
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="bybit_cancel.stream"
        )

    async def close(self) -> None:
        """Stop the supervisor and close the socket; interrupt a connect in progress.

        Idempotent; returns promptly. Cancelling it still closes the socket, then raises
        ``CancelledError``.
        """
        self.state = ConnectionState.CLOSED
        if self._opener is not None and not self._opener_cancelled:
            self._opener_cancelled = True
            self._opener.cancel()
        # A cancel of the task closing us goes on; one it already had (a shutdown handler that
        # closes the client, say) is not ours to raise.
        closer = asyncio.current_task()
        base = 0 if closer is None else closer.cancelling()
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    # The stream task's own cancellation ends here; one of the task closing us
                    # goes on (after the socket is closed below).
                    if closer is not None and closer.cancelling() > base:
                        raise
        finally:
            ws, self._ws = self._ws, None
            if ws is not None:
                await _close_ws(ws)

    # -- connection ----------------------------------------------------------------------------

    async def _connect(self, outage: _Outage | None = None) -> _RoutingConnection:
        """Connect, authenticate and subscribe; on a reconnect, ``outage`` is the outage it is
        an attempt to end (its log)."""
        try:
            return await self._connect_once()
        except AuthenticationError:
            if self._resync_clock is None:
                raise
        # "Params Error" is also what an auth with an expired `expires` gets (§3): a local clock
        # behind Bybit's by more than the margin. Measure the offset and try once more. (Said
        # once per outage: while the resync keeps failing, every attempt comes here.)
        level = logging.INFO if outage is None else outage.resync_level()
        log.log(level, "websocket auth refused; resyncing the clock and retrying once")
        try:
            await self._resync_clock()
        except BybitError as exc:
            # Unmeasured, the clock may still be the cause: transient, not a refusal for good.
            raise TransportError(f"websocket auth refused, clock resync failed: {exc}") from exc
        return await self._connect_once()

    async def _connect_once(self) -> _RoutingConnection:
        # One deadline for the connect, the auth and the subscribe (handshake_timeout); a
        # failure names the phase it ended in.
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._handshake_timeout
        limit = asyncio.timeout_at(deadline)
        try:
            async with limit:
                ws = await _NoRedirectConnect(
                    self._url,
                    open_timeout=None,  # (bounded by `limit`, the handshake's one deadline)
                    close_timeout=1.0,
                    # Liveness is the application-level ping/pong Bybit asks for (§3 Heartbeat).
                    ping_interval=None,
                    compression=None,
                    max_queue=None,
                    logger=_ws_log,
                    create_connection=_RoutingConnection,
                    **_NO_PROXY,
                )
        except (OSError, InvalidHandshake, InvalidURI) as exc:  # (TimeoutError is an OSError)
            if limit.expired():  # ours; not, say, the system's own connect timeout (ETIMEDOUT)
                raise TransportError(self._connect_too_slow()) from exc
            raise TransportError(_connect_failure(exc, self._creds.api_key)) from exc
        ws = cast(_RoutingConnection, ws)  # (create_connection above)
        connected = loop.time()
        if connected >= deadline:
            # The connect came back just as the deadline passed (before its timer ran): the
            # connect used it up, and an auth sent now could only time out.
            await _close_ws(ws)
            raise TransportError(self._connect_too_slow())
        phase = "auth"
        closed: ConnectionClosed | None = None
        try:
            async with asyncio.timeout_at(deadline):
                expires = self._now_ms() + self._auth_expiry_ms
                reply = await self._request(ws, "auth", ws_auth_args(self._creds, expires))
                if not reply.success:
                    # (Scrubbed as REST's are: Bybit's reply could echo the key.)
                    refused = self._scrub(reply.ret_msg)
                    raise AuthenticationError(WS_NO_RET_CODE, f"websocket auth refused: {refused}")
                phase = "subscribe"
                reply = await self._request(ws, "subscribe", ["order"])
                if not reply.success:
                    # (Scrubbed as the auth's is: its ret_msg is Bybit's free text, e.g. "error:
                    # handler not found,topic:..." (§3 Subscribe), on a connection that sent the key.)
                    refused = self._scrub(reply.ret_msg)
                    raise BybitAPIError(WS_NO_RET_CODE, f"websocket subscribe refused: {refused}")
        except TimeoutError as exc:
            await _close_ws(ws)
            raise TransportError(
                f"websocket {phase} got no reply in time (handshake_timeout "
                f"{self._handshake_timeout:g}s, {connected - start:.2f}s of it taken by the connect)"
            ) from exc
        except ConnectionClosed as exc:
            await _close_ws(ws)
            # The peer's close reason is its own text, on a connection that sent the key: the
            # error chains a copy with the key scrubbed, raised below, out of this block (raised
            # here, it would keep the original as its __context__, which tracebacks print).
            closed = self._scrub_closed(exc)
        except BaseException:
            await _close_ws(ws)
            raise
        if closed is not None:
            raise TransportError(f"websocket closed during {phase}: {closed!r}") from closed
        self.conn_id = reply.conn_id
        self._last_pong = asyncio.get_running_loop().time()
        self._answered = False
        return ws

    def _connect_too_slow(self) -> str:
        return (
            "websocket connect did not complete within handshake_timeout "
            f"({self._handshake_timeout:g}s)"
        )

    def _scrub_closed(self, exc: ConnectionClosed) -> ConnectionClosed:
        """A copy of ``exc`` whose close frames' reasons are scrubbed (see :meth:`_scrub`)."""
        rcvd, sent = (
            None if c is None else dataclasses.replace(c, reason=self._scrub(c.reason))
            for c in (exc.rcvd, exc.sent)
        )
        return type(exc)(rcvd, sent, exc.rcvd_then_sent)

    def _scrub(self, text: str) -> str:
        """``text`` (a peer's words, in an error or a log) with the API key shown by its first
        four characters, as REST errors show it (_signing.scrub_key)."""
        return scrub_key(text, self._creds.api_key)

    async def _request(self, ws: _RoutingConnection, op: str, args: list[str | int]) -> WsMessage:
        """Send one op and wait for its reply; frames that arrive meanwhile are routed as usual."""
        self._req += 1
        req_id = f"{op}-{self._req}"
        message = encoder.encode({"req_id": req_id, "op": op, "args": args}).decode()
        # The auth's args and message hold its signature: neither stays in this frame, which
        # the traceback of a failed open() keeps (locals shown by Sentry, rich, loguru...).
        del args
        try:
            await ws.send(message)
        except BaseException as exc:
            # Its traceback holds websockets' send() frame, whose `message` is ours.
            raise exc.with_traceback(None)  # noqa: B904 (the same error: nothing to chain)
        finally:
            del message
        while True:
            msg = self._route(await ws.take())
            if msg is not None and msg.op == op:
                return msg

    # -- supervisor ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._reconnect_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not a network fault: fail loudly (pending calls get the error) rather than
            # leave callers waiting on a stream that no longer reads.
            log.exception("private stream task crashed")
            self.state = ConnectionState.FAILED
            self._on_failed(BybitError(f"the private stream task crashed: {exc!r}"))

    async def _reconnect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        hold_until = 0.0  # (an IP ban's hold: no attempt before then)
        # None until open()'s connection is lost: it belongs to no outage.
        outage: _Outage | None = None
        # A connection is stable once it has stayed up one ping interval and the peer has
        # answered a ping on it; lost before that, it ended no outage: a gateway that drops every
        # connection right after the subscribe (a flapping connection), or that answers the
        # subscribe and then nothing (a silent one, cut by the heartbeat after two intervals),
        # makes one outage, logged as one. Time, because a gateway may answer the subscribe,
        # even a ping, and drop the connection right after; a pong, because the heartbeat keeps
        # a connection only while pongs come (§3 Heartbeat), and any other frame (a push, say)
        # does not keep it. The first ping goes out one interval after the connection came up
        # and a live peer answers it at once: a healthy connection is stable after about one
        # interval, which is also when the backoff starts over, so "stable" means one thing for
        # both.
        stable_for = self._ping_interval
        up_since = loop.time()
        # The INFO that ends an outage whose connections were lost before they proved stable,
        # logged once the last one has (at its timer, or at its first pong if that comes later,
        # or at its loss if that comes first), dropped if it is lost before.
        deferred: Callable[[], None] | None = None
        timer: asyncio.TimerHandle | None = None

        def settle() -> None:
            nonlocal deferred
            info, deferred = deferred, None
            # (Not once close() has begun: its timer or the first pong may come in the turn
            # before this task's finally drops them.)
            if info is not None and self.state is not ConnectionState.CLOSED:
                info()

        def stayed_up() -> None:  # the timer, stable_for after the connection came up
            if self._answered:
                settle()
            else:
                self._on_answered = settle  # called by the router at the first pong

        try:
            while True:
                ws = self._ws
                if ws is not None:
                    closed, silent = await self._serve(ws)
                    down_since = loop.time()
                    up_for = down_since - up_since
                    # Compared as the heartbeat compares its ping's time (``now >= start +
                    # interval``), not ``up_for >= stable_for``: on a clock that counts whole
                    # milliseconds (uvloop's), a connection dropped in the millisecond of its first
                    # ping measured 0.19999999999708962 up for an interval of 0.2, and was counted
                    # as lost soon after it came up, the backoff growing on.
                    stable = down_since >= up_since + stable_for and self._answered
                    self._on_answered = None
                    if timer is not None:
                        timer.cancel()
                        timer = None
                    if stable:
                        settle()  # (lost just as it proved stable, before its timer ran)
                    deferred = None
                    # Only a stable connection resets the backoff: one dropped right after its
                    # handshake, or silent from then on, meets the growing backoff (§3
                    # Connection limits: "do not frequently connect and disconnect").
                    if stable:
                        attempt = 0
                    self._ws = None
                    await _close_ws(ws)
                    if silent:
                        closed = f"silent for {2 * self._ping_interval:.1f}s (no pong)"
                    if outage is None or stable:
                        # (Scrubbed: the close reason is the peer's text, on a connection that
                        # sent the key.)
                        if silent:
                            log.warning("private stream %s; reconnecting", closed)
                        else:
                            log.warning("private stream closed: %s", closed)
                        outage = _Outage(down_since)
                    else:
                        outage.lost(down_since, attempt, up_for, closed)
                if outage is None:  # (a stream task started without a connection)
                    outage = _Outage(loop.time())
                self.state = ConnectionState.RECONNECTING
                attempt += 1
                # Full jitter; the first retry comes quickly, later ones spread out (Bybit: "Do
                # not frequently connect and disconnect", §3 Connection limits). The exponent is
                # bounded, or it overflows a float after ~1025 failures in a row (hours of outage).
                cap = min(self._backoff_cap, self._backoff_base * 2 ** min(attempt - 1, 60))
                await asyncio.sleep(max(self._rng.uniform(cap / 2, cap), hold_until - loop.time()))
                try:
                    self._ws = await self._connect(outage)
                except AuthenticationError as exc:
                    log.error("private stream: %s; giving up", exc)
                    self.state = ConnectionState.FAILED
                    self._on_failed(exc)
                    return
                except (TransportError, BybitAPIError) as exc:
                    # Anything short of a refused auth is retried: no connection, a timeout, an
                    # HTTP refusal of the upgrade (401, 5xx alike; a 403, an IP ban, after
                    # _IP_BAN_HOLD) or a redirect. A redirect is never followed, and retrying the
                    # URL sends nothing but an upgrade request; meanwhile every cancel confirms
                    # over REST after push_grace, and the stream comes back if the redirect stops.
                    # Giving up would fail every pending and later call, REST ones included, which
                    # a redirect of the stream does not stop; only a refused auth (REST signs with
                    # the same key) proves the client cannot work.
                    if self.state is ConnectionState.CLOSED:
                        # close() cancelled this task and the cancel was taken back on its way:
                        # aiohttp does when its own timeout fires in the same turn (a clock
                        # resync's request then fails as timed out). The attempt failed because
                        # the client is closing: no outage to log, and reconnecting on would
                        # keep close() waiting for ever.
                        return
                    now = loop.time()
                    banned = _ip_banned(exc)
                    if banned:
                        hold_until = now + _IP_BAN_HOLD
                    outage.failed(now, attempt, self._scrub(str(exc)), banned=banned)
                    continue
                self.reconnects += 1
                self.state = ConnectionState.CONNECTED
                up_since = loop.time()
                back = outage.reconnected(up_since, attempt, self.conn_id, stable_for)
                if back is not None:
                    deferred = back
                    timer = loop.call_at(up_since + stable_for, stayed_up)
                self._on_reconnected(back is None)
        finally:
            self._on_answered = None
            if timer is not None:
                timer.cancel()

    async def _serve(self, ws: _RoutingConnection) -> tuple[str, bool]:
        """Route frames until the connection dies (closed, reset or silent); return how it
        ended (the close, scrubbed), which the supervisor logs, and whether the heartbeat ended
        it (the peer was silent: no pong for two intervals)."""
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(ws), name="bybit_cancel.heartbeat"
        )
        route = self._route
        silent = False
        # From here on, pushes are routed as they are parsed (_RoutingConnection); recv() returns
        # what was queued before (routed here, in order, before any later push), and raises at
        # the end of the connection.
        ws.route = route
        try:
            while True:
                route(await ws.take())
        except ConnectionClosed as exc:
            error, ws.error = ws.error, None
            if error is not None:  # the router's own bug, raised where it always was
                try:
                    raise error from None
                finally:
                    del error  # (not kept by this frame, which its traceback holds)
            # (Scrubbed: the close reason is the peer's text, on a connection that sent the key.)
            closed = self._scrub(str(exc))
        finally:
            ws.route = None
            heartbeat.cancel()
            try:
                silent = await heartbeat
            except asyncio.CancelledError:
                # The heartbeat's own cancellation ends here; a close() cancelling this task
                # while it waits goes on (swallowed, the supervisor would reconnect and close()
                # would wait for it forever).
                if _cancelling():
                    raise
        return closed, silent

    async def _heartbeat(self, ws: ClientConnection) -> bool:
        """Ping every interval (Bybit recommends 20 s, §3); no pong for two intervals = dead:
        abort the connection and return True (the supervisor logs it)."""
        loop = asyncio.get_running_loop()
        interval = self._ping_interval
        next_ping = loop.time() + interval
        while True:
            now = loop.time()
            dead_at = self._last_pong + 2 * interval
            if now >= dead_at:
                # Abort: a silent peer would not answer a closing handshake either.
                ws.transport.abort()
                return True
            if now >= next_ping:
                next_ping = now + interval
                self._req += 1
                try:
                    await ws.send(f'{{"req_id":"ping-{self._req}","op":"ping"}}')
                except ConnectionClosed:
                    return False
                continue
            await asyncio.sleep(min(next_ping, dead_at) - now)

    def _route(self, raw: bytes | bytearray | memoryview | str) -> WsMessage | None:
        """Decode one frame and act on it. The hot path: no logging above DEBUG, no allocation
        beyond the decode."""
        try:
            # msgspec < 0.19 types decode() as taking bytes | str; its decoder takes any buffer.
            msg = ws_decoder.decode(raw)  # type: ignore[arg-type, unused-ignore]
        except (msgspec.DecodeError, RecursionError):  # (msgspec: nested past its limit)
            return self._route_odd(raw)
        data = msg.data
        if data is not None:
            # We subscribe to "order" alone, so that is the topic of every push; the prefix test
            # (category topics, "order.spot", §4) runs only for any other.
            topic = msg.topic
            if topic == "order" or topic.startswith("order"):
                self._on_orders(data)
            return msg
        # Pong detection as both official SDKs do it: op "pong" or ret_msg "pong" (§3 Heartbeat).
        if msg.op == "pong" or msg.ret_msg == "pong":
            self._last_pong = asyncio.get_running_loop().time()
            if not self._answered:  # the connection's first pong: half of "stable"
                self._answered = True
                answered, self._on_answered = self._on_answered, None
                if answered is not None:
                    # The deferred reconnect INFO, once per outage: off the router's own turn,
                    # which logs nothing above DEBUG.
                    asyncio.get_running_loop().call_soon(answered)
        return msg

    def _route_odd(self, raw: bytes | bytearray | memoryview | str) -> WsMessage | None:
        """A frame the fast decoder refused. An order push with one odd order must not lose the
        others: decode its orders one by one. Anything else is ignored (and logged)."""
        try:
            obj = msgspec.json.decode(raw)  # type: ignore[arg-type, unused-ignore]  # (as in _route)
        except (msgspec.DecodeError, RecursionError):
            log.warning("ignoring a frame that is not JSON, or nested too deeply to read")
            return None
        if not isinstance(obj, dict):
            return None
        topic, data = obj.get("topic"), obj.get("data")
        if isinstance(topic, str) and topic.startswith("order") and isinstance(data, list):
            orders = _decode_orders(data)
            if orders:
                self._on_orders(orders)
        else:
            log.warning("ignoring a frame of unexpected shape (op=%r)", obj.get("op"))
        return None


class _Outage:
    """The log of one outage of the stream, from the loss of a stable connection (one that
    stayed up a ping interval and answered a ping) to the reconnect that ends it: :meth:`failed`
    logs each failed attempt, :meth:`lost` each connection lost before it proved stable,
    :meth:`reconnected` each reconnect (the caller passes the loop's time).

    A failure that does not go away is logged in full once, as a WARNING, not once per attempt
    for ever: repeats are DEBUG, and at most every ``_STILL_FAILING_EVERY`` seconds a WARNING
    says it goes on, how many attempts failed since the last WARNING and how long the stream
    has been down. A different failure, and each IP ban (one per ``_IP_BAN_HOLD``), is a WARNING
    at once. A connection lost before it proved stable (a gateway that drops every connection
    right after the subscribe, or answers the subscribe and then nothing) is a failed attempt of
    the same outage, not an outage of its own.
    """

    def __init__(self, since: float) -> None:
        self.since = since
        self.attempts = 0  # failed so far (connections lost before they proved stable included)
        self.unproven = 0  # connections lost before they proved stable
        self._resynced = False  # a refused auth has made an attempt resync the clock
        self._failure = ""  # the last failure's message, timings masked (_TIMINGS)
        self._warned = since  # when the last WARNING was logged
        self._quiet = 0  # failures logged at DEBUG since that WARNING

    def failed(self, now: float, attempt: int, error: str, *, banned: bool) -> None:
        """Log failed attempt number ``attempt`` (the backoff's count), whose scrubbed message is
        ``error``; ``banned``: it was refused with HTTP 403, held off ``_IP_BAN_HOLD``."""
        self.attempts += 1
        failure, self._failure = self._failure, _TIMINGS.sub("<t>s", error)
        since_warning = _attempts(self._quiet + 1)
        if banned:
            log.warning(
                "private stream reconnect %d failed: %s; HTTP 403 is an IP ban (Bybit: wait at "
                "least 10 minutes), next attempt in %.0f s; cancels confirm over REST meanwhile",
                attempt,
                error,
                _IP_BAN_HOLD,
            )
        elif self.attempts == 1:
            log.warning("private stream reconnect %d failed: %s", attempt, error)
        elif self._failure != failure:
            log.warning(
                "private stream reconnect %d failed: %s; down for %s, %s failed since the last "
                "warning",
                attempt,
                error,
                _duration(now - self.since),
                since_warning,
            )
        elif now - self._warned >= _STILL_FAILING_EVERY:
            log.warning(
                "private stream reconnect %d failed: %s; still failing: %s failed since the last "
                "warning, down for %s",
                attempt,
                error,
                since_warning,
                _duration(now - self.since),
            )
        else:
            log.debug("private stream reconnect %d failed: %s", attempt, error)
            self._quiet += 1
            return
        self._warned = now
        self._quiet = 0

    def resync_level(self) -> int:
        """The level of the line saying that an attempt's auth was refused and the clock is
        measured again: INFO the first time in this outage, DEBUG after. (While the measure
        fails, each attempt fails that way too, and :meth:`failed` throttles that failure.)"""
        level = logging.DEBUG if self._resynced else logging.INFO
        self._resynced = True
        return level

    def lost(self, now: float, attempt: int, up_for: float, closed: str) -> None:
        """Log the loss of the connection that reconnect ``attempt`` made, ``up_for`` seconds
        after it came up, before it proved stable (too soon, or before it answered a ping: it
        did not end the outage); ``closed``: how it ended."""
        self.unproven += 1
        # (Its time is masked as the handshake's are: losses that differ only there are one.)
        error = f"connection lost {up_for:.2f}s after it came up: {closed}"
        self.failed(now, attempt, error, banned=False)

    def reconnected(
        self, now: float, attempt: int, conn_id: str, stable_for: float
    ) -> Callable[[], None] | None:
        """Log reconnect ``attempt``, which got through. Its INFO line says how long the stream
        was down and how many attempts it took. After a connection of this outage was lost before
        it proved stable, this one may go the same way: the line is DEBUG now, and the INFO is
        returned, for the caller to log once the connection has proved stable, having stayed up
        ``stable_for`` seconds and answered a ping (and to drop if it is lost before)."""
        message = (
            "private stream reconnected and subscribed to order (conn_id %s) after %s down and %s"
        )
        args: tuple[object, ...] = (
            conn_id,
            _duration(now - self.since),
            _attempts(self.attempts + 1),
        )
        if not self.unproven:
            log.info(message, *args)
            return None
        log.debug("%s; not yet stable (reconnect %d)", message % args, attempt)
        lost = "1 connection" if self.unproven == 1 else f"{self.unproven} connections"
        stable = (
            message + " (%s lost before proving stable; this one has stayed up %s and answered a "
            "ping)",
            *args,
            lost,
            _duration(stable_for),
        )
        return functools.partial(log.info, *stable)


def _duration(seconds: float) -> str:
    """A stretch of time as an operator reads it: 4.2 s, 12 min 5 s, 3 h 20 min."""
    tenths = round(seconds, 1)
    if tenths < 60:
        return f"{tenths:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _attempts(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"


def _ip_banned(exc: BaseException) -> bool:
    """Whether a failed connect was the upgrade refused with HTTP 403 (§7: an IP ban)."""
    cause = exc.__cause__
    return isinstance(cause, InvalidStatus) and cause.response.status_code == 403


def _connect_failure(exc: Exception, api_key: str) -> str:
    """The message of a failed websocket connect, the API key scrubbed (the peer's text may echo
    it) before each part is cut. A redirect is named as such: it is refused, never followed
    (_NoRedirectConnect)."""
    if isinstance(exc, InvalidStatus) and 300 <= exc.response.status_code < 400:
        location = exc.response.headers.get_all("Location")
        target = f" to {scrubbed_start(repr(location[0]), api_key, 200)}" if location else ""
        return (
            f"websocket connect redirected (HTTP {exc.response.status_code}{target}): not "
            "followed, a redirect would take the auth elsewhere"
        )
    if isinstance(exc, InvalidStatus):
        # The status and the start of the body, where Bybit puts its reason (a 403's "access too
        # frequent", §7): the repr would carry the whole response, headers first.
        response = exc.response
        body = scrubbed_snippet(bytes(response.body or b""), api_key)
        return (
            f"websocket upgrade refused (HTTP {response.status_code} "
            f"{response.reason_phrase}): {body!r}"
        )
    # (Capped: a handshake error's repr can carry the whole HTTP response, body included.)
    return f"websocket connect failed: {scrubbed_start(repr(exc), api_key, 300)}"


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled: awaiting a child task that was
    cancelled raises CancelledError too, and only the task's own cancellation must go on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# The wire names of the fields the client reads (WireOrder's, camelCase).
_WIRE_NAMES = tuple(f.encode_name for f in msgspec.structs.fields(WireOrder))


def _decode_orders(items: list[object]) -> list[WireOrder]:
    """Decode a push's orders one by one. Bybit sends every field we read as a string (§4); an
    order with a number there instead (an id or a time, say) is read with the number's decimal
    text, and a null as "", so that its final state is not lost to the schema; one that still
    does not fit (not an object, a field that is a list or an object) is skipped and logged."""
    out = []
    for item in items:
        try:
            out.append(msgspec.convert(item, WireOrder))
            continue
        except msgspec.ValidationError:
            pass
        if isinstance(item, dict) and all(
            v is None or (isinstance(v, str | int | float) and not isinstance(v, bool))
            for v in (item.get(name) for name in _WIRE_NAMES)
        ):
            fixed = {n: "" if item.get(n) is None else str(item[n]) for n in _WIRE_NAMES}
            out.append(msgspec.convert(fixed, WireOrder))
        else:
            log.warning("skipping an order update that does not fit the schema")
    return out


async def _close_ws(ws: ClientConnection) -> None:
    try:
        async with asyncio.timeout(1.5):
            await ws.close()
    except BaseException as exc:  # timed out, failed, or we were cancelled: do not leave it open
        ws.transport.abort()
        if not isinstance(exc, TimeoutError | OSError | ConnectionClosed):
            raise
