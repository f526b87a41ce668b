"""A live order in integer units, and the index of every open order of a partition.

Shared by the books (which queue orders per price level) and the engine (which finds them by
id, by account and by client order id for cancels, amends and duplicate checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from engine.ledger import Balance

#: An order's attributes, in snapshot order (``Order.to_list``).
ORDER_FIELDS: Final = (
    "id",
    "seq",
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
    "remaining",
    "filled",
    "cum_quote",
    "client_order_id",
    "stp",
    "ts",
    "status",
    "locked",
)


class Order:
    """A live order. ``remaining == 0`` while still queued means "dead, skip me"."""

    __slots__ = (*ORDER_FIELDS, "wallet")

    def __init__(
        self,
        id: int,
        seq: int,
        account: str,
        symbol: str,
        side: str,
        type: str,
        time_in_force: str,
        post_only: bool,
        price: int | None,
        stop_price: int | None,
        quantity: int | None,
        quote_quantity: int | None,
        remaining: int,
        filled: int,
        cum_quote: int,
        client_order_id: str | None,
        stp: str,
        ts: int,
        status: str,
        locked: int = 0,
    ) -> None:
        self.id = id
        self.seq = seq
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
        self.remaining = remaining
        self.filled = filled
        self.cum_quote = cum_quote
        self.client_order_id = client_order_id
        self.stp = stp
        self.ts = ts
        self.status = status
        #: units of the asset this open order holds (quote for a buy, base for a sell)
        self.locked = locked
        #: the ledger balance ``locked`` is part of (set by the ledger; not in snapshots)
        self.wallet: Balance | None = None

    def to_list(self) -> list[object]:
        return [getattr(self, name) for name in ORDER_FIELDS]

    @classmethod
    def from_list(cls, fields: list[object]) -> Order:
        return cls(*fields)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"Order(id={self.id}, {self.side} {self.remaining}@{self.price}, "
            f"account={self.account!r}, status={self.status})"
        )


class OrderIndex:
    """Every open order of a partition by id, by account and by (account, client order id)."""

    __slots__ = ("orders", "by_account", "by_client_id")

    def __init__(self) -> None:
        self.orders: dict[int, Order] = {}
        self.by_account: dict[str, dict[int, Order]] = {}
        self.by_client_id: dict[tuple[str, str], Order] = {}

    def add(self, order: Order) -> None:
        self.orders[order.id] = order
        mine = self.by_account.get(order.account)
        if mine is None:
            mine = self.by_account[order.account] = {}
        mine[order.id] = order
        if order.client_order_id is not None:
            self.by_client_id[(order.account, order.client_order_id)] = order

    def remove(self, order: Order) -> None:
        del self.orders[order.id]
        mine = self.by_account[order.account]
        del mine[order.id]
        if not mine:
            del self.by_account[order.account]
        if order.client_order_id is not None:
            del self.by_client_id[(order.account, order.client_order_id)]

    def check(self) -> None:
        """The three maps describe the same set of open orders."""
        assert sum(len(m) for m in self.by_account.values()) == len(self.orders)
        for account, mine in self.by_account.items():
            assert mine, f"empty account entry {account!r}"
            for oid, order in mine.items():
                assert self.orders.get(oid) is order and order.account == account
        with_client_id = [o for o in self.orders.values() if o.client_order_id is not None]
        assert len(with_client_id) == len(self.by_client_id)
        for (account, coid), order in self.by_client_id.items():
            assert self.orders.get(order.id) is order
            assert (order.account, order.client_order_id) == (account, coid)
