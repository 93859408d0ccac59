"""The sans-I/O core: which pending cancel does an order update resolve?

Nothing here imports asyncio, reads a clock or does I/O: the caller passes ``now`` (a monotonic time
in seconds) and its own :class:`Pending` entry per cancel (the client's is a subclass its caller can
await, ``_call.Call``), and gets back the entries an update resolved. The I/O layers (``_client``,
``_stream``, ``_rest``) do the rest.

Rules (bybit-protocol.md §4, §5, §12):

* A pending cancel is matched by ``orderId``, or by ``orderLinkId`` when the caller gave only that.
* Finality comes from ``orderStatus`` alone (never ``leavesQty``); ``Triggered`` and unknown values
  are not final.
* A final state is sticky: the first one seen for an order wins. A repeated push, a stale push with an
  older ``updatedTime``, or Bybit's second ``Filled`` on a cancel/fill collision changes nothing.
  Only the same order's, though: the same ``orderId`` in another category, or a final state with
  no ``orderId``, answers nobody else; and one that cannot be read gives way to one that can.
* Recent final states are remembered (bounded by count and age), so a cancel for an order that has
  already ended resolves at once, and a push that beat the cancel's registration is not lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Generic, TypeVar

import msgspec

from ._models import (
    DECIMALS,
    FINAL_BY_WIRE,
    ZERO,
    CancelResult,
    OrderStatus,
    Source,
    WireOrder,
    to_decimal,
)

__all__ = ["CancelTracker", "Pending"]

# How far the memory of final states may run over recent_size before a batch eviction.
_EVICT_SLACK = 256

# The bits of Pending._flags (read directly by _timers on its compaction path). Bits from 16 up
# are free for subclasses (_call.Call keeps its wait state there).
ACKNOWLEDGED = 1
CLOSED = 2
LINKED = 4
INTERRUPTED = 8


class Pending:
    """One pending cancel, registered with :meth:`CancelTracker.start`. The I/O layer subclasses
    it (adding slots) to make it awaitable; the core only reads and writes the fields below.

    ``order_link_id`` is the link id to match by when there is no ``order_id`` (the id wins on
    Bybit); give ``""`` for it otherwise: it is learnt from the acknowledgement.
    """

    __slots__ = (
        "_flags",
        "category",
        "deadline_at",
        "error",
        "final",
        "grace_at",
        "order_id",
        "order_link_id",
        "owner",
        "symbol",
    )

    def __init__(self, category: str, symbol: str, order_id: str, order_link_id: str) -> None:
        self.category = category
        self.symbol = symbol
        self.order_id = order_id
        self.order_link_id = order_link_id
        # acknowledged, closed, linked and interrupted (below), as bits of one int: an entry
        # lives as long as its call, so every slot counts when 10,000 calls are pending.
        self._flags = 0
        # The outcome lives on the entry, so a wake-up that races another cannot lose it: a wake-up
        # is only a signal for the I/O layer. `final` is set when an update resolves the
        # entry; the public result is built from it by the woken caller, so that routing a push
        # stays cheap.
        self.final: _Final | None = None
        self.error: BaseException | None = None
        # For the I/O layer: the task inside a REST call on this entry's behalf (so a close can
        # interrupt it); see `interrupted`. Opaque here.
        self.owner: object | None = None
        # For the I/O layer's timers: when the call's deadline and first grace expire.
        self.deadline_at = 0.0
        self.grace_at = 0.0

    @property
    def acknowledged(self) -> bool:
        """Bybit acknowledged the cancel request."""
        return bool(self._flags & ACKNOWLEDGED)

    @acknowledged.setter
    def acknowledged(self, on: bool) -> None:
        self._flags = self._flags | ACKNOWLEDGED if on else self._flags & ~ACKNOWLEDGED

    @property
    def closed(self) -> bool:
        """Set by the I/O layer once the caller has returned (timers may still hold the entry)."""
        return bool(self._flags & CLOSED)

    @closed.setter
    def closed(self, on: bool) -> None:
        self._flags = self._flags | CLOSED if on else self._flags & ~CLOSED

    @property
    def linked(self) -> bool:
        """The entry is in the link index (the caller gave only the orderLinkId)."""
        return bool(self._flags & LINKED)

    @linked.setter
    def linked(self, on: bool) -> None:
        self._flags = self._flags | LINKED if on else self._flags & ~LINKED

    @property
    def interrupted(self) -> bool:
        """For the I/O layer: it cancelled ``owner`` itself (a deadline or a close). Opaque here."""
        return bool(self._flags & INTERRUPTED)

    @interrupted.setter
    def interrupted(self, on: bool) -> None:
        self._flags = self._flags | INTERRUPTED if on else self._flags & ~INTERRUPTED

    @property
    def outcome(self) -> CancelResult | None:
        """The confirmed final state, or ``None`` while pending.

        Raises ``ValueError``/``ArithmeticError`` if Bybit sent a quantity that is not a number.
        """
        final = self.final
        return None if final is None else final.result()

    def __repr__(self) -> str:
        ident = self.order_id or self.order_link_id
        return f"<Pending {self.category}:{self.symbol}:{ident}>"


K = TypeVar("K")


E = TypeVar("E", bound=Pending)


class _Index(Generic[K, E]):
    """key -> pending cancels. Nearly always one per key, so the first lives in a plain dict and
    only extra ones (two callers cancelling the same order) go to a side table."""

    __slots__ = ("more", "one")

    def __init__(self) -> None:
        self.one: dict[K, E] = {}
        self.more: dict[K, list[E]] = {}

    def add(self, key: K, entry: E) -> None:
        if key in self.one:
            self.more.setdefault(key, []).append(entry)
        else:
            self.one[key] = entry

    def get(self, key: K) -> list[E]:
        head = self.one.get(key)
        if head is None:
            return []
        extra = self.more.get(key) if self.more else None
        return [head, *extra] if extra else [head]

    def remove(self, key: K, entry: E) -> bool:
        extra = self.more.get(key) if self.more else None
        if self.one.get(key) is entry:
            if extra:
                self.one[key] = extra.pop(0)
                if not extra:
                    del self.more[key]
            else:
                del self.one[key]
            return True
        if extra:
            for i, other in enumerate(extra):
                if other is entry:
                    del extra[i]
                    if not extra:
                        del self.more[key]
                    return True
        return False

    def entries(self) -> list[E]:
        out = list(self.one.values())
        for extra in self.more.values():
            out.extend(extra)
        return out

    def clear(self) -> None:
        self.one.clear()
        self.more.clear()


def updated_ms(text: str) -> int:
    """An ``updatedTime`` in ms; 0 for ``""`` or one that is not a number (it is informational:
    never a reason to lose the final state it came with)."""
    try:
        # With the base: int(str, 10) parses at once, where int(str) first looks for a __trunc__
        # on str, a type-cache miss per call in the router's cold caches (performance.md item 29).
        return int(text, 10) if text else 0
    except ValueError:
        return 0


class _Final(msgspec.Struct, gc=False):
    """A final state as received: built on the router's path, so a C struct the cyclic GC
    never has to visit (it holds only strings, numbers and other such structs)."""

    order: WireOrder
    status: OrderStatus
    source: Source
    at: float

    def result(self) -> CancelResult:
        """The public result. Raises ``ValueError``/``ArithmeticError`` for a quantity that is not
        a number (an ``updatedTime`` that is not one reads as 0: it is informational)."""
        # Once per confirmed cancel, after the push: on the latency path, so in one frame, with
        # positional arguments and to_decimal's cache lookup inlined for the common case.
        order = self.order
        cum = DECIMALS.get(order.cum_exec_qty)
        if cum is None:
            cum = to_decimal(order.cum_exec_qty)
        leaves = DECIMALS.get(order.leaves_qty)
        if leaves is None:
            leaves = to_decimal(order.leaves_qty)
        try:  # (updated_ms, inlined: one frame less per confirm)
            updated = int(order.updated_time, 10) if order.updated_time else 0
        except ValueError:
            updated = 0
        return CancelResult(
            order.order_id,
            order.order_link_id,
            order.category,
            order.symbol,
            self.status,
            order.cancel_type,
            order.reject_reason,
            ZERO if cum is None else cum,
            leaves,
            updated,
            self.source,
        )


V = TypeVar("V")


class _Forgetful(dict[K, V]):
    """The memory of final states when there is none (``recent_size=0``): what is put in is
    not kept, so it always reads as empty."""

    __slots__ = ()

    def setdefault(self, key: K, default: V) -> V:
        return default

    def __setitem__(self, key: K, value: V) -> None:
        return None


class CancelTracker(Generic[E]):
    """Tracks pending cancels and decides what each order update resolves.

    Args:
        recent_size: how many recent final states to remember (trimmed in small batches after a
            push, so the memory may run over by up to 256, plus one push's new states). 0
            remembers none: a cancel of an order that has already ended is then answered by
            Bybit (110001, then a REST lookup) instead of at once, and no push costs the memory.
        recent_age: how long (seconds) to remember a final state.
    """

    def __init__(self, *, recent_size: int = 10_000, recent_age: float = 600.0) -> None:
        if not (
            isinstance(recent_size, int)
            and not isinstance(recent_size, bool)
            and recent_size >= 0
            and isinstance(recent_age, int | float)
            and not isinstance(recent_age, bool)
            and 0 < recent_age < float("inf")
        ):
            raise ValueError(
                "recent_size must be an integer >= 0 and recent_age a positive number of "
                f"seconds, got {recent_size!r} and {recent_age!r}"
            )
        # orderId -> cancels that know the order id (given, or learnt from the ack)
        self._by_id: _Index[str, E] = _Index()
        # (category, orderLinkId) -> cancels given only the link id. orderLinkId is unique per
        # category, not across categories.
        self._by_link: _Index[tuple[str, str], E] = _Index()
        self._count = 0
        # orderId -> its first final state, oldest first (a dict keeps insertion order, and `now`
        # only grows, so the oldest entry is also the first).
        # (With recent_size=0, two that keep nothing: the router's path stays the same, and
        # the default memory pays no test for the option.)
        self._recent: dict[str, _Final] = {} if recent_size else _Forgetful()
        self._recent_link: dict[tuple[str, str], str] = {} if recent_size else _Forgetful()
        self._recent_size = recent_size
        self._recent_limit = recent_size + _EVICT_SLACK
        self._recent_age = recent_age
        self._inserts = 0
        # entry -> (updatedTime, orderStatus) of the newest open update seen for its order, for
        # diagnostics. Here rather than on the entry: few cancels see one, and every slot of an
        # entry costs 80 kB per 10,000 pending.
        self._last: dict[E, tuple[int, str]] = {}

    # -- registration --------------------------------------------------------------------------

    def start(self, entry: E, *, now: float) -> E | CancelResult:
        """Register a cancel, before its request is sent, so that an early push is not lost.

        Returns the final state at once if one is remembered for the entry's order (the entry is
        then not registered); otherwise the entry, which must later be resolved or passed to
        :meth:`forget`.
        """
        # (No trimming here: inserts trim the memory; a remembered state past recent_age is
        # ignored by _recent_final.)
        known = self._recent_final(entry.category, entry.order_id, entry.order_link_id, now)
        if known is not None:
            result = self._result(known)
            if result is not None:
                return result
        if entry.order_id:
            self._by_id.add(entry.order_id, entry)
        else:
            self._by_link.add((entry.category, entry.order_link_id), entry)
            entry.linked = True
        self._count += 1
        return entry

    def acknowledge(
        self, entry: E, *, order_id: str, order_link_id: str, now: float
    ) -> CancelResult | None:
        """Record Bybit's acknowledgement; learns the order id when only the link id was given.

        Returns the final state if it is already known (the push beat the ack); the entry is then
        removed. An entry no longer registered (forgotten or failed) learns nothing.
        """
        entry.acknowledged = True
        if order_link_id and not entry.order_link_id and not entry.linked:
            entry.order_link_id = order_link_id
        if not order_id or entry.order_id or entry.final is not None or entry.error is not None:
            # Nothing new learnt: a final state for this id would already have resolved it.
            return None
        if not entry.linked:
            # Not registered (forgotten, failed, or answered by start()): an entry with no order
            # id sits in the link index while it is. Filing it under the id now would leave it
            # uncounted, for a later push to resolve and count off.
            return None
        entry.order_id = order_id
        self._by_id.add(order_id, entry)
        known = self._recent_final(entry.category, order_id, entry.order_link_id, now)
        if known is None:
            return None
        result = self._result(known)
        if result is None:
            return None
        entry.final = known
        self.forget(entry)
        return result

    def forget(self, entry: E) -> None:
        """Remove a pending cancel (resolved, timed out, cancelled, failed). Idempotent."""
        if self._last:
            self._last.pop(entry, None)
        removed = False
        if entry.order_id:
            removed = self._by_id.remove(entry.order_id, entry)
        if entry.linked:
            removed = self._by_link.remove((entry.category, entry.order_link_id), entry) or removed
            entry.linked = False
        if removed:
            self._count -= 1

    # -- updates -------------------------------------------------------------------------------

    def on_orders(self, orders: list[WireOrder], source: Source, now: float) -> list[E]:
        """Apply order updates (one push's ``data[]``, or a REST lookup).

        Returns the pending cancels they resolved, each with ``final`` set (``result`` builds the
        public result from it: ``outcome``) and already removed.
        """
        # The router's hot path: per order, one status lookup, one insert into the memory and
        # one pop from the id index, with the bookkeeping that can wait done once per frame.
        resolved: list[E] = []
        by_id = self._by_id.one
        recent = self._recent
        # The common case, one cancel per order id and none by link id (decided once per push:
        # the loop below changes neither).
        simple = not (self._by_id.more or self._by_link.one)
        inserted = 0
        for order in orders:
            status = FINAL_BY_WIRE.get(order.order_status)
            if status is None:  # an open state: noted on the entries it matches, if any
                if not simple:
                    self._note_open(self._matching(order), order)
                elif by_id:
                    head = by_id.get(order.order_id)
                    if head is not None and (not order.category or head.category == order.category):
                        self._note_open((head,), order)
                continue
            # Remember it; sticky: the first final state seen for an order wins.
            final = _Final(order, status, source, now)
            known = recent.setdefault(order.order_id, final)
            if known is not final:
                # (Rare: a repeated or stale final push, a REST answer after the push.)
                final = self._sticky(known, final)
            else:
                inserted += 1
                if order.order_link_id:
                    self._recent_link[(order.category, order.order_link_id)] = order.order_id
            if simple:
                head = by_id.pop(order.order_id, None)
                if head is None:
                    continue
                if order.category and head.category != order.category:
                    by_id[order.order_id] = head  # another category's order: put it back
                    continue
                head.final = final  # (forget(head), inlined: it was the only entry)
                if self._last:
                    self._last.pop(head, None)
                resolved.append(head)
                continue
            for entry in self._matching(order):
                entry.final = final
                self.forget(entry)
                resolved.append(entry)
        if simple:
            self._count -= len(resolved)
        if inserted:
            # Trimmed in batches: by size when over the bound by a little, by age every 128
            # pushes that added states, so a full memory does not pay an eviction per insert.
            self._inserts += 1
            if len(recent) > self._recent_limit or not self._inserts & 127:
                self._evict(now)
        return resolved

    def _sticky(self, known: _Final, final: _Final) -> _Final:
        """The final state an update resolves with when one is already remembered under its
        orderId: the remembered one, if it is the same order's, else the update's own."""
        order, first = final.order, known.order
        # Past recent_age the remembered one is forgotten (only not evicted yet: that is lazy).
        stale = known.at < final.at - self._recent_age
        if not stale and (
            not order.order_id or (first.category and order.category != first.category)
        ):
            # Another order's: no orderId to tell orders apart (malformed), or the same id in
            # another category, or in none (the id indexes keep categories apart too). Not
            # remembered: the memory keeps the first.
            return final
        if stale or (self._result(known) is None and self._result(final) is not None):
            # Forgotten, or it cannot be read (a quantity that is not a number) and so answers
            # nobody while this one can: this one takes its place, at the end (the memory stays
            # oldest first).
            recent, links = self._recent, self._recent_link
            del recent[order.order_id]
            recent[order.order_id] = final
            gone = (first.category, first.order_link_id)
            if first.order_link_id and links.get(gone) == order.order_id:
                del links[gone]
            if order.order_link_id:
                links[(order.category, order.order_link_id)] = order.order_id
            return final
        return known

    def _matching(self, order: WireOrder) -> list[E]:
        category = order.category
        matched = [
            e for e in self._by_id.get(order.order_id) if not category or e.category == category
        ]
        link = order.order_link_id
        if link and self._by_link.one:
            for e in self._by_link.get((category, link)):
                # Not when it learnt another order id (a reused link id), nor twice when it
                # learnt this one (then it is in the id index too).
                if not e.order_id:
                    matched.append(e)
        return matched

    def last_status(self, entry: E) -> str | None:
        """The newest open ``orderStatus`` seen for a pending cancel's order, if any."""
        last = self._last.get(entry)
        return None if last is None else last[1]

    def _note_open(self, matched: Sequence[E], order: WireOrder) -> None:
        # Non-final update: remember the newest status for diagnostics; ignore stale ones.
        updated = updated_ms(order.updated_time)
        for entry in matched:
            last = self._last.get(entry)
            if last is None or updated >= last[0]:
                self._last[entry] = (updated, order.order_status)

    def _result(self, final: _Final) -> CancelResult | None:
        try:
            return final.result()
        except (ArithmeticError, ValueError):  # a quantity that is not a number
            return None  # not answered from memory: the call goes to Bybit instead

    # -- bulk ----------------------------------------------------------------------------------

    def pending(self) -> list[E]:
        """Every pending cancel (for a REST reconcile after a reconnect)."""
        out = self._by_id.entries()
        # An entry that learnt its order id from the ack sits in both indexes: count it once.
        out.extend(e for e in self._by_link.entries() if not e.order_id)
        return out

    def fail_all(self, error: BaseException) -> list[E]:
        """Remove every pending cancel, set ``error`` on each and return them (close, stream lost)."""
        entries = self.pending()
        for entry in entries:
            entry.error = error
            entry.linked = False
        self._by_id.clear()
        self._by_link.clear()
        self._last.clear()
        self._count = 0
        return entries

    def __len__(self) -> int:
        return self._count

    @property
    def remembered(self) -> int:
        """How many recent final states are remembered."""
        return len(self._recent)

    # -- memory of final states ----------------------------------------------------------------

    def _evict(self, now: float) -> None:
        recent = self._recent
        if not recent:
            return
        excess = len(recent) - self._recent_size
        horizon = now - self._recent_age
        if excess <= 0 and recent[next(iter(recent))].at >= horizon:
            return
        # The oldest `excess` go by count; then any older than the horizon, oldest first.
        doomed = list(islice(recent, max(excess, 0)))
        for order_id in islice(recent, len(doomed), None):
            if recent[order_id].at >= horizon:
                break
            doomed.append(order_id)  # (a dict may not change size while iterated)
        links = self._recent_link
        if not links:
            for order_id in doomed:
                del recent[order_id]
            return
        for order_id in doomed:
            order = recent.pop(order_id).order
            if order.order_link_id:
                key = (order.category, order.order_link_id)
                if links.get(key) == order_id:
                    del links[key]

    def _recent_final(
        self, category: str, order_id: str, order_link_id: str, now: float
    ) -> _Final | None:
        recent = self._recent
        if not recent:
            return None
        if order_id:
            known = recent.get(order_id)
        else:
            remembered_id = self._recent_link.get((category, order_link_id))
            if remembered_id is None:
                return None
            # (Not recent.get(""): a final state without an orderId, malformed, would be
            # remembered under "" and answer every unknown link id.)
            known = recent.get(remembered_id)
        if known is None or (known.order.category and known.order.category != category):
            return None
        if known.at < now - self._recent_age:
            return None  # too old to trust; eviction will drop it
        return known
