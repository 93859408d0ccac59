"""Work per cancel, counted rather than timed: Python bytecodes and frames, by package.

    python benchmarks/bytecodes.py            # 300 sequential cancels per client after 50 warm-up
    python benchmarks/bytecodes.py -n 100
    python benchmarks/bytecodes.py --push 10  # per push in throughput.py (b)'s release window

On a shared, noisy VM a difference of 10 us per cancel (1 %) is below what latency.py can tell
from run to run. This counts what the client process executes instead: every bytecode and every
frame entered (a call, or a coroutine resumed) while N sequential cancels run, with
``sys.settrace`` opcode events, for bybit_cancel and the hand-written floor (the fake exchange runs
in its own process and is not counted). The counts repeat within about 1 % from run to run (the
event loop's scheduling varies a little); C code (msgspec, hashlib, the selector) is not counted.

With ``--push K`` it counts, per push instead of per cancel, what the loopback of
``throughput.py`` (b) times: N cancels parked, then their pushes released K orders to a frame,
counted from the release until every call has returned (``throughput.park_and_release``; one
release untraced first, as warm-up).

Slow by design (tracing every opcode): use a few hundred cancels. No targets: it explains the
latency and loopback tables, it does not judge them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._clients import Floor, Ours
from benchmarks._common import machine, non_negative_int, positive_int, run
from benchmarks._fake import FakeHandle
from benchmarks.throughput import park_and_release

_PACKAGES = ("aiohttp", "asyncio", "websockets", "yarl", "multidict")
_ROOT = Path(__file__).resolve().parent.parent
_OWN = (str(_ROOT / "benchmarks"), str(_ROOT / "bybit_cancel"))


def package(filename: str) -> str:
    """The package a code object belongs to; the client's own code counts as "own"."""
    if filename == __file__:
        return "other"  # this script's own loop
    if filename.startswith(_OWN):
        return "own"  # bybit_cancel, the floor's code, and the benchmark's wrapper around ours
    parts = Path(filename).parts
    if "site-packages" in parts:
        top = parts[parts.index("site-packages") + 1]
    else:  # the standard library: a package's folder, or a module's file
        top = parts[-2] if len(parts) > 1 and parts[-2] in _PACKAGES else ""
    return top if top in _PACKAGES else "other"


class Counts:
    """A trace function counting opcodes and frames per package."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()
        self.own_ops: Counter[str] = Counter()  # by function, for the client's own code
        self._package: dict[Any, str] = {}

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        name = self._package.get(code)
        if name is None:
            name = self._package[code] = package(code.co_filename)
        if event == "opcode":
            self.ops[name] += 1
            if name == "own":
                self.own_ops[f"{Path(code.co_filename).stem}.{code.co_name}"] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
            self.frames[name] += 1
        return self.trace


async def count(kind: type[Any], n: int, warmup: int) -> Counts:
    fake = await FakeHandle.start(1)
    client = kind(fake.books[0]["rest_url"], fake.books[0]["ws_url"])
    counts = Counts()
    try:
        await client.open()
        await fake.wait_subscribed(0)
        ids = (await fake.call("seed", book=0, n=n + warmup))["ids"]
        # The warm-up is traced too, and thrown away: on Python 3.12.1 a trace function gets its
        # first opcode events only from the second sys.settrace on.
        sys.settrace(Counts().trace)
        try:
            for oid in ids[:warmup]:
                await client.cancel(oid)
        finally:
            sys.settrace(None)
        sys.settrace(counts.trace)
        try:
            for oid in ids[warmup:]:
                await client.cancel(oid)
        finally:
            sys.settrace(None)
    finally:
        await client.close()
        await fake.close()
    return counts


async def count_release(kind: type[Any], n: int, per_frame: int) -> Counts:
    """Per push: n cancels parked, then released ``per_frame`` orders to a push (the loopback)."""
    fake = await FakeHandle.start(1)
    # As in throughput.py (b): ours never falls back to REST while the fake holds the pushes.
    options = {"push_grace": 600.0} if kind is Ours else {"recv_window": 600_000}
    client = kind(fake.books[0]["rest_url"], fake.books[0]["ws_url"], **options)
    counts = Counts()
    try:
        await client.open()
        await fake.wait_subscribed(0)
        # (Traced and thrown away: see count().)
        await park_and_release(fake, 0, client, n, per_frame, _tracing(Counts()))
        await park_and_release(fake, 0, client, n, per_frame, _tracing(counts))
    finally:
        await client.close()
        await fake.close()
    return counts


def _tracing(counts: Counts) -> Callable[[str], None]:
    """A ``mark`` for park_and_release: trace from "start" to "stop"."""

    def mark(when: str) -> None:
        sys.settrace(counts.trace if when == "start" else None)

    return mark


async def bytecodes(n: int, warmup: int, top: int, push: int) -> bool:
    if push:
        results = {kind.name: await count_release(kind, n, push) for kind in (Ours, Floor)}
        what, n = "push", n // push
        print(
            f"bytecodes: {n * push} parked cancels per client released {push} to a push, "
            f"{n} pushes counted, fake in a separate process, on {machine()}"
        )
    else:
        results = {kind.name: await count(kind, n, warmup) for kind in (Ours, Floor)}
        what = "cancel"
        print(
            f"bytecodes: {n} sequential cancels per client (after {warmup} warm-up), fake in a "
            f"separate process, on {machine()}"
        )
    print(f"{'per ' + what:<14}" + "".join(f"{name:>26}" for name in results))
    print(f"{'package':<14}" + f"{'bytecodes':>14}{'frames':>12}" * len(results))
    rows = ["own", *_PACKAGES, "other"]
    for row in [*rows, "total"]:
        cells = ""
        for c in results.values():
            ops = sum(c.ops.values()) if row == "total" else c.ops[row]
            frames = sum(c.frames.values()) if row == "total" else c.frames[row]
            cells += f"{ops / n:>14,.0f}{frames / n:>12,.1f}"
        print(f"{row:<14}{cells}")
    ours, floor = results["bybit_cancel"], results["floor"]
    extra = (sum(ours.ops.values()) - sum(floor.ops.values())) / n
    print(
        f"INFO 'own' is bybit_cancel's code for bybit_cancel (with the benchmark's wrapper) and "
        f"the floor's own code for the floor; bybit_cancel runs {extra:,.0f} more bytecodes per "
        f"{what} in all"
    )
    for name, c in results.items():
        if top:
            print(f"{name}'s own code, the {top} functions running the most bytecodes per {what}:")
            for func, ops in c.own_ops.most_common(top):
                print(f"  {ops / n:>8,.0f}  {func}")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=300, help="counted cancels per client")
    p.add_argument("--warmup", type=non_negative_int, default=50)
    p.add_argument(
        "--top", type=positive_int, default=12, help="list this many functions of own code"
    )
    p.add_argument(
        "--push",
        type=positive_int,
        choices=(1, 10),
        help="count per push in the loopback's release window, this many orders to a push",
    )
    a = p.parse_args(argv)
    if a.push and a.n % a.push:
        p.error(f"-n must be a multiple of --push, got {a.n} and {a.push}")
    return run(lambda: bytecodes(a.n, a.warmup, a.top, a.push or 0), False)


if __name__ == "__main__":
    raise SystemExit(main())
