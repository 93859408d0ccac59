"""A pending cancel that its caller awaits directly: the core's entry, Future-compatible.

A parked ``cancel_order`` used to wait on an ``asyncio.Future`` beside its entry: 144 bytes per
call, and an ``__await__`` written as a generator would cost a 192-byte generator frame instead.
With 10,000 cancels parked that was the largest part of the library's own memory. So the entry
itself speaks the part of asyncio's Future protocol that a ``Task`` uses on what it awaits (a
"Future-compatible object", see ``asyncio.isfuture``): ``_asyncio_future_blocking``, ``_loop``
(read when there is no ``get_loop``), ``add_done_callback``, ``result`` and ``cancel``; and its
``__await__`` returns the entry itself as the iterator, so awaiting it allocates nothing.
Unlike a Future, ``result()`` never raises: a cancel reaches the coroutine from ``__next__``.

Only bybit_cancel's own coroutines await a Call, one wait at a time, so it keeps one callback. A
call may wait several times (the slow path parks again between REST lookups): :meth:`Call.rearm`
starts the next wait, and waits are numbered, so a timer set for an earlier wait cannot end a
later one.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any

from ._core import CLOSED, Pending

__all__ = ["Call"]

# Bits of Pending._flags from 16 up (the core uses the four lowest).
DONE = 16  # the current wait has ended (woken, cancelled, or the call finished)
CANCELLED = 32  # the awaiting task was cancelled during the current wait
_WAIT = 64  # the wait number counts from this bit up

_Callback = Callable[["Call"], object]
# A C callable that takes nothing and returns None: NoneType itself.
_NONE: Callable[[], None] = type(None)


class Call(Pending):
    """A pending cancel, awaitable by the one coroutine that owns it (``cancel_order``).

    ``await call`` suspends until :meth:`wake` (or returns at once if the wait has ended);
    ``Task.cancel()`` on the awaiting task ends the wait with ``CancelledError``, as with a Future.
    """

    # `_asyncio_future_blocking` and `_loop` are what a Task reads on an awaited Future-like
    # object: as slots, the Task reads and writes them in C, without a Python call.
    __slots__ = ("_asyncio_future_blocking", "_callback", "_context", "_loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        category: str,
        symbol: str,
        order_id: str,
        order_link_id: str,
    ) -> None:
        Pending.__init__(self, category, symbol, order_id, order_link_id)  # (cheaper than super())
        self._loop = loop
        self._asyncio_future_blocking = False
        self._callback: _Callback | None = None
        # The awaiting task's context while it waits; after a cancel, the cancel's message.
        self._context: object = None

    # -- for bybit_cancel ----------------------------------------------------------------------

    @property
    def wait(self) -> int:
        """The number of the current wait (0 for the first)."""
        return self._flags // _WAIT

    def wake(self) -> None:
        """End the current wait (no-op if it has ended): the awaiting task resumes soon."""
        flags = self._flags
        if flags & DONE:
            return
        self._flags = flags | DONE
        callback = self._callback
        if callback is not None:
            self._callback = None
            context = self._context
            self._context = None
            self._loop.call_soon(callback, self, context=context)  # type: ignore[arg-type]

    def rearm(self) -> None:
        """Start the next wait, after the current one has ended."""
        self._flags = (self._flags & ~(DONE | CANCELLED)) + _WAIT
        self._context = None

    def finish(self) -> None:
        """The call has returned (sets ``closed``): later wake-ups do nothing, and nothing is
        kept alive."""
        if self._callback is not None:
            # Still awaited: the coroutine was closed while parked (coro.close()). End the wait
            # as a cancel does, so that its Task finishes instead of waiting forever.
            self.cancel()
        self._flags |= DONE | CLOSED
        self._context = None

    # -- the Future protocol, as far as asyncio.Task uses it (only a Task ever awaits a Call) --

    def done(self) -> bool:
        return bool(self._flags & DONE)

    def add_done_callback(
        self, fn: _Callback, *, context: contextvars.Context | None = None
    ) -> None:
        if self._flags & DONE:
            self._loop.call_soon(fn, self, context=context)
            return
        if self._callback is not None:
            raise RuntimeError("a pending cancel is awaited by its own call only")
        self._callback = fn
        self._context = context

    def cancel(self, msg: Any | None = None) -> bool:
        if self._flags & DONE:
            return False
        self._flags |= CANCELLED
        self.wake()
        self._context = msg  # (the context slot is free once the wait has ended)
        return True

    # A Task calls result() when woken, only to learn whether to throw an error into the
    # coroutine. It need not: the coroutine resumes in __next__, which raises CancelledError
    # after a cancel. So result() is a C callable returning None (no Python frame on the wake-up
    # path, which matters when the caches are cold: the wake-up is the confirm's latency).
    result = staticmethod(_NONE)

    def __await__(self) -> Generator[Any, None, None]:
        return self  # type: ignore[return-value]  # its own iterator: no generator per await

    __iter__ = __await__

    def __next__(self) -> Call:
        flags = self._flags
        if not flags & DONE:
            # Suspend, as Future.__await__ does: the Task sees a Future that asks to block,
            # clears the flag, and adds its callback.
            self._asyncio_future_blocking = True
            return self
        if flags & CANCELLED:
            raise self._cancelled_error()
        raise StopIteration

    def _cancelled_error(self) -> asyncio.CancelledError:
        # As asyncio.Future does: the message, if the cancel gave one, is the only argument.
        msg = self._context
        return asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
