"""Fixtures: a FakeExchange on 127.0.0.1 per test, and a client bound to it.

``BYBIT_CANCEL_TEST_LOOP=uvloop`` runs every async test and fixture on a uvloop loop instead of
asyncio's own (unset, or ``asyncio``, keeps asyncio's). The library claims it runs unchanged on
uvloop; this is how that is tested. On pytest-asyncio 1.4 and newer this uses its
``pytest_asyncio_loop_factories`` hook; on older releases (the ``test`` extra's floor is 0.24),
which lack the hook, the ``event_loop_policy`` fixture, which 1.4 deprecated.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import pytest_asyncio
import pytest_asyncio.plugin

from bybit_cancel import BybitCancelClient
from bybit_cancel.testing import FakeExchange

TEST_LOOP = os.environ.get("BYBIT_CANCEL_TEST_LOOP", "") or "asyncio"
if TEST_LOOP not in ("asyncio", "uvloop"):
    raise pytest.UsageError(
        f"BYBIT_CANCEL_TEST_LOOP={TEST_LOOP!r}: expected 'asyncio' (the default) or 'uvloop'"
    )
ON_UVLOOP = TEST_LOOP == "uvloop"


# A skip mark for a test that depends on asyncio's own loop by design (its reason says how).
def asyncio_loop_only(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(ON_UVLOOP, reason=f"asyncio's own loop only: {reason}")


if ON_UVLOOP:
    try:
        import uvloop
    except ImportError as exc:  # loudly: a run asked for uvloop must not pass on asyncio
        raise pytest.UsageError(
            "BYBIT_CANCEL_TEST_LOOP=uvloop but uvloop is not installed "
            "(pip install -e '.[test]' installs it where it supports the Python)"
        ) from exc

    if hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs"):  # pytest-asyncio >= 1.4

        @pytest.hookimpl(optionalhook=True)
        def pytest_asyncio_loop_factories(
            config: pytest.Config, item: pytest.Item
        ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
            return {"uvloop": uvloop.new_event_loop}

    else:  # pytest-asyncio < 1.4 has no hook; its (then undeprecated) policy fixture instead

        @pytest.fixture(scope="session")
        def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
            policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
            return policy


def pytest_report_header(config: pytest.Config) -> str:
    return f"bybit_cancel test loop: {TEST_LOOP} (BYBIT_CANCEL_TEST_LOOP)"


# The loop classes the async tests ran on, and how many ran on each: printed at the end.
_LOOPS_SEEN: dict[str, int] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every async test (and only those: a sync test must not get a loop it did not ask for) runs
    # _check_test_loop first (inserted at the front of its fixturenames, as pytest-asyncio adds its
    # own to that list).
    for item in items:
        if pytest_asyncio.is_async_test(item):
            item.fixturenames.insert(0, _check_test_loop.__name__)


@pytest.fixture
async def _check_test_loop(request: pytest.FixtureRequest) -> None:
    """The test's loop is the one the switch asked for: a run cannot silently fall back."""
    loop = type(asyncio.get_running_loop())
    name = f"{loop.__module__}.{loop.__qualname__}"
    _LOOPS_SEEN[name] = _LOOPS_SEEN.get(name, 0) + 1
    on_uvloop = loop.__module__.partition(".")[0] == "uvloop"
    assert on_uvloop == ON_UVLOOP, f"BYBIT_CANCEL_TEST_LOOP={TEST_LOOP}, but the loop is {name}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seen = ", ".join(f"{n} async tests on {name}" for name, n in sorted(_LOOPS_SEEN.items()))
    terminalreporter.write_line(f"bybit_cancel test loop {TEST_LOOP}: {seen or 'no async test'}")


KEY = "test-key-0001"
SECRET = "test-secret-must-never-appear-anywhere"


@pytest.fixture
async def fx() -> AsyncIterator[FakeExchange]:
    async with FakeExchange(api_key=KEY, api_secret=SECRET, seed=7) as exchange:
        yield exchange


def make_client(fx: FakeExchange, **options: object) -> BybitCancelClient:
    opts: dict[str, object] = {"seed": 3}
    opts.update(options)
    return BybitCancelClient(
        api_key=KEY,
        api_secret=SECRET,
        rest_url=fx.rest_url,
        ws_url=fx.ws_url,
        **opts,  # type: ignore[arg-type]
    )


@pytest.fixture
async def client(fx: FakeExchange) -> AsyncIterator[BybitCancelClient]:
    async with make_client(fx) as c:
        yield c


def client_tasks() -> list[asyncio.Task[object]]:
    """Tasks the library started (they are all named bybit_cancel.*)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("bybit_cancel.")]
