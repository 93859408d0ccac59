"""Steps before a cancel's request, timed warm and with cold caches (docs/performance.md, item 18).

    python benchmarks/cold.py              # 300 samples of each, 16 MB touched before each cold one
    python benchmarks/cold.py -n 50 --evict-mb 4

A bot cancels between two market events, so its cancel usually finds the CPU caches holding
something else; steps that cost 2 us in a loop can cost 20-40 us then. This times single calls,
once right after touching ``--evict-mb`` of memory (cold) and once again at once (warm), medians,
for the signing bybit_cancel does before sending a cancel, beside what it replaced and what the
hand-written floor does (benchmarks/_clients.py), and for its input checks (the floor has none).
No targets: latency.py judges the whole.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, median, positive_int
from bybit_cancel._client import validate_cancel
from bybit_cancel._signing import Credentials, RestSigner

KEY, SECRET = "bench-key-0001", "bench-secret-not-for-logs"
BODY = b'{"category":"linear","symbol":"BTCUSDT","orderId":"f38c5e38-46ef-4a8a-b115-000000000123"}'
ORDER_ID = "f38c5e38-46ef-4a8a-b115-000000000123"
TS = 1732970000000


def cases() -> list[tuple[str, str, Callable[[], object]]]:
    signer = RestSigner(Credentials(KEY, SECRET), 5000)
    keyed = hmac.new(SECRET.encode(), digestmod=hashlib.sha256)

    def ours_headers() -> object:
        return signer.headers(TS, BODY)

    def before_headers() -> object:
        # The implementation before item 18: copy a keyed hmac.HMAC, build the dict each time.
        ts, rw = str(TS), "5000"
        h = keyed.copy()
        h.update(b"".join((ts.encode(), KEY.encode(), rw.encode(), BODY)))
        return {"X-BAPI-API-KEY": KEY, "X-BAPI-SIGN": h.hexdigest(), "X-BAPI-SIGN-TYPE": "2"}

    def floor_headers() -> object:
        # The floor's (benchmarks/_clients.py): a one-shot hmac.new per request.
        ts = str(TS)
        sig = hmac.new(SECRET.encode(), f"{ts}{KEY}5000".encode() + BODY, hashlib.sha256)
        return {"X-BAPI-API-KEY": KEY, "X-BAPI-SIGN": sig.hexdigest(), "X-BAPI-TIMESTAMP": ts}

    def ours_checks() -> object:
        return validate_cancel(
            category="linear",
            symbol="BTCUSDT",
            order_id=ORDER_ID,
            order_link_id=None,
            order_filter=None,
            timeout=10.0,
        )

    def nothing() -> object:
        return None

    return [
        ("sign + headers", "bybit_cancel (RestSigner)", ours_headers),
        ("sign + headers", "before: hmac.HMAC copy", before_headers),
        ("sign + headers", "floor: hmac.new", floor_headers),
        ("input checks", "bybit_cancel: validate_cancel", ours_checks),
        ("(timing floor)", "an empty call", nothing),
    ]


def measure(fn: Callable[[], object], n: int, evict: bytearray) -> tuple[float, float]:
    cold: list[float] = []
    warm: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        for i in range(0, len(evict), 64):  # touch every cache line
            evict[i] = (evict[i] + 1) & 255
        t = clock()
        fn()
        cold.append(clock() - t)
        t = clock()
        fn()
        warm.append(clock() - t)
    return median(cold) * 1e6, median(warm) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=300, help="samples of each, cold and warm")
    p.add_argument(
        "--evict-mb", type=positive_int, default=16, help="memory touched before a cold call"
    )
    a = p.parse_args(argv)
    evict = bytearray(a.evict_mb * 2**20)
    print(
        f"cold: {a.n} samples each, {a.evict_mb} MB touched before each cold call, on {machine()}"
    )
    print(f"{'step':<16}{'implementation':<30}{'cold us':>9}{'warm us':>9}   (medians)")
    for step, name, fn in cases():
        cold, warm = measure(fn, a.n, evict)
        print(f"{step:<16}{name:<30}{cold:>9.1f}{warm:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
