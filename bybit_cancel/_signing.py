"""Pure signing helpers (bybit-protocol.md §1 and §3). Nothing here reads a clock or does I/O."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any, Protocol, Self

__all__ = ["Credentials", "RestSigner", "ws_auth_args"]


class _Sha256(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def copy(self) -> Self: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def _sha256_constructor() -> Callable[[bytes], _Sha256]:
    """CPython's own SHA-256 when it has one (``_sha2`` from 3.12, ``_sha256`` in 3.11), else
    hashlib's (OpenSSL). The same digests; copying its state is a small memory copy, where an
    OpenSSL copy goes through its provider machinery, which costs most with cold caches
    (``python benchmarks/cold.py``; docs/performance.md, item 18)."""
    for name in ("_sha2", "_sha256"):
        try:
            constructor: Callable[[bytes], _Sha256] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    return hashlib.sha256


_SHA256 = _sha256_constructor()


# HMAC (RFC 2104) over SHA-256, whose block is 64 bytes: the key is padded to a block and XORed
# with these bytes (the tables the standard library's hmac module uses).
_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class Credentials:
    """An API key and its secret. The secret never appears in ``repr``/``str``."""

    __slots__ = ("_inner", "_outer", "api_key")

    def __init__(self, api_key: str, api_secret: str) -> None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string")
        if not isinstance(api_secret, str) or not api_secret:
            raise ValueError("api_secret must be a non-empty string")
        self.api_key = api_key
        # HMAC keyed once: the SHA-256 states after the inner and the outer padded key (RFC 2104).
        # A signature copies the two states. That is the hmac module's own scheme minus its Python
        # layer and OpenSSL's HMAC context copy, which cost most when the caches are cold, as a
        # bot's cancel usually finds them (docs/performance.md, item 18).
        key = api_secret.encode()
        if len(key) > _BLOCK:
            key = _SHA256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = _SHA256(key.translate(_IPAD))
        self._outer = _SHA256(key.translate(_OPAD))

    def sign(self, payload: bytes) -> str:
        """Lowercase hex HMAC-SHA256 of ``payload`` (the form Bybit checks for HMAC keys)."""
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return f"Credentials(api_key={redact_key(self.api_key)!r}, api_secret='***')"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("Credentials cannot be pickled")


def redact_key(api_key: str) -> str:
    """Show only the first characters of an API key (keys are not secret, but need not be logged whole)."""
    return api_key[:4] + "***" if len(api_key) > 4 else "***"


# Shorter "keys" (tests, placeholders) are left alone: replacing them would garble the message.
_SCRUB_MIN_KEY = 8


def scrub_key(text: str, api_key: str) -> str:
    """``text`` with the API key shown as :func:`redact_key` shows it. Bybit's 10004 answer echoes
    the string it tried to sign, key included (``error sign! origin_string[<ts><key>5000...]``,
    bybit-protocol.md §6 error table; fixtures rest/error-10004*.json), and a retMsg ends up in
    exceptions and logs. Error paths only."""
    if len(api_key) >= _SCRUB_MIN_KEY and api_key in text:
        return text.replace(api_key, redact_key(api_key))
    return text


def scrubbed_start(text: str, api_key: str, limit: int) -> str:
    """The first ``limit`` characters of ``text`` (a peer's words, for an error), the API key
    scrubbed (:func:`scrub_key`) before the cut, so that a key across the cut is not left half
    shown. Error paths only."""
    return scrub_key(text[: limit + len(api_key)], api_key)[:limit]


def scrubbed_snippet(body: bytes, api_key: str, limit: int = 200) -> str:
    """The start of an answer's body as text, for an error: :func:`scrubbed_start` of it. (A
    character takes up to 4 bytes of UTF-8: a cut counted in bytes could end inside a key that
    starts before ``limit`` characters, behind multi-byte ones.)"""
    text = body[: 4 * (limit + len(api_key))].decode("utf-8", "replace")
    return scrubbed_start(text, api_key, limit)


class RestSigner:
    """Signs REST requests for one key and ``recv_window``: the constant headers and the constant
    middle of the signed string are built once, so a request copies a small dict and signs
    (bybit-protocol.md §1)."""

    __slots__ = ("_creds", "_key_window", "_post_template", "_template")

    def __init__(self, creds: Credentials, recv_window: int) -> None:
        rw = str(recv_window)
        self._creds = creds
        self._key_window = (creds.api_key + rw).encode()
        self._template = {
            "X-BAPI-API-KEY": creds.api_key,
            "X-BAPI-SIGN": "",
            # Always "2", as pybit and the official examples send it with HMAC keys (§1 CONFLICT
            # note).
            "X-BAPI-SIGN-TYPE": "2",
            "X-BAPI-TIMESTAMP": "",
            "X-BAPI-RECV-WINDOW": rw,
        }
        self._post_template = {**self._template, "Content-Type": "application/json"}

    def headers(self, timestamp_ms: int, payload: bytes, json_body: bool = False) -> dict[str, str]:
        """The X-BAPI-* headers for one signed REST request (a new dict, the caller's to extend),
        with ``Content-Type: application/json`` when ``json_body``.

        ``payload`` must be exactly the bytes sent: the JSON body of a POST or the query string of
        a GET. Bybit signs ``timestamp + api_key + recv_window + payload`` (§1 "String to sign").
        """
        ts = str(timestamp_ms)
        headers = (self._post_template if json_body else self._template).copy()
        headers["X-BAPI-SIGN"] = self._creds.sign(ts.encode() + self._key_window + payload)
        headers["X-BAPI-TIMESTAMP"] = ts
        return headers

    def __repr__(self) -> str:
        return f"RestSigner({self._creds!r})"


def ws_auth_args(creds: Credentials, expires_ms: int) -> list[str | int]:
    """The ``args`` of the private-stream auth op: key, expiry (ms int), HMAC of ``GET/realtime<expires>``."""
    signature = creds.sign(f"GET/realtime{expires_ms}".encode())
    return [creds.api_key, expires_ms, signature]
