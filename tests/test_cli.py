"""The command line, run as a real subprocess against FakeExchange."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from bybit_cancel.cli import main
from bybit_cancel.testing import FakeExchange, Fault

from .conftest import KEY, SECRET


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BYBIT_")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bybit_cancel",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 25)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cancel_args(fx: FakeExchange, *extra: str) -> list[str]:
    return [
        "cancel",
        "--category",
        "linear",
        "--symbol",
        "BTCUSDT",
        "--rest-url",
        fx.rest_url,
        "--ws-url",
        fx.ws_url,
        "--timeout",
        "5",
        *extra,
    ]


CREDS = {"BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET}


async def test_demo_prints_cancelled_and_filled() -> None:
    """`bybit-cancel demo` confirms one Cancelled and one Filled, with latencies, exit 0."""
    code, out, err = await run_cli("demo")
    assert code == 0, err
    assert "Cancelled" in out and "Filled" in out and " ms" in out
    assert "cancelled=True" in out and "cancelled=False" in out


async def test_cancel_exit_0_and_json(fx: FakeExchange) -> None:
    o = fx.seed_order()
    code, out, err = await run_cli(*cancel_args(fx, "--order-id", o.order_id, "--json"), env=CREDS)
    assert code == 0, err
    body = json.loads(out)
    assert body["status"] == "Cancelled" and body["orderId"] == o.order_id and body["cancelled"]
    assert SECRET not in out + err


async def test_cancel_exit_3_when_filled(fx: FakeExchange) -> None:
    o = fx.seed_order()
    fx.add_fault(Fault.FILL_BEFORE_CANCEL, order_id=o.order_id)
    code, out, _ = await run_cli(*cancel_args(fx, "--order-id", o.order_id), env=CREDS)
    assert code == 3 and "Filled" in out


async def test_cancel_exit_4_not_found(fx: FakeExchange) -> None:
    code, out, _ = await run_cli(*cancel_args(fx, "--order-link-id", "ghost", "--json"), env=CREDS)
    assert code == 4
    body = json.loads(out)
    assert body["error"] == "OrderNotFound" and body["retCode"] == 110001


async def test_cancel_exit_5_timeout(fx: FakeExchange) -> None:
    o = fx.seed_order()
    fx.add_fault(Fault.DELAY_PUSH, order_id=o.order_id, delay=20)
    args = cancel_args(fx, "--order-id", o.order_id)
    args[args.index("--timeout") + 1] = "0.5"
    code, _, err = await run_cli(*args, env=CREDS)
    assert code == 5 and "ConfirmationTimeout" in err


async def test_cancel_exit_1_auth_refused(fx: FakeExchange) -> None:
    code, _, err = await run_cli(
        *cancel_args(fx, "--order-id", "x"),
        env={"BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": "wrong-secret"},
    )
    assert code == 1 and "AuthenticationError" in err
    assert "wrong-secret" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["cancel", "--category", "linear", "--symbol", "BTCUSDT"],  # no id
        ["cancel", "--category", "nope", "--symbol", "BTCUSDT", "--order-id", "x"],
        ["cancel", "--category", "linear", "--symbol", "btcusdt", "--order-id", "x"],
        [
            "cancel",
            "--category",
            "linear",
            "--symbol",
            "BTCUSDT",
            "--order-id",
            "x",
            "--timeout",
            "0",
        ],
        [
            "cancel",
            "--category",
            "linear",
            "--symbol",
            "BTCUSDT",
            "--order-id",
            "x",
            "--rest-url",
            "http://x",
        ],
        [
            "cancel",
            "--category",
            "linear",
            "--symbol",
            "BTCUSDT",
            "--order-id",
            "x",
            "--order-filter",
            "StopOrder",
        ],
        [],
    ],
)
def test_bad_input_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad arguments exit 2 before any connection (the URLs here point nowhere)."""
    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    assert main(argv) == 2
    assert SECRET not in capsys.readouterr().err


def test_missing_credentials_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BYBIT_API_KEY", raising=False)
    monkeypatch.delenv("BYBIT_API_SECRET", raising=False)
    assert main(["cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "x"]) == 2
    assert "BYBIT_API_KEY" in capsys.readouterr().err
