"""Pure helpers: wire models, signing, URLs, exceptions, input validation, exports."""

from __future__ import annotations

import copy
import hashlib
import hmac
import pickle
import random
import string
from pathlib import Path

import msgspec
import pytest
from pybit._http_manager import generate_signature

import bybit_cancel
from bybit_cancel import (
    AuthenticationError,
    BybitAPIError,
    BybitCancelClient,
    BybitError,
    ConfirmationTimeout,
    HTTPStatusError,
    OrderNotFound,
    OrderStatus,
)
from bybit_cancel._client import validate_cancel
from bybit_cancel._exceptions import error_from_ret_code
from bybit_cancel._models import (
    FINAL_BY_WIRE,
    ack_envelope_decoder,
    envelope_decoder,
    orders_envelope_decoder,
    server_time_decoder,
    ws_decoder,
)
from bybit_cancel._signing import Credentials, RestSigner, scrub_key, ws_auth_args
from bybit_cancel._urls import resolve_urls

from .helpers import FIXTURES, fixture_bytes, make_stream

SECRET = "s3cr3t-value-that-must-not-leak"

# ------------------------------------------------------------------------------------ models


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (FIXTURES / "ws-private").glob("order.push.*.json"))
)
def test_every_order_push_fixture_decodes(path: str) -> None:
    """Every real order push decodes; ids stay strings, statuses are Bybit's words."""
    msg = ws_decoder.decode(fixture_bytes(f"ws-private/{path}"))
    assert msg.topic.startswith("order") and msg.data
    for o in msg.data:
        assert isinstance(o.order_id, str) and o.order_id
        assert o.order_status in {s.value for s in OrderStatus}


def test_spot_19_digit_id_kept_exact() -> None:
    """Spot ids exceed 2^53: they must survive as the exact string."""
    msg = ws_decoder.decode(fixture_bytes("ws-private/order.push.spot-cancelled.json"))
    assert msg.data is not None and msg.data[0].order_id == "1584349189335418625"


@pytest.mark.parametrize(
    ("path", "op", "success"),
    [
        ("ws-private/auth.success.json", "auth", True),
        ("ws-private/auth.success.with-req-id.json", "auth", True),
        ("ws-private/auth.failure.json", "auth", False),
        ("ws-private/auth.failure.raw-json.json", "auth", False),
        ("ws-private/subscribe.success.json", "subscribe", True),
        ("ws-private/pong.response.json", "pong", None),
    ],
)
def test_op_replies_decode(path: str, op: str, success: bool | None) -> None:
    msg = ws_decoder.decode(fixture_bytes(path))
    assert msg.op == op and msg.success is success and msg.data is None


@pytest.mark.parametrize(
    ("path", "is_pong"),
    [
        ("ws-private/pong.response.json", True),
        ("ws-private/pong.response.observed.json", True),
        ("ws-public/pong.spot.json", True),  # op "ping" with ret_msg "pong" (§3)
        ("ws-public/pong.linear.json", True),
        ("ws-private/auth.success.json", False),
        ("ws-private/subscribe.success.json", False),
    ],
)
async def test_router_detects_every_pong_form(path: str, is_pong: bool) -> None:
    """The stream's router counts a pong in every form Bybit sends, and nothing else."""
    stream = make_stream()
    stream._last_pong = -1.0
    stream._route(fixture_bytes(path))
    assert (stream._last_pong > 0) is is_pong


def test_rest_envelopes_decode() -> None:
    """The decoders the client uses on real Bybit answers (one step: envelope and result)."""
    ack = ack_envelope_decoder.decode(fixture_bytes("rest/cancel-order.response.json"))
    assert ack.ret_code == 0 and ack.result is not None
    assert ack.result.order_link_id == "linear-004"
    err = ack_envelope_decoder.decode(fixture_bytes("rest/cancel-order.error-110001.response.json"))
    assert (err.ret_code, err.ret_msg) == (110001, "Order does not exist")
    lst = orders_envelope_decoder.decode(fixture_bytes("rest/order-realtime.response.json"))
    assert lst.result is not None
    assert lst.result.category == "linear" and lst.result.orders[0].order_status == "New"
    hist = orders_envelope_decoder.decode(fixture_bytes("rest/order-history.response.json"))
    assert hist.result is not None and hist.result.orders[0].order_status == "Cancelled"
    empty = orders_envelope_decoder.decode(
        fixture_bytes("rest/order-realtime.response.observed-empty.json")
    )
    assert empty.result is not None and empty.result.orders == []
    t = envelope_decoder.decode(fixture_bytes("rest/market-time.response.json"))
    assert server_time_decoder.decode(t.result).time_nano == "1688639403423213947"


def test_observed_realtime_answers_decode() -> None:
    """Real answers as Bybit sent them: spot's has "" where linear has values, and neither
    retExtInfo nor time (rest/order-realtime.response.observed-*.json)."""
    spot = orders_envelope_decoder.decode(
        fixture_bytes("rest/order-realtime.response.observed-spot-new.json")
    )
    assert spot.ret_code == 0 and spot.result is not None and spot.result.category == "spot"
    order = spot.result.orders[0]
    assert order.order_status == "New" and order.order_id.isdigit() and order.leaves_qty == ""
    linear = orders_envelope_decoder.decode(
        fixture_bytes("rest/order-realtime.response.observed-linear-new.json")
    )
    assert linear.result is not None and linear.result.orders[0].order_status == "New"


def test_null_result_envelope() -> None:
    """Old errors carry "result": null; the cancel answer still decodes (no ack in it)."""
    raw = b'{"retCode":10001,"retMsg":"x","result":null,"time":1}'
    env = ack_envelope_decoder.decode(raw)
    assert env.ret_code == 10001 and env.result is None
    assert envelope_decoder.decode(raw).ret_code == 10001


def test_order_status_finality() -> None:
    """Triggered is not final; the five final statuses are (§5)."""
    finals = {s for s in OrderStatus if s.is_final}
    assert finals == {"Cancelled", "PartiallyFilledCanceled", "Deactivated", "Filled", "Rejected"}
    assert not OrderStatus.TRIGGERED.is_final
    assert set(FINAL_BY_WIRE) == finals


# ----------------------------------------------------------------------------------- signing


def test_rest_signature_matches_pybit() -> None:
    """Our REST signature equals the official SDK's for the same string."""
    creds = Credentials("KEY123", SECRET)
    body = b'{"category":"linear","symbol":"BTCUSDT","orderId":"x"}'
    h = RestSigner(creds, 5000).headers(1658385579423, body)
    expected = generate_signature(False, SECRET, "1658385579423KEY1235000" + body.decode())
    assert h["X-BAPI-SIGN"] == expected
    assert h["X-BAPI-TIMESTAMP"] == "1658385579423" and h["X-BAPI-RECV-WINDOW"] == "5000"
    assert h["X-BAPI-API-KEY"] == "KEY123" and h["X-BAPI-SIGN-TYPE"] == "2"


def test_ws_auth_signature() -> None:
    creds = Credentials("KEY123", SECRET)
    key, expires, sig = ws_auth_args(creds, 1662350400000)
    assert (key, expires) == ("KEY123", 1662350400000)
    assert (
        sig == hmac.new(SECRET.encode(), b"GET/realtime1662350400000", hashlib.sha256).hexdigest()
    )


def test_signature_is_rfc2104_hmac_for_any_secret() -> None:
    """The keyed-once HMAC equals the standard library's for secrets shorter than, as long as and
    longer than SHA-256's 64-byte block (a longer one is hashed first), non-ASCII ones included,
    and signing twice gives the same answer (the keyed states are copied, never consumed)."""
    rng = random.Random(7)
    secrets = ["s", "x" * 63, "x" * 64, "x" * 65, "é" * 40, "k" * 200]
    secrets += [
        "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 150))) for _ in range(60)
    ]
    for secret in secrets:
        creds = Credentials("KEY", secret)
        for payload in (
            b"",
            b"GET/realtime1662350400000",
            bytes(rng.randrange(256) for _ in range(300)),
        ):
            expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
            assert creds.sign(payload) == expected
            assert creds.sign(payload) == expected


def test_scrub_key_takes_the_key_out_of_a_10004_message() -> None:
    """Bybit's 10004 echoes the signed string, API key included (fixtures rest/error-10004*)."""
    body = msgspec.json.decode(fixture_bytes("rest/error-10004.response.json"))
    key = "de21RcqOIH8Gfxvxvv"  # the key inside that recorded origin_string
    assert key in body["retMsg"]
    scrubbed = scrub_key(body["retMsg"], key)
    assert key not in scrubbed
    assert scrubbed == "error sign! origin_string[1701783394711de21***15000]"
    assert scrub_key("API key is invalid.", key) == "API key is invalid."
    # A placeholder shorter than any real key is not replaced: that would garble the message.
    short = "error sign! origin_string[1k5000]"
    assert scrub_key(short, "k") == short


def test_credentials_never_show_secret() -> None:
    creds = Credentials("KEY123456", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert "KEY123456" not in repr(creds)
    with pytest.raises(TypeError):
        pickle.dumps(creds)


@pytest.mark.parametrize(("key", "secret"), [("", "s"), ("k", ""), (None, "s")])
def test_credentials_required(key: object, secret: str) -> None:
    with pytest.raises(ValueError, match="api_"):
        Credentials(key, secret)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- urls


@pytest.mark.parametrize(
    ("testnet", "demo", "rest", "ws"),
    [
        (False, False, "https://api.bybit.com", "wss://stream.bybit.com/v5/private"),
        (True, False, "https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private"),
        (False, True, "https://api-demo.bybit.com", "wss://stream-demo.bybit.com/v5/private"),
    ],
)
def test_hosts(testnet: bool, demo: bool, rest: str, ws: str) -> None:
    assert resolve_urls(testnet=testnet, demo=demo, rest_url=None, ws_url=None) == (rest, ws)


def test_overrides_win() -> None:
    got = resolve_urls(
        testnet=True,
        demo=False,
        rest_url="http://127.0.0.1:8080/",
        ws_url="ws://127.0.0.1:8080/v5/private",
    )
    assert got == ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v5/private")
    with pytest.raises(ValueError, match="rest_url"):
        resolve_urls(testnet=False, demo=False, rest_url="ftp://x", ws_url=None)
    with pytest.raises(ValueError, match="ws_url"):
        resolve_urls(testnet=False, demo=False, rest_url=None, ws_url="http://x")


@pytest.mark.parametrize("url", [8080, b"http://127.0.0.1:8080", ["http://127.0.0.1:8080"]])
def test_an_override_that_is_not_a_string_is_a_value_error(url: object) -> None:
    """Not an AttributeError or TypeError from `.startswith` (README: bad values of the wrong
    type too raise ValueError)."""
    with pytest.raises(ValueError, match="rest_url must be a str"):
        resolve_urls(testnet=False, demo=False, rest_url=url, ws_url=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ws_url must be a str"):
        resolve_urls(testnet=False, demo=False, rest_url=None, ws_url=url)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- exceptions


def test_exception_tree() -> None:
    assert issubclass(AuthenticationError, BybitAPIError)
    assert issubclass(BybitAPIError, BybitError)
    t = ConfirmationTimeout(
        order_id="o", order_link_id=None, last_status="New", acknowledged=True, timeout=2
    )
    assert isinstance(t, TimeoutError) and isinstance(t, BybitError)
    assert "o" in str(t) and "New" in str(t)
    # Unless the caller knows no request left, a timeout may have cancelled the order.
    assert t.may_have_landed and BybitError().may_have_landed is False
    unsent = ConfirmationTimeout(
        order_id="o",
        order_link_id=None,
        last_status=None,
        acknowledged=False,
        timeout=2,
        may_have_landed=False,
    )
    assert "not sent" in str(unsent)
    assert pickle.loads(pickle.dumps(unsent)).may_have_landed is False
    assert copy.copy(t).may_have_landed is True


@pytest.mark.parametrize(
    "exc",
    [
        ConfirmationTimeout(
            order_id="o", order_link_id="L", last_status="New", acknowledged=True, timeout=2
        ),
        BybitAPIError(10001, "params error"),
        OrderNotFound(110001, "order not exists or too late to cancel"),
        HTTPStatusError(502, "bad gateway"),
    ],
)
def test_errors_copy_and_pickle(exc: Exception) -> None:
    """The client raises a copy of a shared error per caller (a shared one would grow one
    traceback, and keep every caller's frames alive): every error must copy, keyword-only
    constructors included."""
    for clone in (copy.copy(exc), pickle.loads(pickle.dumps(exc))):
        assert type(clone) is type(exc) and clone is not exc
        assert vars(clone) == vars(exc) and str(clone) == str(exc) and clone.args == exc.args


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (10003, AuthenticationError),
        (10004, AuthenticationError),
        (10005, AuthenticationError),
        (10006, BybitAPIError),
        (110001, BybitAPIError),
        (170213, BybitAPIError),
        (10001, BybitAPIError),
    ],
)
def test_ret_code_mapping(code: int, cls: type[BybitAPIError]) -> None:
    err = error_from_ret_code(code, "msg")
    assert type(err) is cls and err.ret_code == code and err.ret_msg == "msg"


# -------------------------------------------------------------------------------- validation

GOOD = {
    "category": "linear",
    "symbol": "BTCUSDT",
    "order_id": "x",
    "order_link_id": None,
    "order_filter": None,
    "timeout": 5.0,
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"category": ""}, "category is required"),
        ({"category": "futures"}, "unknown category"),
        ({"symbol": ""}, "symbol is required"),
        ({"symbol": "btcusdt"}, "upper case"),
        ({"order_id": None}, "order_id or order_link_id"),
        ({"order_id": None, "order_link_id": "bad id!"}, "order_link_id"),
        ({"order_id": None, "order_link_id": "x" * 37}, "order_link_id"),
        ({"order_filter": "StopOrder"}, "spot"),
        ({"category": "spot", "order_filter": "Bogus"}, "order_filter"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),  # an int to isinstance, not a number of seconds
        ({"timeout": "5"}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        # Finite but past 1e9 s: loop time + timeout, in ms, would overflow to infinity.
        ({"timeout": 1e306}, "at most 1e9"),
        ({"timeout": 1e9 + 1}, "at most 1e9"),
    ],
)
def test_bad_input(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_cancel(**{**GOOD, **change})  # type: ignore[arg-type]


def test_longest_timeout_is_accepted() -> None:
    assert validate_cancel(**{**GOOD, "timeout": 1e9})  # type: ignore[arg-type]


def test_credentials_and_urls_are_checked_at_construction() -> None:
    """Bad credentials or URLs fail before any I/O, and the message never quotes a secret (a
    non-ASCII secret used to fail deep in the signing, naming the offending character)."""
    odd = (
        ("k", "s\udcffSECRETXYZ"),
        ("k", ""),
        ("k\u00e9yXYZ", "SECRETXYZ"),
        ("k", "SECRET\nXYZ"),
    )
    for key, secret in odd:
        with pytest.raises(ValueError) as info:
            BybitCancelClient(api_key=key, api_secret=secret)
        assert "XYZ" not in str(info.value) and "SECRET" not in str(info.value)
    with pytest.raises(ValueError, match="ws_url is not a valid URL"):
        BybitCancelClient(
            api_key="k", api_secret="s", rest_url="http://x", ws_url="ws://127.0.0.1:99999/v5"
        )
    with pytest.raises(ValueError, match="rest_url has no host"):
        BybitCancelClient(api_key="k", api_secret="s", rest_url="http://", ws_url="ws://x/v5")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("push_grace", float("inf")),
        ("push_grace", 1e306),
        ("push_grace", float("nan")),
        ("ping_interval", float("inf")),
        ("http_timeout", 0),
        ("handshake_timeout", -1.0),
        ("reconnect_backoff", (0.1, float("inf"))),
        ("reconnect_backoff", (float("nan"), 1.0)),
        # Of the wrong type: each used to pass (a bool reads as 1) or fail with a TypeError or
        # an unpacking error that did not name the option.
        ("push_grace", "1"),
        ("push_grace", True),
        ("http_timeout", None),
        ("recv_window", True),
        ("recv_window", 5000.0),
        ("max_retries", True),
        ("max_retries", 1.5),
        ("reconnect_backoff", (1.0,)),
        ("reconnect_backoff", [0.1, 1.0]),
        ("reconnect_backoff", (0.1, "1")),
        ("recent_size", "x"),
        ("recent_size", True),
        ("recent_size", -1),
        ("recent_age", True),
        ("recent_age", float("inf")),
        # Past 1e9 s, which bounds every other duration; and URLs that are not a str, which
        # failed with an AttributeError or a TypeError.
        ("recent_age", 1e10),
        ("rest_url", 123),
        ("ws_url", b"ws://127.0.0.1/v5/private"),
        # Taken as they came, before: testnet="no" picked the testnet, session=123 failed in
        # open() with an AttributeError, seed=[1] raised a TypeError.
        ("testnet", "no"),
        ("demo", 1),
        ("session", 123),
        ("seed", [1]),
        ("seed", 1.5),
    ],
)
def test_bad_client_options_are_refused_at_construction(option: str, value: object) -> None:
    """Durations must be positive and finite (at most 1e9 s): an infinite push grace used to be
    accepted and then failed every cancel after its request was sent. Every option of the wrong
    type is a ValueError naming it, as the README promises."""
    with pytest.raises(ValueError, match=option):
        BybitCancelClient(api_key="k", api_secret="s", **{option: value})  # type: ignore[arg-type]


def test_good_client_options_are_accepted() -> None:
    client = BybitCancelClient(
        api_key="k",
        api_secret="s",
        push_grace=1,
        recv_window=20_000,
        max_retries=0,
        reconnect_backoff=(0.5, 0.5),
        recent_size=1,
        recent_age=0.5,
    )
    assert client.pending_count == 0


def test_body_built_in_bybit_names() -> None:
    body = validate_cancel(
        **{**GOOD, "category": "spot", "order_link_id": "L-1", "order_filter": "tpslOrder"}  # type: ignore[arg-type]
    )
    # One id: the order id wins on Bybit when both are given, so only it is sent.
    assert body == {
        "category": "spot",
        "symbol": "BTCUSDT",
        "orderId": "x",
        "orderFilter": "tpslOrder",
    }
    assert msgspec.json.encode(body).startswith(b'{"category":"spot"')
    by_link = validate_cancel(**{**GOOD, "order_id": None, "order_link_id": "L-1"})  # type: ignore[arg-type]
    assert by_link == {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "L-1"}


# ----------------------------------------------------------------------------------- exports


def test_public_surface() -> None:
    """The top-level names are the documented public API, each defined once."""
    required = {
        "BybitCancelClient",
        "CancelResult",
        "OrderStatus",
        "BybitError",
        "BybitAPIError",
        "OrderNotFound",
        "ConfirmationTimeout",
        "AuthenticationError",
        "cancel_and_confirm",
    }
    assert required <= set(bybit_cancel.__all__)
    assert len(set(bybit_cancel.__all__)) == len(bybit_cancel.__all__)
    for name in bybit_cancel.__all__:
        assert getattr(bybit_cancel, name).__module__ == "bybit_cancel"


def test_core_imports_no_io() -> None:
    """The core stays sans-I/O: it imports no asyncio, aiohttp, websockets, socket or time."""
    src = (Path(bybit_cancel.__file__).parent / "_core.py").read_text()
    imports = [line for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert imports, "expected some imports"
    for line in imports:
        for mod in ("asyncio", "aiohttp", "websockets", "socket", "time"):
            assert mod not in line, line


def test_rate_limiter_follows_the_limit_bybit_names() -> None:
    """X-Bapi-Limit may change between answers: the pacing follows it, an odd value is ignored,
    and above the paced bound no log of sends is kept."""
    from bybit_cancel._rest import Clock, RateLimiter

    limiter = RateLimiter(Clock())
    key = ("/v5/order/cancel", "linear")
    assert limiter.reserve(key) == 0  # nothing learnt: send
    limiter.feed(key, {"X-Bapi-Limit": "2", "X-Bapi-Limit-Status": "1"})
    assert limiter.reserve(key) == 0 and limiter.reserve(key) == 0
    assert 0 < limiter.reserve(key) <= RateLimiter.WINDOW  # the third in the window waits
    limiter.feed(key, {"X-Bapi-Limit": "many"})  # not a number: nothing changes
    assert limiter.reserve(key) > 0
    limiter.feed(key, {"X-Bapi-Limit": "1000000"})  # raised past the paced bound
    assert [limiter.reserve(key) for _ in range(5)] == [0.0] * 5
    assert not limiter._keys[key].sent
    limiter.feed(key, {"X-Bapi-Limit": "1"})  # lowered again: paced from here on
    assert limiter.reserve(key) == 0 and limiter.reserve(key) > 0


def test_signing_falls_back_to_hashlib_without_cpythons_own_sha256(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the interpreter has no _sha2/_sha256 module (another Python), hashlib's SHA-256 signs."""
    import importlib

    from bybit_cancel import _signing

    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert _signing._sha256_constructor() is hashlib.sha256
    monkeypatch.setattr(_signing, "_SHA256", hashlib.sha256)
    creds = Credentials("KEY", SECRET)
    payload = b"GET/realtime1662350400000"
    assert creds.sign(payload) == hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
