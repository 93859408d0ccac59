"""One loop timer for every pending cancel's deadline and push grace.

A timer handle per cancel (``asyncio.timeout`` plus a ``call_later`` for the grace) costs two
``TimerHandle`` objects that stay in the loop's heap, compared in Python (``TimerHandle.__lt__``),
until they expire or the loop cleans them up: with 10,000 cancels pending, every timer operation of
the whole program pays for that heap. Here all cancels share at most one armed loop timer.

Items of one kind nearly always come in time order (every call uses the same grace, and usually
the same timeout), so each kind has a FIFO queue (append and pop in O(1)); an item that would break
the order (a shorter timeout than the last one) goes to a small heap instead. Items of finished
calls are dropped lazily, and the queues are compacted when such stale items are the majority, so
memory stays proportional to the calls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from ._core import Pending

__all__ = ["DEADLINE", "GRACE", "Timers"]

DEADLINE = 0
GRACE = 1
# After firing, the next wake-up is at least this far away: due items are handled in batches,
# never more often than every few milliseconds (so a deadline may fire up to this much late).
_GRANULARITY = 0.005
_COMPACT_MIN = 1024

_Item = tuple[float, Pending[Any], Any]


class Timers:
    """Deadlines and grace wake-ups of pending cancels, on one loop timer."""

    __slots__ = ("_armed_at", "_fifo", "_handle", "_heap", "_loop", "_on_due", "_seq", "_stale")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_due: Callable[[Pending[Any], int, Any], None],
    ) -> None:
        self._loop = loop
        self._on_due = on_due
        self._fifo: tuple[deque[_Item], deque[_Item]] = (deque(), deque())
        self._heap: list[tuple[float, int, int, Pending[Any], Any]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._stale = 0

    def add(self, when: float, kind: int, entry: Pending[Any], payload: Any) -> None:
        """Call ``on_due(entry, kind, payload)`` at loop time ``when`` unless the entry is closed."""
        fifo = self._fifo[kind]
        if not fifo or fifo[-1][0] <= when:
            fifo.append((when, entry, payload))
        else:
            heapq.heappush(self._heap, (when, next(self._seq), kind, entry, payload))
        entry.timer_items += 1
        if when < self._armed_at:
            self._arm(when)

    def release(self, entry: Pending[Any]) -> None:
        """The entry's call finished (``entry.closed`` is set): its items are stale."""
        self._stale += entry.timer_items
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self):
            self._compact()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
        for fifo in self._fifo:
            fifo.clear()
        self._heap.clear()
        self._stale = 0

    def __len__(self) -> int:
        return len(self._fifo[0]) + len(self._fifo[1]) + len(self._heap)

    def _compact(self) -> None:
        for fifo in self._fifo:
            live = [item for item in fifo if not item[1].closed]
            fifo.clear()
            fifo.extend(live)
        self._heap[:] = [item for item in self._heap if not item[3].closed]
        heapq.heapify(self._heap)
        self._stale = 0

    def _next_when(self) -> float:
        when = math.inf
        for fifo in self._fifo:
            if fifo and fifo[0][0] < when:
                when = fifo[0][0]
        if self._heap and self._heap[0][0] < when:
            when = self._heap[0][0]
        return when

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._loop.time()
        due: list[tuple[int, Pending[Any], Any]] = []
        for kind, fifo in enumerate(self._fifo):
            while fifo and fifo[0][0] <= now:
                _, entry, payload = fifo.popleft()
                due.append((kind, entry, payload))
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, entry, payload = heapq.heappop(heap)
            due.append((kind, entry, payload))
        for kind, entry, payload in due:
            entry.timer_items -= 1
            if entry.closed:
                self._stale = max(0, self._stale - 1)
            else:
                self._on_due(entry, kind, payload)
        when = self._next_when()
        if when < math.inf:
            self._arm(max(when, now + _GRANULARITY))
