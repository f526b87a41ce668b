"""Exact units: decimal text checks, Step conversions and formatting, fee rates."""

from __future__ import annotations

import pickle
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.markets import Market
from engine.units import ErrorCode, Rate, SchemaError, Step, parse_decimal
from protocol.config import load_markets

BTC = "BTC-USDT"


def code_of(fn: Any, *args: Any) -> str:
    with pytest.raises(SchemaError) as info:
        fn(*args)
    assert info.value.message
    assert info.value.as_dict() == {"code": info.value.code, "message": info.value.message}
    return info.value.code


# -- decimals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["1", "0.5", "100.25", "000.1", "1.000000000000000000", "999999999999999999"]
)
def test_parse_decimal_accepts_plain_positive(text: str) -> None:
    assert parse_decimal(text, "x") == Decimal(text)


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1,
        True,
        None,
        [],
        "",
        " 1",
        "1 ",
        "+1",
        "-1",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "Inf",
        "Infinity",
        "-0",
        "0",
        "0.0",
        "0.000",
        ".5",
        "5.",
        "1,5",
        "0x10",
        "1.2.3",
        "١",
        "1234567890123456789",
        "1." + "0" * 19,
        "\t1",
    ],
)
def test_parse_decimal_rejects(value: Any) -> None:
    assert code_of(parse_decimal, value, "price") == ErrorCode.INVALID_DECIMAL


def test_units_conversion(markets: dict[str, Market]) -> None:
    m = markets[BTC]
    assert m.price_to_ticks("30000.01") == 3_000_001
    assert m.price_to_ticks("30000.10") == 3_000_010
    assert m.qty_to_lots("0.00002") == 2
    assert m.qty_to_lots("1000") == 100_000_000
    assert m.quote_to_atoms("1") == 10**7
    assert m.atom == Decimal("0.0000001")
    assert m.min_notional_atoms == 10**7


def test_off_increment_and_limits(markets: dict[str, Market]) -> None:
    m = markets[BTC]
    assert code_of(m.price_to_ticks, "1.001") == ErrorCode.OFF_TICK
    assert code_of(m.qty_to_lots, "0.000011") == ErrorCode.OFF_LOT
    assert code_of(m.quote_to_atoms, "0.00000001") == ErrorCode.OFF_QUOTE_INCREMENT
    assert code_of(m.qty_to_lots, "1000.00001") == ErrorCode.QUANTITY_TOO_LARGE
    assert code_of(m.price_to_ticks, "0") == ErrorCode.INVALID_DECIMAL
    assert code_of(m.price_to_ticks, "999999999999999999") == ErrorCode.INVALID_DECIMAL  # > 1e18
    doge = markets["DOGE-USDT"]
    assert code_of(doge.qty_to_lots, "0.5") == ErrorCode.OFF_LOT
    small = Market.from_dict({**m.as_dict(), "min_quantity": "0.001"})
    assert code_of(small.qty_to_lots, "0.0009") == ErrorCode.QUANTITY_TOO_SMALL
    assert small.qty_to_lots("0.001") == 100


@pytest.mark.parametrize(
    "error",
    [
        SchemaError(ErrorCode.OFF_TICK, "price is not a multiple of 0.01", "price"),
        SchemaError(ErrorCode.MALFORMED_JSON, "the body is not JSON"),  # no field
    ],
)
def test_schema_error_survives_pickle(error: SchemaError) -> None:
    """The commit process and any worker pool send errors across processes: the code and
    field must arrive, not just the message (a ValueError subclass with extra init arguments
    loses them, or fails to unpickle, without ``__reduce__``)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is SchemaError
    assert (copy.code, copy.message, copy.field) == (error.code, error.message, error.field)
    assert str(copy) == str(error) and copy.args == error.args
    assert copy.as_dict() == error.as_dict()


def test_schema_error_from_market_validation_survives_pickle(markets: dict[str, Market]) -> None:
    with pytest.raises(SchemaError) as info:
        markets[BTC].qty_to_lots("0.000011")  # off the lot
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(info.value, protocol=protocol))
        assert isinstance(copy, SchemaError) and isinstance(copy, ValueError)
        assert (copy.code, copy.field) == (ErrorCode.OFF_LOT, "quantity")
        assert copy.message == info.value.message and str(copy) == str(info.value)


@pytest.mark.parametrize("symbol", ["BTC-USDT", "ETH-USDT", "ETH-BTC", "SOL-USDT", "DOGE-USDT"])
def test_canonical_formatting(markets: dict[str, Market], symbol: str) -> None:
    m = markets[symbol]
    assert m.format_price(m.price_to_ticks(m.format_price(1))) == m.format_price(1)
    assert "e" not in m.format_price(1).lower() and "e" not in m.format_quote(1).lower()
    assert m.format_qty(m.max_lots) == m.format_qty(m.qty_to_lots(m.format_qty(m.max_lots)))


def test_format_examples(markets: dict[str, Market]) -> None:
    m = markets[BTC]
    assert m.format_price(m.price_to_ticks("100.5")) == "100.50"
    assert m.format_price(m.price_to_ticks("000100.500")) == "100.50"
    assert m.format_qty(m.qty_to_lots("0.01000")) == "0.01000"
    assert m.format_quote(123) == "0.0000123"
    assert markets["DOGE-USDT"].format_qty(7) == "7"


@given(st.integers(1, 10**15), st.sampled_from(["BTC-USDT", "ETH-BTC", "DOGE-USDT"]))
def test_format_parse_round_trip(units: int, symbol: str) -> None:
    m = load_markets()[symbol]
    text = m.format_price(units)
    assert m.price_to_ticks(text) == units
    assert m.format_price(m.price_to_ticks(text)) == text
    assert m.quote_to_atoms(m.format_quote(units)) == units


# -- fee rates ---------------------------------------------------------------------------------


def test_rate_parse_and_fee_rounding() -> None:
    assert Rate.parse("0.001") == Rate(1, 1000)
    assert Rate.parse("-0.0001") == Rate(-1, 10000)
    assert Rate.parse("0") == Rate(0, 1)
    assert Rate.parse("2") == Rate(2, 1)
    r = Rate.parse("0.001")
    assert (r.fee(1000), r.fee(1001), r.fee(1), r.fee(0)) == (1, 2, 1, 0)  # charges: ceil
    rebate = Rate.parse("-0.0001")
    assert (rebate.fee(10000), rebate.fee(19999), rebate.fee(9999)) == (-1, -1, 0)  # to zero
    assert Rate.parse("0").fee(12345) == 0


@given(st.integers(0, 10**15), st.integers(-999, 999))
def test_rate_fee_matches_exact_fraction(notional: int, bps: int) -> None:
    import math
    from fractions import Fraction

    rate = Rate.parse(f"{Decimal(bps) / 10000}")
    exact = Fraction(notional) * Fraction(bps, 10000)
    fee = rate.fee(notional)
    assert fee == (math.ceil(exact) if bps >= 0 else -math.floor(-exact))


# -- Step: the integer conversion must agree with Decimal arithmetic exactly ----------------------

_STEPS = ["0.01", "0.00001", "1", "0.25", "5", "0.0000001", "10", "1E+1", "0.010"]


@given(
    step_text=st.sampled_from(_STEPS),
    units=st.integers(min_value=-(10**20), max_value=10**20),
)
def test_step_format_matches_decimal(step_text: str, units: int) -> None:
    step = Step(Decimal(step_text))
    exponent = Decimal(step_text).as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    with localcontext() as ctx:
        ctx.prec = 60
        expected = f"{Decimal(units) * Decimal(step_text):.{places}f}"
    assert step.format(units) == expected
    assert step.format(units) == step.format(units)  # the cached answer is the same


@given(
    step_text=st.sampled_from(_STEPS),
    whole=st.integers(min_value=0, max_value=10**12),
    frac=st.text(alphabet="0123456789", min_size=0, max_size=12),
)
def test_step_units_matches_decimal(step_text: str, whole: int, frac: str) -> None:
    text = f"{whole}.{frac}" if frac else str(whole)
    quotient, rest = divmod(Decimal(text), Decimal(step_text))
    expected = int(quotient) if not rest else None
    assert Step(Decimal(step_text)).units(text) == expected
