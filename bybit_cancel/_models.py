"""Wire models (msgspec Structs) and the public result types.

Decoders are built once at import (msgspec "Reuse Encoders/Decoders"). Wire structs declare only the
fields the client acts on; Bybit adds fields without notice, and msgspec ignores unknown ones. Every
field has a default because fields come and go between categories and eras
(fixtures/bybit/README.md "Quirks worth testing").
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Literal

import msgspec

__all__ = [
    "CancelResult",
    "OrderStatus",
    "Source",
]

Source = Literal["websocket", "rest"]


class OrderStatus(enum.StrEnum):
    """Bybit's ``orderStatus`` values (bybit-protocol.md §5)."""

    NEW = "New"
    PARTIALLY_FILLED = "PartiallyFilled"
    UNTRIGGERED = "Untriggered"
    TRIGGERED = "Triggered"
    REJECTED = "Rejected"
    PARTIALLY_FILLED_CANCELED = "PartiallyFilledCanceled"
    FILLED = "Filled"
    CANCELLED = "Cancelled"
    DEACTIVATED = "Deactivated"

    @property
    def is_final(self) -> bool:
        """True for Cancelled, PartiallyFilledCanceled, Deactivated, Filled and Rejected.

        ``Triggered`` is listed as "closed" by Bybit but is an instant on the way from Untriggered to
        New, so it is not final (bybit-protocol.md §5).
        """
        return self in _FINAL

    @property
    def is_cancelled(self) -> bool:
        """True when the order ended by a cancel: Cancelled, PartiallyFilledCanceled, Deactivated."""
        return self in _CANCELLED


_FINAL = frozenset(
    {
        OrderStatus.CANCELLED,
        OrderStatus.PARTIALLY_FILLED_CANCELED,
        OrderStatus.DEACTIVATED,
        OrderStatus.FILLED,
        OrderStatus.REJECTED,
    }
)
_CANCELLED = frozenset(
    {OrderStatus.CANCELLED, OrderStatus.PARTIALLY_FILLED_CANCELED, OrderStatus.DEACTIVATED}
)
# Wire string -> final OrderStatus. A dict lookup on the hot path instead of enum construction;
# anything absent (open states, Triggered, legacy Created/Active/PendingCancel) is not final.
FINAL_BY_WIRE: dict[str, OrderStatus] = {s.value: s for s in _FINAL}


class CancelResult(msgspec.Struct, frozen=True, gc=False):
    """The confirmed final state of an order after a cancel request.

    ``status`` is the truth: a cancel that lost the race against a fill comes back as ``Filled``
    (``cancelled`` is then False). Quantities are exact ``Decimal`` values; ``leaves_qty`` is ``None``
    when Bybit sent ``""`` (options do). ``source`` says whether the websocket push or a REST lookup
    delivered the state.
    """

    order_id: str
    order_link_id: str
    category: str
    symbol: str
    status: OrderStatus
    cancel_type: str
    reject_reason: str
    cum_exec_qty: Decimal
    leaves_qty: Decimal | None
    updated_time: int
    source: Source

    @property
    def cancelled(self) -> bool:
        """True when the order ended cancelled (Cancelled, PartiallyFilledCanceled, Deactivated)."""
        return self.status.is_cancelled


# ---------------------------------------------------------------------------------------------------
# Wire models


class WireOrder(msgspec.Struct, rename="camel", gc=False):
    """One order object, as in the websocket ``order`` push and in REST order lists (§4, §8)."""

    order_id: str = ""
    order_link_id: str = ""
    category: str = ""
    symbol: str = ""
    order_status: str = ""
    cancel_type: str = ""
    reject_reason: str = ""
    cum_exec_qty: str = ""
    leaves_qty: str = ""
    # ms as a string; "" was observed on a 2023 spot push (fixtures README).
    updated_time: str = ""


class WsMessage(msgspec.Struct, gc=False):
    """Any frame of the private stream: an order push (``topic``/``data``) or an op reply.

    The private stream answers in the ``success``/``ret_msg``/``conn_id`` dialect (§12.6).
    """

    topic: str = ""
    op: str = ""
    success: bool | None = None
    ret_msg: str = ""
    req_id: str = ""
    conn_id: str = ""
    data: list[WireOrder] | None = None


class Envelope(msgspec.Struct, rename="camel", gc=False):
    """The common REST envelope; ``result`` is decoded later, by endpoint (§1)."""

    ret_code: int
    ret_msg: str = ""
    # Raw: decoded in a second stage with the endpoint's type. Some old errors carry "result": null.
    result: msgspec.Raw = msgspec.Raw(b"null")
    time: int = 0


class CancelAck(msgspec.Struct, rename="camel", gc=False):
    order_id: str = ""
    order_link_id: str = ""


class OrderList(msgspec.Struct, gc=False):
    """``result`` of /v5/order/realtime and /v5/order/history. Items there carry no ``category``:
    it sits beside the list (rest/order-realtime.response.json)."""

    category: str = ""
    orders: list[WireOrder] = msgspec.field(default_factory=list, name="list")


class ServerTime(msgspec.Struct, rename="camel", gc=False):
    time_nano: str = ""


class AckEnvelope(msgspec.Struct, rename="camel", gc=False):
    """The cancel answer decoded in one step (the hot path). Errors carry ``"result": {}``, or
    ``null`` in old messages (§1)."""

    ret_code: int
    ret_msg: str = ""
    result: CancelAck | None = None
    time: int = 0


class OrdersEnvelope(msgspec.Struct, rename="camel", gc=False):
    """A /v5/order/realtime or /v5/order/history answer, decoded in one step."""

    ret_code: int
    ret_msg: str = ""
    result: OrderList | None = None
    time: int = 0


ws_decoder = msgspec.json.Decoder(WsMessage)
ack_envelope_decoder = msgspec.json.Decoder(AckEnvelope)
orders_envelope_decoder = msgspec.json.Decoder(OrdersEnvelope)
envelope_decoder = msgspec.json.Decoder(Envelope)
server_time_decoder = msgspec.json.Decoder(ServerTime)
encoder = msgspec.json.Encoder()


ZERO = Decimal(0)
# Quantities repeat ("0", an order size used all day): parse each distinct string once. Decimal is
# immutable, so sharing one is safe; the cache is bounded.
DECIMALS: dict[str, Decimal] = {}


def to_decimal(value: str) -> Decimal | None:
    """Bybit sends quantities as strings; ``""`` means "no value" (fixtures README)."""
    if not value:
        return None
    d = DECIMALS.get(value)
    if d is None:
        d = Decimal(value)
        if len(DECIMALS) < 4096:
            DECIMALS[value] = d
    return d
