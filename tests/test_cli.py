"""The command line, run as a real subprocess against FakeExchange."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from bybit_cancel.cli import main
from bybit_cancel.testing import FakeExchange, Fault

from .conftest import KEY, SECRET


def _ctrl_c_as_from_a_terminal() -> None:
    """Run in the child before the exec: SIGINT back to its default, as a shell gives it to a
    foreground command. A test run started with SIGINT ignored (a background job of a shell
    without job control, `cmd &` in a script) passes SIG_IGN on to every child, and Python and
    the CLI keep it, as they should: the SIGINT test then waited out the 10 s handshake timeout
    and saw exit 1 (TransportError, on stdout with --json) instead of 130."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def spawn_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`python -m bybit_cancel ARGS` with only the given BYBIT_* variables, its output piped,
    and Ctrl-C (SIGINT) not ignored whatever this process inherited."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BYBIT_")}
    full_env.update(env or {})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bybit_cancel",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        preexec_fn=None if sys.platform == "win32" else _ctrl_c_as_from_a_terminal,
    )


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await spawn_cli(*args, env=env)
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
# A well-formed cancel, to which a test adds its hosts and options.
CANCEL_X = ["cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "x"]


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


@pytest.mark.parametrize("as_json", [False, True])
async def test_a_reader_gone_does_not_change_the_exit_code(fx: FakeExchange, as_json: bool) -> None:
    """`bybit-cancel cancel ... | head -0`: the order is cancelled, so the exit code is 0, with
    no BrokenPipeError traceback (it used to exit 1 with one)."""
    o = fx.seed_order()
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the output
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BYBIT_")}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bybit_cancel",
            *cancel_args(fx, "--order-id", o.order_id, *(["--json"] if as_json else [])),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env={**full_env, **CREDS},
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 25)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert fx.order(o.order_id).status == "Cancelled"


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
        # An abbreviated option is refused, not taken for the one it starts (`--test`: testnet).
        ["cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "x", "--test"],
        ["cancel", "--cat", "linear", "--symbol", "BTCUSDT", "--order-id", "x"],
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


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Blackhole:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            self.accepted.set()

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        assert self._server is not None
        self._server.close()

    def args(self, *extra: str) -> list[str]:
        base = f"127.0.0.1:{self.port}"
        hosts = ["--rest-url", f"http://{base}", "--ws-url", f"ws://{base}/v5/private"]
        return [*CANCEL_X, *hosts, *extra]


async def test_cancel_timeout_covers_connecting() -> None:
    """Against a host that accepts and never answers, --timeout 1 ends in about a second with
    exit 5 (it used to take the websocket handshake's own 10 s and exit 1)."""
    async with Blackhole() as hole:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        code, out, _ = await run_cli(*hole.args("--timeout", "1", "--json"), env=CREDS)
        assert code == 5 and loop.time() - t0 < 6
        body = json.loads(out)
        assert body["error"] == "ConfirmationTimeout" and body["mayHaveLanded"] is False


@pytest.mark.parametrize(
    ("argv_extra", "env"),
    [
        (["--symbol", "btcusdt"], CREDS),  # refused by validate_cancel
        ([], {"BYBIT_API_KEY": KEY}),  # no secret
        (["--ws-url", "ws://127.0.0.1:99999/v5/private"], CREDS),  # a port out of range
    ],
)
async def test_json_bad_input_is_json(argv_extra: list[str], env: dict[str, str]) -> None:
    """With --json, bad input is a JSON error on stdout too (exit 2), never a traceback."""
    args = [
        *CANCEL_X,
        *("--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9/v5/private", "--json"),
    ]
    for i in range(0, len(argv_extra), 2):
        args[args.index(argv_extra[i]) + 1] = argv_extra[i + 1]
    code, out, err = await run_cli(*args, env=env)
    assert code == 2 and "Traceback" not in err
    assert json.loads(out)["error"] == "ValueError"
    assert json.loads(out)["mayHaveLanded"] is False  # nothing was sent


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("sig", "code", "name", "ignored"),
    [
        pytest.param("SIGINT", 130, "Interrupted", False, id="SIGINT"),
        pytest.param("SIGTERM", 143, "Terminated", False, id="SIGTERM"),
        # As if this test run had started with SIGINT ignored (_ctrl_c_as_from_a_terminal).
        pytest.param("SIGINT", 130, "Interrupted", True, id="SIGINT-inherited-ignored"),
    ],
)
async def test_a_signal_closes_the_client_and_exits_cleanly(
    sig: str, code: int, name: str, ignored: bool
) -> None:
    """Ctrl-C or SIGTERM while connecting: the client is closed, one JSON line, no traceback,
    exit 130 or 143 (SIGTERM used to kill it without closing anything)."""
    async with Blackhole() as hole:
        before = signal.getsignal(signal.SIGINT)
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # (only while spawning: inherited)
        try:
            proc = await spawn_cli(*hole.args("--timeout", "20", "--json"), env=CREDS)
        finally:
            if ignored and before is not None:
                signal.signal(signal.SIGINT, before)
        await asyncio.wait_for(hole.accepted.wait(), 15)  # it is connecting now
        proc.send_signal(getattr(signal, sig))
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == code, (out, err)
    assert json.loads(out.decode()) == {
        "error": name,
        "message": name.lower(),
        "mayHaveLanded": True,  # a signal cannot tell whether the request had left
    }
    assert b"Traceback" not in err
