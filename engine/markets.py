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
    #: balances are integers in asset units (10**-decimals): a lot is ``lot_units`` base units,
    #: a quote atom ``atom_units`` quote units
    base_decimals: int
    quote_decimals: int
    lot_units: int
    atom_units: int

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any],
        base_decimals: int | None = None,
        quote_decimals: int | None = None,
    ) -> Market:
        """Parse a symbols-file entry; ValueError with a readable reason if it is wrong.

        Without the assets' decimals each takes the fewest its market needs (the lot's places
        for the base, the quote atom's for the quote).
        """
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
        if dec["maker_fee_rate"] > dec["taker_fee_rate"]:
            # a buy's lock reserves the taker fee; a maker fill must not cost more than that
            raise ValueError(f"market {raw['symbol']}: maker_fee_rate exceeds taker_fee_rate")
        atom = dec["tick_size"] * lot
        if base_decimals is None:
            base_decimals = places(lot)
        if quote_decimals is None:
            quote_decimals = places(atom)
        lot_units = lot.scaleb(base_decimals)
        atom_units = atom.scaleb(quote_decimals)
        if lot_units != lot_units.to_integral_value():
            raise ValueError(
                f"market {raw['symbol']}: lot_size {format(lot, 'f')} is not a whole number of "
                f"{raw['base_asset']} units ({base_decimals} decimals)"
            )
        if atom_units != atom_units.to_integral_value():
            raise ValueError(
                f"market {raw['symbol']}: tick_size x lot_size = {format(atom, 'f')} is not a "
                f"whole number of {raw['quote_asset']} units ({quote_decimals} decimals)"
            )
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
            base_decimals=base_decimals,
            quote_decimals=quote_decimals,
            lot_units=int(lot_units),
            atom_units=int(atom_units),
            **dec,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its symbols-file form: a compiled frozen dataclass cannot be unpickled
        # field by field
        return (Market.from_dict, (self.as_dict(), self.base_decimals, self.quote_decimals))

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
        return whole_units(value, step, field, code, f"{field} is not a multiple of {step.step}")

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


def whole_units(value: Any, step: Step, field: str, off_code: str, off_message: str) -> int:
    """A plain positive decimal string as a whole number of ``step`` (at most
    :data:`MAX_UNITS`); SchemaError ``off_code`` when it is not a multiple of the step."""
    units = step.units(check_decimal_text(value, field))
    if units is None:
        raise SchemaError(off_code, off_message, field)
    if units <= 0:
        raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} must be greater than zero", field)
    if units > MAX_UNITS:
        raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} is too large", field)
    return units


def places(step: Decimal) -> int:
    """Decimal places of a step: ``places(Decimal("0.010")) == 2``."""
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


@dataclass(frozen=True, slots=True)
class Asset:
    """A currency and the unit its balances count in (``10**-decimals``)."""

    asset: str
    decimals: int
    unit: Step

    @classmethod
    def of(cls, asset: str, decimals: int) -> Asset:
        return cls(asset, decimals, Step(Decimal(1).scaleb(-decimals)))

    def to_units(self, value: Any, field: str = "amount") -> int:
        """A positive decimal string as whole units; SchemaError if it is not one."""
        why = f"{field} has more decimals than {self.asset}'s {self.decimals}"
        return whole_units(value, self.unit, field, ErrorCode.OFF_UNIT, why)

    def format(self, units: int) -> str:
        """Canonical text with exactly ``decimals`` places; negative amounts start with ``-``."""
        return self.unit.format(units)


def assets_of(markets: dict[str, Market]) -> dict[str, Asset]:
    """Every asset the markets trade, with its decimals, sorted by code."""
    found: dict[str, int] = {}
    for m in markets.values():
        found[m.base_asset] = m.base_decimals
        found[m.quote_asset] = m.quote_decimals
    return {code: Asset.of(code, found[code]) for code in sorted(found)}


def markets_from_list(raw: Any) -> dict[str, Market]:
    """The markets of a parsed symbols file, by symbol: ``{"assets": [...], "markets": [...]}``
    or (the older form) a bare non-empty list of markets, whose assets then take the fewest
    decimals their markets need.

    ValueError with the entry's position when something is wrong.
    """
    decimals: dict[str, int] | None = None
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"assets", "markets"})
        if extra or "assets" not in raw or "markets" not in raw:
            raise ValueError('must be {"assets": [...], "markets": [...]} (or a list of markets)')
        decimals = _asset_decimals(raw["assets"])
        raw = raw["markets"]
    if not isinstance(raw, list) or not raw:
        raise ValueError("markets must be a non-empty JSON list")
    parsed: list[tuple[dict[str, Any], Market]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i} is not an object")
        try:
            market = Market.from_dict(item)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        parsed.append((item, market))
    if decimals is None:  # the fewest decimals every market of each asset needs
        decimals = {}
        for _, m in parsed:
            decimals[m.base_asset] = max(decimals.get(m.base_asset, 0), m.base_decimals)
            decimals[m.quote_asset] = max(decimals.get(m.quote_asset, 0), m.quote_decimals)
    used: set[str] = set()
    markets: dict[str, Market] = {}
    for i, (item, m) in enumerate(parsed):
        for code in (m.base_asset, m.quote_asset):
            if code not in decimals:
                raise ValueError(f"entry {i}: {m.symbol} trades {code}, which assets does not list")
            used.add(code)
        try:
            market = Market.from_dict(item, decimals[m.base_asset], decimals[m.quote_asset])
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        if market.symbol in markets:
            raise ValueError(f"duplicate symbol {market.symbol}")
        markets[market.symbol] = market
    unused = sorted(set(decimals) - used)
    if unused:
        raise ValueError(f"assets {unused} are listed but no market trades them")
    return markets


def _asset_decimals(raw: Any) -> dict[str, int]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("assets must be a non-empty JSON list")
    out: dict[str, int] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"asset", "decimals"}:
            raise ValueError(f'asset {i} must be {{"asset": "BTC", "decimals": 8}}')
        code, dec = item["asset"], item["decimals"]
        if not isinstance(code, str) or _CODE.fullmatch(code) is None or "-" in code:
            raise ValueError(f"asset {i}: asset must be an upper-case code, got {code!r}")
        if type(dec) is not int or not 0 <= dec <= 18:
            raise ValueError(f"asset {code}: decimals must be an integer 0..18")
        if code in out:
            raise ValueError(f"duplicate asset {code}")
        out[code] = dec
    return out
