"""The worker's view of one order while it is open: what clients see, in their units.

The engine tracks integers only and forgets an order once it closes. An :class:`OrderState`
keeps the order's request fields as the client's decimal strings, its progress, and its fills,
so the worker can answer with the full REST order object (reply, order record, account event)
without asking the engine anything.
"""

from __future__ import annotations

from typing import Any, Final

from engine.markets import Market

#: The attributes a worker snapshot keeps, in ``OrderState.__init__`` order.
SNAPSHOT_FIELDS: Final = (
    "id", "account", "symbol", "side", "type", "time_in_force", "post_only", "price",
    "stop_price", "quantity", "quote_quantity", "client_order_id", "created_at", "status",
    "reason", "filled", "remaining", "cum_quote", "updated_at", "fills", "locked", "stp",
)  # fmt: skip


class OrderState:
    """One order's public state; ``filled``/``remaining``/``cum_quote`` are integer units."""

    __slots__ = (*SNAPSHOT_FIELDS, "persisted")

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
        fills: list[dict[str, Any]] | None = None,
        locked: str = "0",
        stp: str = "cancel_maker",
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
        #: the REST fill objects, oldest first
        self.fills: list[dict[str, Any]] = fills if fills is not None else []
        #: what the order holds now, in its locked asset's units (decimal text)
        self.locked = locked
        self.stp = stp  # self-trade prevention mode
        #: whether an order record was committed before (so it is in the ``open`` index)
        self.persisted = False

    def body(self, market: Market) -> dict[str, Any]:
        """The REST order object without ``fills``."""
        out = self.event(market)
        del out["event"]
        return out

    def event(self, market: Market) -> dict[str, Any]:
        """The account event of the order's current state: ``{"event": "order"}`` and the REST
        order object without ``fills`` (delete ``event`` to reuse it as the body)."""
        lot = market.lot
        return {
            "event": "order",
            "order_id": self.id,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "time_in_force": self.time_in_force,
            "post_only": self.post_only,
            "stp": self.stp,
            "status": self.status,
            "reject_reason": self.reason,
            "price": self.price,
            "stop_price": self.stop_price,
            "quantity": self.quantity,
            "quote_quantity": self.quote_quantity,
            "filled_quantity": lot.format(self.filled),
            "remaining_quantity": lot.format(self.remaining),
            "cum_quote": market.quote.format(self.cum_quote),
            "locked": self.locked,
            "locked_asset": market.quote_asset if self.side == "buy" else market.base_asset,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def public(self, market: Market) -> dict[str, Any]:
        """The complete REST order object."""
        out = self.body(market)
        out["fills"] = self.fills
        return out

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in SNAPSHOT_FIELDS]

    @classmethod
    def from_list(cls, fields: list[Any]) -> OrderState:
        state = cls(*fields)
        state.persisted = True  # snapshots are taken between committed batches
        return state
