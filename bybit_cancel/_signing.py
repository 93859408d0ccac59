"""Pure signing helpers (bybit-protocol.md §1 and §3). Nothing here reads a clock or does I/O."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

__all__ = ["Credentials", "rest_headers", "ws_auth_args"]


class Credentials:
    """An API key and its secret. The secret never appears in ``repr``/``str``."""

    __slots__ = ("_keyed", "api_key")

    def __init__(self, api_key: str, api_secret: str) -> None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string")
        if not isinstance(api_secret, str) or not api_secret:
            raise ValueError("api_secret must be a non-empty string")
        self.api_key = api_key
        # Keyed once; each signature copies the keyed state instead of re-deriving the pads.
        self._keyed = hmac.new(api_secret.encode(), digestmod=hashlib.sha256)

    def sign(self, payload: bytes) -> str:
        """Lowercase hex HMAC-SHA256 of ``payload`` (the form Bybit checks for HMAC keys)."""
        h = self._keyed.copy()
        h.update(payload)
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"Credentials(api_key={redact_key(self.api_key)!r}, api_secret='***')"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("Credentials cannot be pickled")


def redact_key(api_key: str) -> str:
    """Show only the first characters of an API key (keys are not secret, but need not be logged whole)."""
    return api_key[:4] + "***" if len(api_key) > 4 else "***"


def rest_headers(
    creds: Credentials, timestamp_ms: int, recv_window: int, payload: bytes
) -> dict[str, str]:
    """The X-BAPI-* headers for one signed REST request.

    ``payload`` must be exactly the bytes sent: the JSON body of a POST or the query string of a GET.
    Bybit signs ``timestamp + api_key + recv_window + payload`` (§1 "String to sign").
    """
    ts = str(timestamp_ms)
    rw = str(recv_window)
    signature = creds.sign(b"".join((ts.encode(), creds.api_key.encode(), rw.encode(), payload)))
    return {
        "X-BAPI-API-KEY": creds.api_key,
        "X-BAPI-SIGN": signature,
        # Always "2", as pybit and the official examples send it with HMAC keys (§1 CONFLICT note).
        "X-BAPI-SIGN-TYPE": "2",
        "X-BAPI-TIMESTAMP": ts,
        "X-BAPI-RECV-WINDOW": rw,
    }


def ws_auth_args(creds: Credentials, expires_ms: int) -> list[str | int]:
    """The ``args`` of the private-stream auth op: key, expiry (ms int), HMAC of ``GET/realtime<expires>``."""
    signature = creds.sign(f"GET/realtime{expires_ms}".encode())
    return [creds.api_key, expires_ms, signature]
