"""The one wire schema shared by the web layer, the worker and the core.

Decimal strings live only at the edges: this module turns them into integer ticks (price), lots
(quantity) and quote atoms (``tick_size * lot_size``, so a fill's notional is ``ticks * lots``)
and back. Nothing here does I/O except :func:`load_markets`, which reads the symbols file once at
start-up.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from engine import DEFAULT_SYMBOLS_FILE

BUY = "buy"
SELL = "sell"
SIDES = (BUY, SELL)

LIMIT = "limit"
MARKET = "market"
STOP_LOSS = "stop_loss"
STOP_LIMIT = "stop_limit"
TAKE_PROFIT = "take_profit"
TAKE_PROFIT_LIMIT = "take_profit_limit"
ORDER_TYPES = (LIMIT, MARKET, STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT)
STOP_TYPES = frozenset((STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT))
PRICED_TYPES = frozenset((LIMIT, STOP_LIMIT, TAKE_PROFIT_LIMIT))

GTC = "GTC"
IOC = "IOC"
FOK = "FOK"
TIME_IN_FORCES = (GTC, IOC, FOK)

CANCEL_TAKER = "cancel_taker"
CANCEL_MAKER = "cancel_maker"
CANCEL_BOTH = "cancel_both"
STP_MODES = (CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH)
#: Like Binance's EXPIRE_MAKER: the resting order is the stale one, the new intent wins.
DEFAULT_STP = CANCEL_MAKER

NEW = "new"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELLED = "cancelled"
REJECTED = "rejected"
TRIGGERED = "triggered"
STATUSES = (NEW, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED, TRIGGERED)
OPEN_STATUSES = frozenset((NEW, PARTIALLY_FILLED, TRIGGERED))

MAX_CLIENT_ORDER_ID = 64
_CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class Reason:
    """Why the engine rejected or cancelled something (``reason`` in events and REST)."""

    UNKNOWN_SYMBOL: Final = "unknown_symbol"
    UNKNOWN_ORDER: Final = "unknown_order"
    DUPLICATE_CLIENT_ORDER_ID: Final = "duplicate_client_order_id"
    DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
    POST_ONLY_WOULD_TAKE: Final = "post_only_would_take"
    FOK_NOT_FILLABLE: Final = "fok_not_fillable"
    NO_LIQUIDITY: Final = "no_liquidity"  # market order or IOC remainder that found nothing to take
    IOC_EXPIRED: Final = "ioc_expired"
    SELF_TRADE_PREVENTION: Final = "self_trade_prevention"
    WOULD_TRIGGER_IMMEDIATELY: Final = "would_trigger_immediately"
    USER_CANCELLED: Final = "user_cancelled"
    NOT_AMENDABLE: Final = "not_amendable"
    INVALID_AMEND: Final = "invalid_amend"
    MIN_NOTIONAL: Final = "min_notional"
    INVALID_ORDER: Final = "invalid_order"


class ErrorCode:
    """Validation codes (HTTP 400 family); the engine's :class:`Reason` covers the rest."""

    MALFORMED_JSON: Final = "malformed_json"
    INVALID_FIELD: Final = "invalid_field"
    MISSING_FIELD: Final = "missing_field"
    UNKNOWN_FIELD: Final = "unknown_field"
    UNKNOWN_SYMBOL: Final = "unknown_symbol"
    INVALID_DECIMAL: Final = "invalid_decimal"
    OFF_TICK: Final = "off_tick"
    OFF_LOT: Final = "off_lot"
    OFF_QUOTE_INCREMENT: Final = "off_quote_increment"
    QUANTITY_TOO_SMALL: Final = "quantity_too_small"
    QUANTITY_TOO_LARGE: Final = "quantity_too_large"
    MIN_NOTIONAL: Final = "min_notional"
    UNAUTHORIZED: Final = "unauthorized"
    NOT_FOUND: Final = "not_found"


class SchemaError(ValueError):
    """A wire value the schema refuses; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its symbols-file form (the commit process receives markets pickled)
        return (Market.from_dict, (self.as_dict(),))

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


_DECIMAL_TEXT = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,18})?$")
#: Upper bound for any integer unit count, far beyond any real market, so arithmetic stays small.
MAX_UNITS = 10**18


def check_decimal_text(value: Any, field: str) -> str:
    """Accept only plain decimal strings: no floats, exponents, signs, NaN, Inf or spaces."""
    if not isinstance(value, str):
        raise SchemaError(
            ErrorCode.INVALID_DECIMAL, f'{field} must be a decimal string, e.g. "1.5"', field
        )
    if not _DECIMAL_TEXT.match(value):
        raise SchemaError(
            ErrorCode.INVALID_DECIMAL,
            f"{field} must be a plain positive decimal string, got {value!r}",
            field,
        )
    return value


def parse_decimal(value: Any, field: str) -> Decimal:
    """A plain positive decimal string as a Decimal (for configuration, never the hot path)."""
    number = Decimal(check_decimal_text(value, field))
    if number <= 0:
        raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} must be greater than zero", field)
    return number


class Step:
    """One increment (a tick, a lot or a quote atom) in exact integer arithmetic.

    ``step == k * 10**-places``; converting and rendering are string slicing plus integer
    ``divmod``, several times faster than ``Decimal`` and just as exact. Rendered strings are
    cached (bounded): prices and sizes repeat a lot.
    """

    __slots__ = ("step", "places", "k", "_cache", "valid")

    CACHE_LIMIT: Final = 100_000

    def __init__(self, step: Decimal) -> None:
        exponent = step.as_tuple().exponent
        assert isinstance(exponent, int)
        self.step = step
        self.places = -exponent if exponent < 0 else 0
        self.k = int(step.scaleb(self.places))
        self._cache: dict[int, str] = {}
        #: texts already accepted in full by ``Market._units``: the per-order fast path
        self.valid: dict[str, int] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and other.step == self.step

    def __hash__(self) -> int:
        return hash(self.step)

    def __repr__(self) -> str:
        return f"Step({str(self.step)!r})"

    def units(self, text: str) -> int | None:
        """``text`` (already a plain decimal) as a whole number of steps, None if off-step."""
        whole, _, frac = text.partition(".")
        places = self.places
        if len(frac) > places:
            if frac[places:].strip("0"):
                return None
            frac = frac[:places]
        units, rest = divmod(int(whole + frac.ljust(places, "0")), self.k)
        return None if rest else units

    def format(self, units: int) -> str:
        text = self._cache.get(units)
        if text is None:
            text = self._render(units)
            if len(self._cache) < self.CACHE_LIMIT:
                self._cache[units] = text
        return text

    def _render(self, units: int) -> str:
        value = units * self.k
        places = self.places
        if not places:
            return str(value)
        sign = "-" if value < 0 else ""
        digits = str(abs(value)).rjust(places + 1, "0")
        return sign + digits[:-places] + "." + digits[-places:]


@dataclass(frozen=True, slots=True)
class Rate:
    """A fee rate as an exact fraction ``num / den`` (den a power of ten)."""

    num: int
    den: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        value = Decimal(text)
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        num = int("".join(map(str, digits)) or "0")
        if sign:
            num = -num
        if exponent >= 0:
            return cls(num * 10**exponent, 1)
        return cls(num, 10**-exponent)

    def __reduce__(self) -> tuple[Any, ...]:
        # explicit: a mypyc-compiled frozen dataclass cannot be unpickled field by field
        return (Rate, (self.num, self.den))

    def fee(self, notional: int) -> int:
        """Fee in atoms: charges round up, rebates (negative) round toward zero."""
        if self.num >= 0:
            return -((-notional * self.num) // self.den)
        return -((notional * -self.num) // self.den)


MARKET_FIELDS = (
    "symbol",
    "base_asset",
    "quote_asset",
    "tick_size",
    "lot_size",
    "min_quantity",
    "max_quantity",
    "min_notional",
    "maker_fee_rate",
    "taker_fee_rate",
)


@dataclass(frozen=True, slots=True)
class Market:
    """One symbol's trading rules; integers derived once so the hot path never sees Decimal."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    max_quantity: Decimal
    min_notional: Decimal
    maker_fee_rate: Decimal
    taker_fee_rate: Decimal
    maker_rate: Rate
    taker_rate: Rate
    atom: Decimal
    tick: Step
    lot: Step
    quote: Step
    min_lots: int
    max_lots: int
    min_notional_atoms: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Market:
        missing = [f for f in MARKET_FIELDS if f not in raw]
        if missing:
            raise ValueError(f"market {raw.get('symbol', '?')!r} lacks fields {missing}")
        extra = sorted(set(raw) - set(MARKET_FIELDS))
        if extra:
            raise ValueError(f"market {raw['symbol']!r} has unknown fields {extra}")
        for name in ("symbol", "base_asset", "quote_asset"):
            if not isinstance(raw[name], str) or not re.match(
                r"^[A-Z0-9]{1,12}(-[A-Z0-9]{1,12})?$", raw[name]
            ):
                raise ValueError(
                    f"market field {name} must be an upper-case code, got {raw[name]!r}"
                )
        dec: dict[str, Decimal] = {}
        for name in MARKET_FIELDS[3:]:
            text = raw[name]
            if not isinstance(text, str):
                raise ValueError(f"market {raw['symbol']}: {name} must be a decimal string")
            try:
                value = Decimal(text)
            except InvalidOperation:
                raise ValueError(
                    f"market {raw['symbol']}: {name}={text!r} is not a decimal"
                ) from None
            if not value.is_finite():
                raise ValueError(f"market {raw['symbol']}: {name} must be finite")
            dec[name] = value
        for name in ("tick_size", "lot_size", "min_quantity", "max_quantity"):
            if dec[name] <= 0:
                raise ValueError(f"market {raw['symbol']}: {name} must be > 0")
        if dec["min_notional"] < 0:
            raise ValueError(f"market {raw['symbol']}: min_notional must be >= 0")
        lot = dec["lot_size"]
        if dec["min_quantity"] % lot or dec["max_quantity"] % lot:
            raise ValueError(
                f"market {raw['symbol']}: min/max quantity must be multiples of lot_size"
            )
        if dec["min_quantity"] > dec["max_quantity"]:
            raise ValueError(f"market {raw['symbol']}: min_quantity > max_quantity")
        if not (-1 < dec["maker_fee_rate"] < 1 and 0 <= dec["taker_fee_rate"] < 1):
            raise ValueError(f"market {raw['symbol']}: fee rates out of range")
        if dec["maker_fee_rate"] + dec["taker_fee_rate"] < 0:
            raise ValueError(f"market {raw['symbol']}: maker rebate exceeds taker fee")
        atom = dec["tick_size"] * lot
        return cls(
            symbol=raw["symbol"],
            base_asset=raw["base_asset"],
            quote_asset=raw["quote_asset"],
            maker_rate=Rate.parse(raw["maker_fee_rate"]),
            taker_rate=Rate.parse(raw["taker_fee_rate"]),
            atom=atom,
            tick=Step(dec["tick_size"]),
            lot=Step(lot),
            quote=Step(atom),
            min_lots=int(dec["min_quantity"] / lot),
            max_lots=int(dec["max_quantity"] / lot),
            min_notional_atoms=int(-(-dec["min_notional"] // atom)),
            **dec,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its symbols-file form (the commit process receives markets pickled)
        return (Market.from_dict, (self.as_dict(),))

    def as_dict(self) -> dict[str, str]:
        """The public form, same fields as the symbols file."""
        return {f: str(getattr(self, f)) for f in MARKET_FIELDS}

    # -- decimal string -> integer units --------------------------------------------------------
    def _units(self, value: Any, step: Step, field: str, code: str) -> int:
        if type(value) is str:
            known = step.valid.get(value)
            if known is not None:  # seen and accepted before: prices and sizes repeat a lot
                return known
        units = step.units(check_decimal_text(value, field))
        if units is None:
            raise SchemaError(code, f"{field} {value} is not a multiple of {step.step}", field)
        if units <= 0:
            raise SchemaError(
                ErrorCode.INVALID_DECIMAL, f"{field} must be greater than zero", field
            )
        if units > MAX_UNITS:
            raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} is too large", field)
        if len(step.valid) < Step.CACHE_LIMIT:
            step.valid[value] = units
        return units

    def price_to_ticks(self, value: Any, field: str = "price") -> int:
        return self._units(value, self.tick, field, ErrorCode.OFF_TICK)

    def qty_to_lots(self, value: Any, field: str = "quantity") -> int:
        lots = self._units(value, self.lot, field, ErrorCode.OFF_LOT)
        if lots < self.min_lots:
            raise SchemaError(
                ErrorCode.QUANTITY_TOO_SMALL,
                f"{field} is below the minimum {self.min_quantity}",
                field,
            )
        if lots > self.max_lots:
            raise SchemaError(
                ErrorCode.QUANTITY_TOO_LARGE,
                f"{field} is above the maximum {self.max_quantity}",
                field,
            )
        return lots

    def quote_to_atoms(self, value: Any, field: str = "quote_quantity") -> int:
        return self._units(value, self.quote, field, ErrorCode.OFF_QUOTE_INCREMENT)

    # -- integer units -> canonical decimal strings ---------------------------------------------
    def format_price(self, ticks: int) -> str:
        return self.tick.format(ticks)

    def format_qty(self, lots: int) -> str:
        return self.lot.format(lots)

    def format_quote(self, atoms: int) -> str:
        return self.quote.format(atoms)




def load_markets(path: str | os.PathLike[str] | None = None) -> dict[str, Market]:
    """Read the symbols file (``FAIRBOOK_SYMBOLS`` or the shipped default); fail loudly."""
    chosen = Path(path or os.environ.get("FAIRBOOK_SYMBOLS") or DEFAULT_SYMBOLS_FILE)
    try:
        raw = json.loads(chosen.read_text())
    except OSError as exc:
        raise SystemExit(f"fairbook: cannot read symbols file {chosen}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"fairbook: symbols file {chosen} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise SystemExit(f"fairbook: symbols file {chosen} must be a non-empty JSON list")
    markets: dict[str, Market] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise SystemExit(f"fairbook: symbols file {chosen}: entry {i} is not an object")
        try:
            market = Market.from_dict(item)
        except ValueError as exc:
            raise SystemExit(f"fairbook: symbols file {chosen}: entry {i}: {exc}") from None
        if market.symbol in markets:
            raise SystemExit(f"fairbook: symbols file {chosen}: duplicate symbol {market.symbol}")
        markets[market.symbol] = market
    return markets


# ---------------------------------------------------------------------------------------------
# Engine commands: integers only, built from wire commands by the worker (or directly by tests
# and benchmarks).
# ---------------------------------------------------------------------------------------------


#: A new order command's attributes.
NEW_ORDER_FIELDS: Final = (
    "id",
    "ts",
    "account",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "post_only",
    "price",
    "quantity",
    "quote_quantity",
    "stop_price",
    "client_order_id",
    "stp",
)


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
    __slots__ = ("id", "ts", "account", "symbol")

    def __init__(self, id: int, ts: int, account: str, symbol: str | None = None) -> None:
        self.id = id
        self.ts = ts
        self.account = account
        self.symbol = symbol

    def __repr__(self) -> str:
        return f"CancelAll(id={self.id}, account={self.account!r}, symbol={self.symbol!r})"


class AmendOrder:
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


Command = NewOrder | CancelOrder | CancelAll | AmendOrder

# ---------------------------------------------------------------------------------------------
# Wire orders: validation of what a client sends, and wire command <-> engine command.
# ---------------------------------------------------------------------------------------------

#: What a client may send for a new order: the command's fields but those the system assigns.
ORDER_REQUEST_FIELDS = frozenset(NEW_ORDER_FIELDS) - {"id", "ts", "account"}
AMEND_REQUEST_FIELDS = frozenset(("quantity", "price"))
#: A journaled new order: the request's fields plus what the web and journal assign.
WIRE_ORDER_FIELDS = ORDER_REQUEST_FIELDS | {"op", "id", "account", "reply_to"}


_WHY: Final = {t: f"for {t} orders" for t in ORDER_TYPES}


def _choice(body: dict[str, Any], field: str, choices: tuple[str, ...], default: str | None) -> str:
    value = body.get(field)
    if value is None:
        value = default
    if value is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, f"{field} is required", field)
    if value not in choices:
        raise SchemaError(
            ErrorCode.INVALID_FIELD, f"{field} must be one of {', '.join(choices)}", field
        )
    return value


def _refuse(field: str, why: str) -> SchemaError:
    return SchemaError(ErrorCode.INVALID_FIELD, f"{field} is not allowed {why}", field)


def _require(field: str, why: str) -> SchemaError:
    return SchemaError(ErrorCode.MISSING_FIELD, f"{field} is required {why}", field)


def parse_order_request(
    body: Any, markets: dict[str, Market], allowed: frozenset[str] = ORDER_REQUEST_FIELDS
) -> NewOrder:
    """Check a client's order body and give the engine command (id, ts, account left blank).

    A field set to null counts as absent. ``allowed`` lets the worker pass a whole journal entry.
    """
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    if not allowed.issuperset(body):
        unknown = sorted(set(body) - allowed)
        raise SchemaError(
            ErrorCode.UNKNOWN_FIELD, f"unknown field(s): {', '.join(unknown)}", unknown[0]
        )
    get = body.get
    symbol = get("symbol")
    if symbol is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "symbol is required", "symbol")
    if not isinstance(symbol, str) or symbol not in markets:
        raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}", "symbol")
    market = markets[symbol]
    side = _choice(body, "side", SIDES, None)
    type_ = _choice(body, "type", ORDER_TYPES, LIMIT)
    tif = _choice(body, "time_in_force", TIME_IN_FORCES, GTC)
    stp = _choice(body, "stp", STP_MODES, DEFAULT_STP)
    post_only = get("post_only")
    if post_only is None:
        post_only = False
    elif not isinstance(post_only, bool):
        raise SchemaError(ErrorCode.INVALID_FIELD, "post_only must be true or false", "post_only")
    coid = get("client_order_id")
    if coid is not None and (not isinstance(coid, str) or not _CLIENT_ORDER_ID.match(coid)):
        raise SchemaError(
            ErrorCode.INVALID_FIELD,
            "client_order_id must be 1-64 characters of A-Z a-z 0-9 _ . : -",
            "client_order_id",
        )
    why = _WHY[type_]  # not an f-string per order: only error paths read it
    price = stop_price = quantity = quote_quantity = None
    priced = type_ in PRICED_TYPES
    if priced:
        if get("price") is None:
            raise _require("price", why)
        price = market.price_to_ticks(body["price"])
    elif get("price") is not None:
        raise _refuse("price", why)
    if type_ in STOP_TYPES:
        if get("stop_price") is None:
            raise _require("stop_price", why)
        stop_price = market.price_to_ticks(body["stop_price"], "stop_price")
    elif get("stop_price") is not None:
        raise _refuse("stop_price", why)
    has_quote = get("quote_quantity") is not None
    if type_ == MARKET:
        has_quantity = get("quantity") is not None
        if has_quantity == has_quote:
            raise SchemaError(
                ErrorCode.INVALID_FIELD if has_quantity else ErrorCode.MISSING_FIELD,
                "a market order needs exactly one of quantity or quote_quantity",
                "quantity",
            )
        if has_quote:
            quote_quantity = market.quote_to_atoms(body["quote_quantity"])
            if quote_quantity < market.min_notional_atoms:
                raise SchemaError(
                    ErrorCode.MIN_NOTIONAL,
                    f"quote_quantity is below the minimum notional {market.min_notional}",
                    "quote_quantity",
                )
    elif has_quote:
        raise _refuse("quote_quantity", why)
    if quote_quantity is None:
        if get("quantity") is None:
            raise _require("quantity", why)
        quantity = market.qty_to_lots(body["quantity"])
    if (
        price is not None
        and quantity is not None
        and (price * quantity < market.min_notional_atoms)
    ):
        raise SchemaError(
            ErrorCode.MIN_NOTIONAL,
            f"price * quantity is below the minimum notional {market.min_notional}",
            "price",
        )
    if type_ in (MARKET, STOP_LOSS, TAKE_PROFIT):
        if get("time_in_force") is not None and tif != IOC:
            raise SchemaError(
                ErrorCode.INVALID_FIELD, f"{type_} orders are always IOC", "time_in_force"
            )
        tif = IOC
    if post_only and (not priced or tif != GTC):
        raise SchemaError(ErrorCode.INVALID_FIELD, "post_only needs a GTC limit order", "post_only")
    return NewOrder(
        0,
        0,
        "",
        symbol,
        side,
        type_,
        tif,
        post_only,
        price,
        quantity,
        quote_quantity,
        stop_price,
        coid,
        stp,
    )


def wire_from_order(command: NewOrder, market: Market) -> dict[str, Any]:
    """The canonical journal form of a new order: the request's fields as decimal strings."""
    return {
        "op": "new",
        "symbol": command.symbol,
        "side": command.side,
        "type": command.type,
        "time_in_force": command.time_in_force,
        "post_only": command.post_only,
        "price": None if command.price is None else market.format_price(command.price),
        "quantity": None if command.quantity is None else market.format_qty(command.quantity),
        "quote_quantity": (
            None if command.quote_quantity is None else market.format_quote(command.quote_quantity)
        ),
        "stop_price": (
            None if command.stop_price is None else market.format_price(command.stop_price)
        ),
        "client_order_id": command.client_order_id,
        "stp": command.stp,
    }


def validate_order_request(
    body: Any, markets: dict[str, Market]
) -> tuple[dict[str, Any], NewOrder]:
    """Check a client's order body; return its canonical wire form and the engine command.

    The wire form keeps the client's decimal strings (canonicalised) so the journal reads like
    the request; ``id``, ``ts`` and ``account`` are filled in by the caller / worker.
    """
    command = parse_order_request(body, markets)
    return wire_from_order(command, markets[command.symbol]), command


def validate_amend_request(body: Any, market: Market) -> dict[str, Any]:
    """Check a PATCH body; return the wire fields ``quantity``/``price`` (canonical strings)."""
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    unknown = sorted(set(body) - AMEND_REQUEST_FIELDS)
    if unknown:
        raise SchemaError(
            ErrorCode.UNKNOWN_FIELD, f"unknown field(s): {', '.join(unknown)}", unknown[0]
        )
    if body.get("quantity") is None and body.get("price") is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "give quantity and/or price", "quantity")
    out: dict[str, Any] = {"quantity": None, "price": None}
    if body.get("quantity") is not None:
        out["quantity"] = market.format_qty(market.qty_to_lots(body["quantity"]))
    if body.get("price") is not None:
        out["price"] = market.format_price(market.price_to_ticks(body["price"]))
    return out


def command_from_wire(wire: dict[str, Any], ts: int, markets: dict[str, Market]) -> Command:
    """Turn a journaled wire command into an engine command (raises SchemaError if invalid).

    The web validated it already; the worker re-validates so a hand-written or corrupted entry
    becomes a rejection, never a crash.
    """
    op = wire.get("op")
    try:
        cmd_id = int(wire["id"])
        account = str(wire["account"])
    except (KeyError, TypeError, ValueError):
        raise SchemaError(ErrorCode.INVALID_FIELD, "command lacks a valid id or account") from None
    if op == "new":
        command = parse_order_request(wire, markets, WIRE_ORDER_FIELDS)
        command.id = cmd_id
        command.ts = ts
        command.account = account
        return command
    if op == "cancel":
        return CancelOrder(cmd_id, ts, account, _int(wire, "order_id"))
    if op == "cancel_all":
        symbol = wire.get("symbol")
        if symbol is not None and symbol not in markets:
            raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}", "symbol")
        return CancelAll(cmd_id, ts, account, symbol)
    if op == "amend":
        symbol = wire.get("symbol")
        if symbol not in markets:
            raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}", "symbol")
        market = markets[symbol]
        fields = validate_amend_request(
            {k: wire.get(k) for k in AMEND_REQUEST_FIELDS if wire.get(k) is not None}, market
        )
        quantity = None if fields["quantity"] is None else market.qty_to_lots(fields["quantity"])
        price = None if fields["price"] is None else market.price_to_ticks(fields["price"])
        return AmendOrder(cmd_id, ts, account, _int(wire, "order_id"), quantity, price)
    raise SchemaError(ErrorCode.INVALID_FIELD, f"unknown op {op!r}", "op")


def _int(wire: dict[str, Any], field: str) -> int:
    value = wire.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(ErrorCode.INVALID_FIELD, f"{field} must be an integer", field)
    return value


def partition_of_id(public_id: int) -> int:
    """Order and command ids carry their partition in the low 8 bits."""
    return public_id & 0xFF


def make_public_id(counter: int, partition: int) -> int:
    return (counter << 8) | partition
