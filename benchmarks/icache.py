"""Loopback (b) counted instead of timed: instructions and cache misses per frame, under callgrind.

    python benchmarks/icache.py                    # 1,000 parked cancels each, 1 order per frame
    python benchmarks/icache.py -n 2000 --per-frame 10
    python benchmarks/icache.py --dry              # the same work without valgrind (no counts)

Why: the loopback throughput (throughput.py (b)) swings by tens of percent from run to run on this
shared VM, so a change of a few percent in our work per frame cannot be seen there. valgrind's
callgrind counts what the client process executes, and simulates its caches, identically whatever
else the machine is doing. Each client (bybit_cancel, the hand-written floor) runs in its own
process under ``valgrind --tool=callgrind --cache-sim=yes``, against its own FakeExchange in a
separate process that valgrind does not trace; the counters are zeroed right before the fake
releases the parked cancels' pushes (the second of two rounds: the first warms up) and dumped once
every call has returned, so the figures cover exactly what throughput.py (b) times.

Printed per frame: instructions (Ir), L1 instruction-cache misses (I1mr), L1 data-cache read and
write misses (D1mr, D1mw), for both clients and their ratio. No target of its own: it explains
(b)'s figures (docs/performance.md item 28). Needs valgrind (Debian's package); about 3 minutes
at the default size, most of it parking the cancels under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._clients import Floor, Ours
from benchmarks._common import machine, positive_int
from benchmarks._fake import FakeHandle
from benchmarks.throughput import park_and_release

EVENTS = ("Ir", "I1mr", "D1mr", "D1mw")
# Slow under valgrind: a cancel may wait minutes between its start and the release.
PATIENT = 900.0


class _PatientOurs(Ours):
    def cancel_direct(self, order_id: str, timeout: float = PATIENT) -> Any:
        return super().cancel_direct(order_id, timeout)


def _callgrind_control(flag: str) -> None:
    """Zero (-z) or dump (-d) this process's counters, when it runs under callgrind."""
    if os.environ.get("ICACHE_UNDER_CALLGRIND"):
        subprocess.run(
            ["callgrind_control", flag, str(os.getpid())], check=True, capture_output=True
        )


async def child(name: str, n: int, per_frame: int) -> None:
    """One client's two rounds of park-and-release, the second bracketed for callgrind."""
    fake = await FakeHandle.start(1, pin=False)
    book = fake.books[0]
    client: Any
    if name == "bybit_cancel":
        client = _PatientOurs(book["rest_url"], book["ws_url"], push_grace=PATIENT)
    else:
        client = Floor(book["rest_url"], book["ws_url"], recv_window=600_000)
    try:
        await client.open()
        await fake.wait_subscribed(0)
        await park_and_release(fake, 0, client, n, per_frame)
        marks = {"start": "-z", "stop": "-d"}
        fps, cpu = await park_and_release(
            fake, 0, client, n, per_frame, lambda when: _callgrind_control(marks[when])
        )
        slowed = " (slowed by valgrind)" if os.environ.get("ICACHE_UNDER_CALLGRIND") else ""
        print(f"{name}: {fps:,.0f} frames/s, {cpu:.1f} us CPU per frame{slowed}")
    finally:
        await client.close()
        await fake.close()


def _summary(dump: Path) -> dict[str, int]:
    """The event counts of a callgrind dump over its window (its `summary:` line, in its `events:`
    order). Not its `totals:` line: in these dumps, taken mid-run, that line and the sum of the
    per-function costs come out larger than the window's summary (by 1.25 x for instructions
    and 3.5 x for L1i misses here), so only the summary is read as exact."""
    names: list[str] = []
    for line in dump.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:") and names:
            return dict(zip(names, (int(v) for v in line.split()[1:]), strict=False))
    raise RuntimeError(f"no summary in {dump}")


def measure(name: str, n: int, per_frame: int, workdir: Path, dry: bool) -> dict[str, int] | None:
    args = [__file__, "--child", name, "-n", str(n), "--per-frame", str(per_frame)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    if dry:
        subprocess.run([sys.executable, *args], check=True, env=env)
        return None
    env["ICACHE_UNDER_CALLGRIND"] = "1"
    out = workdir / f"{name}.%p.out"
    valgrind = ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--callgrind-out-file={out}"]
    # sys.executable itself, not a launcher script: valgrind follows no exec by default.
    proc = subprocess.run(
        [*valgrind, os.path.realpath(sys.executable), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(proc.stdout)
    dumps = sorted(workdir.glob(f"{name}.*.out.1"))
    if proc.returncode != 0 or len(dumps) != 1:
        raise RuntimeError(f"{name} under callgrind failed: {proc.stderr[-2000:]}")
    frames = n // per_frame + (n % per_frame > 0)
    return {k: round(v / frames) for k, v in _summary(dumps[0]).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=1000, help="parked cancels per round")
    p.add_argument("--per-frame", type=int, default=1, choices=(1, 10))
    p.add_argument("--dry", action="store_true", help="run the work without valgrind")
    p.add_argument("--child", choices=("bybit_cancel", "floor"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        asyncio.run(child(a.child, a.n, a.per_frame))
        return 0
    if not a.dry and shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind); try --dry")
        return 2
    print(f"icache on {machine()}: {a.n} parked cancels released at once, {a.per_frame}/frame")
    with tempfile.TemporaryDirectory(prefix="icache-") as tmp:
        counts = {
            name: measure(name, a.n, a.per_frame, Path(tmp), a.dry)
            for name in ("bybit_cancel", "floor")
        }
    ours, floor = counts["bybit_cancel"], counts["floor"]
    if ours is None or floor is None:
        print("(dry run: no counts)")
        return 0
    print(f"{'per frame':<14}" + "".join(f"{e:>12}" for e in EVENTS))
    for name, c in counts.items():
        assert c is not None
        print(f"{name:<14}" + "".join(f"{c.get(e, 0):>12,}" for e in EVENTS))
    print(f"{'ours / floor':<14}" + "".join(f"{ours[e] / floor[e]:>12.3f}" for e in EVENTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
