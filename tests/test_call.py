"""The awaitable entry (``_call.Call``): asyncio's Task must treat it exactly as a Future.

Each test runs with the C Task and with asyncio's pure-Python Task, whose code paths for a
Future-compatible object differ.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bybit_cancel._call import CANCELLED, Call

TaskFactory = Callable[[Coroutine[Any, Any, Any]], "asyncio.Future[Any]"]


def _c_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_task(coro)


def _py_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    py_task = asyncio.tasks._PyTask  # type: ignore[attr-defined]
    return py_task(coro, loop=asyncio.get_running_loop())  # type: ignore[no-any-return]


@pytest.fixture(params=[_c_task, _py_task], ids=["c-task", "py-task"])
def spawn(request: pytest.FixtureRequest) -> TaskFactory:
    return request.param  # type: ignore[no-any-return]


def make_call() -> Call:
    return Call("linear", "BTCUSDT", "o1", "")


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_task_waits_until_woken(spawn: TaskFactory) -> None:
    call = make_call()
    assert asyncio.isfuture(call)

    async def waiter() -> str:
        await call
        return "resumed"

    task = spawn(waiter())
    await settle()
    assert not task.done() and not call.done()
    call.wake()
    call.wake()  # a second wake-up changes nothing
    assert await asyncio.wait_for(task, 2) == "resumed"
    assert call.done() and not call._flags & CANCELLED


async def test_awaiting_an_ended_wait_returns_at_once(spawn: TaskFactory) -> None:
    call = make_call()
    call.wake()
    suspended: list[bool] = []

    async def waiter() -> None:
        await call
        suspended.append(False)

    task = spawn(waiter())
    await asyncio.sleep(0)  # one step of the task: it must finish without yielding
    assert task.done() and suspended == [False]


async def test_the_waiting_task_keeps_its_context(spawn: TaskFactory) -> None:
    """Resumed with its own contextvars, not those of whoever woke it (the stream task)."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    call = make_call()

    async def waiter() -> str:
        var.set("caller")
        await call
        return var.get()

    async def waker() -> None:
        var.set("stream")
        call.wake()

    task = spawn(waiter())
    await settle()
    await asyncio.get_running_loop().create_task(waker())
    assert await asyncio.wait_for(task, 2) == "caller"


async def test_cancelling_the_waiting_task(spawn: TaskFactory) -> None:
    call = make_call()
    reached: list[str] = []

    async def waiter() -> None:
        try:
            await call
        except asyncio.CancelledError as exc:
            reached.append(str(exc.args[0]) if exc.args else "")
            raise

    task = spawn(waiter())
    await settle()
    task.cancel("shutting down")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert reached == ["shutting down"]  # the cancel's message is kept, as with a Future
    assert call._flags & CANCELLED and call.done() and not call.cancel()
    call.wake()  # too late: nothing happens


async def test_waits_are_numbered(spawn: TaskFactory) -> None:
    """The slow path waits again on the same entry: rearm starts wait 1, 2, ..."""
    call = make_call()
    ends: list[int] = []

    async def waiter() -> None:
        for _ in range(3):
            if call.done():
                call.rearm()
            await call
            ends.append(call.wait)

    task = spawn(waiter())
    for expected in range(3):
        await settle()
        assert call.wait == expected and not call.done()
        call.wake()
    await asyncio.wait_for(task, 2)
    assert ends == [0, 1, 2]


async def test_one_callback_at_a_time() -> None:
    loop = asyncio.get_running_loop()
    call = make_call()
    seen: list[Call] = []
    call.add_done_callback(seen.append)
    with pytest.raises(RuntimeError):
        call.add_done_callback(seen.append)
    call.wake()  # schedules the one callback
    await settle()
    assert seen == [call]
    call.add_done_callback(seen.append)  # already ended: scheduled at once, as with a Future
    await settle()
    assert seen == [call, call] and call.get_loop() is loop


async def test_result_never_raises_the_cancel_comes_from_the_task() -> None:
    """The Task calls result() on waking; a cancel must reach the coroutine all the same: cancel()
    ends the wait and answers False, so the Task throws CancelledError(msg) itself."""
    call = make_call()
    assert call.result() is None
    assert call.cancel("stop") is False
    assert call.done() and call._flags & CANCELLED and call.result() is None
    assert call.cancel("again") is False


async def test_the_iterator_hands_the_entry_over_once() -> None:
    """Awaiting yields the entry itself to the Task, once, from a C iterator (no generator, no
    Python __next__); an ended wait yields nothing."""
    call = make_call()
    it = iter(call)
    assert not inspect.isgenerator(it)
    assert next(it) is call and call._asyncio_future_blocking is True
    with pytest.raises(StopIteration):
        next(it)
    call.wake()
    with pytest.raises(StopIteration):
        next(iter(call))


async def test_finish_drops_the_waiter() -> None:
    call = make_call()
    call.add_done_callback(lambda _c: None)
    call.finish()
    assert call.done() and call.closed and call._callback is None and call._context is None
    call.wake()  # a late push or timer: nothing to do


async def test_a_cancel_message_is_kept_as_given(spawn: TaskFactory) -> None:
    """Not turned into a string: Task.cancel(msg) accepts any object, as a Future keeps it."""
    call = make_call()

    async def waiter() -> None:
        await call

    task = spawn(waiter())
    await settle()
    task.cancel(123)
    with pytest.raises(asyncio.CancelledError) as caught:
        await asyncio.wait_for(task, 2)
    assert caught.value.args == (123,)


async def test_closing_the_coroutine_while_parked_ends_its_task(spawn: TaskFactory) -> None:
    """A misuse (coro.close() under a running Task), but the Task must still finish: the entry's
    finish() (run by the coroutine's finally) ends the wait instead of dropping the wake-up."""
    call = make_call()

    async def waiter() -> None:
        try:
            await call
        finally:
            call.finish()

    coro = waiter()
    task = spawn(coro)
    await settle()
    coro.close()
    # The Task wakes and finds its coroutine closed (asyncio says so with a RuntimeError).
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        await asyncio.wait_for(task, 2)
    assert call._callback is None and call._context is None


def test_closing_a_parked_coroutine_while_its_loop_is_stopped() -> None:
    """A coroutine closed (or collected) between two runs of its loop: finish() ends the wait on
    the awaiting Task's own loop, and the rest of the coroutine's cleanup runs."""
    loop = asyncio.new_event_loop()
    try:
        call = make_call()
        ended: list[str] = []

        async def waiter() -> None:
            try:
                await call
            finally:
                call.finish()
                ended.append("cleanup ran")

        task = loop.create_task(waiter())
        loop.run_until_complete(asyncio.sleep(0.01))  # parked; the loop is now stopped
        task.get_coro().close()
        assert ended == ["cleanup ran"] and call.done() and call.closed
        with pytest.raises(RuntimeError):  # the Task finds its coroutine closed, as before
            loop.run_until_complete(asyncio.wait_for(task, 2))
    finally:
        loop.close()
