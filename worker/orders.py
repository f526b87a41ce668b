"""Order state the worker keeps for open orders, and the REST / Redis-hash forms of an order.

The engine knows integers only; clients see decimal strings. An :class:`OrderState` holds the
already formatted static fields of one order plus its integer progress, so turning it into the
REST order object or the order hash is cheap and exact.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from engine.schema import Market

Fill = dict[str, Any]


class Formatter:
    """``units * step`` as a canonical decimal string, in pure integer arithmetic.

    Gives exactly ``engine.schema._format`` (what ``Market.format_*`` return) about three times
    faster, which matters when every batch re-renders 1,000 book levels.
    """

    __slots__ = ("k", "places")

    def __init__(self, step: Decimal) -> None:
        exponent = step.as_tuple().exponent
        assert isinstance(exponent, int)
        self.places = -exponent if exponent < 0 else 0
        self.k = int(step.scaleb(self.places))  # step == k * 10**-places exactly

    def __call__(self, units: int) -> str:
        value = units * self.k
        places = self.places
        if not places:
            return str(value)
        if value < 0:
            text = str(-value).rjust(places + 1, "0")
            return "-" + text[:-places] + "." + text[-places:]
        text = str(value).rjust(places + 1, "0")
        return text[:-places] + "." + text[-places:]


class MarketFormat:
    """The three formatters and quote asset of one market."""

    __slots__ = ("price", "qty", "quote", "quote_asset")

    def __init__(self, market: Market) -> None:
        self.price = Formatter(market.tick_size)
        self.qty = Formatter(market.lot_size)
        self.quote = Formatter(market.atom)
        self.quote_asset = market.quote_asset


class OrderState:
    """One order as the worker tracks it while it is open (and during the batch it closes in)."""

    __slots__ = (
        "id",
        "account",
        "symbol",
        "side",
        "type",
        "time_in_force",
        "post_only",
        "price",
        "stop_price",
        "quantity",
        "quote_quantity",
        "client_order_id",
        "created_at",
        "status",
        "reason",
        "filled",
        "remaining",
        "cum_quote",
        "updated_at",
        "fills",
        # per batch, not snapshotted: hash written already? fills not yet written?
        "persisted",
        "new_fills",
    )

    def __init__(
        self,
        id: int,
        account: str,
        symbol: str,
        side: str,
        type: str,
        time_in_force: str,
        post_only: bool,
        price: str | None,
        stop_price: str | None,
        quantity: str | None,
        quote_quantity: str | None,
        client_order_id: str | None,
        created_at: int,
        status: str = "new",
        reason: str | None = None,
        filled: int = 0,
        remaining: int = 0,
        cum_quote: int = 0,
        updated_at: int = 0,
        fills: list[Fill] | None = None,
        persisted: bool = False,
    ) -> None:
        self.id = id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.type = type
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.price = price
        self.stop_price = stop_price
        self.quantity = quantity
        self.quote_quantity = quote_quantity
        self.client_order_id = client_order_id
        self.created_at = created_at
        self.status = status
        self.reason = reason
        self.filled = filled
        self.remaining = remaining
        self.cum_quote = cum_quote
        self.updated_at = updated_at or created_at
        self.fills: list[Fill] = fills if fills is not None else []
        self.persisted = persisted
        self.new_fills: list[Fill] = []

    # -- snapshot form -------------------------------------------------------------------------
    SNAPSHOT_FIELDS = __slots__[:20]

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in self.SNAPSHOT_FIELDS]

    @classmethod
    def from_list(cls, fields: list[Any]) -> OrderState:
        # Snapshots are taken between batches, when every open order's hash is written.
        return cls(*fields, persisted=True)

    # -- public forms --------------------------------------------------------------------------
    def public(self, fmt: MarketFormat, with_fills: bool = True) -> dict[str, Any]:
        """The REST order object (``fills`` left out for pub/sub order events)."""
        obj: dict[str, Any] = {
            "order_id": self.id,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "time_in_force": self.time_in_force,
            "post_only": self.post_only,
            "status": self.status,
            "reject_reason": self.reason,
            "price": self.price,
            "stop_price": self.stop_price,
            "quantity": self.quantity,
            "quote_quantity": self.quote_quantity,
            "filled_quantity": fmt.qty(self.filled),
            "remaining_quantity": fmt.qty(self.remaining),
            "cum_quote": fmt.quote(self.cum_quote),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_fills:
            obj["fills"] = self.fills
        return obj

    def hash_fields(self, fmt: MarketFormat) -> dict[str, str]:
        """Every field of the order hash (see DESIGN.md "Order hash encoding")."""
        return {
            "order_id": str(self.id),
            "account": self.account,
            "client_order_id": self.client_order_id or "",
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "time_in_force": self.time_in_force,
            "post_only": "true" if self.post_only else "false",
            "status": self.status,
            "reject_reason": self.reason or "",
            "price": self.price or "",
            "stop_price": self.stop_price or "",
            "quantity": self.quantity or "",
            "quote_quantity": self.quote_quantity or "",
            "filled_quantity": fmt.qty(self.filled),
            "remaining_quantity": fmt.qty(self.remaining),
            "cum_quote": fmt.quote(self.cum_quote),
            "created_at": str(self.created_at),
            "updated_at": str(self.updated_at),
            "fills": json.dumps(self.fills, separators=(",", ":")),
        }

    def hash_progress(self, fmt: MarketFormat) -> list[str]:
        """HSET arguments for the fields a later command can change (fills go separately)."""
        return [
            "status", self.status,
            "reject_reason", self.reason or "",
            "price", self.price or "",
            "quantity", self.quantity or "",
            "filled_quantity", fmt.qty(self.filled),
            "remaining_quantity", fmt.qty(self.remaining),
            "cum_quote", fmt.quote(self.cum_quote),
            "updated_at", str(self.updated_at),
        ]  # fmt: skip


_NULLABLE = frozenset(
    ("client_order_id", "reject_reason", "price", "stop_price", "quantity", "quote_quantity")
)
_INTS = frozenset(("order_id", "created_at", "updated_at"))


def order_from_hash(raw: dict[Any, Any]) -> dict[str, Any] | None:
    """Turn an ``fb:{pN}:order:<id>`` hash (bytes or str) into the REST order object.

    Returns None for an empty hash (no such order). ``account`` is dropped: callers check it
    with :func:`order_account` before showing the order.
    """
    if not raw:
        return None
    h = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    out: dict[str, Any] = {}
    for name in (
        "order_id", "client_order_id", "symbol", "side", "type", "time_in_force", "post_only",
        "status", "reject_reason", "price", "stop_price", "quantity", "quote_quantity",
        "filled_quantity", "remaining_quantity", "cum_quote", "created_at", "updated_at",
    ):  # fmt: skip
        value: Any = h.get(name, "")
        if name in _INTS:
            value = int(value)
        elif name == "post_only":
            value = value == "true"
        elif name in _NULLABLE and value == "":
            value = None
        out[name] = value
    out["fills"] = json.loads(h.get("fills") or "[]")
    return out


def order_account(raw: dict[Any, Any]) -> str | None:
    """The owner account of an order hash (bytes or str keys), None if absent."""
    value = raw.get("account", raw.get(b"account"))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value
