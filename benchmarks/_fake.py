"""The benchmarks' FakeExchange, in its own process (default) or in the benchmark's process.

    python -m benchmarks._fake --books 4 [--uvloop]     # what the benchmarks start

Why a separate process: the fake is a real aiohttp server doing real work per request and per push
(auth check, JSON, book keeping). In the client's process that CPU would be charged to whichever
client happens to be running, and on a 2-core machine the two processes then each get a core. Each
client under test gets its own fake instance (a "book", its own port): the fake fans every push
out to every subscribed connection, so clients sharing one would each decode the others' pushes.

Control protocol: one JSON object per line on stdin, one JSON answer per line on stdout. The first
line written is ``{"books": [{"rest_url": ..., "ws_url": ...}, ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import positive_int
from bybit_cancel.testing import FakeExchange

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "bench-key-0001", "bench-secret-not-for-logs"
# No rate limiting in a benchmark: 10,000 cancels in one second must not meet 10006.
NO_LIMITS = {
    "/v5/order/cancel": 10**9,
    "/v5/order/realtime": 10**9,
    "/v5/order/history": 10**9,
    "/v5/order/create": 10**9,
}
PARKED = 3600.0  # push_delay that holds every cancel's push until `release`


class Books:
    """K FakeExchange instances and the benchmark operations on them (same in and out of process).

    ``prepare``/``release`` reach into the fake's internals on purpose: they apply the held cancels
    to the book and build their push frames first (``prepare``), then only queue the ready frames on
    the socket (``release``), so a throughput run measures the client, not the fake's JSON work.
    """

    def __init__(self, count: int) -> None:
        self.fakes = [
            FakeExchange(api_key=KEY, api_secret=SECRET, seed=i, rate_limits=NO_LIMITS)
            for i in range(count)
        ]
        self._ready: list[list[str]] = [[] for _ in range(count)]
        self._trim: asyncio.Task[None] | None = None

    async def start(self) -> list[dict[str, str]]:
        for fx in self.fakes:
            await fx.start()
        self._trim = asyncio.get_running_loop().create_task(self._trim_loop())
        return [{"rest_url": fx.rest_url, "ws_url": fx.ws_url} for fx in self.fakes]

    async def stop(self) -> None:
        if self._trim is not None:
            self._trim.cancel()
        for fx in self.fakes:
            await fx.stop()

    async def _trim_loop(self) -> None:
        # The fake records every request for tests; a benchmark sends 100,000s of them.
        while True:
            await asyncio.sleep(0.5)
            for fx in self.fakes:
                fx.requests.clear()
                fx.ws_received.clear()

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        fx = self.fakes[cmd.get("book", 0)]
        if op == "seed":
            category = cmd.get("category", "linear")
            symbol = cmd.get("symbol", "BTCUSDT")
            ids = [
                fx.seed_order(category=category, symbol=symbol, qty="0.010").order_id
                for _ in range(cmd["n"])
            ]
            return {"ids": ids}
        if op == "park":
            fx.push_delay = PARKED if cmd["on"] else 0.0
            return {}
        if op == "subscribed":
            return {"n": sum(1 for c in fx._conns.values() if c.authed and c.order_topics)}
        if op == "prepare":
            per = int(cmd["per_frame"])
            snaps = []
            for oid in cmd["ids"]:
                order = fx.order(oid)
                fx._cancel_in_book(order)  # what the held timer would do, minus its push
                snaps.append(fx._ws_order(order))
            frames = self._ready[cmd.get("book", 0)]
            for i in range(0, len(snaps), per):
                frames.extend(fx._build_frames("order", snaps[i : i + per], chunk=False))
            return {"frames": len(frames)}
        if op == "release":
            frames, self._ready[cmd.get("book", 0)] = self._ready[cmd.get("book", 0)], []
            for conn in fx._conns.values():
                if conn.authed and "order" in conn.order_topics:
                    for text in frames:
                        conn.queue.put_nowait((1, text, None))  # _KIND_PUSH
            return {"frames": len(frames)}
        if op == "cpu":
            return {"cpu": time.process_time(), "rss_mb": _rss_mb(), "pushes": fx.pushes_sent}
        raise ValueError(f"unknown op {op!r}")


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class FakeHandle:
    """The benchmark's side: start the fake (in or out of process) and send it operations."""

    def __init__(self) -> None:
        self.books: list[dict[str, str]] = []
        # Where the fake runs, for the benchmarks' headers.
        self.placement = "fake in this process"
        self._proc: asyncio.subprocess.Process | None = None
        self._local: Books | None = None
        self._lock = asyncio.Lock()
        self._affinity: set[int] | None = None

    @classmethod
    async def start(
        cls, books: int, *, inproc: bool = False, uvloop: bool = False, pin: bool = True
    ) -> FakeHandle:
        """Start the fake; out of process, ``pin`` puts it on a core of its own (see _pin)."""
        self = cls()
        if inproc:
            self._local = Books(books)
            self.books = await self._local.start()
            return self
        args = [sys.executable, "-m", "benchmarks._fake", "--books", str(books)]
        if uvloop:
            args.append("--uvloop")
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            limit=2**28,
        )
        self.placement = "fake in a separate process"
        if pin:
            self._pin(self._proc.pid)
        try:
            self.books = (await self._read())["books"]
        except BaseException:
            self._unpin()  # (the caller gets no handle to close)
            raise
        return self

    def _pin(self, pid: int) -> None:
        """The fake on the last core, this process (the clients) on the others.

        Left alone, Linux tends to wake the client on the core of the fake that woke it (wake
        affinity) and the two processes then run in turn on one core: every microsecond a client
        spends after sending its request delays the fake's push by as much, which an exchange on
        another machine would not do (docs/performance.md, item 20). Undone by close().
        """
        getaff = getattr(os, "sched_getaffinity", None)
        setaff = getattr(os, "sched_setaffinity", None)
        if getaff is None or setaff is None:
            return
        cpus = sorted(getaff(0))
        if len(cpus) < 2:
            return
        self._affinity = set(cpus)
        setaff(pid, {cpus[-1]})
        setaff(0, set(cpus[:-1]))
        clients = ",".join(map(str, cpus[:-1]))
        self.placement = f"fake in a separate process on CPU {cpus[-1]}, clients on CPU {clients}"

    @property
    def in_process(self) -> bool:
        return self._local is not None

    async def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake exchange process died")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fake exchange: {answer['error']}")
        return answer

    async def call(self, op: str, **kw: Any) -> dict[str, Any]:
        cmd = {"op": op, **kw}
        if self._local is not None:
            return self._local.handle(cmd)
        assert self._proc is not None and self._proc.stdin is not None
        async with self._lock:
            self._proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self._proc.stdin.drain()
            return await self._read()

    async def wait_subscribed(self, book: int, n: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            # The state lives in the other process: polling is the only way to see it.
            while (await self.call("subscribed", book=book))["n"] < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    def _unpin(self) -> None:
        if self._affinity is not None:
            os.sched_setaffinity(0, self._affinity)
            self._affinity = None

    async def close(self) -> None:
        self._unpin()
        if self._local is not None:
            await self._local.stop()
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()


async def _serve(count: int) -> None:
    books = Books(count)
    out = sys.stdout
    out.write(json.dumps({"books": await books.start()}) + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            try:
                answer = books.handle(json.loads(line))
            except Exception as exc:
                answer = {"error": repr(exc)}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        await books.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--books", type=positive_int, default=1)
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    if a.uvloop:
        import uvloop

        uvloop.run(_serve(a.books))
    else:
        asyncio.run(_serve(a.books))


if __name__ == "__main__":
    main()
