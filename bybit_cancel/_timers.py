"""One loop timer for every pending cancel's deadline and push grace.

A timer handle per cancel (``asyncio.timeout`` plus a ``call_later`` for the grace) costs two
``TimerHandle`` objects that stay in the loop's heap, compared in Python (``TimerHandle.__lt__``),
until they expire or the loop cleans them up: with 10,000 cancels pending, every timer operation of
the whole program pays for that heap. Here all cancels share one heap of plain tuples (compared in
C) and at most one armed loop timer. Entries of finished calls are dropped lazily; the heap is
compacted when they are the majority.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

from ._core import Pending

__all__ = ["DEADLINE", "GRACE", "Timers"]

DEADLINE = 0
GRACE = 1
# After firing, the next wake-up is at least this far away: due items are handled in batches,
# never more often than every few milliseconds (a deadline can fire up to this much late).
_GRANULARITY = 0.005


class Timers:
    """Deadlines and grace wake-ups of pending cancels, on one loop timer."""

    __slots__ = ("_armed_at", "_closed", "_handle", "_heap", "_loop", "_on_due", "_seq")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_due: Callable[[Pending[Any], int, Any], None],
    ) -> None:
        self._loop = loop
        self._on_due = on_due
        self._heap: list[tuple[float, int, int, Pending[Any], Any]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._closed = 0

    def add(self, when: float, kind: int, entry: Pending[Any], payload: Any) -> None:
        """Call ``on_due(entry, kind, payload)`` at loop time ``when`` unless the entry is closed."""
        heapq.heappush(self._heap, (when, next(self._seq), kind, entry, payload))
        if when < self._armed_at:
            self._arm(when)

    def closed_one(self) -> None:
        """A call finished: its items are stale. Compact when stale items are the majority."""
        self._closed += 1
        heap = self._heap
        if self._closed > 1024 and self._closed * 2 > len(heap):
            heap[:] = [item for item in heap if not item[3].closed]
            heapq.heapify(heap)
            self._closed = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, entry, payload = heapq.heappop(heap)
            if entry.closed:
                self._closed = max(0, self._closed - 1)
            else:
                self._on_due(entry, kind, payload)
        if heap:
            self._arm(max(heap[0][0], now + _GRANULARITY))
