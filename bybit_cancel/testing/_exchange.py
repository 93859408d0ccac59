"""A protocol-faithful local fake of Bybit v5: REST + private websocket on one aiohttp port.

Every behaviour here mirrors /work/shared/bybit-protocol.md ("protocol §N" below) and the real
messages in /work/shared/fixtures/bybit. Where Bybit's behaviour is not documented, the choice
made is marked "undocumented" in a comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import itertools
import json
import logging
import random
import string
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

__all__ = ["FakeExchange", "FakeOrder", "Fault", "RecordedRequest"]

log = logging.getLogger(__name__)

CATEGORIES: Final = frozenset({"linear", "inverse", "spot", "option"})
SPOT_FILTERS: Final = frozenset({"Order", "tpslOrder", "StopOrder"})
# protocol §5: the final set used for confirmation.
FINAL_STATUSES: Final = frozenset(
    {"Cancelled", "PartiallyFilledCanceled", "Filled", "Rejected", "Deactivated"}
)
# Requests per second per endpoint when `rate_limits` does not name it: lifted far above Bybit's
# own, so that tests and benchmarks can burst. Pass `rate_limits=BYBIT_RATE_LIMITS` to meet
# Bybit's defaults (protocol §7, UTA). Each (endpoint, category) has its own window (one shared
# window for every category that is not Bybit's); a key "<endpoint> <category>" sets one
# category's limit, over the endpoint's own.
DEFAULT_RATE_LIMIT: Final = 10_000
BYBIT_RATE_LIMITS: Final = {
    "/v5/order/cancel": 10,
    "/v5/order/cancel spot": 20,
    "/v5/order/create": 10,
    "/v5/order/create spot": 20,
    "/v5/order/realtime": 50,
    "/v5/order/history": 50,
}
MAX_ORDERS_PER_PUSH: Final = 50
# Bybit's docs, websocket/private/dcp.mdx: "dcp" is deprecated for dcp.future, dcp.spot and
# dcp.option (plain topics, not categories).
_PRIVATE_TOPICS: Final = frozenset(
    {
        "order",
        "execution",
        "execution.fast",
        "position",
        "wallet",
        "greeks",
        "dcp",
        "dcp.future",
        "dcp.spot",
        "dcp.option",
    }
)
# The categorised forms of each all-in-one topic (protocol §3, §11; Bybit's docs,
# websocket/private/position.mdx: position.linear, position.inverse, position.option, no spot).
_CATEGORISED_FAMILIES: Final[dict[str, frozenset[str]]] = {
    "order": CATEGORIES,
    "execution": CATEGORIES,
    "execution.fast": CATEGORIES,
    "position": frozenset({"linear", "inverse", "option"}),
}
_LINK_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_")
_ZERO: Final = Decimal(0)


def _perpetual(
    symbol: str, contract_type: str, base: str, quote: str, settle: str
) -> dict[str, Any]:
    # Field order and string formats of the documented example of /v5/market/instruments-info
    # (https://bybit-exchange.github.io/docs/v5/market/instrument, linear BTCUSDT).
    return {
        "symbol": symbol,
        "contractType": contract_type,
        "status": "Trading",
        "baseCoin": base,
        "quoteCoin": quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": "2",
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": "0.50", "maxPrice": "999999.00", "tickSize": "0.50"},
        "lotSizeFilter": {
            "maxOrderQty": "100.000",
            "minOrderQty": "0.001",
            "qtyStep": "0.001",
            "postOnlyMaxOrderQty": "1000.000",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": settle,
    }


# What /v5/market/instruments-info lists, by category (enough for ccxt's load_markets).
_INSTRUMENTS: Final[dict[str, tuple[dict[str, Any], ...]]] = {
    "linear": (_perpetual("BTCUSDT", "LinearPerpetual", "BTC", "USDT", "USDT"),),
    "inverse": (_perpetual("BTCUSD", "InversePerpetual", "BTC", "USD", "BTC"),),
}

_KIND_CTL: Final = 0
_KIND_PUSH: Final = 1
_KIND_PONG: Final = 2


def _dumps(obj: Any) -> str:
    # Bybit sends compact JSON (fixtures ws-private/order.push.linear-cancelled.json, rest/*observed*).
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _dec(s: str | None) -> Decimal:
    if not s:
        return _ZERO
    try:
        return Decimal(s)
    except InvalidOperation:
        return _ZERO


def _places(s: str) -> int:
    exp = _dec(s).as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


def _plain(d: Decimal) -> str:
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def _padded(d: Decimal, places: int) -> str:
    """``d`` with at least ``places`` decimals, never fewer than it has (a fill finer than the
    order's qty, e.g. 0.003 of 0.01, must not read "0.00")."""
    exp = d.normalize().as_tuple().exponent
    if isinstance(exp, int) and -exp > places:
        places = -exp
    return f"{d:.{places}f}"


def _place_type(order: FakeOrder) -> str:
    # placeType is "option used. iv, price" (Bybit's docs, order/open-order.mdx): the documented
    # option push (protocol §4, ws-private/order.push.option-filled.json) says "price"; every
    # other category's example has "".
    return "price" if order.category == "option" else ""


class Fault(enum.StrEnum):
    """Faults injected on ``POST /v5/order/cancel`` (see ``FakeExchange.add_fault``)."""

    DELAY_PUSH = enum.auto()
    PUSH_BEFORE_ACK = enum.auto()
    DROP_PUSH = enum.auto()
    DUPLICATE_PUSH = enum.auto()
    STALE_AFTER_FINAL = enum.auto()
    CLOSE_WS_AFTER_ACK = enum.auto()
    STALL_WS_AFTER_ACK = enum.auto()
    HTTP_502 = enum.auto()
    REST_TIMEOUT = enum.auto()
    RATE_LIMIT_10006 = enum.auto()
    TIMESTAMP_10002 = enum.auto()
    HTTP_403 = enum.auto()
    HTTP_429 = enum.auto()
    FILL_BEFORE_CANCEL = enum.auto()
    DOUBLE_FILLED = enum.auto()
    # protocol §6: 170212 "Cancel order request processing" ("wait for WS"): the cancel is
    # applied and pushed as usual, but the REST answer is that error instead of the ack.
    PROCESSING_170212 = enum.auto()
    # protocol §6: 10016 "Server error" ("retry, then verify"); applied or not (`applied`).
    SERVER_ERROR_10016 = enum.auto()


# Faults that act on the HTTP exchange alone; they can fire whether or not the order exists.
_TRANSPORT_FAULTS: Final = frozenset(
    {
        Fault.HTTP_502,
        Fault.REST_TIMEOUT,
        Fault.RATE_LIMIT_10006,
        Fault.TIMESTAMP_10002,
        Fault.HTTP_403,
        Fault.HTTP_429,
        Fault.SERVER_ERROR_10016,
    }
)
# Chaos default: every fault after which the truth can still be learned (by WS or REST).
# HTTP_403 means "stop for 10 minutes" (protocol §7) and TIMESTAMP_10002 asks for a clock
# resync, so neither belongs in a random mix.
_CHAOS_DEFAULT: Final = tuple(f for f in Fault if f not in {Fault.HTTP_403, Fault.TIMESTAMP_10002})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as the fake received it (raw query string and raw body bytes)."""

    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]


@dataclass(eq=False)
class FakeOrder:
    """The fake's own record of an order: the truth tests compare against.

    String fields hold Bybit's wire formatting for the order's category (protocol §4).
    """

    order_id: str
    order_link_id: str
    category: str
    symbol: str
    side: str
    order_type: str
    price: str
    qty: str
    status: str = "New"
    cum_exec_qty: str = "0"
    leaves_qty: str = ""
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    created_time: int = 0
    updated_time: int = 0
    trigger_price: str | None = None
    order_filter: str = "Order"
    stop_order_type: str = ""
    time_in_force: str = "GTC"
    position_idx: int = 0
    reduce_only: bool = False
    trigger_direction: int = 0
    avg_price: str = ""
    _cancel_pending: bool = field(default=False, init=False, repr=False)
    # The `set_chaos` epoch in which this order's first cancel drew (-1: never).
    _chaos_epoch: int = field(default=-1, init=False, repr=False)

    @property
    def is_final(self) -> bool:
        """True when ``status`` is one of Bybit's final order statuses."""
        return self.status in FINAL_STATUSES


@dataclass(eq=False)
class _FaultSpec:
    fault: Fault
    order_id: str | None
    remaining: int | None
    delay: float
    applied: bool
    seq: int = 0  # arming order: among the faults that match a cancel, the first armed fires


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    conn_id: str
    transport: asyncio.Transport | None
    queue: asyncio.Queue[tuple[int, str | bytes, asyncio.Future[None] | None]]
    authed: bool = False
    stalled: bool = False
    closed: bool = False
    topics: set[str] = field(default_factory=set)
    order_topics: list[str] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    idle: asyncio.TimerHandle | None = None
    last_sent: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _AuthError(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__("auth failed")
        self.response = response


def _is_number(value: object) -> bool:
    # (A bool is an int to Python: True would read as 1, so it is refused where a number is
    # meant. The client has its own such checks; the fake imports nothing of the client's.)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    """A positive, finite number (NaN fails the comparison)."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")
    )


def _refuse(name: str, wanted: str, value: object) -> NoReturn:
    raise ValueError(f"{name} must be {wanted}, got {value!r}")


class FakeExchange:
    """A local Bybit v5 fake: REST and the private websocket on one 127.0.0.1 port.

    Use ``await fx.start()`` / ``await fx.stop()`` or ``async with FakeExchange(...) as fx``.

    Rate limits are lifted by default (10,000 requests/s per endpoint and category); pass
    ``rate_limits=BYBIT_RATE_LIMITS`` for Bybit's own (10/s for a linear cancel, 20/s for a spot
    one), or any ``{endpoint: per_second}``, where a key ``"<endpoint> <category>"`` sets one
    category's limit. Requests whose category is not one of Bybit's four (answered 10001) all
    count in one window per endpoint, under the endpoint's own limit.

    Among its switches (attributes, read as each request or websocket message comes):
    ``refuse_auth`` answers every websocket auth "Params Error"; ``clock_offset_ms`` moves the
    server clock; ``drop_after_subscribe`` drops each websocket (a network drop, no close
    frame) as soon as its subscribe reply is written, as a flapping gateway would: every
    connection comes up and is lost at once; ``stall_after_subscribe`` stalls each websocket
    (see :meth:`stall`: open, but it sends nothing, not even a pong) as soon as its subscribe
    reply is written, as a gateway that goes silent would: every connection comes up and is
    then cut by the client's heartbeat; ``market_time_status`` (an HTTP status, or
    ``None``) makes ``GET /v5/market/time`` answer that status instead of the time, so that a
    clock resync fails.

    What it records for tests: ``requests`` (every HTTP request, as ``RecordedRequest``),
    ``ws_received`` (every JSON object received on a websocket) and ``fault_log`` (``(order id,
    Fault)`` for every fault that fired), oldest first; ``pushes_sent`` and ``auth_count``.

    Memory stays bounded however long it runs (a bot's test suite, a soak run):

    - ``max_recorded`` (default 10,000) bounds ``requests``, ``ws_received`` and
      ``fault_log``, which stay lists: each keeps its newest ``max_recorded`` entries and
      drops older ones in batches, so it holds at most ``max_recorded + max_recorded // 4``.
      ``0`` records nothing, ``None`` keeps everything. (Chaos notes its draw on the order,
      which forgets it with the order; for the ids of orders it does not know, it remembers
      the newest ``max_recorded``.)
    - ``history_limit`` (default 10,000) bounds the finished orders (Filled, Cancelled,
      PartiallyFilledCanceled, Rejected, Deactivated) remembered per category. Past it, the
      category's order that finished first is forgotten, as Bybit's history ages out, oldest first
      (protocol §8): ``order()``, ``/v5/order/realtime`` and ``/v5/order/history`` no longer
      find it, a cancel of it answers "does not exist", its ``orderLinkId`` is free again, and
      the targeted faults aimed at it (by its id or link id) are dropped unfired. It must be
      at least ``realtime_closed_limit``: Bybit still finds its recent 500 closed orders per
      category by id. ``None`` never forgets, nor does any bound while
      ``realtime_closed_limit`` is ``None`` (realtime then finds every closed order).
    - Kept regardless: every open order (New, PartiallyFilled, Untriggered), however old;
      ``pushes_sent`` and ``auth_count``; faults not aimed at a known order (untargeted ones,
      or aimed at an id no order has) until they fire or ``clear_faults()``.

    Both bounds are attributes too; a change applies from the next record or finished order.

    Raises ``ValueError`` (before any I/O, naming the option) for an empty or non-string key,
    secret or host; a ``recv_window_check`` that is not a bool; a ``seed`` that is not an
    integer; a ``port`` outside 0-65535; a bound that is not ``None`` or an integer >= 0; a
    negative or non-finite ``push_delay``; an ``idle_timeout`` that is not ``None`` or a
    positive finite number; a ``rate_limits`` value that is not an integer >= 1; or a
    ``history_limit`` below ``realtime_closed_limit``.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        api_secret: str = "test-secret",
        *,
        push_delay: float = 0.0,
        recv_window_check: bool = True,
        seed: int = 0,
        rate_limits: Mapping[str, int] | None = None,
        realtime_closed_limit: int | None = 500,
        idle_timeout: float | None = 600.0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_recorded: int | None = 10_000,
        history_limit: int | None = 10_000,
    ) -> None:
        # Refused here, before the server starts, rather than as a confusing answer mid-test.
        for name, text in (("api_key", api_key), ("api_secret", api_secret), ("host", host)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{name} must be a non-empty string, got a {type(text).__name__}")
        if not isinstance(recv_window_check, bool):
            _refuse("recv_window_check", "True or False", recv_window_check)
        if not _is_int(seed):
            _refuse("seed", "an integer", seed)
        if not (_is_int(port) and 0 <= port <= 65_535):
            _refuse("port", "an integer from 0 to 65535", port)
        for name, bound in (
            ("max_recorded", max_recorded),
            ("history_limit", history_limit),
            ("realtime_closed_limit", realtime_closed_limit),
        ):
            if bound is not None and not (_is_int(bound) and bound >= 0):
                _refuse(name, "None or an integer >= 0", bound)
        if not (_is_seconds(push_delay) or (_is_number(push_delay) and push_delay == 0)):
            _refuse("push_delay", "seconds >= 0", push_delay)
        if idle_timeout is not None and not _is_seconds(idle_timeout):
            _refuse("idle_timeout", "None or a positive number of seconds", idle_timeout)
        for endpoint, limit in (rate_limits or {}).items():
            if not (isinstance(endpoint, str) and _is_int(limit) and limit >= 1):
                raise ValueError(
                    'rate_limits maps an endpoint ("/v5/order/cancel", or with its category: '
                    f'"/v5/order/cancel linear") to requests per second >= 1, got '
                    f"{endpoint!r}: {limit!r}"
                )
        if (
            history_limit is not None
            and isinstance(realtime_closed_limit, int)
            and history_limit < realtime_closed_limit
        ):
            # protocol §8: a closed order is found by id in /v5/order/realtime while it is among
            # the recent `realtime_closed_limit` of its category: the fake must still know it.
            raise ValueError(
                f"history_limit ({history_limit}) must be at least realtime_closed_limit "
                f"({realtime_closed_limit}): /v5/order/realtime still finds those orders by id"
            )
        self.push_delay = push_delay
        self.recv_window_check = recv_window_check
        self.rate_limits: dict[str, int] = dict(rate_limits or {})
        self.realtime_closed_limit = realtime_closed_limit
        # protocol §3: "if there is no 'ping-pong' and no stream data sent from server end, the
        # connection will be cut off after 10 minutes" (checked every 30 s, so inexactly).
        self.idle_timeout = idle_timeout
        self.clock_offset_ms: int = 0
        self.refuse_auth: bool = False
        # While set, GET /v5/market/time answers this HTTP status (502, say: the public
        # endpoint down) instead of the time, so that a clock resync fails.
        self.market_time_status: int | None = None
        # A flapping gateway: while true, each websocket is dropped (a network drop, no close
        # frame) as soon as its subscribe reply is written, so every connection comes up and is
        # lost at once. Connections open when it is set are left alone.
        self.drop_after_subscribe: bool = False
        # A silent gateway: while true, each websocket is stalled (see stall()) as soon as its
        # subscribe reply is written: it stays open, answers no ping and sends no push.
        # Connections open when it is set are left alone.
        self.stall_after_subscribe: bool = False
        # The answer to a cancel of an order that has already ended. None: the not-found answer
        # (110001/170213), as observed; protocol §6 also lists 110008 "The order has been
        # completed or cancelled.", 110010, 170139 "Order has been filled.", 170142 and 170190.
        self.finished_answer: tuple[int, str] | None = None
        # protocol §8: history "may delay". An order that has ended shows in /v5/order/history
        # only this many seconds after its last update (0: at once).
        self.history_delay: float = 0.0
        # Diagnostic records, newest last, bounded by `max_recorded` (see the class docstring).
        self.max_recorded = max_recorded
        self.requests: list[RecordedRequest] = []
        self.ws_received: list[dict[str, Any]] = []
        self.pushes_sent: int = 0
        self.auth_count: int = 0
        self.fault_log: list[tuple[str, Fault]] = []
        # protocol §8: Bybit's history ages out, oldest first; finished orders kept per category.
        self.history_limit = history_limit

        self._host = host
        self._port = port
        self._credentials: dict[str, str] = {api_key: api_secret}
        self._rng = random.Random(seed)
        self._uid = 100_000_000 + self._rng.randrange(900_000_000)
        self._spot_seq = 1_700_000_000_000_000_000 + self._rng.randrange(10**15)
        self._push_seq = itertools.count(8_000_000_000 + self._rng.randrange(10**9))
        self._conn_seq = itertools.count(1)

        self._orders: dict[str, FakeOrder] = {}
        self._by_link: dict[str, str] = {}
        self._open: dict[tuple[str, str], dict[str, FakeOrder]] = {}
        self._rt_closed: dict[str, OrderedDict[str, None]] = {}
        # Finished orders by category, in the order they finished (the oldest is forgotten first).
        self._history: dict[str, OrderedDict[str, None]] = {}

        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._faults: list[_FaultSpec] = []  # untargeted, in arming order
        self._targeted: dict[str, list[_FaultSpec]] = {}  # by the name they are aimed at
        self._fault_seq = itertools.count()
        self._chaos_rate = 0.0
        self._chaos_rng = random.Random(1)
        self._chaos_faults: tuple[Fault, ...] = _CHAOS_DEFAULT
        self._chaos_delay = 1.0
        self._chaos_epoch = 0
        # Chaos draws for ids the fake does not know (known orders carry their own draw).
        self._chaos_drawn: OrderedDict[str, None] = OrderedDict()

        self._conns: dict[str, _Conn] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[int, asyncio.Handle] = {}
        self._timer_seq = itertools.count()
        self._pending: list[dict[str, Any]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the server (127.0.0.1, port 0 by default) and start serving."""
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        app = web.Application(middlewares=[self._record_middleware])
        app.router.add_get("/v5/market/time", self._h_market_time)
        app.router.add_get("/v5/market/instruments-info", self._h_instruments)
        app.router.add_post("/v5/order/create", self._h_create)
        app.router.add_post("/v5/order/cancel", self._h_cancel)
        app.router.add_get("/v5/order/realtime", self._h_realtime)
        app.router.add_get("/v5/order/history", self._h_history)
        app.router.add_get("/v5/private", self._h_ws)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every websocket and the server; cancel every task the fake started. Idempotent."""
        self._stopping.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._idle.set()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        for conn in list(self._conns.values()):
            self._drop_conn(conn, abort=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start()``; ``RuntimeError`` before)."""
        if self._bound_port is None:
            raise RuntimeError("FakeExchange is not started")
        return self._bound_port

    @property
    def rest_url(self) -> str:
        """Base REST URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Private websocket URL, ``ws://127.0.0.1:PORT/v5/private``."""
        return f"ws://{self._host}:{self.port}/v5/private"

    @property
    def connections(self) -> int:
        """Number of websocket connections open right now."""
        return len(self._conns)

    def add_credentials(self, api_key: str, api_secret: str) -> None:
        """Accept another API key (all keys share one order book)."""
        self._credentials[api_key] = api_secret

    def now_ms(self) -> int:
        """The fake's server clock in ms (local clock + ``clock_offset_ms``)."""
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    # ------------------------------------------------------------------ book: public helpers

    def seed_order(
        self,
        category: str = "linear",
        symbol: str = "BTCUSDT",
        side: str = "Buy",
        qty: str = "0.01",
        price: str = "30000",
        order_link_id: str = "",
        order_type: str = "Limit",
        trigger_price: str | None = None,
        order_filter: str = "Order",
    ) -> FakeOrder:
        """Place a resting order directly in the book (New, or Untriggered with a trigger price).

        Pushes nothing. For spot, ``order_filter`` "StopOrder"/"tpslOrder" puts the order in
        that book, and a cancel must name the same ``orderFilter`` (protocol §6). Raises
        ``ValueError`` for an unknown category, a link id already used or a bad spot filter.
        """
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        if order_link_id and order_link_id in self._by_link:
            raise ValueError(f"duplicate order_link_id {order_link_id!r}")
        if category == "spot" and order_filter not in SPOT_FILTERS:
            raise ValueError(f"bad spot order_filter {order_filter!r}")
        return self._new_order(
            category=category,
            symbol=symbol,
            side=side,
            order_type=order_type,
            qty=qty,
            price=price,
            order_link_id=order_link_id,
            trigger_price=trigger_price or None,
            order_filter=order_filter if category == "spot" else None,
            time_in_force="GTC",
            position_idx=0,
            reduce_only=False,
            trigger_direction=0,
        )

    def order(self, order_id: str) -> FakeOrder:
        """The fake's record of ``order_id`` (KeyError if unknown, or forgotten: a finished
        order past ``history_limit``)."""
        return self._orders[order_id]

    def order_by_link_id(self, order_link_id: str) -> FakeOrder:
        """The fake's record of the order with this ``orderLinkId`` (KeyError if unknown, or
        forgotten)."""
        return self._orders[self._by_link[order_link_id]]

    def fill(
        self, order_id: str, qty: str | Decimal | None = None, *, push: bool = True
    ) -> FakeOrder:
        """Fill the order fully (``qty=None``) or by ``qty``; push PartiallyFilled/Filled (unless
        ``push=False``). Raises ``KeyError`` for an unknown order, ``ValueError`` for one that
        has already ended."""
        order = self._orders[order_id]
        if order.is_final:
            raise ValueError(f"order {order_id} is already {order.status}")
        self._do_fill(order, None if qty is None else Decimal(qty))
        if push:
            self._emit([self._ws_order(order)])
        return order

    def trigger(self, order_id: str) -> FakeOrder:
        """Trigger a conditional order: push Triggered, then New (protocol §5). Raises
        ``KeyError`` for an unknown order, ``ValueError`` unless it is Untriggered."""
        order = self._orders[order_id]
        if order.status != "Untriggered":
            raise ValueError(f"order {order_id} is {order.status}, not Untriggered")
        order.status = "Triggered"
        self._touch(order)
        triggered = self._ws_order(order)
        order.status = "New"
        if order.category == "spot":
            # Undocumented: a triggered spot TP/SL or stop order is assumed to rest in the normal
            # book afterwards, so a cancel then needs orderFilter "Order" (the default).
            order.order_filter = "Order"
        self._touch(order)
        self._emit_now([triggered])
        self._emit_now([self._ws_order(order)])
        return order

    def push_batch(self, order_ids: Iterable[str]) -> None:
        """Push the current state of several orders in one frame (one ``data[]``)."""
        self._emit_now([self._ws_order(self._orders[oid]) for oid in order_ids], chunk=False)

    def restart(self) -> None:
        """Simulate a Bybit service restart (protocol §8).

        Closes every websocket and clears the ``realtime`` cache of closed orders, so only
        ``/v5/order/history`` still knows closed orders.
        """
        for conn in list(self._conns.values()):
            self._drop_conn(conn, abort=True)
        self._rt_closed.clear()

    async def disconnect_all(self) -> None:
        """Drop every websocket from the server side, as a network drop would."""
        conns = list(self._conns.values())
        for conn in conns:
            self._drop_conn(conn, abort=True)
        waits = [asyncio.ensure_future(c.done.wait()) for c in conns]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=2.0)
            for w in pending:
                w.cancel()

    def stall(self, stalled: bool = True) -> None:
        """Stall (or un-stall) every open websocket.

        A stalled socket stays open, but the fake sends nothing on it (no pong, no push, no
        RFC6455 pong) and ignores its input; pushes that would have gone out are lost.
        Connections opened later are not stalled, so a client can recover by reconnecting.
        """
        for conn in self._conns.values():
            conn.stalled = stalled

    async def wait_idle(self) -> None:
        """Wait until every scheduled push has been applied and written (or dropped)."""
        while True:
            await self._idle.wait()
            if self._flush_handle is not None:
                self._flush()
            for conn in list(self._conns.values()):
                if not conn.closed:
                    await conn.queue.join()
            if self._idle.is_set() and self._flush_handle is None and not self._pending:
                return

    # ------------------------------------------------------------------ faults

    def add_fault(
        self,
        fault: Fault,
        *,
        order_id: str | None = None,
        times: int | None = 1,
        delay: float = 1.0,
        applied: bool = False,
    ) -> None:
        """Arm ``fault`` for the next ``times`` cancels (``None`` = every time).

        ``order_id`` aims it at one order (matched against the cancel's orderId/orderLinkId and
        the order's id/link id); ``None`` aims it at any cancel. Targeted faults win. A fault
        aimed at an order is dropped unfired if the order is forgotten (``history_limit``).
        """
        spec = _FaultSpec(Fault(fault), order_id, times, delay, applied, next(self._fault_seq))
        if order_id is None:
            self._faults.append(spec)
        else:
            self._targeted.setdefault(order_id, []).append(spec)

    def clear_faults(self) -> None:
        """Disarm every fault added with ``add_fault`` (chaos is unaffected)."""
        self._faults.clear()
        self._targeted.clear()

    def set_chaos(
        self,
        rate: float = 0.2,
        seed: int = 1,
        faults: Iterable[Fault] | None = None,
        *,
        delay: float = 1.0,
    ) -> None:
        """Give each order's first cancel a ``rate`` chance of a random fault from ``faults``.

        Re-sent cancels of the same order draw nothing. ``rate=0`` disables chaos.
        """
        self._chaos_rate = rate
        self._chaos_rng = random.Random(seed)
        self._chaos_faults = tuple(faults) if faults is not None else _CHAOS_DEFAULT
        self._chaos_delay = delay
        self._chaos_epoch += 1  # every order may draw again
        self._chaos_drawn.clear()

    def _pick_fault(
        self, req_ids: tuple[str, str], order: FakeOrder | None, cancellable: bool
    ) -> _FaultSpec | None:
        names = {x for x in req_ids if x}
        if order is not None:
            names.add(order.order_id)
            if order.order_link_id:
                names.add(order.order_link_id)
        chosen: _FaultSpec | None = None
        # Targeted faults first: the first armed among those aimed at any of the names (each
        # name's list is in arming order), looked up by name, so the cost does not grow with the
        # faults armed for other orders.
        if self._targeted:
            for name in names:
                for spec in self._targeted.get(name, ()):
                    if cancellable or spec.fault in _TRANSPORT_FAULTS:
                        if chosen is None or spec.seq < chosen.seq:
                            chosen = spec
                        break
        if chosen is None:
            for spec in self._faults:
                if cancellable or spec.fault in _TRANSPORT_FAULTS:
                    chosen = spec
                    break
        if chosen is not None:
            if chosen.remaining is not None:
                chosen.remaining -= 1
                if chosen.remaining <= 0:
                    self._disarm(chosen)
            return chosen
        if self._chaos_rate > 0 and self._chaos_faults:
            # One draw per order: its first cancel request. A re-sent cancel (after a 502, a
            # timeout, a 10002...) is not drawn again, so "rate" is the share of cancels that
            # meet a fault, and a fault happens "once before succeeding". A known order carries
            # its draw (and forgets it with the order); an unknown id is remembered like a record.
            if order is not None:
                if order._chaos_epoch == self._chaos_epoch:
                    return None
                order._chaos_epoch = self._chaos_epoch
            else:
                key = req_ids[0] or req_ids[1]
                if key in self._chaos_drawn:
                    return None
                self._chaos_drawn[key] = None
                limit = self.max_recorded
                if limit is not None and len(self._chaos_drawn) > limit:
                    self._chaos_drawn.popitem(last=False)
            hit = self._chaos_rng.random() < self._chaos_rate
            fault = self._chaos_rng.choice(self._chaos_faults)
            if hit and (cancellable or fault in _TRANSPORT_FAULTS):
                return _FaultSpec(fault, None, 1, self._chaos_delay, False)
        return None

    def _disarm(self, spec: _FaultSpec) -> None:
        if spec.order_id is None:
            self._faults.remove(spec)
            return
        specs = self._targeted.get(spec.order_id)
        if specs is not None and spec in specs:
            specs.remove(spec)
            if not specs:
                del self._targeted[spec.order_id]

    def _record(self, records: list[Any], item: Any) -> None:
        """Append to a diagnostic record, keeping its newest ``max_recorded`` entries.

        The oldest are dropped in batches (when the list passes the bound by a quarter), so the
        cost per append stays O(1) on the fake's hot path.
        """
        records.append(item)
        limit = self.max_recorded
        if limit is not None and len(records) > limit + (limit >> 2):
            del records[: len(records) - limit]

    # ------------------------------------------------------------------ book internals

    def _new_id(self, category: str) -> str:
        if category == "spot":
            # protocol §4 "Order ids": spot ids are 19-digit decimal strings above 2**53.
            self._spot_seq += 1 + self._rng.randrange(4096)
            return str(self._spot_seq)
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_order(
        self,
        *,
        category: str,
        symbol: str,
        side: str,
        order_type: str,
        qty: str,
        price: str,
        order_link_id: str,
        trigger_price: str | None,
        order_filter: str | None,
        time_in_force: str,
        position_idx: int,
        reduce_only: bool,
        trigger_direction: int,
    ) -> FakeOrder:
        order_id = self._new_id(category)
        while order_id in self._orders:
            order_id = self._new_id(category)
        conditional = trigger_price is not None
        if category == "spot":
            ofilter = order_filter or "Order"
            stop_type = {"tpslOrder": "tpslOrder", "StopOrder": "Stop"}.get(ofilter, "")
            if conditional and not stop_type:
                stop_type = "Stop"
        else:
            ofilter = "StopOrder" if conditional else "Order"
            stop_type = "Stop" if conditional else ""
        if conditional and not trigger_direction:
            trigger_direction = 1 if side == "Buy" else 2
        now = self.now_ms()
        order = FakeOrder(
            order_id=order_id,
            order_link_id=order_link_id,
            category=category,
            symbol=symbol,
            side=side,
            order_type=order_type,
            price=price,
            qty=qty,
            status="Untriggered" if conditional else "New",
            created_time=now,
            updated_time=now,
            trigger_price=trigger_price,
            order_filter=ofilter,
            stop_order_type=stop_type,
            time_in_force=time_in_force,
            position_idx=position_idx,
            reduce_only=reduce_only,
            trigger_direction=trigger_direction,
        )
        order.cum_exec_qty = self._fmt_qty(order, _ZERO)
        order.leaves_qty = self._fmt_qty(order, _dec(qty))
        self._orders[order_id] = order
        if order_link_id:
            self._by_link[order_link_id] = order_id
        self._open.setdefault((category, symbol), {})[order_id] = order
        return order

    @staticmethod
    def _fmt_qty(order: FakeOrder, d: Decimal) -> str:
        # protocol §4: spot pads quantities to the qty's precision ("0.0"), linear uses "0".
        if order.category == "spot":
            return _padded(d, _places(order.qty))
        return _plain(d)

    def _touch(self, order: FakeOrder) -> None:
        # updatedTime strictly increases for the same order.
        order.updated_time = max(self.now_ms(), order.updated_time + 1)

    def _close(self, order: FakeOrder) -> None:
        book = self._open.get((order.category, order.symbol))
        if book is not None:
            book.pop(order.order_id, None)
            if not book:
                del self._open[(order.category, order.symbol)]
        rt = self._rt_closed.setdefault(order.category, OrderedDict())
        rt[order.order_id] = None
        # protocol §8: realtime keeps "a maximum of recent 500 closed status records".
        if self.realtime_closed_limit is not None:
            while len(rt) > self.realtime_closed_limit:
                rt.popitem(last=False)
        history = self._history.setdefault(order.category, OrderedDict())
        history[order.order_id] = None
        # protocol §8: Bybit's history ages out (24 h for a cancelled order, 7 days for one with
        # fills): past `history_limit` the order of this category that finished first goes.
        # (realtime_closed_limit=None: realtime finds every closed order by id, so none is
        # forgotten; forgetting one would take it out of that unbounded window.)
        if self.history_limit is not None and self.realtime_closed_limit is not None:
            while len(history) > self.history_limit:
                self._forget(history.popitem(last=False)[0])

    def _forget(self, order_id: str) -> None:
        """Drop every trace of a finished order that has aged out of the history."""
        order = self._orders.pop(order_id)
        rt = self._rt_closed.get(order.category)
        if rt is not None:
            rt.pop(order_id, None)
        self._targeted.pop(order_id, None)
        link = order.order_link_id
        if link:
            # Undocumented: whether Bybit lets an aged-out orderLinkId be used again. The fake
            # does (it keeps no trace of the order to refuse it with).
            if self._by_link.get(link) == order_id:
                del self._by_link[link]
            self._targeted.pop(link, None)

    def _do_fill(self, order: FakeOrder, qty: Decimal | None) -> None:
        total = _dec(order.qty)
        cum = _dec(order.cum_exec_qty)
        add = total - cum if qty is None else min(qty, total - cum)
        cum += add
        order.cum_exec_qty = self._fmt_qty(order, cum)
        order.avg_price = order.price if _dec(order.price) else "0"
        order.cancel_type = "UNKNOWN"
        order.reject_reason = "EC_NoError"
        if cum >= total:
            order.status = "Filled"
            order.leaves_qty = "" if order.category == "option" else self._fmt_qty(order, _ZERO)
        else:
            order.status = "PartiallyFilled"
            order.leaves_qty = self._fmt_qty(order, total - cum)
        self._touch(order)
        if order.status == "Filled":
            self._close(order)

    def _cancel_in_book(self, order: FakeOrder) -> bool:
        """Apply a user cancel to the book; False if the order was already final."""
        order._cancel_pending = False
        if order.is_final:
            return False
        cum = _dec(order.cum_exec_qty)
        if order.status == "Untriggered":
            # protocol §5: untriggered conditional / spot TP/SL orders end as Deactivated.
            order.status = "Deactivated"
        elif order.category == "spot" and cum > 0:
            # protocol §5: PartiallyFilledCanceled is spot only.
            order.status = "PartiallyFilledCanceled"
        else:
            # protocol §5: a derivatives Cancelled may carry cumExecQty > 0.
            order.status = "Cancelled"
        order.cancel_type = "CancelByUser"
        order.reject_reason = "EC_PerCancelRequest"
        # protocol §4: after a cancel spot keeps the remaining qty, linear shows "0", option "".
        if order.category == "spot":
            order.leaves_qty = self._fmt_qty(order, _dec(order.qty) - cum)
        elif order.category == "option":
            order.leaves_qty = ""
        else:
            order.leaves_qty = "0"
        self._touch(order)
        self._close(order)
        return True

    # ------------------------------------------------------------------ wire formats

    def _ws_order(self, o: FakeOrder) -> dict[str, Any]:
        """The order as the private ``order`` topic carries it (fixture key order)."""
        spot = o.category == "spot"
        cum = _dec(o.cum_exec_qty)
        avg = _dec(o.avg_price)
        price = _dec(o.price)
        leaves = _dec(o.leaves_qty)
        price_places = _places(o.price)
        if spot:
            # ws-private/order.push.spot-cancelled.json: padded numbers.
            none_price = _padded(_ZERO, price_places)
            leaves_value = _padded(leaves * price, 6) if o.leaves_qty else ""
            cum_value = _padded(cum * avg, 6)
        else:
            none_price = ""
            leaves_value = _plain(leaves * price) if o.leaves_qty else ""
            cum_value = _plain(cum * avg)
        d: dict[str, Any] = {
            "category": o.category,
            "symbol": o.symbol,
            "orderId": o.order_id,
            "orderLinkId": o.order_link_id,
            "blockTradeId": "",
            "side": o.side,
            "positionIdx": o.position_idx,
            "orderStatus": o.status,
            "cancelType": o.cancel_type,
            "rejectReason": o.reject_reason,
            "timeInForce": o.time_in_force,
        }
        if o.category != "option":
            d["isLeverage"] = "0" if spot else ""
        d.update(
            {
                "price": o.price,
                "qty": o.qty,
                "avgPrice": o.avg_price if cum > 0 else "",
                "leavesQty": o.leaves_qty,
                "leavesValue": leaves_value,
                "cumExecQty": o.cum_exec_qty,
                "cumExecValue": cum_value,
                "cumExecFee": "0",
                "orderType": o.order_type,
                "stopOrderType": o.stop_order_type,
                "orderIv": "",
                "triggerPrice": o.trigger_price or none_price,
                "takeProfit": none_price,
                "stopLoss": none_price,
                "triggerBy": "LastPrice" if o.trigger_price else "",
                "tpTriggerBy": "",
                "slTriggerBy": "",
                "triggerDirection": o.trigger_direction,
                "placeType": _place_type(o),
                "lastPriceOnCreated": o.price,
                "closeOnTrigger": False,
                "reduceOnly": o.reduce_only,
                "smpGroup": 0,
                "smpType": "None",
                "smpOrderId": "",
            }
        )
        if o.category == "option":
            # ws-private/order.push.option-filled.json (protocol §4): option has "" here, and
            # "tpslMode ... Option returns always \"\"" (Bybit's docs, order/open-order.mdx).
            d["slLimitPrice"] = ""
            d["tpLimitPrice"] = ""
            d["tpslMode"] = ""
        elif not spot:
            # ws-private/order.push.linear-cancelled.json; createType is absent for spot/option.
            d["slLimitPrice"] = "0"
            d["tpLimitPrice"] = "0"
            d["tpslMode"] = "UNKNOWN"
            d["createType"] = "CreateByUser"
        d["marketUnit"] = ""
        d["createdTime"] = str(o.created_time)
        d["updatedTime"] = str(o.updated_time)
        d["feeCurrency"] = ""
        return d

    def _rest_order(self, o: FakeOrder, history: bool) -> dict[str, Any]:
        """The order as /v5/order/realtime (or /history) returns it (fixture key order).

        REST uses "UNKNOWN" markers and avgPrice "0" where WS uses "" (protocol §4, §8).
        """
        qp = _places(o.qty)
        pp = _places(o.price)
        cum = _dec(o.cum_exec_qty)
        avg = _dec(o.avg_price)
        price = _dec(o.price)
        leaves = _dec(o.leaves_qty)
        zero_price = _padded(_ZERO, pp)
        d: dict[str, Any] = {
            "orderId": o.order_id,
            "orderLinkId": o.order_link_id,
            "blockTradeId": "",
            "symbol": o.symbol,
            "price": o.price,
            "qty": o.qty,
            "side": o.side,
            "isLeverage": "0" if o.category == "spot" else "",
            "positionIdx": o.position_idx,
            "orderStatus": o.status,
            "cancelType": o.cancel_type,
            "rejectReason": o.reject_reason,
            "avgPrice": o.avg_price if cum > 0 else "0",
            "leavesQty": _padded(leaves, qp),
            "leavesValue": _plain(leaves * price),
            "cumExecQty": _padded(cum, qp),
            "cumExecValue": _plain(cum * avg),
            "cumExecFee": "0",
            "timeInForce": o.time_in_force,
            "orderType": o.order_type,
            "stopOrderType": o.stop_order_type or "UNKNOWN",
            "orderIv": "",
            "triggerPrice": o.trigger_price or zero_price,
            "takeProfit": zero_price,
            "stopLoss": zero_price,
            "tpTriggerBy": "UNKNOWN",
            "slTriggerBy": "UNKNOWN",
            "triggerDirection": o.trigger_direction,
            "triggerBy": "LastPrice" if o.trigger_price else "UNKNOWN",
            "lastPriceOnCreated": "",
        }
        if o.category == "spot":
            # Bybit's docs (https://bybit-exchange.github.io/docs/v5/order/open-order, response
            # table; protocol §8): "basePrice ... Spot has this field only", the last price when
            # the order was placed, which the fake takes to be the order's price (as its push's
            # lastPriceOnCreated does).
            d["basePrice"] = o.price
        d.update(
            {
                "reduceOnly": o.reduce_only,
                "closeOnTrigger": False,
                "smpType": "None",
                "smpGroup": 0,
                "smpOrderId": "",
            }
        )
        if o.category != "spot":
            # Same table (open-order and order-list pages): "tpslMode ... Spot does not have
            # this field"; rest/order-realtime.response.observed-spot-new.json has none.
            d["tpslMode"] = ""
        d["tpLimitPrice"] = ""
        d["slLimitPrice"] = ""
        d["placeType"] = _place_type(o)
        if history:
            d["slippageToleranceType"] = "UNKNOWN"
            d["slippageTolerance"] = ""
        d["createdTime"] = str(o.created_time)
        d["updatedTime"] = str(o.updated_time)
        if history:
            d["extraFees"] = ""
        d["cumFeeDetail"] = {}
        if history:
            d["rpiTakerAccess"] = False
            d["rpiMatchedQty"] = "0"
        return d

    def _envelope(self, result: dict[str, Any], code: int = 0, msg: str = "OK") -> str:
        return _dumps(
            {
                "retCode": code,
                "retMsg": msg,
                "result": result,
                "retExtInfo": {},
                "time": self.now_ms(),
            }
        )

    def _json(
        self, result: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            text=self._envelope(result), content_type="application/json", headers=headers
        )

    def _err(self, code: int, msg: str, headers: Mapping[str, str] | None = None) -> web.Response:
        # protocol §1: business errors are HTTP 200 with retCode != 0 and "result":{}.
        return web.Response(
            text=self._envelope({}, code, msg), content_type="application/json", headers=headers
        )

    def _err_10002(
        self, req_ts: str, recv_window: int, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        # rest/error-10002.response.json: the observed text format.
        msg = (
            "invalid request, please check your server timestamp or recv_window param. "
            f"req_timestamp[{req_ts}],server_timestamp[{self.now_ms()}],recv_window[{recv_window}]"
        )
        return self._err(10002, msg, headers)

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _record_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        if self.max_recorded != 0:
            self._record(
                self.requests,
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.raw_path.partition("?")[2],
                    body=body,
                    headers=dict(request.headers),
                ),
            )
        resp = await handler(request)
        assert isinstance(resp, web.StreamResponse)
        return resp

    def _authenticate(self, request: web.Request, payload: bytes) -> str:
        """Check protocol §1 auth; return the API key or raise _AuthError."""
        h = request.headers
        key = h.get("X-BAPI-API-KEY")
        ts = h.get("X-BAPI-TIMESTAMP")
        sign = h.get("X-BAPI-SIGN")
        if not key or not ts or not sign:
            # protocol §1 "HTTP status codes": 401 when the auth params are not in the headers.
            # The body of that 401 is undocumented; a short non-JSON text is sent.
            raise _AuthError(web.Response(status=401, text="401 Unauthorized"))
        secret = self._credentials.get(key)
        if secret is None:
            raise _AuthError(self._err(10003, "API key is invalid."))
        rw_raw = h.get("X-BAPI-RECV-WINDOW", "5000")  # protocol §1: default 5000
        try:
            recv_window = int(rw_raw)
            ts_int = int(ts)
        except ValueError:
            raise _AuthError(
                self._err(10001, "params error: invalid timestamp or recv_window")
            ) from None
        if self.recv_window_check:
            server = self.now_ms()
            # protocol §1: server_time - recv_window <= timestamp < server_time + 1000
            if not server - recv_window <= ts_int < server + 1000:
                raise _AuthError(self._err_10002(ts, recv_window))
        # X-BAPI-SIGN-TYPE is accepted and ignored (protocol §1).
        # The signature covers the exact bytes received, never a re-serialisation (protocol §1).
        prefix = f"{ts}{key}{rw_raw}".encode()
        expected = hmac.new(secret.encode(), prefix + payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sign):
            # rest/error-10004.response.json: echoes ts+key+recv_window+payload, never the secret.
            origin = (prefix + payload).decode("utf-8", errors="replace")
            raise _AuthError(self._err(10004, f"error sign! origin_string[{origin}]"))
        return key

    def _rate(self, endpoint: str, category: str) -> tuple[bool, dict[str, str]]:
        """protocol §7: rolling 1-second window per (endpoint, category); returns headers."""
        # A request is counted before its category is checked, so a bad category still gets the
        # limit headers (§7: they come back "on every request") and can still get 10006. Bybit's
        # docs do not say which comes first. Every category that is not one of Bybit's shares
        # one window per endpoint, under the endpoint's own limit: a window each would let
        # requests with made-up categories grow the fake without bound.
        if category not in CATEGORIES:
            category = ""
        limit = self._limit(endpoint, category)
        window = self._windows.get((endpoint, category))
        if window is None:
            window = self._windows[(endpoint, category)] = deque()
        now = time.monotonic()
        while window and window[0] <= now - 1.0:
            window.popleft()
        now_ms = self.now_ms()
        if len(window) >= limit:
            reset = now_ms + max(1, int((window[0] + 1.0 - now) * 1000) + 1)
            return False, self._limit_headers(limit, 0, reset)
        window.append(now)
        return True, self._limit_headers(limit, limit - len(window), now_ms)

    def _limited(self, resp: web.Response, endpoint: str, category: str) -> web.Response:
        """An auth failure's answer, counted and given the rate-limit headers.

        protocol §7 and Bybit's rate-limit page
        (https://bybit-exchange.github.io/docs/v5/rate-limit): "Every request to the API
        returns response header". No source says Bybit checks the signature before its rate
        limiter, or whether a refused request counts (the limit is "per second per UID"); the
        fake counts a 10002, 10003 or 10004 (or its 10001 for a malformed
        timestamp) like any other request, as its injected ``TIMESTAMP_10002`` always did, so the
        two kinds of 10002 answer alike. The verdict is still the auth error, even when the window
        is full (then with ``X-Bapi-Limit-Status: 0``). The non-JSON 401 (no auth headers at all)
        gets none, like the 403s: a gateway answer, undocumented either way.
        """
        if resp.status != 200:
            return resp
        _, rl = self._rate(endpoint, category)
        resp.headers.update(rl)
        return resp

    def _limit(self, endpoint: str, category: str) -> int:
        limit = self.rate_limits.get(f"{endpoint} {category}")
        return self.rate_limits.get(endpoint, DEFAULT_RATE_LIMIT) if limit is None else limit

    @staticmethod
    def _limit_headers(limit: int, status: int, reset: int) -> dict[str, str]:
        return {
            "X-Bapi-Limit": str(limit),
            "X-Bapi-Limit-Status": str(status),
            "X-Bapi-Limit-Reset-Timestamp": str(reset),
        }

    @staticmethod
    def _parse_body(raw: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            return None
        return obj if isinstance(obj, dict) else None

    @staticmethod
    def _opt_str(params: Mapping[str, Any], key: str) -> str | None:
        """A string param; None/"" count as absent (the docs send "orderLinkId": null)."""
        v = params.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise ValueError(key)
        return v

    def _lookup(self, order_id: str | None, link_id: str | None) -> FakeOrder | None:
        # protocol §6: orderId is processed first when both are given.
        if order_id is not None:
            return self._orders.get(order_id)
        if link_id is not None:
            oid = self._by_link.get(link_id)
            return None if oid is None else self._orders.get(oid)
        return None

    @staticmethod
    def _not_found(category: str) -> tuple[int, str]:
        # protocol §6: spot answers 170213 "Order does not exist." (with the dot).
        if category == "spot":
            return 170213, "Order does not exist."
        return 110001, "Order does not exist"

    # ------------------------------------------------------------------ REST handlers

    async def _h_market_time(self, request: web.Request) -> web.Response:
        if self.market_time_status is not None:
            return web.Response(status=self.market_time_status, text="market time unavailable")
        ns = time.time_ns() + self.clock_offset_ms * 1_000_000
        result = {"timeSecond": str(ns // 1_000_000_000), "timeNano": str(ns)}
        body = _dumps(
            {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": ns // 10**6}
        )
        return web.Response(text=body, content_type="application/json")

    async def _h_instruments(self, request: web.Request) -> web.Response:
        """Public ``GET /v5/market/instruments-info``, only what ccxt needs to load markets.

        Shape of Bybit's documented linear/inverse example
        (https://bybit-exchange.github.io/docs/v5/market/instrument, reproduced as a comment in
        ccxt's ``async_support/bybit.py::fetch_future_markets``): ``result`` holds ``category``,
        ``list`` and ``nextPageCursor``. The fake lists one perpetual per derivatives category
        (the symbols the tests and benchmarks trade); spot and option answer an empty list, as
        does ``status=PreLaunch`` (ccxt asks for pre-launch markets separately).
        """
        q = self._query(request)
        category = q.get("category", "")
        if category not in CATEGORIES:
            return self._err(10001, "params error: Illegal category")
        items = [] if q.get("status") == "PreLaunch" else list(_INSTRUMENTS.get(category, ()))
        symbol = q.get("symbol")
        if symbol:
            items = [i for i in items if i["symbol"] == symbol]
        return self._json({"category": category, "list": items, "nextPageCursor": ""})

    async def _signed_post(
        self, request: web.Request, endpoint: str
    ) -> tuple[dict[str, Any], str, dict[str, str]] | web.StreamResponse:
        """The common start of a private POST: signature, JSON body, rate limit, category.

        Returns ``(params, category, rate-limit headers)`` or the error answer to send.
        """
        raw = await request.read()
        p = self._parse_body(raw)
        category = p.get("category") if p is not None else None
        window = category if isinstance(category, str) else ""
        try:
            self._authenticate(request, raw)
        except _AuthError as e:
            return self._limited(e.response, endpoint, window)
        ok, rl = self._rate(endpoint, window)
        if not ok:
            return self._err(10006, "Too many visits!", rl)
        if p is None:
            return self._err(10001, "params error: invalid request body", rl)
        if not isinstance(category, str) or category not in CATEGORIES:
            return self._err(10001, "params error: Illegal category", rl)
        return p, category, rl

    async def _h_create(self, request: web.Request) -> web.StreamResponse:
        pre = await self._signed_post(request, "/v5/order/create")
        if isinstance(pre, web.StreamResponse):
            return pre
        p, category, rl = pre
        try:
            symbol = self._opt_str(p, "symbol")
            side = self._opt_str(p, "side")
            order_type = self._opt_str(p, "orderType")
            qty = self._opt_str(p, "qty")
            price = self._opt_str(p, "price")
            link = self._opt_str(p, "orderLinkId") or ""
            trigger = self._opt_str(p, "triggerPrice")
            ofilter = self._opt_str(p, "orderFilter")
            tif = self._opt_str(p, "timeInForce") or "GTC"
        except ValueError as e:
            return self._err(10001, f"params error: {e} must be a string", rl)
        for name, val in (("symbol", symbol), ("side", side), ("orderType", order_type)):
            if val is None:
                return self._err(10001, f"params error: {name} is required", rl)
        if qty is None or _dec(qty) <= 0:
            return self._err(10001, "params error: qty is invalid", rl)
        if side not in ("Buy", "Sell"):
            return self._err(10001, "params error: side invalid", rl)
        if order_type not in ("Limit", "Market"):
            return self._err(10001, "params error: orderType invalid", rl)
        if order_type == "Limit" and (price is None or _dec(price) <= 0):
            return self._err(10001, "params error: price is required for Limit orders", rl)
        if category == "option" and not link:
            # protocol §11: orderLinkId is required for options.
            return self._err(10001, "params error: orderLinkId is required", rl)
        if link and (len(link) > 36 or not set(link) <= _LINK_ID_CHARS):
            return self._err(10001, "params error: orderLinkId is invalid", rl)
        if link and link in self._by_link:
            # protocol §11: 110072 (spot: 170141).
            if category == "spot":
                return self._err(170141, "Duplicate clientOrderId", rl)
            return self._err(110072, "OrderLinkedID is duplicate", rl)
        if category == "spot":
            ofilter = ofilter or "Order"
            if ofilter not in SPOT_FILTERS:
                return self._err(170201, "Invalid orderFilter parameter", rl)
            if ofilter == "Order":
                # protocol §11 / create-order.mdx: spot triggerPrice only counts for
                # tpslOrder / StopOrder.
                trigger = None
        else:
            ofilter = None
        pos = p.get("positionIdx", 0)
        tdir = p.get("triggerDirection", 0)
        assert symbol is not None and side is not None and order_type is not None
        order = self._new_order(
            category=category,
            symbol=symbol,
            side=side,
            order_type=order_type,
            qty=qty,
            price=price or "0",
            order_link_id=link,
            trigger_price=trigger,
            order_filter=ofilter,
            time_in_force="IOC" if order_type == "Market" else tif,
            position_idx=pos if isinstance(pos, int) else 0,
            reduce_only=p.get("reduceOnly") is True,
            trigger_direction=tdir if isinstance(tdir, int) else 0,
        )
        resp = self._json({"orderId": order.order_id, "orderLinkId": order.order_link_id}, rl)
        # protocol §11: the create ack is asynchronous; the state follows on the WS stream.
        await resp.prepare(request)
        await resp.write_eof()
        if order_type == "Market" and trigger is None:
            # No market data here: a Market order fills at once at its price (or "0").
            self._schedule(self.push_delay, self._fill_and_push, order)
        else:
            self._schedule(self.push_delay, self._push_state, order)
        return resp

    def _fill_and_push(self, order: FakeOrder) -> None:
        if not order.is_final:
            self._do_fill(order, None)
        self._emit([self._ws_order(order)])

    def _push_state(self, order: FakeOrder) -> None:
        self._emit([self._ws_order(order)])

    async def _h_cancel(self, request: web.Request) -> web.StreamResponse:
        pre = await self._signed_post(request, "/v5/order/cancel")
        if isinstance(pre, web.StreamResponse):
            return pre
        p, category, rl = pre
        try:
            symbol = self._opt_str(p, "symbol")
            req_oid = self._opt_str(p, "orderId")
            req_link = self._opt_str(p, "orderLinkId")
            ofilter = self._opt_str(p, "orderFilter")
        except ValueError as e:
            return self._err(10001, f"params error: {e} must be a string", rl)
        if symbol is None:
            return self._err(10001, "params error: symbol is required", rl)
        if req_oid is None and req_link is None:
            # rest/cancel-order.error-10001.response.json
            return self._err(10001, "params error: OrderId or orderLinkId is required", rl)
        if category == "spot":
            # protocol §6: orderFilter is spot only, default "Order".
            ofilter = ofilter or "Order"
            if ofilter not in SPOT_FILTERS:
                return self._err(170201, "Invalid orderFilter parameter", rl)
        order = self._lookup(req_oid, req_link)
        cancellable = (
            order is not None
            and order.category == category
            and order.symbol == symbol
            and not order.is_final
            and (category != "spot" or order.order_filter == ofilter)
        )
        # A repeated cancel of an order whose cancel is still in flight only gets transport faults.
        fresh = cancellable and order is not None and not order._cancel_pending
        spec = self._pick_fault((req_oid or "", req_link or ""), order, fresh)
        fault = spec.fault if spec is not None else None
        if spec is not None:
            name = order.order_id if order is not None else (req_oid or req_link or "")
            self._record(self.fault_log, (name, spec.fault))
            log.debug("fault %s fires on cancel of %s", spec.fault, name)

        # ---- transport-level faults
        if spec is not None and fault in _TRANSPORT_FAULTS:
            if fault is Fault.HTTP_502:
                if spec.applied and cancellable and order is not None:
                    self._begin_cancel(order, self.push_delay, "normal")
                return web.Response(
                    status=502,
                    text="<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
                    content_type="text/html",
                )
            if fault is Fault.HTTP_403:
                # protocol §7: IP ban, "403, access too frequent"; the body need not be JSON.
                return web.Response(status=403, text="access too frequent")
            if fault is Fault.HTTP_429:
                # protocol §1: 429 "System level frequency protection. Please retry".
                return web.Response(
                    status=429, text="System level frequency protection. Please retry"
                )
            if fault is Fault.RATE_LIMIT_10006:
                limit = self._limit("/v5/order/cancel", category)
                reset = self.now_ms() + int(spec.delay * 1000)
                return self._err(10006, "Too many visits!", self._limit_headers(limit, 0, reset))
            if fault is Fault.TIMESTAMP_10002:
                ts = request.headers.get("X-BAPI-TIMESTAMP", "")
                rw = int(request.headers.get("X-BAPI-RECV-WINDOW", "5000"))
                return self._err_10002(ts, rw, rl)
            if fault is Fault.SERVER_ERROR_10016:
                if spec.applied and cancellable and order is not None:
                    self._begin_cancel(order, self.push_delay, "normal")
                return self._err(10016, "Server error.", rl)
            # REST_TIMEOUT: applied and pushed normally; the HTTP answer is held back.
            if cancellable and order is not None:
                resp = self._json(
                    {"orderId": order.order_id, "orderLinkId": order.order_link_id}, rl
                )
                self._begin_cancel(order, self.push_delay, "normal")
            else:
                resp = self._err(*self._not_found(category), rl)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), spec.delay)
            return resp

        if not cancellable or order is None:
            # protocol §6: unknown order, wrong symbol/category/book, or already final.
            if (
                self.finished_answer is not None
                and order is not None
                and order.is_final
                and order.category == category
                and order.symbol == symbol
            ):
                return self._err(*self.finished_answer, rl)
            return self._err(*self._not_found(category), rl)

        if fault is Fault.FILL_BEFORE_CANCEL:
            # The order fills just before the cancel lands: Filled push, then "does not exist"
            # (or `finished_answer`).
            self._do_fill(order, None)
            self._emit_now([self._ws_order(order)])
            return self._err(*(self.finished_answer or self._not_found(category)), rl)

        if fault is Fault.PROCESSING_170212:
            self._begin_cancel(order, self.push_delay, "normal")
            return self._err(170212, "Cancel order request processing", rl)

        resp = self._json({"orderId": order.order_id, "orderLinkId": order.order_link_id}, rl)
        if fault is Fault.PUSH_BEFORE_ACK:
            self._cancel_in_book(order)
            futs = self._emit_now([self._ws_order(order)], track=True)
            if futs:
                await asyncio.wait(futs, timeout=5.0)
            return resp

        # protocol §6: ACK FIRST; the cancel itself is asynchronous.
        await resp.prepare(request)
        await resp.write_eof()
        if order._cancel_pending:
            # A cancel is already in flight: ack again, but the first one decides the outcome.
            return resp
        if fault is None:
            self._begin_cancel(order, self.push_delay, "normal")
        elif fault is Fault.DELAY_PUSH:
            self._begin_cancel(order, spec.delay if spec is not None else 1.0, "normal")
        elif fault is Fault.DROP_PUSH:
            self._begin_cancel(order, self.push_delay, "drop")
        elif fault is Fault.DUPLICATE_PUSH:
            self._begin_cancel(order, self.push_delay, "duplicate")
        elif fault is Fault.STALE_AFTER_FINAL:
            self._begin_cancel(order, self.push_delay, "stale")
        elif fault is Fault.DOUBLE_FILLED:
            self._begin_cancel(order, self.push_delay, "double_filled")
        elif fault is Fault.CLOSE_WS_AFTER_ACK:
            for conn in list(self._conns.values()):
                self._drop_conn(conn, abort=True)
            self._begin_cancel(order, self.push_delay, "normal")
        elif fault is Fault.STALL_WS_AFTER_ACK:
            self.stall(True)
            self._begin_cancel(order, self.push_delay, "normal")
        return resp

    def _begin_cancel(self, order: FakeOrder, delay: float, mode: str) -> None:
        if order._cancel_pending:
            return  # a cancel is already in flight; the first one decides the outcome
        order._cancel_pending = True
        self._schedule(delay, self._finish_cancel, order, mode)

    def _finish_cancel(self, order: FakeOrder, mode: str) -> None:
        if mode == "double_filled":
            # protocol §4 "Execution ordering": Filled (EC_NoError), then a second Filled with
            # cancelType CancelByUser and rejectReason EC_OrigClOrdIDDoesNotExist.
            order._cancel_pending = False
            if order.is_final:
                return
            self._do_fill(order, None)
            first = self._ws_order(order)
            order.cancel_type = "CancelByUser"
            order.reject_reason = "EC_OrigClOrdIDDoesNotExist"
            self._touch(order)
            self._emit_now([first])
            self._emit_now([self._ws_order(order)])
            return
        stale = self._ws_order(order) if mode == "stale" else None
        if not self._cancel_in_book(order):
            return
        if mode == "drop":
            return
        final = self._ws_order(order)
        if mode == "duplicate":
            self._emit_now([final])
            self._emit_now([dict(final)])
        elif mode == "stale" and stale is not None:
            self._emit_now([final])
            self._emit_now([stale])
        else:
            self._emit([final])

    def _query(self, request: web.Request) -> dict[str, str]:
        return dict(parse_qsl(request.raw_path.partition("?")[2], keep_blank_values=True))

    @staticmethod
    def _cursor(q: Mapping[str, str]) -> int | None:
        """The page start a ``cursor`` names: 0 when absent, None when it is not one of ours.

        Undocumented: Bybit's docs (open-order and order-list pages, protocol §8) only say to
        pass back a ``nextPageCursor``, not what a made-up one gets. The fake's cursors are
        plain offsets; anything else (negative, not a whole number) is refused with the generic
        10001 (protocol §6 table) rather than answered with a wrong slice.
        """
        raw = q.get("cursor") or ""
        if not raw:
            return 0
        if not raw.isdigit() or not raw.isascii():
            return None
        return int(raw)

    def _list_result(
        self, orders: list[FakeOrder], q: Mapping[str, str], category: str, history: bool
    ) -> dict[str, Any]:
        try:
            limit = max(1, min(50, int(q.get("limit") or 20)))
        except ValueError:
            limit = 20
        start = self._cursor(q) or 0
        page = orders[start : start + limit]
        more = start + limit < len(orders)
        return {
            "list": [self._rest_order(o, history) for o in page],
            "nextPageCursor": str(start + limit) if more else "",
            "category": category,
        }

    def _filtered(self, orders: Iterable[FakeOrder], q: Mapping[str, str]) -> list[FakeOrder]:
        symbol = q.get("symbol")
        base = q.get("baseCoin")
        settle = q.get("settleCoin")
        ofilter = q.get("orderFilter")
        out: list[FakeOrder] = []
        for o in orders:
            if symbol and o.symbol != symbol:
                continue
            if not symbol and base and not o.symbol.startswith(base):
                continue
            if not symbol and not base and settle and not o.symbol.endswith(settle):
                continue
            if ofilter and o.order_filter != ofilter:
                continue
            out.append(o)
        # protocol §8: sorted by createdTime, newest first.
        out.sort(key=lambda o: o.created_time, reverse=True)
        return out

    def _signed_get(
        self, request: web.Request, endpoint: str
    ) -> tuple[dict[str, str], str, dict[str, str]] | web.Response:
        """The common start of a private GET: signature over the raw query, rate limit, category.

        Returns ``(query params, category, rate-limit headers)`` or the error answer to send.
        """
        if request.body_exists:
            # protocol §1 "HTTP status codes": a GET sent with a JSON body, even an empty one,
            # gets 403. (Checked first here: the docs do not say which check Bybit makes first.)
            return web.Response(status=403, text="403 Forbidden")
        query = request.raw_path.partition("?")[2]
        q = self._query(request)
        category = q.get("category", "")
        try:
            self._authenticate(request, query.encode())
        except _AuthError as e:
            return self._limited(e.response, endpoint, category)
        ok, rl = self._rate(endpoint, category)
        if not ok:
            return self._err(10006, "Too many visits!", rl)
        if category not in CATEGORIES:
            return self._err(10001, "params error: Illegal category", rl)
        return q, category, rl

    async def _h_realtime(self, request: web.Request) -> web.Response:
        pre = self._signed_get(request, "/v5/order/realtime")
        if isinstance(pre, web.Response):
            return pre
        q, category, rl = pre
        if self._cursor(q) is None:
            return self._err(10001, "params error: invalid cursor", rl)
        oid = q.get("orderId") or None
        link = q.get("orderLinkId") or None
        if oid or link:
            # protocol §8: openOnly is ignored for id queries; closed orders are found while they
            # are in the realtime cache (cleared by restart()).
            o = self._lookup(oid, link)
            found: list[FakeOrder] = []
            if o is not None and o.category == category:
                rt = self._rt_closed.get(category)
                if not o.is_final or (rt is not None and o.order_id in rt):
                    found.append(o)
            return self._json(self._list_result(found, q, category, False), rl)
        symbol = q.get("symbol")
        if category in ("linear", "inverse") and not (
            symbol or q.get("baseCoin") or q.get("settleCoin")
        ):
            return self._err(10001, "params error: symbol, baseCoin or settleCoin is required", rl)
        if q.get("openOnly") == "1":
            closed = self._rt_closed.get(category, OrderedDict())
            pool: Iterable[FakeOrder] = (self._orders[i] for i in closed)
        elif symbol:
            pool = self._open.get((category, symbol), {}).values()
        else:
            pool = (
                o for (cat, _), book in self._open.items() if cat == category for o in book.values()
            )
        return self._json(self._list_result(self._filtered(pool, q), q, category, False), rl)

    async def _h_history(self, request: web.Request) -> web.Response:
        pre = self._signed_get(request, "/v5/order/history")
        if isinstance(pre, web.Response):
            return pre
        q, category, rl = pre
        if self._cursor(q) is None:
            return self._err(10001, "params error: invalid cursor", rl)
        oid = q.get("orderId") or None
        link = q.get("orderLinkId") or None
        if oid or link:
            o = self._lookup(oid, link)
            found: list[FakeOrder] = []
            if o is not None and o.category == category and o.is_final and self._in_history(o):
                found.append(o)
            return self._json(self._list_result(found, q, category, True), rl)
        ids = self._history.get(category, ())
        pool = (o for o in (self._orders[i] for i in ids) if self._in_history(o))
        status = q.get("orderStatus")
        orders = [o for o in self._filtered(pool, q) if not status or o.status == status]
        return self._json(self._list_result(orders, q, category, True), rl)

    def _in_history(self, order: FakeOrder) -> bool:
        return not self.history_delay or (
            self.now_ms() - order.updated_time >= self.history_delay * 1000
        )

    # ------------------------------------------------------------------ scheduling and pushes

    def _schedule(self, delay: float, cb: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or self._stopping.is_set():
            return
        token = next(self._timer_seq)

        def run() -> None:
            try:
                cb(*args)
            finally:
                self._timers.pop(token, None)
                if not self._timers:
                    self._idle.set()

        handle: asyncio.Handle
        if delay <= 0:
            handle = loop.call_soon(run)  # "0 = next loop turn"
        else:
            handle = loop.call_later(delay, run)
        self._timers[token] = handle
        self._idle.clear()

    def _emit(self, snaps: list[dict[str, Any]]) -> None:
        """Queue order states for the next flush: same-turn changes share one frame."""
        if self._loop is None or self._stopping.is_set():
            return
        self._pending.extend(snaps)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        snaps, self._pending = self._pending, []
        if snaps:
            self._fanout(snaps, track=False, chunk=True)

    def _emit_now(
        self, snaps: list[dict[str, Any]], *, track: bool = False, chunk: bool = True
    ) -> list[asyncio.Future[None]]:
        """Queue a frame right away (after anything pending), optionally tracking the write."""
        if self._loop is None or self._stopping.is_set():
            return []
        if self._pending or self._flush_handle is not None:
            self._flush()
        return self._fanout(snaps, track=track, chunk=chunk)

    def _fanout(
        self, snaps: list[dict[str, Any]], *, track: bool, chunk: bool
    ) -> list[asyncio.Future[None]]:
        frames: dict[str, list[str]] = {}
        futs: list[asyncio.Future[None]] = []
        loop = self._loop
        assert loop is not None
        for conn in self._conns.values():
            if conn.closed or not conn.authed or not conn.order_topics:
                continue
            for topic in conn.order_topics:
                texts = frames.get(topic)
                if texts is None:
                    texts = frames[topic] = self._build_frames(topic, snaps, chunk)
                for text in texts:
                    fut: asyncio.Future[None] | None = loop.create_future() if track else None
                    if fut is not None:
                        futs.append(fut)
                    conn.queue.put_nowait((_KIND_PUSH, text, fut))
        return futs

    def _build_frames(self, topic: str, snaps: list[dict[str, Any]], chunk: bool) -> list[str]:
        # protocol §4: "order" gets every category; "order.<cat>" only that category.
        cat = topic.partition(".")[2]
        data = [s for s in snaps if s["category"] == cat] if cat else snaps
        if not data:
            return []
        step = MAX_ORDERS_PER_PUSH if chunk else len(data)
        out = []
        for i in range(0, len(data), step):
            part = data[i : i + step]
            first = part[0]
            seq = next(self._push_seq)
            # protocol §4: message ids are opaque; mimic the observed per-category formats.
            if first["category"] == "spot":
                msg_id = f"{self._uid}-{len(part)}-{seq}"
            else:
                msg_id = f"{self._uid}_{first['symbol']}_{seq}"
            out.append(
                _dumps({"topic": topic, "id": msg_id, "creationTime": self.now_ms(), "data": part})
            )
        return out

    # ------------------------------------------------------------------ websocket

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _new_conn_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        head = "".join(self._rng.choice(alphabet) for _ in range(20))
        n = next(self._conn_seq)
        tail = ""
        while True:
            n, r = divmod(n, 36)
            tail = alphabet[r] + tail if r < 26 else str(r - 26) + tail
            if n == 0:
                break
        return f"{head}-{tail}"

    async def _h_ws(self, request: web.Request) -> web.StreamResponse:
        # autoping is off only so that stall() can withhold RFC6455 pongs; pings are answered
        # below exactly as autoping would.
        ws = web.WebSocketResponse(autoping=False, compress=False)
        await ws.prepare(request)
        conn = _Conn(
            ws=ws, conn_id=self._new_conn_id(), transport=request.transport, queue=asyncio.Queue()
        )
        if self._stopping.is_set():
            if conn.transport is not None:
                conn.transport.abort()
            return ws
        self._conns[conn.conn_id] = conn
        conn.writer = self._spawn(self._writer(conn))
        if self._loop is not None:
            conn.last_sent = self._loop.time()
            if self.idle_timeout is not None:
                conn.idle = self._loop.call_later(
                    min(30.0, self.idle_timeout / 2), self._check_idle, conn
                )
        lifetime = self._max_active_time(request.query.get("max_active_time"))
        if lifetime is not None and self._loop is not None:
            # protocol §3: max_active_time (30s..600s) cuts the connection.
            conn.timer = self._loop.call_later(lifetime, self._drop_conn, conn, True)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_ws_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    if not conn.stalled and not conn.closed:
                        conn.queue.put_nowait((_KIND_PONG, bytes(msg.data), None))
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            self._drop_conn(conn, abort=False)
            conn.done.set()
        return ws

    def _check_idle(self, conn: _Conn) -> None:
        loop, limit = self._loop, self.idle_timeout
        if conn.closed or loop is None or limit is None:
            return
        if loop.time() - conn.last_sent >= limit:
            log.debug("ws %s idle for %.0fs: cut", conn.conn_id, limit)
            self._drop_conn(conn, abort=True)
        else:
            conn.idle = loop.call_later(min(30.0, limit / 2), self._check_idle, conn)

    @staticmethod
    def _max_active_time(raw: str | None) -> float | None:
        if not raw:
            return None
        try:
            if raw.endswith("m"):
                secs = float(raw[:-1]) * 60
            elif raw.endswith("s"):
                secs = float(raw[:-1])
            else:
                return None
        except ValueError:
            return None
        return secs if 30 <= secs <= 600 else None

    async def _writer(self, conn: _Conn) -> None:
        queue = conn.queue
        while True:
            kind, payload, fut = await queue.get()
            try:
                if conn.stalled or conn.closed:
                    continue  # a stalled socket sends nothing: the frame is lost
                if isinstance(payload, str):
                    await conn.ws.send_str(payload)
                    if kind == _KIND_PUSH:
                        self.pushes_sent += 1
                else:
                    await conn.ws.pong(bytes(payload))
                if self._loop is not None:
                    conn.last_sent = self._loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead socket must not kill the writer silently
                log.debug("ws %s write failed: %r", conn.conn_id, exc)
            finally:
                if fut is not None and not fut.done():
                    fut.set_result(None)
                queue.task_done()

    def _drop_conn(self, conn: _Conn, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.conn_id, None)
        if conn.timer is not None:
            conn.timer.cancel()
        if conn.idle is not None:
            conn.idle.cancel()
        if conn.writer is not None and conn.writer is not asyncio.current_task():
            conn.writer.cancel()
        # Release anyone waiting for a write on this socket.
        while not conn.queue.empty():
            _, _, fut = conn.queue.get_nowait()
            if fut is not None and not fut.done():
                fut.set_result(None)
            conn.queue.task_done()
        if abort and conn.transport is not None:
            # A network drop: no close frame, the TCP connection just goes away.
            conn.transport.abort()

    def _send_ctl(self, conn: _Conn, obj: dict[str, Any]) -> None:
        if not conn.closed:
            conn.queue.put_nowait((_KIND_CTL, _dumps(obj), None))

    @staticmethod
    def _ack(conn: _Conn, op: str, success: bool, ret_msg: str, req_id: Any) -> dict[str, Any]:
        # ws-private/auth.success.with-req-id.json: req_id first, and only when sent.
        d: dict[str, Any] = {}
        if req_id is not None:
            d["req_id"] = req_id
        d["success"] = success
        d["ret_msg"] = ret_msg
        d["op"] = op
        d["conn_id"] = conn.conn_id
        return d

    def _on_ws_text(self, conn: _Conn, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        self._record(self.ws_received, msg)
        if conn.stalled or conn.closed:
            return
        op = msg.get("op")
        req_id = msg.get("req_id")
        if op == "ping":
            # ws-private/pong.response.json: {"req_id"?,"op":"pong","args":["<ms>"],"conn_id"}
            pong: dict[str, Any] = {}
            if req_id is not None:
                pong["req_id"] = req_id
            pong["op"] = "pong"
            pong["args"] = [str(self.now_ms())]
            pong["conn_id"] = conn.conn_id
            self._send_ctl(conn, pong)
        elif op == "auth":
            ok = self._ws_auth_ok(msg.get("args"))
            if ok:
                conn.authed = True
                self.auth_count += 1
                self._send_ctl(conn, self._ack(conn, "auth", True, "", req_id))
            else:
                # protocol §3 "Auth failure": v5 answers "Params Error" for every cause. Whether
                # the server then closes the socket is undocumented; the fake keeps it open.
                self._send_ctl(conn, self._ack(conn, "auth", False, "Params Error", req_id))
        elif op in ("subscribe", "unsubscribe"):
            assert isinstance(op, str)
            self._ws_subscribe(conn, op, msg.get("args"), req_id)
        else:
            # Undocumented: the answer to an unknown op was never captured.
            self._send_ctl(conn, self._ack(conn, str(op), False, f"error:unknown op {op}", req_id))

    def _ws_auth_ok(self, args: Any) -> bool:
        if self.refuse_auth:
            return False
        if not isinstance(args, list) or len(args) != 3:
            return False
        key, expires, sig = args
        if not isinstance(key, str) or not isinstance(sig, str):
            return False
        if isinstance(expires, str) and expires.isdigit():
            # ccxt (ccxt/pro/bybit.py `authenticate`) sends `expires` as a decimal string and
            # authenticates against production that way; the docs' example sends an int
            # (protocol §3 "Auth request"). Undocumented: both forms are accepted here.
            expires = int(expires)
        if isinstance(expires, bool) or not isinstance(expires, int):
            return False
        secret = self._credentials.get(key)
        if secret is None:
            return False
        # protocol §3: expires (ms) must lie in the future.
        if expires <= self.now_ms():
            return False
        expected = hmac.new(
            secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, sig)

    def _ws_subscribe(self, conn: _Conn, op: str, args: Any, req_id: Any) -> None:
        if not conn.authed:
            # protocol §3: subscribing before auth yields "Request not authorized"; the exact
            # JSON was never captured, so the usual private ack shape is used.
            self._send_ctl(conn, self._ack(conn, op, False, "Request not authorized", req_id))
            return
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            self._send_ctl(conn, self._ack(conn, op, False, "Params Error", req_id))
            return
        topics: list[str] = args
        for t in topics:
            if t in _PRIVATE_TOPICS:
                continue
            family, _, cat = t.rpartition(".")
            if cat in _CATEGORISED_FAMILIES.get(family, ()):
                continue
            # Text from a public-stream failure (protocol §3); no private one was captured.
            self._send_ctl(
                conn, self._ack(conn, op, False, f"error:handler not found,topic:{t}", req_id)
            )
            return
        if op == "subscribe":
            # protocol §3: all-in-one and categorised topics cannot share one request. The
            # failure text is undocumented.
            for fam, cats in _CATEGORISED_FAMILIES.items():
                if fam in topics and any(
                    t.rpartition(".")[0] == fam and t.rpartition(".")[2] in cats for t in topics
                ):
                    self._send_ctl(conn, self._ack(conn, op, False, "Params Error", req_id))
                    return
            conn.topics.update(topics)
        else:
            conn.topics.difference_update(topics)
        conn.order_topics = sorted(
            t
            for t in conn.topics
            if t == "order" or (t.startswith("order.") and t[6:] in CATEGORIES)
        )
        # ws-private/subscribe.success.json: the ack does not echo the topics.
        ack = self._ack(conn, op, True, "", req_id)
        if op == "subscribe" and self.drop_after_subscribe and self._loop is not None:
            written: asyncio.Future[None] = self._loop.create_future()
            written.add_done_callback(lambda _: self._drop_conn(conn, abort=True))
            conn.queue.put_nowait((_KIND_CTL, _dumps(ack), written))
            return
        if op == "subscribe" and self.stall_after_subscribe and self._loop is not None:
            stalled: asyncio.Future[None] = self._loop.create_future()
            stalled.add_done_callback(lambda _: setattr(conn, "stalled", True))
            conn.queue.put_nowait((_KIND_CTL, _dumps(ack), stalled))
            return
        self._send_ctl(conn, ack)
