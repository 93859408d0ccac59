"""One loop timer for every pending cancel's deadline and push grace.

A timer handle per cancel (``asyncio.timeout`` plus a ``call_later`` for the grace) costs two
``TimerHandle`` objects that stay in the loop's heap, compared in Python (``TimerHandle.__lt__``),
until they expire or the loop cleans them up: with 10,000 cancels pending, every timer operation of
the whole program pays for that heap. Here all cancels share at most one armed loop timer.

The hot path adds two items per call: its deadline and its first grace. Calls with the same
timeout come due in the order they started, and every call has the same grace, so each timeout
(up to eight of them) and the grace have a FIFO queue of entries (append and pop in O(1), no
allocation: the times live on the entry, the timeout is the queue's). Queued times are rounded up
to the next millisecond, so that the calls of a burst share one float object per millisecond.
Other timeouts and the slow path's later waits go to a small heap. A finished call's items leave
at once when they sit at either end of their queue (the newest call, as for sequential callers,
or the oldest, as in a burst confirmed in order); others are dropped lazily, and the queues are
compacted when they hold several items per call in flight, so memory stays proportional to the
calls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._core import CLOSED, Pending

log = logging.getLogger("bybit_cancel")

__all__ = ["DEADLINE", "GRACE", "Timers"]

DEADLINE = 0
GRACE = 1
# After firing, the next wake-up is at least this far away: due items are handled in batches,
# never more often than every few milliseconds (so a deadline may fire up to this much late).
_GRANULARITY = 0.005
_COMPACT_MIN = 1024
# A call in flight has at most three items (its deadline, its first grace, the current wait's);
# past this many per call, most are stale and a compaction pays for itself.
_ITEMS_PER_CALL = 4
# Timeouts with a FIFO queue of their own; calls with yet another timeout use the heap.
_MAX_QUEUES = 8


E = TypeVar("E", bound=Pending)


class Timers(Generic[E]):
    """Deadlines and grace wake-ups of pending cancels, on one loop timer.

    ``on_due(entry, kind, payload)`` is called for an item that comes due while its entry is not
    ``closed``: ``DEADLINE`` with the call's timeout, ``GRACE`` with the number of the wait to end
    (0 for the first grace; ``add`` takes any payload). Each :meth:`add_deadline` opens a call and
    each :meth:`release` closes one: release every entry given a deadline, once.
    """

    __slots__ = (
        "_armed_at",
        "_deadlines",
        "_graces",
        "_handle",
        "_heap",
        "_items",
        "_loop",
        "_on_due",
        "_open",
        "_seq",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_due: Callable[[E, int, Any], None],
    ) -> None:
        self._loop = loop
        self._on_due = on_due
        # timeout -> the calls with that timeout, in deadline order
        self._deadlines: dict[float, deque[E]] = {}
        self._graces: deque[E] = deque()
        self._heap: list[tuple[float, int, int, E, Any]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._items = 0  # queued items, stale ones included
        self._open = 0  # calls given a deadline and not yet released

    def add_deadline(self, entry: E, when: float, timeout: float) -> None:
        """The call fails with a timeout at loop time ``when`` (at most 1 ms later)."""
        self._open += 1
        queue = self._deadlines.get(timeout)
        if queue is None:
            deadlines = self._deadlines
            if len(deadlines) >= _MAX_QUEUES:
                # Drop the queues emptied by release() (kept so that calls repeating a timeout
                # reuse theirs). Callers computing each timeout (a remaining budget) get one
                # queue after another, and their finished calls still leave at once.
                for empty in [t for t, q in deadlines.items() if not q]:
                    del deadlines[empty]
            if len(deadlines) >= _MAX_QUEUES:
                entry.deadline_at = when
                self.add(when, DEADLINE, entry, timeout)
                return
            queue = deadlines[timeout] = deque()
        self._enqueue(queue, entry, when, DEADLINE, timeout)

    def add_grace(self, entry: E, when: float) -> None:
        """End the call's first wait at ``when`` (at most 1 ms later); once per call."""
        self._enqueue(self._graces, entry, when, GRACE, 0)

    def _enqueue(self, queue: deque[E], entry: E, when: float, kind: int, payload: Any) -> None:
        # (Once per call for each kind, on the hot path: the rounding and `add` are inlined.)
        # Rounded up, never down: a deadline must not fire before the caller's timeout. (k / 1000
        # can come out one float step below `when` when `when` sits just above a millisecond.)
        k = math.ceil(when * 1000.0)
        up = k / 1000.0
        when = up if up >= when else (k + 1) / 1000.0
        if queue:
            last = queue[-1].deadline_at if kind == DEADLINE else queue[-1].grace_at
            if last == when:
                when = last  # the same float object: 24 bytes less per call
            elif last > when:  # out of order (the loop's clock went back?): the heap
                if kind == DEADLINE:
                    entry.deadline_at = when
                else:
                    entry.grace_at = when
                self.add(when, kind, entry, payload)
                return
        if kind == DEADLINE:
            entry.deadline_at = when
        else:
            entry.grace_at = when
        queue.append(entry)
        self._items += 1
        if when < self._armed_at:
            self._arm(when)

    def add(self, when: float, kind: int, entry: E, payload: Any) -> None:
        """Any item, at any time (the heap)."""
        heapq.heappush(self._heap, (when, next(self._seq), kind, entry, payload))
        self._items += 1
        if when < self._armed_at:
            self._arm(when)

    def release(self, entry: E) -> None:
        """The entry's call finished (``entry.closed`` is set): its items are stale."""
        if self._open:  # (0 for calls that end after close())
            self._open -= 1
        # The newest call usually finishes first (always, for sequential callers), and in a
        # burst confirmed in order the oldest: drop its items from either end at once, so
        # finished calls are not kept alive until their deadline nor left to a compaction.
        # (The head first: with one call in flight it is also the tail, so one deque index, C
        # code that nothing else runs per push, serves both a sequential caller and a burst.)
        queue = self._graces
        if queue:
            if queue[0] is entry:
                queue.popleft()
                self._items -= 1
            elif queue[-1] is entry:
                queue.pop()
                self._items -= 1
        for queue in self._deadlines.values():
            if queue:
                if queue[0] is entry:
                    queue.popleft()
                    self._items -= 1
                    break
                if queue[-1] is entry:
                    queue.pop()
                    self._items -= 1
                    break
        if self._items > _COMPACT_MIN and self._items > _ITEMS_PER_CALL * self._open:
            self._compact()

    def open_entries(self) -> list[E]:
        """The entries of calls still in flight (each has its deadline queued until it ends)."""
        seen: dict[int, E] = {}
        for queue in self._deadlines.values():
            for entry in queue:
                if not entry.closed:
                    seen[id(entry)] = entry
        for item in self._heap:
            if item[2] == DEADLINE and not item[3].closed:
                seen[id(item[3])] = item[3]
        return list(seen.values())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
        self._deadlines.clear()
        self._graces.clear()
        self._heap.clear()
        self._items = self._open = 0

    def __len__(self) -> int:
        return self._items

    def _compact(self) -> None:
        # (The flag bit itself, not the `closed` property: this loop visits every queued entry.)
        for timeout, queue in list(self._deadlines.items()):
            live = [e for e in queue if not e._flags & CLOSED]
            if live:
                queue.clear()
                queue.extend(live)
            else:
                del self._deadlines[timeout]
        live = [e for e in self._graces if not e._flags & CLOSED]
        self._graces.clear()
        self._graces.extend(live)
        self._heap[:] = [item for item in self._heap if not item[3]._flags & CLOSED]
        heapq.heapify(self._heap)
        self._items = (
            sum(len(q) for q in self._deadlines.values()) + len(self._graces) + len(self._heap)
        )

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._loop.time()
        due: list[tuple[float, int, E, Any]] = []
        deadlines, graces, heap = self._deadlines, self._graces, self._heap
        for timeout, queue in list(deadlines.items()):
            while queue and queue[0].deadline_at <= now:
                entry = queue.popleft()
                due.append((entry.deadline_at, DEADLINE, entry, timeout))
            if not queue:
                del deadlines[timeout]  # (a queue comes back with its timeout's next call)
        while graces and graces[0].grace_at <= now:
            entry = graces.popleft()
            due.append((entry.grace_at, GRACE, entry, 0))
        while heap and heap[0][0] <= now:
            when, _, kind, entry, payload = heapq.heappop(heap)
            due.append((when, kind, entry, payload))
        self._items -= len(due)
        if len(due) > 1:
            # In the order they came due, also when a late wake-up (a busy loop) finds items of
            # several queues due at once. (Stable: ties keep the order above.)
            due.sort(key=_due_at)
        for _, kind, entry, payload in due:
            if not entry.closed:
                try:
                    self._on_due(entry, kind, payload)
                except Exception:  # a bug; the other due items and the re-arm must still run
                    log.exception("timer callback failed")
        when = min(
            min((q[0].deadline_at for q in deadlines.values() if q), default=math.inf),
            graces[0].grace_at if graces else math.inf,
            heap[0][0] if heap else math.inf,
        )
        if when < math.inf:
            self._arm(max(when, now + _GRANULARITY))


def _due_at(item: tuple[float, int, Any, Any]) -> float:
    return item[0]
