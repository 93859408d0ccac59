"""Test helpers: a protocol-faithful local fake of the Bybit v5 REST API and private websocket.

Independent of the rest of ``bybit_cancel``: only the stdlib and aiohttp are used here.
"""

from bybit_cancel.testing._exchange import (
    BYBIT_RATE_LIMITS,
    FakeExchange,
    FakeOrder,
    Fault,
    RecordedRequest,
)

__all__ = ["BYBIT_RATE_LIMITS", "FakeExchange", "FakeOrder", "Fault", "RecordedRequest"]
