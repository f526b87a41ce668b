"""Exact money: decimal strings at the edges, integer units inside.

A price is a whole number of *ticks*, a quantity of *lots*, a quote amount or fee of *quote
atoms* (``tick_size * lot_size``, so a fill's notional is exactly ``ticks * lots`` atoms).
:class:`Step` converts between a decimal string and a count of one increment with string
slicing and integer ``divmod``: no float and no ``Decimal`` on the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final


class ErrorCode:
    """Why a wire value is refused (HTTP 400 family); the engine's ``Reason`` covers the rest."""

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
    UNKNOWN_ASSET: Final = "unknown_asset"
    OFF_UNIT: Final = "off_unit"  # an amount with more decimals than its asset has


class SchemaError(ValueError):
    """A wire value the schema refuses; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (SchemaError, (self.code, self.message, self.field))

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


#: ASCII digits, at most one point, nothing else: no sign, exponent, space, NaN or Unicode digit.
_DECIMAL_TEXT = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")
#: Upper bound for any integer unit count, far beyond any real market, so arithmetic stays small.
MAX_UNITS = 10**18


def check_decimal_text(value: Any, field: str) -> str:
    """``value`` if it is a plain positive decimal string (matched in full), else SchemaError."""
    if not isinstance(value, str):
        raise SchemaError(
            ErrorCode.INVALID_DECIMAL, f'{field} must be a decimal string, e.g. "1.5"', field
        )
    if _DECIMAL_TEXT.fullmatch(value) is None:
        raise SchemaError(
            ErrorCode.INVALID_DECIMAL,
            f"{field} must be a plain decimal string of ASCII digits with at most one point",
            field,
        )
    return value


def parse_decimal(value: Any, field: str) -> Decimal:
    """A plain positive decimal string as a Decimal (configuration only, never the hot path)."""
    number = Decimal(check_decimal_text(value, field))
    if number <= 0:
        raise SchemaError(ErrorCode.INVALID_DECIMAL, f"{field} must be greater than zero", field)
    return number


class Step:
    """One increment (a tick, a lot or a quote atom): ``step == k * 10**-places``."""

    __slots__ = ("step", "places", "k")

    def __init__(self, step: Decimal) -> None:
        exponent = step.as_tuple().exponent
        assert isinstance(exponent, int)
        self.step = step
        self.places = -exponent if exponent < 0 else 0
        self.k = int(step.scaleb(self.places))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and other.step == self.step

    def __hash__(self) -> int:
        return hash(self.step)

    def __repr__(self) -> str:
        return f"Step({str(self.step)!r})"

    def units(self, text: str) -> int | None:
        """``text`` (already checked by :func:`check_decimal_text`) as whole steps, None if
        it is not a multiple of the step."""
        whole, _, frac = text.partition(".")
        places = self.places
        if len(frac) > places:
            if frac[places:].strip("0"):
                return None
            frac = frac[:places]
        units, rest = divmod(int(whole + frac.ljust(places, "0")), self.k)
        return None if rest else units

    def format(self, units: int) -> str:
        """The canonical text: exactly ``places`` decimals, no exponent, ``-`` for negatives."""
        value = units * self.k
        places = self.places
        if not places:
            return str(value)
        sign = "-" if value < 0 else ""
        digits = str(abs(value)).rjust(places + 1, "0")
        return sign + digits[:-places] + "." + digits[-places:]


@dataclass(frozen=True, slots=True)
class Rate:
    """A fee rate as an exact fraction ``num / den`` (``den`` a power of ten)."""

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

    def fee(self, notional: int) -> int:
        """Fee in atoms: charges round up, rebates (negative) round toward zero."""
        if self.num >= 0:
            return -((-notional * self.num) // self.den)
        return -((notional * -self.num) // self.den)
