"""Command line: ``bybit-cancel demo`` and ``bybit-cancel cancel``.

Exit codes of ``cancel`` (also in the README):

* 0: the order is cancelled (Cancelled, PartiallyFilledCanceled or Deactivated);
* 1: any other error (exchange error, network, authentication);
* 2: bad input (arguments, missing BYBIT_API_KEY / BYBIT_API_SECRET);
* 3: the order ended otherwise before the cancel landed (Filled, or Rejected);
* 4: no such order;
* 5: no final state within the timeout (which covers connecting too);
* 130: interrupted (Ctrl-C); 143: terminated (SIGTERM). The client is closed first.

With ``--json`` every outcome once the arguments parse is one JSON object on stdout: the result,
or ``{"error": ..., "message": ..., "mayHaveLanded": ...}`` (with ``retCode``/``retMsg`` for an
exchange error); ``mayHaveLanded`` true means the order may be cancelled all the same (always
after Ctrl-C or SIGTERM, which cannot tell whether the request had left; never for bad input).
Arguments argparse refuses (an unknown option, ``--timeout abc``) print its usage and exit 2.

The secret is read from the environment only, never from the command line, and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ._client import BybitCancelClient, cancel_and_confirm, validate_cancel
from ._exceptions import BybitAPIError, BybitError, ConfirmationTimeout, OrderNotFound
from ._models import CancelResult

__all__ = ["main"]

EXIT_CANCELLED = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_CANCELLED = 3
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad input, 0 on --help
        return int(exc.code or 0)
    if args.command == "demo":
        return asyncio.run(_demo(sys.stdout))
    return _cancel(args, sys.stdout, sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bybit-cancel",
        description="Cancel a Bybit v5 order and wait for its confirmed final state.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="cancel orders on an embedded fake exchange and show the outcome")
    # No abbreviations (`--dem` for `--demo`, `--test` for `--testnet`): in a trading command an
    # option should mean only what is written in full.
    c = sub.add_parser(
        "cancel",
        allow_abbrev=False,
        help="cancel one order (key and secret from BYBIT_API_KEY and BYBIT_API_SECRET)",
        epilog="exit codes: 0 cancelled, 1 error, 2 bad input, 3 filled/rejected before the "
        "cancel, 4 no such order, 5 timeout (connecting included), 130 interrupted, "
        "143 terminated",
    )
    c.add_argument("--category", required=True, choices=["linear", "inverse", "spot", "option"])
    c.add_argument("--symbol", required=True)
    ident = c.add_mutually_exclusive_group(required=True)
    ident.add_argument("--order-id")
    ident.add_argument("--order-link-id")
    c.add_argument("--order-filter", choices=["Order", "tpslOrder", "StopOrder"])
    env = c.add_mutually_exclusive_group()
    env.add_argument("--testnet", action="store_true")
    env.add_argument("--demo", action="store_true", help="Bybit demo trading")
    c.add_argument("--rest-url", help="override the REST host (with --ws-url)")
    c.add_argument("--ws-url", help="override the private websocket URL (with --rest-url)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    as_json = bool(args.json)
    key = os.environ.get("BYBIT_API_KEY", "")
    secret = os.environ.get("BYBIT_API_SECRET", "")
    if not key or not secret:
        msg = "set BYBIT_API_KEY and BYBIT_API_SECRET in the environment"
        return _report(out, err, as_json, "ValueError", msg, EXIT_BAD_INPUT, landed=False)
    if (args.rest_url is None) != (args.ws_url is None):
        msg = "--rest-url and --ws-url go together"
        return _report(out, err, as_json, "ValueError", msg, EXIT_BAD_INPUT, landed=False)
    if (args.testnet or args.demo) and args.rest_url:
        msg = "--rest-url/--ws-url replace --testnet/--demo"
        return _report(out, err, as_json, "ValueError", msg, EXIT_BAD_INPUT, landed=False)
    call: dict[str, Any] = {
        "category": args.category,
        "symbol": args.symbol,
        "order_id": args.order_id,
        "order_link_id": args.order_link_id,
        "order_filter": args.order_filter,
        "timeout": args.timeout,
    }
    options: dict[str, Any] = {
        "testnet": args.testnet,
        "demo": args.demo,
        "rest_url": args.rest_url,
        "ws_url": args.ws_url,
    }
    try:
        validate_cancel(**call)
        BybitCancelClient(api_key=key, api_secret=secret, **options)  # checks them; no I/O
    except ValueError as exc:
        return _report(out, err, as_json, "ValueError", str(exc), EXIT_BAD_INPUT, landed=False)

    try:
        result = asyncio.run(_run(key, secret, call, options))
    except KeyboardInterrupt:
        # (Whether the request had left when the signal came is not known: say it may have.)
        return _report(
            out, err, as_json, "Interrupted", "interrupted", EXIT_INTERRUPTED, landed=True
        )
    except asyncio.CancelledError:
        return _report(out, err, as_json, "Terminated", "terminated", EXIT_TERMINATED, landed=True)
    except OrderNotFound as exc:
        return _fail(err, as_json, out, exc, EXIT_NOT_FOUND)
    except ConfirmationTimeout as exc:
        return _fail(err, as_json, out, exc, EXIT_TIMEOUT)
    except BybitError as exc:
        return _fail(err, as_json, out, exc, EXIT_ERROR)
    except Exception as exc:  # not expected: one line (or JSON), no traceback
        return _report(out, err, as_json, type(exc).__name__, str(exc), EXIT_ERROR, landed=True)
    if as_json:
        _print(json.dumps(_as_dict(result)), out)
    else:
        _print(_describe(result), out)
    return EXIT_CANCELLED if result.cancelled else EXIT_NOT_CANCELLED


async def _run(
    key: str, secret: str, call: dict[str, Any], options: dict[str, Any]
) -> CancelResult:
    """The one-shot helper (its timeout covers connecting), with SIGTERM cancelling it so that
    the client closes before the process ends (asyncio.run does the same for Ctrl-C)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):  # (no loop signal handlers, e.g. Windows)
            pass
    return await cancel_and_confirm(api_key=key, api_secret=secret, **call, **options)


def _print(text: str, file: TextIO) -> None:
    """``print``, flushed, except that a reader that has gone (a closed pipe, ``| head -1``)
    changes nothing: the cancel's outcome is in the exit code all the same."""
    try:
        print(text, file=file, flush=True)
    except BrokenPipeError:
        # Python's recipe (the signal module's docs, "Note on SIGPIPE"): send the rest of the
        # output to /dev/null, so that the flush at exit does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), file.fileno())
        except (OSError, ValueError):  # (no file descriptor: nothing to flush at exit)
            pass


def _report(
    out: TextIO, err: TextIO, as_json: bool, name: str, message: str, code: int, *, landed: bool
) -> int:
    if as_json:
        _print(json.dumps({"error": name, "message": message, "mayHaveLanded": landed}), out)
    else:
        _print(f"error: {message}", err)
    return code


def _fail(err: TextIO, as_json: bool, out: TextIO, exc: BybitError, code: int) -> int:
    if as_json:
        body: dict[str, Any] = {
            "error": type(exc).__name__,
            "message": str(exc),
            "mayHaveLanded": exc.may_have_landed,
        }
        if isinstance(exc, BybitAPIError):
            body["retCode"] = exc.ret_code
            body["retMsg"] = exc.ret_msg
        _print(json.dumps(body), out)
    else:
        _print(f"error: {type(exc).__name__}: {exc}", err)
    return code


def _as_dict(result: CancelResult) -> dict[str, Any]:
    return {
        "orderId": result.order_id,
        "orderLinkId": result.order_link_id,
        "category": result.category,
        "symbol": result.symbol,
        "status": result.status.value,
        "cancelled": result.cancelled,
        "cancelType": result.cancel_type,
        "rejectReason": result.reject_reason,
        "cumExecQty": str(result.cum_exec_qty),
        "leavesQty": None if result.leaves_qty is None else str(result.leaves_qty),
        "updatedTime": result.updated_time,
        "source": result.source,
    }


def _describe(result: CancelResult) -> str:
    return (
        f"{result.category} {result.symbol} order {result.order_id}: {result.status.value} "
        f"(filled {result.cum_exec_qty}, cancelType {result.cancel_type}, "
        f"rejectReason {result.reject_reason}, confirmed via {result.source})"
    )


async def _demo(out: TextIO) -> int:
    """Two cancels on the embedded fake exchange: one that lands, one that loses to a fill."""
    from .testing import FakeExchange, Fault

    key, secret = "demo-key", secrets.token_hex(16)
    async with FakeExchange(api_key=key, api_secret=secret, push_delay=0.002) as fx:
        _print(f"fake Bybit v5 exchange on {fx.rest_url} (private stream {fx.ws_url})", out)
        async with BybitCancelClient(
            api_key=key, api_secret=secret, rest_url=fx.rest_url, ws_url=fx.ws_url
        ) as client:
            _print("private stream: authenticated and subscribed to 'order'", out)

            resting = fx.seed_order(category="linear", symbol="BTCUSDT", qty="0.010", price="30000")
            _print(f"\n1) cancel a resting limit order {resting.order_id}", out)
            await _demo_cancel(out, client, resting.order_id)

            racing = fx.seed_order(category="linear", symbol="ETHUSDT", qty="0.50", price="2500")
            fx.add_fault(Fault.FILL_BEFORE_CANCEL, order_id=racing.order_id)
            _print(
                f"\n2) cancel an order that fills just before the cancel lands {racing.order_id}",
                out,
            )
            result = await _demo_cancel(out, client, racing.order_id, symbol="ETHUSDT")
            if result.status != "Filled":
                _print("unexpected: the second order should have been reported Filled", out)
                return EXIT_ERROR
    _print("\nthe ack only said 'accepted'; the stream (or a REST lookup) said what happened.", out)
    return 0


async def _demo_cancel(
    out: TextIO, client: BybitCancelClient, order_id: str, symbol: str = "BTCUSDT"
) -> CancelResult:
    t0 = time.perf_counter()
    acked: list[float] = []

    def on_ack(oid: str, link: str) -> None:
        acked.append(time.perf_counter())
        _print(
            f"   ack:       retCode 0, orderId={oid} orderLinkId={link!r} "
            f"after {(acked[0] - t0) * 1000:.2f} ms (accepted, not yet done)",
            out,
        )

    try:
        result = await client.cancel_order(
            category="linear", symbol=symbol, order_id=order_id, timeout=5.0, on_ack=on_ack
        )
    except BybitAPIError as exc:  # pragma: no cover - the demo expects no error
        _print(f"   error: {exc}", out)
        raise
    t1 = time.perf_counter()
    if not acked:
        _print("   ack:       retCode 110001 'Order does not exist' (ambiguous: looked it up)", out)
    _print(f"   confirmed: {_describe(result)}", out)
    _print(f"   confirmed after {(t1 - t0) * 1000:.2f} ms; cancelled={result.cancelled}", out)
    return result
