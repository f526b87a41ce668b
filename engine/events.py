"""Engine output events.

Events are plain tuples, not objects: the core emits several per command and a tuple literal is
the cheapest record Python can build. The first item names the kind; :data:`EVENT_FIELDS` names
the rest, and :func:`event_to_dict` gives a readable form for tests, logs and the worker.
"""

from __future__ import annotations

from typing import Any

ORDER = "order"
TRADE = "trade"
LEVEL = "level"
BBO = "bbo"
REJECT = "reject"
TRANSFER = "transfer"

EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    ORDER: (
        "kind",
        "symbol",
        "order_id",
        "account",
        "status",
        "filled",
        "remaining",
        "cum_quote",
        "reason",
    ),
    TRADE: (
        "kind",
        "symbol",
        "trade_id",
        "price",
        "quantity",
        "taker_side",
        "maker_order_id",
        "taker_order_id",
        "maker_account",
        "taker_account",
        "maker_fee",
        "taker_fee",
        "ts",
    ),
    LEVEL: ("kind", "symbol", "side", "price", "quantity"),
    BBO: ("kind", "symbol", "bid_price", "bid_quantity", "ask_price", "ask_quantity"),
    REJECT: ("kind", "command_id", "account", "reason"),
    # a deposit or withdrawal; a repeated reference reports the FIRST command's outcome
    # (original_id, its ts) and changes nothing
    TRANSFER: (
        "kind",
        "command_id",
        "type",
        "account",
        "asset",
        "amount",
        "reference",
        "status",
        "reason",
        "original_id",
        "original_ts",
    ),
}

Event = tuple[Any, ...]


def event_to_dict(event: Event) -> dict[str, Any]:
    return dict(zip(EVENT_FIELDS[event[0]], event, strict=True))
