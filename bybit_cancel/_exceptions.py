"""Exceptions raised by :mod:`bybit_cancel`.

The tree::

    BybitError
    ├── BybitAPIError               the exchange answered with a non-zero retCode
    │   ├── AuthenticationError     10003 / 10004 / 10005 / 10010 / 33004 / -2015, or a refused websocket auth
    │   └── OrderNotFound           the exchange has no such order at all (after a REST lookup)
    ├── HTTPStatusError             a non-200 HTTP answer without a Bybit envelope (403 IP ban, 5xx)
    ├── TransportError              the network kept failing past ``max_retries`` (when set)
    ├── ClientClosedError           the client was closed while the call was pending
    └── ConfirmationTimeout         (also a TimeoutError) no final state within the call's timeout

Messages never contain the API secret or a signature, nor the whole API key (Bybit's 10004
answer echoes it: it is shown as the client's repr shows it).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BybitAPIError",
    "BybitError",
    "ClientClosedError",
    "ConfirmationTimeout",
    "HTTPStatusError",
    "OrderNotFound",
    "TransportError",
    "error_from_ret_code",
]

# retCodes that mean the credentials, their permissions or their binding are wrong
# (bybit-protocol.md §6 "retCodes seen on cancel"). Retrying cannot help.
AUTH_RET_CODES = frozenset({10003, 10004, 10005, 10010, 33004, -2015})
# "Order does not exist" on REST: 110001 for derivatives, 170213 for spot, 170143 "Cannot be found
# on order book". Ambiguous: the order may have just filled or been cancelled (bybit-protocol.md
# §12.1), so the client looks it up before believing it.
NOT_FOUND_RET_CODES = frozenset({110001, 170213, 170143})
# The order has already ended (§6 "terminal"): 110008 "The order has been completed or cancelled.",
# 110010 "The order has been cancelled", 170139 "Order has been filled.", 170142 "Order has been
# cancelled", 170190 "Cancel order has been finished". The client looks up its true final state.
FINISHED_RET_CODES = frozenset({110008, 110010, 170139, 170142, 170190})
# 170212 "Cancel order request processing" (§6: "wait for WS"): accepted, in all but name.
PROCESSING_RET_CODE = 170212


class BybitError(Exception):
    """Root of every error this library raises (except ``ValueError`` for bad input).

    Attributes:
        may_have_landed: True when the cancel request that failed may still have reached Bybit
            and been applied (an attempt timed out or got a 5xx or a server error, or the answer
            could not be read). ``cancel_order`` confirms the order's state before it reports
            such an error. A :class:`ConfirmationTimeout` sets it too (see there).
    """

    may_have_landed = False


class BybitAPIError(BybitError):
    """The exchange answered with a non-zero ``retCode``.

    Attributes:
        ret_code: Bybit's ``retCode``.
        ret_msg: Bybit's ``retMsg``, as sent, but for an API key it echoes (a 10004 answer
            does), shown by its first four characters as in the client's repr.
        hint: what the client adds to the message (``""`` for none); never part of ``ret_msg``.
    """

    def __init__(self, ret_code: int, ret_msg: str, *, hint: str = "") -> None:
        super().__init__(ret_code, ret_msg)
        self.ret_code = ret_code
        self.ret_msg = ret_msg
        # (Kept in __dict__, which copy and pickle restore: args stay (ret_code, ret_msg).)
        self.hint = hint

    def __str__(self) -> str:
        text = f"retCode {self.ret_code}: {self.ret_msg}"
        return f"{text} ({self.hint})" if self.hint else text


class AuthenticationError(BybitAPIError):
    """The exchange refused the credentials (REST 10003/10004/10005/10010/33004, spot -2015, or
    the websocket auth)."""


class OrderNotFound(BybitAPIError):
    """The exchange has no such order: the cancel said so and neither REST lookup knows it."""


class HTTPStatusError(BybitError):
    """A non-200 HTTP answer that carries no Bybit envelope (HTTP 403 IP ban, 5xx, 404).

    Attributes:
        status: the HTTP status code.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class TransportError(BybitError):
    """The network failed: connection refused or reset, or the HTTP request timed out."""


class ClientClosedError(BybitError):
    """The client was closed while the call was pending.

    ``may_have_landed`` is True: the waiting call's cancel request had been sent. (A call made
    after the close raises ``RuntimeError`` instead, before sending anything.)"""


class ConfirmationTimeout(BybitError, TimeoutError):
    """No final state was confirmed within the call's ``timeout``.

    The cancel may or may not have happened: look at :attr:`last_status`, and treat the order as
    possibly cancelled whenever :attr:`may_have_landed` is true.

    Attributes:
        order_id: the order id, when known (given, or learnt from the acknowledgement).
        order_link_id: the client order id, when known.
        last_status: the last ``orderStatus`` seen for the order (``None`` if nothing was seen).
        acknowledged: whether Bybit acknowledged the cancel request.
        may_have_landed: False when the call never got as far as sending a cancel request
            (``cancel_and_confirm`` could not connect within its timeout); otherwise True,
            acknowledged or not, since a request whose answer never came may still have been
            applied (conservatively True even if the request was still waiting for a rate limit
            or a connection when the time ran out).
    """

    def __init__(
        self,
        *,
        order_id: str | None,
        order_link_id: str | None,
        last_status: str | None,
        acknowledged: bool,
        timeout: float,
        may_have_landed: bool = True,
    ) -> None:
        super().__init__(order_id, order_link_id, last_status)
        self.order_id = order_id
        self.order_link_id = order_link_id
        self.last_status = last_status
        self.acknowledged = acknowledged
        self.timeout = timeout
        self.may_have_landed = may_have_landed

    def __reduce__(self) -> tuple[Any, ...]:
        # The arguments are keyword-only, so the default (cls(*self.args)) cannot rebuild it:
        # copy.copy and pickle use this. (The client raises a copy per caller.)
        return (
            _confirmation_timeout,
            (
                self.order_id,
                self.order_link_id,
                self.last_status,
                self.acknowledged,
                self.timeout,
                self.may_have_landed,
            ),
        )

    def __str__(self) -> str:
        ident = self.order_id or self.order_link_id
        if self.acknowledged:
            sent = "cancel acknowledged"
        elif self.may_have_landed:
            sent = "cancel not acknowledged, may have landed"
        else:
            sent = "cancel not sent"
        return (
            f"no final state for order {ident} within {self.timeout:g}s "
            f"({sent}, last status seen: {self.last_status or 'none'})"
        )


def _confirmation_timeout(
    order_id: str | None,
    order_link_id: str | None,
    last_status: str | None,
    acknowledged: bool,
    timeout: float,
    may_have_landed: bool = True,
) -> ConfirmationTimeout:
    return ConfirmationTimeout(
        order_id=order_id,
        order_link_id=order_link_id,
        last_status=last_status,
        acknowledged=acknowledged,
        timeout=timeout,
        may_have_landed=may_have_landed,
    )


def error_from_ret_code(ret_code: int, ret_msg: str) -> BybitAPIError:
    """Return the most specific exception for a non-zero ``retCode``.

    "Order does not exist" (110001/170213) maps to a plain :class:`BybitAPIError`: it is not proof that
    the order never existed, so only the client, after a lookup, raises :class:`OrderNotFound`.
    """
    if ret_code in AUTH_RET_CODES:
        return AuthenticationError(ret_code, ret_msg)
    return BybitAPIError(ret_code, ret_msg)
