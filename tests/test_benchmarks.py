"""Smoke test of the benchmark scripts: each runs with a tiny N and prints its table and verdicts.

Only that the scripts work is checked, never the figures (no timed assertions in tests).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    # Exit status 1 means "a target was missed", which a tiny N may well do; but a crash exits 1 too,
    # so status 1 must come with a FAIL line and no traceback.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 1:
        assert any(ln.startswith("FAIL") for ln in proc.stdout.splitlines()), proc.stdout[-3000:]
    return proc.stdout


def assert_verdicts(out: str, count: int) -> None:
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) >= count, out


def test_latency_with_peers() -> None:
    pytest.importorskip("pybit")
    pytest.importorskip("ccxt")
    out = run_script("benchmarks/latency.py", "-n", "20", "--warmup", "5")
    for name in ("bybit_cancel", "floor", "pybit", "ccxt"):
        assert f"\n{name} " in out, out
    assert "conf p50" in out
    assert_verdicts(out, 2)


def test_latency_without_peers() -> None:
    out = run_script("benchmarks/latency.py", "-n", "20", "--warmup", "5", "--no-peers", "--inproc")
    assert "\nbybit_cancel " in out and "\nfloor " in out, out
    assert_verdicts(out, 2)


def test_throughput() -> None:
    out = run_script(
        "benchmarks/throughput.py", "-n", "200", "--ws-n", "20", "--rounds", "1", "--ws-rounds", "1"
    )
    assert "json+dict" in out and "frames/s" in out and "calls resumed/s" in out, out
    assert "\ntyped+dict " in out and "\ntyped+memory " in out and "the memory alone" in out, out
    assert "\nrecent_size=0 " in out and "memory off (recent_size=0), ours runs" in out, out
    assert_verdicts(out, 4)


def test_throughput_in_process_times_each_chunk_by_every_path() -> None:
    """(a) pairs its paths by chunk: every path times the same chunks, and in a round long enough
    to fill the memories of final states the chunks before they are full are not counted."""
    from benchmarks.throughput import PATHS, RECENT_SIZE, in_process

    short = asyncio.run(in_process(200, 10, 50))
    assert tuple(short) == PATHS
    for runs in short.values():
        assert [updates for updates, _ in runs] == [50, 50, 50, 50]
        assert all(seconds > 0 for _, seconds in runs)
    # 20,512 updates in 2,052 frames of up to 10; chunks of 500 frames; the memories are full
    # after 10,256 updates (frame 1,026): the chunks from frames 0, 500 and 1,000 are the warm-up.
    n = 2 * (RECENT_SIZE + 256)
    long = asyncio.run(in_process(n, 10, 5_000))
    for runs in long.values():
        assert [updates for updates, _ in runs] == [5_000, n - 2_000 * 10]


def test_scale() -> None:
    out = run_script("benchmarks/scale.py", "-n", "20", "--burst", "100", "--rounds", "1")
    assert "B/pending" in out and "burst:" in out, out
    assert_verdicts(out, 5)


def test_waiter() -> None:
    out = run_script("benchmarks/waiter.py", "-n", "200", "--wakes", "10")
    assert "Future + Pending" in out and "\nCall " in out and "INFO Call saves" in out, out


def test_chaos() -> None:
    """The chaos run must not merely print: with a tiny N every answer must still be right."""
    out = run_script("benchmarks/chaos.py", "-n", "60", "--rate", "0.5", "--seed", "5")
    assert "correct final states" in out and "hung" in out, out
    assert "PASS 100% correct" in out and "PASS 0 hung" in out, out


def test_soak() -> None:
    """A tiny soak: every window's cancels must still be right, and the table and each
    verdict printed (a few windows are too few for the flatness verdicts to mean anything)."""
    out = run_script(
        "benchmarks/soak.py", "--windows", "3", "-n", "30", "--drop-every", "2", "--tracemalloc"
    )
    assert "RSS KiB" in out and "tracemalloc slope" in out and "open fds net of them" in out, out
    assert "PASS every cancel correct, none hung" in out, out
    assert "client indexes flat" in out, out
    assert_verdicts(out, 3)


def test_bytecodes() -> None:
    out = run_script("benchmarks/bytecodes.py", "-n", "5", "--warmup", "2", "--top", "3")
    assert "bybit_cancel" in out and "floor" in out and "\ntotal " in out, out
    assert "_client.cancel_order" in out, out  # our own code was counted, by function


def test_bytecodes_per_push() -> None:
    out = run_script("benchmarks/bytecodes.py", "--push", "10", "-n", "20", "--top", "3")
    assert "per push" in out and "released 10 to a push, 2 pushes counted" in out, out
    assert "_core.on_orders" in out and "_clients._read" in out, out


def test_layers() -> None:
    """Each layer's row, what it adds, and ours beyond typed+dict, with the memory of one state
    (the documented breakdown's setting, item 39)."""
    out = run_script("benchmarks/layers.py", "-n", "400", "--chunk", "50", "--recent-size", "1")
    for name in ("typed+dict", "+tracker", "+wake-up", "+callback", "+router"):
        assert f"\n{name} " in out, out
    assert out.count("us per update beyond typed+dict") == 2, out


def test_cold() -> None:
    out = run_script("benchmarks/cold.py", "-n", "3", "--evict-mb", "1")
    assert "RestSigner" in out and "hmac.new" in out and "input checks" in out, out


def test_icache_dry() -> None:
    """The callgrind wrapper's work, without valgrind (counting takes minutes)."""
    out = run_script("benchmarks/icache.py", "--dry", "-n", "20")
    assert "bybit_cancel:" in out and "floor:" in out and "dry run" in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("benchmarks/throughput.py", "--ws-rounds", "0"),
            "--ws-rounds: must be at least 1, got 0",
        ),
        (("benchmarks/latency.py", "-n", "0"), "-n: must be at least 1, got 0"),
        (("benchmarks/latency.py", "--warmup", "-1"), "--warmup: must be at least 0, got -1"),
        (("benchmarks/scale.py", "--rounds", "2.5"), "--rounds: not a whole number: '2.5'"),
        (("benchmarks/chaos.py", "--rate", "nan"), "--rate: must be from 0 to 1, got nan"),
        (("benchmarks/chaos.py", "--timeout", "inf"), "--timeout: must be a positive number"),
        (("benchmarks/soak.py", "--windows", "0"), "--windows: must be at least 1, got 0"),
        (("benchmarks/bytecodes.py", "--push", "10", "-n", "15"), "-n must be a multiple of"),
    ],
)
def test_bad_arguments_refused_before_any_work(args: tuple[str, ...], message: str) -> None:
    """A count of 0 used to run: --ws-rounds 0 crashed after the in-process part, latency.py -n 0
    printed nan verdicts and exited 0."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=25, check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and not proc.stdout, proc.stderr
