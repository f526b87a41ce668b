"""What the engine is told: the command classes, their enumerations and the reasons it answers.

Commands are integer-only (ticks, lots, atoms); :mod:`engine.validation` builds them from wire
commands. ``id`` is the command id (for a new order also the order id), ``ts`` milliseconds
taken from the journal entry: the engine never reads a clock.
"""

from __future__ import annotations

from typing import Final

BUY: Final = "buy"
SELL: Final = "sell"
SIDES: Final = (BUY, SELL)

LIMIT: Final = "limit"
MARKET: Final = "market"
STOP_LOSS: Final = "stop_loss"
STOP_LIMIT: Final = "stop_limit"
TAKE_PROFIT: Final = "take_profit"
TAKE_PROFIT_LIMIT: Final = "take_profit_limit"
ORDER_TYPES: Final = (LIMIT, MARKET, STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT)
STOP_TYPES: Final = frozenset((STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT))
PRICED_TYPES: Final = frozenset((LIMIT, STOP_LIMIT, TAKE_PROFIT_LIMIT))

GTC: Final = "GTC"
IOC: Final = "IOC"
FOK: Final = "FOK"
TIME_IN_FORCES: Final = (GTC, IOC, FOK)

CANCEL_TAKER: Final = "cancel_taker"
CANCEL_MAKER: Final = "cancel_maker"
CANCEL_BOTH: Final = "cancel_both"
STP_MODES: Final = (CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH)
#: Like Binance's EXPIRE_MAKER: the resting order is the stale one, the new intent wins.
DEFAULT_STP: Final = CANCEL_MAKER

NEW: Final = "new"
PARTIALLY_FILLED: Final = "partially_filled"
FILLED: Final = "filled"
CANCELLED: Final = "cancelled"
REJECTED: Final = "rejected"
TRIGGERED: Final = "triggered"
STATUSES: Final = (NEW, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED, TRIGGERED)
OPEN_STATUSES: Final = frozenset((NEW, PARTIALLY_FILLED, TRIGGERED))
CLOSED_STATUSES: Final = frozenset((FILLED, CANCELLED, REJECTED))


class Reason:
    """Why the engine rejected or cancelled something (``reason`` in events and REST)."""

    UNKNOWN_SYMBOL: Final = "unknown_symbol"
    UNKNOWN_ORDER: Final = "unknown_order"
    DUPLICATE_CLIENT_ORDER_ID: Final = "duplicate_client_order_id"
    DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
    POST_ONLY_WOULD_TAKE: Final = "post_only_would_take"
    FOK_NOT_FILLABLE: Final = "fok_not_fillable"
    NO_LIQUIDITY: Final = "no_liquidity"  # market order or IOC remainder that found nothing
    IOC_EXPIRED: Final = "ioc_expired"
    SELF_TRADE_PREVENTION: Final = "self_trade_prevention"
    WOULD_TRIGGER_IMMEDIATELY: Final = "would_trigger_immediately"
    USER_CANCELLED: Final = "user_cancelled"
    NOT_AMENDABLE: Final = "not_amendable"
    INVALID_AMEND: Final = "invalid_amend"
    MIN_NOTIONAL: Final = "min_notional"
    INVALID_ORDER: Final = "invalid_order"
    #: the account's available balance cannot cover the order's lock or the withdrawal
    INSUFFICIENT_FUNDS: Final = "insufficient_funds"
    UNKNOWN_ASSET: Final = "unknown_asset"
    INVALID_AMOUNT: Final = "invalid_amount"
    #: not a rejection: the reason on the order event of a successful amend
    AMENDED: Final = "amended"


#: A new order command's attributes, in constructor order.
NEW_ORDER_FIELDS: Final = (
    "id", "ts", "account", "symbol", "side", "type", "time_in_force", "post_only", "price",
    "quantity", "quote_quantity", "stop_price", "client_order_id", "stp",
)  # fmt: skip


class NewOrder:
    __slots__ = NEW_ORDER_FIELDS

    def __init__(
        self,
        id: int,
        ts: int,
        account: str,
        symbol: str,
        side: str,
        type: str = LIMIT,
        time_in_force: str = GTC,
        post_only: bool = False,
        price: int | None = None,
        quantity: int | None = None,
        quote_quantity: int | None = None,
        stop_price: int | None = None,
        client_order_id: str | None = None,
        stp: str = DEFAULT_STP,
    ) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.symbol = symbol
        self.side = side
        self.type = type
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.price = price
        self.quantity = quantity
        self.quote_quantity = quote_quantity
        self.stop_price = stop_price
        self.client_order_id = client_order_id
        self.stp = stp

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in NEW_ORDER_FIELDS)
        return f"NewOrder({fields})"


class CancelOrder:
    __slots__ = ("id", "ts", "account", "order_id")

    def __init__(self, id: int, ts: int, account: str, order_id: int) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.order_id = order_id

    def __repr__(self) -> str:
        return f"CancelOrder(id={self.id}, account={self.account!r}, order_id={self.order_id})"


class CancelAll:
    """Cancel the account's open orders: of one symbol, or (``symbol`` None) all of them."""

    __slots__ = ("id", "ts", "account", "symbol")

    def __init__(self, id: int, ts: int, account: str, symbol: str | None = None) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.symbol = symbol

    def __repr__(self) -> str:
        return f"CancelAll(id={self.id}, account={self.account!r}, symbol={self.symbol!r})"


class AmendOrder:
    """``quantity`` is the new TOTAL quantity in lots; None keeps it (likewise ``price``)."""

    __slots__ = ("id", "ts", "account", "order_id", "quantity", "price")

    def __init__(
        self,
        id: int,
        ts: int,
        account: str,
        order_id: int,
        quantity: int | None = None,
        price: int | None = None,
    ) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.order_id = order_id
        self.quantity = quantity
        self.price = price

    def __repr__(self) -> str:
        return (
            f"AmendOrder(id={self.id}, account={self.account!r}, order_id={self.order_id}, "
            f"quantity={self.quantity}, price={self.price})"
        )


DEPOSIT: Final = "deposit"
WITHDRAWAL: Final = "withdrawal"
COMPLETED: Final = "completed"


class Deposit:
    """Credit ``amount`` units of ``asset`` (operator only). ``deposit_id`` is the operator's
    transfer reference: a second deposit with the same one changes nothing."""

    __slots__ = ("id", "ts", "account", "asset", "amount", "deposit_id")

    def __init__(
        self, id: int, ts: int, account: str, asset: str, amount: int, deposit_id: str
    ) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.asset = asset
        self.amount = amount
        self.deposit_id = deposit_id

    def __repr__(self) -> str:
        return (
            f"Deposit(id={self.id}, account={self.account!r}, {self.amount} {self.asset}, "
            f"deposit_id={self.deposit_id!r})"
        )


class Withdrawal:
    """Debit ``amount`` units of ``asset`` from the account's available balance.
    ``client_withdrawal_id`` is unique per account: a repeat is answered with the first outcome."""

    __slots__ = ("id", "ts", "account", "asset", "amount", "client_withdrawal_id")

    def __init__(
        self, id: int, ts: int, account: str, asset: str, amount: int, client_withdrawal_id: str
    ) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.asset = asset
        self.amount = amount
        self.client_withdrawal_id = client_withdrawal_id

    def __repr__(self) -> str:
        return (
            f"Withdrawal(id={self.id}, account={self.account!r}, {self.amount} {self.asset}, "
            f"client_withdrawal_id={self.client_withdrawal_id!r})"
        )


Command = NewOrder | CancelOrder | CancelAll | AmendOrder | Deposit | Withdrawal

#: Ids carry their partition in the low 8 bits, so any id tells which worker owns it.
PARTITION_BITS: Final = 8
MAX_PARTITIONS: Final = 1 << PARTITION_BITS


def make_public_id(counter: int, partition: int) -> int:
    return (counter << PARTITION_BITS) | partition


def partition_of_id(public_id: int) -> int:
    return public_id & (MAX_PARTITIONS - 1)
