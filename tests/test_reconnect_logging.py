"""How the private stream's reconnect loop logs an outage: a failure that does not go away is one
WARNING, then DEBUG, with a WARNING at most every five minutes saying it goes on; a different
failure is a WARNING at once; the reconnect that ends the outage says how long it lasted."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket

import pytest
from aiohttp import web

from bybit_cancel import BybitCancelClient, CancelResult, _stream
from bybit_cancel.testing import FakeExchange

from .conftest import client_tasks, make_client
from .helpers import make_stream, serve, wait_until

KEY18 = "AbCdEfGhIjKlMnOpQr"

FAILED = re.compile(r"private stream reconnect (\d+) failed: ")
SINCE_WARNING = re.compile(r"(\d+) attempts? failed since the last warning")


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if FAILED.match(r.getMessage())]


def number(pattern: re.Pattern[str], record: logging.LogRecord) -> int:
    """The number ``pattern`` finds in the record's message (its attempt, its count)."""
    found = pattern.search(record.getMessage())
    assert found is not None, record.getMessage()
    return int(found[1])


# -- the interval, on the loop's clock (no sleeping) ----------------------------------------


def test_a_failure_that_goes_on_warns_again_every_five_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A redirect that never stops, retried every 10 s (the default backoff's cap), logged a
    WARNING per attempt for as long as it lasted. It is one WARNING, then DEBUG, and one
    WARNING every five minutes saying how many attempts failed since and how long it has been."""
    error = "websocket connect redirected (HTTP 301 to 'wss://elsewhere/'): not followed"
    outage = _stream._Outage(1000.0)
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        for attempt in range(1, 66):
            outage.failed(1000.0 + 10 * attempt, attempt, error, banned=False)
    records = failures(caplog)
    assert len(records) == 65
    warned = [number(FAILED, r) for r in records if r.levelname == "WARNING"]
    assert warned == [1, 31, 61]  # at 10 s, then 5 min after each warning
    assert {r.levelname for r in records} == {"WARNING", "DEBUG"}
    first, again, third = (r.getMessage() for r in records if r.levelname == "WARNING")
    assert first == f"private stream reconnect 1 failed: {error}"
    assert again == (
        f"private stream reconnect 31 failed: {error}; still failing: 30 attempts failed since "
        "the last warning, down for 5 min 10 s"
    )
    assert third.endswith("30 attempts failed since the last warning, down for 10 min 10 s")
    assert records[1].getMessage() == f"private stream reconnect 2 failed: {error}"


def test_a_different_failure_warns_at_once_and_timings_make_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures that differ only in the handshake's timings are the same failure (DEBUG when
    repeated); a different one is a WARNING at once, with the outage's length so far and the
    attempts that failed since the last warning."""
    slow = "websocket auth got no reply in time (handshake_timeout 10s, {}s of it taken by the connect)"
    outage = _stream._Outage(0.0)
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        outage.failed(1.0, 1, slow.format("0.03"), banned=False)
        outage.failed(12.0, 2, slow.format("0.05"), banned=False)
        outage.failed(83.0, 3, "websocket upgrade refused (HTTP 502 Bad Gateway): ''", banned=False)
        outage.failed(94.0, 4, "websocket upgrade refused (HTTP 502 Bad Gateway): ''", banned=False)
    assert [r.levelname for r in failures(caplog)] == ["WARNING", "DEBUG", "WARNING", "DEBUG"]
    assert (
        failures(caplog)[2]
        .getMessage()
        .endswith("; down for 1 min 23 s, 2 attempts failed since the last warning")
    )


def test_each_ip_ban_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A 403 (an IP ban, one attempt per 10-minute hold) is a WARNING each time, repeated or
    not, and counts as the last warning for the failures after it."""
    ban = "websocket upgrade refused (HTTP 403 Forbidden): 'access too frequent'"
    outage = _stream._Outage(0.0)
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        for attempt in (1, 2):
            outage.failed(600.0 * attempt, attempt, ban, banned=True)
        outage.failed(1210.0, 3, "websocket connect failed: refused", banned=False)
        outage.failed(1220.0, 4, "websocket connect failed: refused", banned=False)
    records = failures(caplog)
    assert [r.levelname for r in records] == ["WARNING", "WARNING", "WARNING", "DEBUG"]
    assert all("is an IP ban" in r.getMessage() for r in records[:2])
    assert records[2].getMessage().endswith("1 attempt failed since the last warning")


# -- against local servers --------------------------------------------------------------------


async def test_a_refused_connection_is_one_warning_then_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on the stream's port (connection refused, every attempt): the first
    failure is a WARNING, each repeat a DEBUG line with the same text and its attempt number."""
    closed_port = socket.socket()  # bound, never listening: every connect to it is refused
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]
    stream = make_stream(url=f"ws://127.0.0.1:{port}/v5/private", reconnect_backoff=(0.001, 0.002))
    try:
        with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
            # What open() leaves behind once its connection has died: the supervisor, no socket.
            stream._task = asyncio.get_running_loop().create_task(
                stream._supervise(), name="bybit_cancel.stream"
            )
            await wait_until(lambda: len(failures(caplog)) >= 6)
            await stream.close()
    finally:
        closed_port.close()
    records = failures(caplog)
    assert [r.levelname for r in records] == ["WARNING"] + ["DEBUG"] * (len(records) - 1)
    texts = {FAILED.sub("", r.getMessage()) for r in records}
    assert len(texts) == 1 and "websocket connect failed" in texts.pop()
    assert [number(FAILED, r) for r in records] == list(range(1, len(records) + 1))
    assert client_tasks() == []


async def test_an_outage_logs_its_failures_once_and_its_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream is lost; its reconnects meet a redirect (quoting the API key), then an upgrade
    refused with 502, then get through. Each failure is a WARNING the first time and DEBUG when
    repeated; with the interval at 0 the next repeat is a WARNING that counts the attempts
    since the last one; the reconnect's INFO line says how long the stream was down and how
    many attempts it took; the key is scrubbed throughout."""
    mode = "accept"
    peers: list[web.WebSocketResponse] = []

    async def private(request: web.Request) -> web.StreamResponse:
        if mode == "redirect":
            raise web.HTTPFound(f"ws://elsewhere.invalid/v5/private?key={KEY18}")
        if mode == "refuse":
            raise web.HTTPBadGateway()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        peers.append(ws)
        async for frame in ws:
            msg = json.loads(frame.data)
            reply = {"req_id": msg.get("req_id"), "op": msg["op"], "success": True, "ret_msg": ""}
            await ws.send_str(json.dumps({**reply, "conn_id": f"c{len(peers)}"}))
        return ws

    def kinds(kind: str) -> list[logging.LogRecord]:
        return [r for r in failures(caplog) if kind in r.getMessage()]

    runner, host = await serve(private)
    stream = make_stream(url=f"ws://{host}/v5/private", key=KEY18, reconnect_backoff=(0.001, 0.002))
    try:
        with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
            async with asyncio.timeout(10):
                await stream.open()
                mode = "redirect"
                await peers[0].close()
                await wait_until(lambda: len(kinds("redirected")) >= 3)
                mode = "refuse"
                await wait_until(lambda: len(kinds("HTTP 502")) >= 3)
                monkeypatch.setattr(_stream, "_STILL_FAILING_EVERY", 0.0)
                await wait_until(lambda: any("still failing" in r.getMessage() for r in kinds("")))
                mode = "accept"
                await wait_until(lambda: stream.reconnects == 1)
    finally:
        await stream.close()
        await runner.cleanup()
    records = failures(caplog)
    assert len(kinds("redirected")) >= 3 and len(kinds("HTTP 502")) >= 4
    assert [number(FAILED, r) for r in records] == list(range(1, len(records) + 1))
    bare = {
        "redirected": "websocket connect redirected (HTTP 302 to "
        "'ws://elsewhere.invalid/v5/private?key=AbCd***'): not followed, a redirect would take "
        "the auth elsewhere",
        "502": "websocket upgrade refused (HTTP 502 Bad Gateway): '502: Bad Gateway'",
    }
    assert records[0].levelname == "WARNING"
    assert records[0].getMessage() == f"private stream reconnect 1 failed: {bare['redirected']}"
    previous, since_warning = "", 0
    for r in records:
        message = r.getMessage()
        failure = "redirected" if "redirected" in message else "502"
        since_warning += 1
        if r is records[0]:
            assert "since the last warning" not in message
        elif failure != previous or "still failing" in message:
            assert r.levelname == "WARNING", message
            assert number(SINCE_WARNING, r) == since_warning, message
            assert "down for " in message
            assert FAILED.sub("", message).startswith(bare[failure] + "; "), message
        else:
            assert r.levelname == "DEBUG", message
            assert FAILED.sub("", message) == bare[failure], message
        if r.levelname == "WARNING":
            since_warning = 0
        previous = failure
    assert {r.levelname for r in kinds("redirected")[1:]} == {"DEBUG"}
    assert kinds("HTTP 502")[0].levelname == "WARNING"
    assert kinds("HTTP 502")[1].levelname == "DEBUG"
    back = [r for r in caplog.records if "reconnected" in r.getMessage()]
    assert len(back) == 1 and back[0].levelname == "INFO"
    assert re.fullmatch(
        rf"private stream reconnected and subscribed to order \(conn_id c2\) after "
        rf"\d+\.\d s down and {len(records) + 1} attempts",
        back[0].getMessage(),
    ), back[0].getMessage()
    assert KEY18 not in caplog.text
    assert client_tasks() == []


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def _lose_the_stable_connection(
    fx: FakeExchange, client: BybitCancelClient, caplog: pytest.LogCaptureFixture
) -> list[logging.LogRecord]:
    """Drop the connection that proved stable (after one "private stream closed" so far) and
    wait for the reconnect; return the INFO "reconnected" records then."""
    await fx.disconnect_all()
    await wait_until(lambda: len(messages(caplog, "private stream closed")) == 2)
    reconnects = client.reconnect_count
    await wait_until(lambda: client.reconnect_count == reconnects + 1)
    return [r for r in messages(caplog, "reconnected") if r.levelname == "INFO"]


async def test_a_flapping_connection_is_one_outage(
    fx: FakeExchange, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway that drops every connection right after the subscribe reply: each drop was a
    "private stream closed" WARNING and each reconnect an INFO, for as long as it lasted. A
    connection lost before it stayed up one ping interval is a failed attempt of the same
    outage: one WARNING, then DEBUG (with the "still failing" WARNING), and one INFO once a
    connection stays up, with the whole outage's length and attempts. A connection that
    stayed up and is then lost is a WARNING at once, as before."""
    lost = re.compile(r"private stream reconnect (\d+) failed: connection lost \d+\.\d+s after")
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        async with (
            asyncio.timeout(20),
            make_client(fx, ping_interval=1.0, reconnect_backoff=(0.001, 0.002)) as client,
        ):
            fx.drop_after_subscribe = True
            await fx.disconnect_all()
            await wait_until(lambda: client.reconnect_count >= 4)
            monkeypatch.setattr(_stream, "_STILL_FAILING_EVERY", 0.0)
            await wait_until(lambda: bool(messages(caplog, "still failing")))
            monkeypatch.setattr(_stream, "_STILL_FAILING_EVERY", 300.0)
            flapped = client.reconnect_count
            await wait_until(lambda: client.reconnect_count >= flapped + 3)
            fx.drop_after_subscribe = False
            await wait_until(lambda: bool(messages(caplog, "has stayed up")), timeout=10)
            losses = [r for r in caplog.records if lost.match(r.getMessage())]
            closed = messages(caplog, "private stream closed")
            back = [r for r in messages(caplog, "reconnected") if r.levelname == "INFO"]
            # The connection that stayed up is lost: a WARNING at once, and a new outage.
            again = await _lose_the_stable_connection(fx, client, caplog)
    assert [r.levelname for r in closed] == ["WARNING"]
    assert len(losses) >= 6
    assert losses[0].levelname == "WARNING"
    assert "since the last warning" not in losses[0].getMessage()
    for r in losses[1:]:
        still = "still failing" in r.getMessage()
        assert r.levelname == ("WARNING" if still else "DEBUG"), r.getMessage()
    assert any("still failing" in r.getMessage() for r in losses)
    # Attempts are numbered on (the backoff did not start over): no connection stayed up.
    numbers = [int(lost.match(r.getMessage())[1]) for r in losses]  # type: ignore[index]
    assert numbers == list(range(1, len(numbers) + 1))
    # The first reconnect's INFO, then the one that ends the outage.
    assert len(back) == 2, [r.getMessage() for r in back]
    assert re.search(r"after \d+\.\d s down and 1 attempt$", back[0].getMessage())
    assert re.fullmatch(
        r"private stream reconnected and subscribed to order \(conn_id \S+\) after "
        rf"\d+\.\d s down and {len(losses) + 1} attempts \({len(losses)} connections lost "
        r"before proving stable; this one has stayed up 1\.0 s and answered a ping\)",
        back[1].getMessage(),
    ), back[1].getMessage()
    assert len(again) == 3 and again[2].getMessage().endswith(" down and 1 attempt")
    assert client_tasks() == []


async def test_a_silent_gateway_is_one_outage_under_a_growing_backoff(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway that answers the subscribe and then goes silent (no pong): each connection
    stayed up until the heartbeat gave up after two ping intervals, so it counted as stable:
    a reconnect INFO, a "silent" WARNING and a "closed" WARNING per connection, and the backoff
    started over each time. Stable now also means the peer answered a ping: the silent
    connections are failed attempts of one outage (one WARNING, then DEBUG), numbered on under
    the growing backoff; the INFO comes once a connection answers, and a connection that has
    proved stable is a WARNING at once when it is lost, its next reconnect quick again."""
    lost = re.compile(r"private stream reconnect (\d+) failed: connection lost \d+\.\d+s after")
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        async with (
            asyncio.timeout(20),
            make_client(fx, ping_interval=0.2, reconnect_backoff=(0.001, 0.002)) as client,
        ):
            fx.stall_after_subscribe = True
            await fx.disconnect_all()
            await wait_until(lambda: len(messages(caplog, "(no pong)")) >= 4, timeout=10)
            fx.stall_after_subscribe = False
            await wait_until(lambda: bool(messages(caplog, "has stayed up")), timeout=10)
            losses = [r for r in caplog.records if lost.match(r.getMessage())]
            silent = messages(caplog, "(no pong)")
            closed = messages(caplog, "private stream closed")
            back = [r for r in messages(caplog, "reconnected") if r.levelname == "INFO"]
            # The connection that proved stable is lost: a WARNING at once, a new outage, and
            # the backoff starts over.
            again = await _lose_the_stable_connection(fx, client, caplog)
    assert [r.levelname for r in closed] == ["WARNING"]
    # Every silent connection is a failed attempt: no "private stream silent" line of its own.
    assert silent == losses and len(losses) >= 4
    assert all(r.getMessage().endswith("silent for 0.4s (no pong)") for r in losses)
    assert [r.levelname for r in losses] == ["WARNING"] + ["DEBUG"] * (len(losses) - 1)
    # Attempts are numbered on (the backoff did not start over): no connection was stable.
    numbers = [int(lost.match(r.getMessage())[1]) for r in losses]  # type: ignore[index]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(back) == 2, [r.getMessage() for r in back]
    assert re.search(r"after \d+\.\d s down and 1 attempt$", back[0].getMessage())
    assert (
        back[1]
        .getMessage()
        .endswith(
            f" down and {len(losses) + 1} attempts ({len(losses)} connections lost before proving "
            "stable; this one has stayed up 0.2 s and answered a ping)"
        )
    )
    assert len(again) == 3 and again[2].getMessage().endswith(" down and 1 attempt")
    assert client_tasks() == []


async def test_a_flapping_connection_reconciles_each_reconnect_quietly(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """With a cancel pending, each reconnect of a flapping connection logged "reconciling 1
    pending cancels over REST after a reconnect" at INFO, as many times as it flapped. The
    reconcile still runs after every reconnect (Bybit replays nothing, §12.4), but says so at
    INFO only for a reconnect that ended its outage, as far as is known: once per outage."""
    order = fx.seed_order()
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        async with (
            asyncio.timeout(20),
            make_client(fx, ping_interval=1.0, reconnect_backoff=(0.001, 0.002)) as client,
        ):
            # Pending with no request sent: every lookup finds the order still open.
            entry = client._begin("linear", "BTCUSDT", order.order_id, None)
            assert not isinstance(entry, CancelResult)
            client._arm(entry, 30.0)
            try:
                fx.drop_after_subscribe = True
                await fx.disconnect_all()
                await wait_until(lambda: client.reconnect_count >= 5)
                fx.drop_after_subscribe = False
                await wait_until(lambda: bool(messages(caplog, "has stayed up")), timeout=10)
                reconnects = client.reconnect_count
                reconciling = messages(caplog, "reconciling 1 pending cancels")
            finally:
                client._end(entry)
    assert len(reconciling) == reconnects
    assert [r.levelname for r in reconciling] == ["INFO"] + ["DEBUG"] * (reconnects - 1)
    looked_up = [q for q in fx.requests if q.path.startswith("/v5/order/realtime")]
    assert len(looked_up) >= reconnects
    assert client_tasks() == []


async def test_a_refused_auth_whose_resync_keeps_failing_is_said_once(
    fx: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """Every reconnect's auth is refused and /v5/market/time is down, so the clock resync that
    follows fails each time: the "resyncing the clock" INFO came on every attempt. It is an
    INFO once in the outage, then DEBUG, as the failure it leads to is a WARNING, then DEBUG;
    the stream keeps trying, and comes back once the resync works."""
    with caplog.at_level(logging.DEBUG, logger="bybit_cancel"):
        async with (
            asyncio.timeout(20),
            make_client(fx, reconnect_backoff=(0.001, 0.002)) as client,
        ):
            fx.refuse_auth = True
            fx.market_time_status = 502
            await fx.disconnect_all()
            await wait_until(lambda: len(messages(caplog, "clock resync failed")) >= 5)
            fx.refuse_auth = False
            fx.market_time_status = None
            await wait_until(lambda: client.reconnect_count == 1)
    resyncing = messages(caplog, "resyncing the clock")
    assert len(resyncing) >= 5
    assert [r.levelname for r in resyncing] == ["INFO"] + ["DEBUG"] * (len(resyncing) - 1)
    failed = messages(caplog, "clock resync failed")
    assert [r.levelname for r in failed] == ["WARNING"] + ["DEBUG"] * (len(failed) - 1)
    assert "HTTP 502" in failed[0].getMessage(), failed[0].getMessage()
    assert client_tasks() == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (4.24, "4.2 s"),
        (59.94, "59.9 s"),
        (59.97, "1 min 0 s"),
        (61.6, "1 min 2 s"),
        (3725, "1 h 2 min"),
    ],
)
def test_durations_read_as_an_operator_would(seconds: float, text: str) -> None:
    """59.97 s is "1 min 0 s", not "60.0 s"."""
    assert _stream._duration(seconds) == text
