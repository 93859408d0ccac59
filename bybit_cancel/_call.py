"""A pending cancel that its caller awaits directly: the core's entry, Future-compatible.

A parked ``cancel_order`` used to wait on an ``asyncio.Future`` beside its entry: 144 bytes per
call, and an ``__await__`` written as a generator would cost a 192-byte generator frame instead.
With 10,000 cancels parked that was the largest part of the library's own memory. So the entry
itself speaks the part of asyncio's Future protocol that a ``Task`` uses on what it awaits (a
"Future-compatible object", see ``asyncio.isfuture``): ``_asyncio_future_blocking``,
``get_loop``, ``add_done_callback``, ``result`` and ``cancel``. Its ``__await__`` returns a C
iterator (48 bytes while parked) that yields the entry once. Unlike a Future, ``result()`` never
raises: a cancel reaches the coroutine from the Task itself.

Only bybit_cancel's own coroutines await a Call, one wait at a time, so it keeps one callback. A
call may wait several times (the slow path parks again between REST lookups): :meth:`Call.rearm`
starts the next wait, and waits are numbered, so a timer set for an earlier wait cannot end a
later one.
"""

from __future__ import annotations

import asyncio
import contextvars
import operator
from asyncio import _get_running_loop, get_running_loop
from collections.abc import Callable, Generator, Iterable
from itertools import repeat
from typing import Any

from ._core import CLOSED, Pending

__all__ = ["Call", "wake_all"]

# Bits of Pending._flags from 16 up (the core uses the four lowest).
DONE = 16  # the current wait has ended (woken, cancelled, or the call finished)
CANCELLED = 32  # the awaiting task was cancelled during the current wait
_WAIT = 64  # the wait number counts from this bit up

_Callback = Callable[["Call"], object]
# A C callable that takes nothing and returns None: NoneType itself.
_NONE: Callable[[], None] = type(None)
# An exhausted iterator: awaiting a wait that has ended returns at once. Shared: it holds nothing.
_ENDED = iter(())


class Call(Pending):
    """A pending cancel, awaitable by the one coroutine that owns it (``cancel_order``).

    ``await call`` suspends until :meth:`wake` (or returns at once if the wait has ended);
    ``Task.cancel()`` on the awaiting task ends the wait with ``CancelledError``, as with a Future.
    """

    # Two slots only: with 10,000 calls parked every slot is 80 kB (benchmarks/scale.py).
    __slots__ = ("_callback", "_context")

    # What a Task reads on an awaited Future-like object, answered by C callables rather than
    # slots. `_asyncio_future_blocking` reads True (bool(self)) and ignores the Task's write of
    # False (operator.is_): only bybit_cancel's coroutines await a Call, and only with `await`,
    # so the flag has nothing to catch. The loop is the running one: a Call is created, awaited
    # and woken on its client's loop.
    _asyncio_future_blocking = property(bool, operator.is_)  # type: ignore[arg-type]
    get_loop = staticmethod(asyncio.get_running_loop)

    def __init__(self, category: str, symbol: str, order_id: str, order_link_id: str) -> None:
        Pending.__init__(self, category, symbol, order_id, order_link_id)  # (cheaper than super())
        self._callback: _Callback | None = None
        # The awaiting task's context while it waits.
        self._context: contextvars.Context | None = None

    # -- for bybit_cancel ----------------------------------------------------------------------

    @property
    def wait(self) -> int:
        """The number of the current wait (0 for the first)."""
        return self._flags // _WAIT

    def wake(self) -> None:
        """End the current wait (no-op if it has ended): the awaiting task resumes soon."""
        callback = self._callback
        if callback is None:  # not awaited (yet): nothing to schedule
            self._flags |= DONE
            return
        loop = _get_running_loop()
        if loop is None:
            # Outside the loop: the coroutine closed or collected while its loop is stopped
            # (finish()). The callback is the awaiting Task's own wake-up: use the Task's loop.
            loop = callback.__self__.get_loop()  # type: ignore[attr-defined]
        wake_all((self,), loop.call_soon)

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
            get_running_loop().call_soon(fn, self, context=context)
            return
        if self._callback is not None:
            raise RuntimeError("a pending cancel is awaited by its own call only")
        self._callback = fn
        self._context = context

    def cancel(self, msg: Any | None = None) -> bool:
        """Called by the awaiting Task's ``cancel(msg)``: ends the wait, and returns False, as a
        Future that had already ended would. The Task then keeps ``msg`` and throws
        ``CancelledError(msg)`` into the coroutine itself when it resumes, so neither this entry
        nor its iterator need to raise anything (see ``__await__``).

        One difference from a Future: on Python 3.13, a cancel taken back with ``Task.uncancel()``
        before the task resumes is not delivered (3.13's ``uncancel`` clears the Task's own
        pending cancel); the wait has ended all the same, and ``cancel_order`` goes on from there.
        """
        if self._flags & DONE:
            return False
        self._flags |= CANCELLED
        self.wake()
        return False

    # A Task calls result() when woken, only to learn whether to throw an error into the
    # coroutine; a cancel is thrown by the Task itself (see cancel). So result() is a C callable
    # returning None: no Python frame on the wake-up path, which matters when the caches are
    # cold (the wake-up is the confirm's latency).
    result = staticmethod(_NONE)

    def __await__(self) -> Generator[Any, None, None]:
        # The iterator is C code (itertools.repeat, 48 bytes while parked) that hands the entry
        # to the Task once and is then exhausted: the coroutine suspends and resumes without a
        # Python frame and without a StopIteration object, which a Python __next__ would cost
        # (about 0.4 us per wait, benchmarks in docs/performance.md item 21).
        if self._flags & DONE:
            return _ENDED  # type: ignore[return-value]
        return repeat(self, 1)  # type: ignore[return-value]

    __iter__ = __await__


def wake_all(calls: Iterable[Call], call_soon: Callable[..., object]) -> None:
    """:meth:`Call.wake` for each of ``calls``, in one frame (the router wakes every call a push
    resolved): ``call_soon`` is the loop's."""
    for call in calls:
        flags = call._flags
        if flags & DONE:
            continue
        call._flags = flags | DONE
        callback = call._callback
        if callback is not None:
            call._callback = None
            context = call._context
            call._context = None
            call_soon(callback, call, context=context)
