"""Chaos: N concurrent cancels against FakeExchange with every fault mixed in at a rate.

    python benchmarks/chaos.py            # N=5000, faults at 20%
    python benchmarks/chaos.py -n 500 --rate 0.5 --seed 7 [--uvloop]

Prints N, correct final states, wrong, errors by type, hung, resolved via websocket vs REST,
reconnects, retries, p50/p99/max time to confirm, tasks alive after close and peak RSS.
Target: 100% correct, 0 hung, 0 tasks left. HTTP 403 (an IP ban: "stop for 10 minutes") is not
in the mix: its correct answer is an error, not a final state.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    machine,
    median,
    pct,
    peak_rss_mb,
    positive_int,
    positive_seconds,
    probability,
    run,
    verdict,
)
from bybit_cancel import BybitCancelClient, CancelResult
from bybit_cancel.testing import FakeExchange, Fault

KEY, SECRET = "chaos-key", "chaos-secret-not-for-logs"


class _SecretWatch(logging.Handler):
    """Counts DEBUG-and-up records whose text holds the secret (must stay 0)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = 0
        self.leaks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        if SECRET in record.getMessage():
            self.leaks += 1


async def chaos(n: int, rate: float, seed: int, timeout: float) -> bool:
    rng = random.Random(seed)
    watch = _SecretWatch()
    logging.getLogger().addHandler(watch)
    logging.getLogger().setLevel(logging.DEBUG)
    faults = [f for f in Fault if f is not Fault.HTTP_403]
    # Every answer is checked against the fake's books and every fault fired is counted at the
    # end: the fake must forget no finished order and no fault_log entry, whatever -n is.
    async with FakeExchange(
        api_key=KEY, api_secret=SECRET, seed=seed, max_recorded=None, history_limit=None
    ) as fx:
        fx.set_chaos(rate=rate, seed=seed, faults=faults, delay=1.5)
        orders = []
        for i in range(n):
            category = rng.choice(["linear", "spot", "inverse"])
            symbol = "BTCUSD" if category == "inverse" else "BTCUSDT"
            o = fx.seed_order(category=category, symbol=symbol, qty="1.000", order_link_id=f"c{i}")
            roll = rng.random()
            if roll < 0.1:
                fx.fill(o.order_id, "0.400")
            elif roll < 0.13:
                fx.fill(o.order_id, push=False)  # filled, and the stream never said so
            orders.append(o)
        tasks_before = {t for t in asyncio.all_tasks()}
        client = BybitCancelClient(
            api_key=KEY,
            api_secret=SECRET,
            rest_url=fx.rest_url,
            ws_url=fx.ws_url,
            ping_interval=1.0,
            http_timeout=1.0,
            reconnect_backoff=(0.05, 1.0),
            seed=seed,
        )
        times: list[float] = []
        outcomes: list[CancelResult | BaseException | None] = [None] * n
        hung = 0

        async def one(i: int) -> None:
            nonlocal hung
            o = orders[i]
            t0 = time.perf_counter()
            try:
                # The outer bound only detects a hang; the call's own timeout must fire first.
                outcomes[i] = await asyncio.wait_for(
                    client.cancel_order(
                        category=o.category,
                        symbol=o.symbol,
                        order_id=o.order_id if i % 2 else None,
                        order_link_id=None if i % 2 else o.order_link_id,
                        timeout=timeout,
                    ),
                    timeout + 5,
                )
                times.append(time.perf_counter() - t0)
            except TimeoutError as exc:
                if type(exc) is TimeoutError:  # the outer bound fired: the call hung
                    hung += 1
                outcomes[i] = exc
            except Exception as exc:
                outcomes[i] = exc

        wall0 = time.perf_counter()
        async with client:
            await asyncio.gather(*(one(i) for i in range(n)))
            reconnects = client.reconnect_count
            stats = client.rest_stats
        wall = time.perf_counter() - wall0
        left = [
            t for t in asyncio.all_tasks() - tasks_before if t.get_name().startswith("bybit_cancel")
        ]
        fault_counts = Counter(f for _, f in fx.fault_log)

        correct = wrong = 0
        errors: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        error_samples: list[str] = []
        for o, r in zip(orders, outcomes, strict=True):
            if isinstance(r, CancelResult):
                sources[r.source] += 1
                if r.status == fx.order(o.order_id).status and r.order_id == o.order_id:
                    correct += 1
                else:
                    wrong += 1
            else:
                errors[type(r).__name__] += 1
                if len(error_samples) < 5:
                    faults_here = [f.value for oid, f in fx.fault_log if oid == o.order_id]
                    error_samples.append(
                        f"{o.category} {o.order_id} ({fx.order(o.order_id).status}, faults {faults_here}): {type(r).__name__}: {r}"
                    )
    logging.getLogger().removeHandler(watch)

    ms = [t * 1000 for t in times]
    print(f"chaos: N={n} fault rate={rate:.0%} seed={seed} timeout={timeout}s on {machine()}")
    print(
        f"faults fired: {sum(fault_counts.values())} "
        + ", ".join(f"{f}={c}" for f, c in sorted(fault_counts.items()))
    )
    print(f"{'N':<28}{n}")
    print(f"{'correct final states':<28}{correct} ({correct / n:.2%})")
    print(f"{'wrong':<28}{wrong}")
    print(f"{'errors by type':<28}{dict(errors) or 0}")
    for sample in error_samples:
        print(f"    e.g. {sample}")
    print(f"{'hung':<28}{hung}")
    print(f"{'resolved via websocket':<28}{sources['websocket']}")
    print(f"{'resolved via REST':<28}{sources['rest']}")
    print(f"{'reconnects':<28}{reconnects}")
    print(
        f"{'REST requests / retries':<28}{stats.requests} / {stats.retries} (rate-limit waits {stats.rate_limit_waits}, clock resyncs {stats.clock_resyncs})"
    )
    print(
        f"{'confirm p50 / p99 / max':<28}{median(ms):.1f} / {pct(ms, 99):.1f} / {max(ms, default=float('nan')):.1f} ms"
    )
    print(f"{'wall time':<28}{wall:.2f} s")
    print(f"{'tasks alive after close':<28}{len(left)}")
    print(f"{'peak RSS':<28}{peak_rss_mb():.1f} MiB")
    print(f"{'log records / secret leaks':<28}{watch.records} / {watch.leaks}")
    ok = correct == n and hung == 0 and not left and watch.leaks == 0
    print(
        f"{verdict(correct == n)} 100% correct   {verdict(hung == 0)} 0 hung   "
        f"{verdict(not left)} 0 tasks left   {verdict(watch.leaks == 0)} no secret in logs"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=positive_int, default=5000)
    p.add_argument("--rate", type=probability, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=positive_seconds, default=30.0)
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args(argv)
    return run(lambda: chaos(a.n, a.rate, a.seed, a.timeout), a.uvloop)


if __name__ == "__main__":
    raise SystemExit(main())
