"""Fixtures: a FakeExchange on 127.0.0.1 per test, and a client bound to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bybit_cancel import BybitCancelClient
from bybit_cancel.testing import FakeExchange

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
