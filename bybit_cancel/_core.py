"""The sans-I/O core: which pending cancel does an order update resolve?

Nothing here imports asyncio, reads a clock or does I/O: the caller passes ``now`` (a monotonic time
in seconds) and an opaque ``waiter`` per pending cancel (the client uses an ``asyncio.Future``), and
gets back the waiters to resolve. The I/O layers (``_client``, ``_stream``, ``_rest``) do the rest.

Rules (bybit-protocol.md §4, §5, §12):

* A pending cancel is matched by ``orderId``, or by ``orderLinkId`` when the caller gave only that.
* Finality comes from ``orderStatus`` alone (never ``leavesQty``); ``Triggered`` and unknown values
  are not final.
* A final state is sticky: the first one seen for an order wins. A repeated push, a stale push with an
  older ``updatedTime``, or Bybit's second ``Filled`` on a cancel/fill collision changes nothing.
* Recent final states are remembered (bounded by count and age), so a cancel for an order that has
  already ended resolves at once, and a push that beat the cancel's registration is not lost.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from ._models import (
    FINAL_BY_WIRE,
    CancelResult,
    OrderStatus,
    Source,
    WireOrder,
    result_from_wire,
)

__all__ = ["CancelTracker", "Pending"]

W = TypeVar("W")


class Pending(Generic[W]):
    """One pending cancel. Created by :meth:`CancelTracker.start`; opaque to callers but readable."""

    __slots__ = (
        "acknowledged",
        "category",
        "error",
        "last_status",
        "last_updated",
        "linked",
        "next",
        "order_id",
        "order_link_id",
        "owner",
        "result",
        "symbol",
        "waiter",
    )

    def __init__(
        self, waiter: W, category: str, symbol: str, order_id: str, order_link_id: str
    ) -> None:
        self.waiter = waiter
        self.category = category
        self.symbol = symbol
        self.order_id = order_id
        self.order_link_id = order_link_id
        self.acknowledged = False
        # The outcome lives on the entry, so a wake-up that races another cannot lose it: the
        # waiter is only a signal for the I/O layer.
        self.result: CancelResult | None = None
        self.error: BaseException | None = None
        # Set by the I/O layer while the entry's owner is inside a REST call (not parked), so
        # that a close can interrupt it. Opaque here.
        self.owner: object | None = None
        self.last_status: str | None = None
        self.last_updated = -1
        # Index membership: is this entry in _by_link (caller gave only the link id)?
        self.linked = False
        # Next pending cancel for the same order (two callers cancelling one order).
        self.next: Pending[W] | None = None

    def __repr__(self) -> str:
        ident = self.order_id or self.order_link_id
        return f"<Pending {self.category}:{self.symbol}:{ident} last={self.last_status}>"


class _Final:
    __slots__ = ("at", "order", "source", "status")

    def __init__(self, order: WireOrder, status: OrderStatus, source: Source, at: float) -> None:
        self.order = order
        self.status = status
        self.source = source
        self.at = at

    def result(self) -> CancelResult:
        return result_from_wire(self.order, self.status, self.source)


class CancelTracker(Generic[W]):
    """Tracks pending cancels and decides what each order update resolves.

    Args:
        recent_size: how many recent final states to remember.
        recent_age: how long (seconds) to remember a final state.
    """

    def __init__(self, *, recent_size: int = 10_000, recent_age: float = 600.0) -> None:
        if recent_size < 1 or recent_age <= 0:
            raise ValueError("recent_size and recent_age must be positive")
        self._by_id: dict[str, Pending[W]] = {}
        self._by_link: dict[str, Pending[W]] = {}
        self._count = 0
        self._recent: OrderedDict[str, _Final] = OrderedDict()
        self._recent_link: dict[str, str] = {}
        self._recent_size = recent_size
        self._recent_age = recent_age

    # -- registration --------------------------------------------------------------------------

    def start(
        self,
        waiter: W,
        *,
        category: str,
        symbol: str,
        order_id: str | None,
        order_link_id: str | None,
        now: float,
    ) -> Pending[W] | CancelResult:
        """Register a cancel, before its request is sent, so that an early push is not lost.

        Returns the final state at once if one is remembered for this order; otherwise the
        :class:`Pending` entry, which must later be resolved or passed to :meth:`forget`.
        """
        known = self._recent_final(category, order_id or "", order_link_id or "", now)
        if known is not None:
            return known.result()
        entry = Pending(waiter, category, symbol, order_id or "", order_link_id or "")
        if entry.order_id:
            self._link(self._by_id, entry.order_id, entry)
        else:
            self._link(self._by_link, entry.order_link_id, entry)
            entry.linked = True
        self._count += 1
        return entry

    def acknowledge(
        self, entry: Pending[W], *, order_id: str, order_link_id: str, now: float
    ) -> CancelResult | None:
        """Record Bybit's acknowledgement. Learns the order id when the caller gave only the link id.

        Returns the final state if it is already known (the push beat the ack); the entry is then
        removed and its waiter must be resolved with it.
        """
        entry.acknowledged = True
        if order_id and not entry.order_id:
            entry.order_id = order_id
            self._link(self._by_id, order_id, entry)
        if order_link_id and not entry.order_link_id:
            entry.order_link_id = order_link_id
        known = self._recent_final(entry.category, entry.order_id, entry.order_link_id, now)
        if known is None:
            return None
        self.forget(entry)
        return known.result()

    def forget(self, entry: Pending[W]) -> None:
        """Remove a pending cancel (resolved, timed out, cancelled, failed). Idempotent."""
        removed = False
        if entry.order_id:
            removed |= self._unlink(self._by_id, entry.order_id, entry)
        if entry.linked:
            removed |= self._unlink(self._by_link, entry.order_link_id, entry)
            entry.linked = False
        if removed:
            self._count -= 1

    # -- updates -------------------------------------------------------------------------------

    def on_orders(self, orders: list[WireOrder], source: Source, now: float) -> list[Pending[W]]:
        """Apply order updates (one push's ``data[]``, or a REST lookup).

        Returns the pending cancels they resolved, each with ``result`` set and already removed.
        """
        resolved: list[Pending[W]] = []
        for order in orders:
            status = FINAL_BY_WIRE.get(order.order_status)
            first_final: _Final | None = None
            if status is not None:
                first_final = self._remember(order, status, source, now)
            entry = self._by_id.get(order.order_id)
            if entry is None and order.order_link_id:
                entry = self._by_link.get(order.order_link_id)
                if entry is not None and order.category and entry.category != order.category:
                    entry = None
            if entry is None:
                continue
            if first_final is None:
                self._note_open(entry, order)
                continue
            result = first_final.result()
            while entry is not None:
                nxt = entry.next
                entry.result = result
                resolved.append(entry)
                self.forget(entry)
                entry = nxt
        return resolved

    def _note_open(self, entry: Pending[W] | None, order: WireOrder) -> None:
        # Non-final update: remember the newest status for diagnostics; ignore stale ones.
        updated = int(order.updated_time) if order.updated_time else 0
        while entry is not None:
            if updated >= entry.last_updated:
                entry.last_updated = updated
                entry.last_status = order.order_status
            entry = entry.next

    # -- bulk ----------------------------------------------------------------------------------

    def pending(self) -> list[Pending[W]]:
        """Every pending cancel (for a REST reconcile after a reconnect)."""
        out: list[Pending[W]] = []
        for index, skip_linked_ids in ((self._by_id, False), (self._by_link, True)):
            for head in index.values():
                entry: Pending[W] | None = head
                while entry is not None:
                    # An entry learnt its order id from the ack sits in both indexes: count it once.
                    if not (skip_linked_ids and entry.order_id):
                        out.append(entry)
                    entry = entry.next
        return out

    def fail_all(self, error: BaseException) -> list[Pending[W]]:
        """Remove every pending cancel, set ``error`` on each and return them (close, stream lost)."""
        entries = self.pending()
        for entry in entries:
            entry.error = error
            entry.linked = False
        self._by_id.clear()
        self._by_link.clear()
        self._count = 0
        return entries

    def __len__(self) -> int:
        return self._count

    @property
    def remembered(self) -> int:
        """How many recent final states are remembered."""
        return len(self._recent)

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _link(index: dict[str, Pending[W]], key: str, entry: Pending[W]) -> None:
        head = index.get(key)
        if head is not None:
            entry.next = head
        index[key] = entry

    @staticmethod
    def _unlink(index: dict[str, Pending[W]], key: str, entry: Pending[W]) -> bool:
        head = index.get(key)
        if head is None:
            return False
        if head is entry:
            if entry.next is None:
                del index[key]
            else:
                index[key] = entry.next
            return True
        prev = head
        while prev.next is not None:
            if prev.next is entry:
                prev.next = entry.next
                return True
            prev = prev.next
        return False

    def _remember(
        self, order: WireOrder, status: OrderStatus, source: Source, now: float
    ) -> _Final:
        recent = self._recent
        known = recent.get(order.order_id)
        if known is not None:
            return known  # sticky: the first final state wins
        final = _Final(order, status, source, now)
        recent[order.order_id] = final
        if order.order_link_id:
            self._recent_link[order.order_link_id] = order.order_id
        self._evict(now)
        return final

    def _evict(self, now: float) -> None:
        recent = self._recent
        horizon = now - self._recent_age
        while recent:
            order_id, oldest = next(iter(recent.items()))
            if len(recent) <= self._recent_size and oldest.at >= horizon:
                break
            recent.popitem(last=False)
            link = oldest.order.order_link_id
            if link and self._recent_link.get(link) == order_id:
                del self._recent_link[link]

    def _recent_final(
        self, category: str, order_id: str, order_link_id: str, now: float
    ) -> _Final | None:
        if not self._recent:
            return None
        self._evict(now)
        if order_id:
            known = self._recent.get(order_id)
        else:
            known = self._recent.get(self._recent_link.get(order_link_id, ""))
        if known is None or (known.order.category and known.order.category != category):
            return None
        return known
