"""Cancel a Bybit v5 order and await its confirmed final state, not just the acknowledgement."""

from ._client import BybitCancelClient, cancel_and_confirm
from ._exceptions import (
    AuthenticationError,
    BybitAPIError,
    BybitError,
    ClientClosedError,
    ConfirmationTimeout,
    HTTPStatusError,
    OrderNotFound,
    TransportError,
)
from ._models import CancelResult, OrderStatus
from ._stream import ConnectionState

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BybitAPIError",
    "BybitCancelClient",
    "BybitError",
    "CancelResult",
    "ClientClosedError",
    "ConfirmationTimeout",
    "ConnectionState",
    "HTTPStatusError",
    "OrderNotFound",
    "OrderStatus",
    "TransportError",
    "cancel_and_confirm",
]

# Show `bybit_cancel.X`, not `bybit_cancel._module.X`, in reprs and tracebacks (as httpx does).
for _name in __all__:
    globals()[_name].__module__ = "bybit_cancel"
del _name
