"""Host selection (bybit-protocol.md §2). Pure."""

from __future__ import annotations

import re

from yarl import URL

__all__ = ["resolve_urls"]

_HOSTS: dict[tuple[bool, bool], tuple[str, str]] = {
    # (testnet, demo): (REST base, private stream)
    (False, False): ("https://api.bybit.com", "wss://stream.bybit.com/v5/private"),
    (True, False): ("https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private"),
    (False, True): ("https://api-demo.bybit.com", "wss://stream-demo.bybit.com/v5/private"),
    # Demo trading on testnet: the docs advise against it but error 10003 names "testnet-demo" as
    # an environment, and pybit builds these hosts (§2 "Demo trading").
    (True, True): (
        "https://api-demo-testnet.bybit.com",
        "wss://stream-demo-testnet.bybit.com/v5/private",
    ),
}


def resolve_urls(
    *, testnet: bool, demo: bool, rest_url: str | None, ws_url: str | None
) -> tuple[str, str]:
    """Return ``(rest_base, ws_url)``. An explicit URL overrides the chosen environment completely."""
    rest_default, ws_default = _HOSTS[(bool(testnet), bool(demo))]
    rest = rest_url if rest_url is not None else rest_default
    ws = ws_url if ws_url is not None else ws_default
    for name, url in (("rest_url", rest), ("ws_url", ws)):
        # (Not a str: bytes or a number failed below with a TypeError or AttributeError.)
        if not isinstance(url, str):
            raise ValueError(f"{name} must be a str or None, got {url!r}")
        # The authority: after the scheme (if any: a URL without one is refused below, echoed),
        # up to the path, query or fragment (an "@" there is no user).
        authority = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
        if "@" in authority:
            # A user and password in the URL: Bybit uses none, and they would show wherever the
            # URL does (the client's repr, logs, these errors). Not echoed here either.
            raise ValueError(f"{name} must not carry a user or password")
    if not rest.startswith(("http://", "https://")):
        raise ValueError(f"rest_url must start with http:// or https://, got {rest!r}")
    if not ws.startswith(("ws://", "wss://")):
        raise ValueError(f"ws_url must start with ws:// or wss://, got {ws!r}")
    for name, url in (("rest_url", rest), ("ws_url", ws)):
        try:
            parsed = URL(url)
        except ValueError as exc:  # e.g. a port out of range: caught here, before any I/O
            raise ValueError(f"{name} is not a valid URL ({exc}): {url!r}") from None
        if not parsed.host:
            raise ValueError(f"{name} has no host: {url!r}")
    return rest.rstrip("/"), ws
