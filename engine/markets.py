"""One symbol's trading rules (:class:`Market`) and the conversions its orders go through.

Markets are parsed from plain dicts (the symbols file's entries); reading the file is the
caller's business (``protocol.config``), so the core stays free of I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from engine.units import MAX_UNITS, ErrorCode, Rate, SchemaError, Step, check_decimal_text

MARKET_FIELDS: Final = (
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
_CODE = re.compile(r"[A-Z0-9]{1,12}(?:-[A-Z0-9]{1,12})?")


@dataclass(frozen=True, slots=True)
class Market:
    """One symbol's rules; the integers are derived once so the hot path never sees Decimal."""

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
        """Parse a symbols-file entry; ValueError with a readable reason if it is wrong."""
        missing = [f for f in MARKET_FIELDS if f not in raw]
        if missing:
            raise ValueError(f"market {raw.get('symbol', '?')!r} lacks fields {missing}")
        extra = sorted(set(raw) - set(MARKET_FIELDS))
        if extra:
            raise ValueError(f"market {raw['symbol']!r} has unknown fields {extra}")
        for name in ("symbol", "base_asset", "quote_asset"):
            if not isinstance(raw[name], str) or _CODE.fullmatch(raw[name]) is None:
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
        # rebuilt from its symbols-file form: a compiled frozen dataclass cannot be unpickled
        # field by field
        return (Market.from_dict, (self.as_dict(),))

    def as_dict(self) -> dict[str, str]:
        """The public form, same fields as the symbols file."""
        out: dict[str, str] = {}
        for name in MARKET_FIELDS:
            value = getattr(self, name)
            # plain notation: str(Decimal("1E-7")) would be "1E-7", not a decimal string
            out[name] = format(value, "f") if isinstance(value, Decimal) else str(value)
        return out

    # -- decimal string -> integer units ------------------------------------------------------
    def _units(self, value: Any, step: Step, field: str, code: str) -> int:
        units = step.units(check_decimal_text(value, field))
        if units is None:
            raise SchemaError(code, f"{field} is not a multiple of {step.step}", field)
        if units <= 0:
            raise SchemaError(
                ErrorCode.INVALID_DECIMAL, f"{field} must be greater than zero", field
            )
        if units > MAX_UNITS:
            raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} is too large", field)
        return units

    def price_to_ticks(self, value: Any, field: str = "price") -> int:
        return self._units(value, self.tick, field, ErrorCode.OFF_TICK)

    def qty_to_lots(self, value: Any, field: str = "quantity") -> int:
        lots = self._units(value, self.lot, field, ErrorCode.OFF_LOT)
        if lots < self.min_lots:
            raise SchemaError(
                ErrorCode.QUANTITY_TOO_SMALL, f"{field} is below the minimum {self.min_quantity}",
                field,
            )  # fmt: skip
        if lots > self.max_lots:
            raise SchemaError(
                ErrorCode.QUANTITY_TOO_LARGE, f"{field} is above the maximum {self.max_quantity}",
                field,
            )  # fmt: skip
        return lots

    def quote_to_atoms(self, value: Any, field: str = "quote_quantity") -> int:
        return self._units(value, self.quote, field, ErrorCode.OFF_QUOTE_INCREMENT)

    # -- integer units -> canonical decimal strings -------------------------------------------
    def format_price(self, ticks: int) -> str:
        return self.tick.format(ticks)

    def format_qty(self, lots: int) -> str:
        return self.lot.format(lots)

    def format_quote(self, atoms: int) -> str:
        return self.quote.format(atoms)


def markets_from_list(raw: Any) -> dict[str, Market]:
    """The markets of a parsed symbols file (a non-empty list of market objects), by symbol.

    ValueError with the entry's position when something is wrong.
    """
    if not isinstance(raw, list) or not raw:
        raise ValueError("must be a non-empty JSON list")
    markets: dict[str, Market] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i} is not an object")
        try:
            market = Market.from_dict(item)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        if market.symbol in markets:
            raise ValueError(f"duplicate symbol {market.symbol}")
        markets[market.symbol] = market
    return markets
