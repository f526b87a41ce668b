"""The wire schema: decimals, units, canonical formatting, validation, wire commands, markets."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.schema import (
    DEFAULT_SYMBOLS_FILE,
    AmendOrder,
    CancelAll,
    CancelOrder,
    ErrorCode,
    Market,
    NewOrder,
    Rate,
    SchemaError,
    Step,
    command_from_wire,
    load_markets,
    make_public_id,
    parse_decimal,
    partition_of_id,
    validate_amend_request,
    validate_order_request,
)

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


# -- order validation --------------------------------------------------------------------------


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "symbol": BTC,
        "side": "buy",
        "type": "limit",
        "price": "30000",
        "quantity": "0.001",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def vcode(markets: dict[str, Market], b: Any) -> str:
    return code_of(validate_order_request, b, markets)


def test_valid_limit_defaults_and_canonical_wire(markets: dict[str, Market]) -> None:
    wire, cmd = validate_order_request(body(price="30000.5", quantity="0.00100"), markets)
    assert wire == {
        "op": "new",
        "symbol": BTC,
        "side": "buy",
        "type": "limit",
        "time_in_force": "GTC",
        "post_only": False,
        "price": "30000.50",
        "quantity": "0.00100",
        "quote_quantity": None,
        "stop_price": None,
        "client_order_id": None,
        "stp": "cancel_maker",
    }
    assert isinstance(cmd, NewOrder)
    assert (cmd.price, cmd.quantity, cmd.time_in_force, cmd.stp) == (
        3_000_050,
        100,
        "GTC",
        "cancel_maker",
    )


@pytest.mark.parametrize(
    ("b", "code"),
    [
        ([], ErrorCode.MALFORMED_JSON),
        ("x", ErrorCode.MALFORMED_JSON),
        ({"symbol": BTC, "side": "buy", "foo": 1}, ErrorCode.UNKNOWN_FIELD),
        ({"side": "buy", "price": "1", "quantity": "1"}, ErrorCode.MISSING_FIELD),
        ({"symbol": "XXX-YYY", "side": "buy"}, ErrorCode.UNKNOWN_SYMBOL),
        ({"symbol": 5, "side": "buy"}, ErrorCode.UNKNOWN_SYMBOL),
        ({"symbol": BTC, "price": "1", "quantity": "1"}, ErrorCode.MISSING_FIELD),
        ({"symbol": BTC, "side": "long"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "type": "iceberg"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "time_in_force": "GTD"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "stp": "none"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "post_only": "yes"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "client_order_id": "a b"}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "client_order_id": "x" * 65}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "client_order_id": 7}, ErrorCode.INVALID_FIELD),
        ({"symbol": BTC, "side": "buy", "client_order_id": ""}, ErrorCode.INVALID_FIELD),
    ],
)
def test_order_request_structure_errors(markets: dict[str, Market], b: Any, code: str) -> None:
    assert vcode(markets, b) == code


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"price": None}, ErrorCode.MISSING_FIELD),
        ({"quantity": None}, ErrorCode.MISSING_FIELD),
        ({"price": 30000.0}, ErrorCode.INVALID_DECIMAL),
        ({"price": "30000.001"}, ErrorCode.OFF_TICK),
        ({"quantity": "0.000001"}, ErrorCode.OFF_LOT),
        ({"quantity": "1001"}, ErrorCode.QUANTITY_TOO_LARGE),
        ({"price": "1", "quantity": "0.5"}, ErrorCode.MIN_NOTIONAL),
        ({"stop_price": "1"}, ErrorCode.INVALID_FIELD),
        ({"quote_quantity": "10"}, ErrorCode.INVALID_FIELD),
        ({"type": "market"}, ErrorCode.INVALID_FIELD),  # price on a market order
        ({"type": "stop_limit"}, ErrorCode.MISSING_FIELD),  # no stop_price
        ({"type": "stop_loss", "price": None}, ErrorCode.MISSING_FIELD),
        ({"type": "stop_loss", "stop_price": "1"}, ErrorCode.INVALID_FIELD),  # price given
        ({"type": "take_profit_limit", "stop_price": "1.001"}, ErrorCode.OFF_TICK),
        ({"post_only": True, "time_in_force": "IOC"}, ErrorCode.INVALID_FIELD),
        ({"post_only": True, "time_in_force": "FOK"}, ErrorCode.INVALID_FIELD),
        (
            {"type": "stop_loss", "price": None, "stop_price": "1", "post_only": True},
            ErrorCode.INVALID_FIELD,
        ),
    ],
)
def test_order_request_field_rules(
    markets: dict[str, Market], kw: dict[str, Any], code: str
) -> None:
    assert vcode(markets, body(**kw)) == code


def test_market_quantity_xor_quote(markets: dict[str, Market]) -> None:
    def mkt(**kw: Any) -> dict[str, Any]:
        return body(**{"type": "market", "price": None, "quantity": None, **kw})

    assert vcode(markets, mkt()) == ErrorCode.MISSING_FIELD
    assert vcode(markets, mkt(quantity="1", quote_quantity="100")) == ErrorCode.INVALID_FIELD
    assert vcode(markets, mkt(quote_quantity="0.5")) == ErrorCode.MIN_NOTIONAL
    assert vcode(markets, mkt(quote_quantity="1.00000001")) == ErrorCode.OFF_QUOTE_INCREMENT
    assert vcode(markets, mkt(quantity="1", time_in_force="GTC")) == ErrorCode.INVALID_FIELD
    assert vcode(markets, mkt(quantity="1", time_in_force="FOK")) == ErrorCode.INVALID_FIELD
    assert vcode(markets, mkt(quantity="1", post_only=True)) == ErrorCode.INVALID_FIELD
    wire, cmd = validate_order_request(mkt(quote_quantity="100.5"), markets)
    assert (cmd.quantity, cmd.quote_quantity, cmd.time_in_force) == (None, 1_005_000_000, "IOC")
    assert wire["quote_quantity"] == "100.5000000"
    wire, cmd = validate_order_request(mkt(quantity="0.5", time_in_force="IOC"), markets)
    assert (cmd.quantity, cmd.price, wire["time_in_force"]) == (50_000, None, "IOC")


def test_stop_orders_validate(markets: dict[str, Market]) -> None:
    _, cmd = validate_order_request(
        body(type="stop_loss", price=None, stop_price="29000", side="sell"), markets
    )
    assert (cmd.type, cmd.stop_price, cmd.price, cmd.time_in_force) == (
        "stop_loss",
        2_900_000,
        None,
        "IOC",
    )
    wire, cmd = validate_order_request(
        body(
            type="take_profit_limit",
            stop_price="31000",
            post_only=True,
            stp="cancel_both",
            client_order_id="tp-1:a.b_c",
        ),
        markets,
    )
    assert (cmd.post_only, cmd.stop_price, cmd.stp, cmd.client_order_id) == (
        True,
        3_100_000,
        "cancel_both",
        "tp-1:a.b_c",
    )
    assert wire["stop_price"] == "31000.00"
    _, cmd = validate_order_request(
        body(type="stop_limit", stop_price="1", time_in_force="FOK"), markets
    )
    assert cmd.time_in_force == "FOK"


def test_amend_request(markets: dict[str, Market]) -> None:
    m = markets[BTC]
    assert validate_amend_request({"quantity": "0.0100"}, m) == {
        "quantity": "0.01000",
        "price": None,
    }
    assert validate_amend_request({"price": "1.5", "quantity": None}, m) == {
        "quantity": None,
        "price": "1.50",
    }
    assert code_of(validate_amend_request, [], m) == ErrorCode.MALFORMED_JSON
    assert code_of(validate_amend_request, {"side": "buy"}, m) == ErrorCode.UNKNOWN_FIELD
    assert code_of(validate_amend_request, {}, m) == ErrorCode.MISSING_FIELD
    assert code_of(validate_amend_request, {"price": None}, m) == ErrorCode.MISSING_FIELD
    assert code_of(validate_amend_request, {"price": "1.001"}, m) == ErrorCode.OFF_TICK
    assert code_of(validate_amend_request, {"quantity": "0"}, m) == ErrorCode.INVALID_DECIMAL
    assert code_of(validate_amend_request, {"quantity": 1}, m) == ErrorCode.INVALID_DECIMAL
    assert code_of(validate_amend_request, {"quantity": "1e2"}, m) == ErrorCode.INVALID_DECIMAL
    assert code_of(validate_amend_request, {"quantity": "2000"}, m) == (
        ErrorCode.QUANTITY_TOO_LARGE
    )


# -- wire commands -----------------------------------------------------------------------------


def test_command_from_wire_every_op(markets: dict[str, Market]) -> None:
    wire, _ = validate_order_request(body(client_order_id="c1"), markets)
    cmd = command_from_wire({**wire, "id": 4352, "account": "1"}, 77, markets)
    assert isinstance(cmd, NewOrder)
    assert (cmd.id, cmd.ts, cmd.account, cmd.price, cmd.quantity, cmd.client_order_id) == (
        4352,
        77,
        "1",
        3_000_000,
        100,
        "c1",
    )
    cmd = command_from_wire(
        {"op": "cancel", "id": "4608", "account": 1, "order_id": 4352}, 5, markets
    )
    assert isinstance(cmd, CancelOrder)
    assert (cmd.id, cmd.ts, cmd.account, cmd.order_id) == (4608, 5, "1", 4352)
    cmd = command_from_wire(
        {"op": "cancel_all", "id": 1, "account": "1", "symbol": BTC}, 5, markets
    )
    assert isinstance(cmd, CancelAll) and cmd.symbol == BTC
    cmd = command_from_wire({"op": "cancel_all", "id": 1, "account": "1"}, 5, markets)
    assert isinstance(cmd, CancelAll) and cmd.symbol is None
    cmd = command_from_wire(
        {
            "op": "amend",
            "id": 5120,
            "account": "1",
            "order_id": 4352,
            "symbol": BTC,
            "quantity": "0.005",
            "price": None,
        },
        5,
        markets,
    )
    assert isinstance(cmd, AmendOrder)
    assert (cmd.order_id, cmd.quantity, cmd.price) == (4352, 500, None)
    cmd = command_from_wire(
        {"op": "amend", "id": 5120, "account": "1", "order_id": 4352, "symbol": BTC, "price": "2"},
        5,
        markets,
    )
    assert isinstance(cmd, AmendOrder) and (cmd.quantity, cmd.price) == (None, 200)
    assert repr(cmd).startswith("AmendOrder(")


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ({"op": "cancel", "account": "1", "order_id": 1}, ErrorCode.INVALID_FIELD),  # no id
        ({"op": "cancel", "id": "x", "account": "1", "order_id": 1}, ErrorCode.INVALID_FIELD),
        ({"op": "cancel", "id": None, "account": "1", "order_id": 1}, ErrorCode.INVALID_FIELD),
        ({"op": "cancel", "id": 1, "order_id": 1}, ErrorCode.INVALID_FIELD),  # no account
        ({"op": "cancel", "id": 1, "account": "1"}, ErrorCode.INVALID_FIELD),
        ({"op": "cancel", "id": 1, "account": "1", "order_id": "5"}, ErrorCode.INVALID_FIELD),
        ({"op": "cancel", "id": 1, "account": "1", "order_id": True}, ErrorCode.INVALID_FIELD),
        ({"op": "cancel_all", "id": 1, "account": "1", "symbol": "NOPE"}, ErrorCode.UNKNOWN_SYMBOL),
        (
            {"op": "amend", "id": 1, "account": "1", "order_id": 1, "quantity": "1"},
            ErrorCode.UNKNOWN_SYMBOL,
        ),
        (
            {"op": "amend", "id": 1, "account": "1", "order_id": 1, "symbol": BTC},
            ErrorCode.MISSING_FIELD,
        ),
        (
            {"op": "amend", "id": 1, "account": "1", "symbol": BTC, "quantity": "1"},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {
                "op": "amend",
                "id": 1,
                "account": "1",
                "order_id": 1,
                "symbol": BTC,
                "price": "0.001",
            },
            ErrorCode.OFF_TICK,
        ),
        (
            {
                "op": "new",
                "id": 1,
                "account": "1",
                "symbol": BTC,
                "side": "buy",
                "type": "limit",
                "quantity": "1",
            },
            ErrorCode.MISSING_FIELD,
        ),
        (
            {
                "op": "new",
                "id": 1,
                "account": "1",
                "symbol": BTC,
                "side": "buy",
                "type": "limit",
                "price": 1.5,
                "quantity": "1",
            },
            ErrorCode.INVALID_DECIMAL,
        ),
        ({"op": "frobnicate", "id": 1, "account": "1"}, ErrorCode.INVALID_FIELD),
        ({"id": 1, "account": "1"}, ErrorCode.INVALID_FIELD),
    ],
)
def test_command_from_wire_errors(
    markets: dict[str, Market], wire: dict[str, Any], code: str
) -> None:
    assert code_of(command_from_wire, wire, 0, markets) == code


def test_public_ids() -> None:
    assert make_public_id(17, 3) == (17 << 8) | 3
    assert partition_of_id(make_public_id(17, 3)) == 3


# -- markets file ------------------------------------------------------------------------------


def _raw() -> list[dict[str, str]]:
    return json.loads(DEFAULT_SYMBOLS_FILE.read_text())


def test_default_markets() -> None:
    markets = load_markets()
    assert list(markets) == ["BTC-USDT", "ETH-USDT", "ETH-BTC", "SOL-USDT", "DOGE-USDT"]
    assert markets["ETH-BTC"].maker_rate == Rate(-1, 10000)
    for m in markets.values():
        assert Market.from_dict(m.as_dict()) == m


def test_markets_from_env_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_raw()[:1]))
    monkeypatch.setenv("FAIRBOOK_SYMBOLS", str(path))
    assert list(load_markets()) == ["BTC-USDT"]
    other = tmp_path / "o.json"
    other.write_text(json.dumps(_raw()[2:3]))
    assert list(load_markets(other)) == ["ETH-BTC"]  # an explicit path wins
    monkeypatch.setenv("FAIRBOOK_SYMBOLS", "")
    assert len(load_markets()) == 5


def _bad(tmp_path: Path, content: Any, raw: bool = False) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if raw else json.dumps(content))
    with pytest.raises(SystemExit) as info:
        load_markets(path)
    message = str(info.value.code)
    assert message.startswith("fairbook:") and str(path) in message
    return message


def test_malformed_markets_files(tmp_path: Path) -> None:
    good = _raw()[0]
    assert "not valid JSON" in _bad(tmp_path, "[{", raw=True)
    assert "non-empty JSON list" in _bad(tmp_path, {"symbol": "X"})
    assert "non-empty JSON list" in _bad(tmp_path, [])
    assert "entry 0 is not an object" in _bad(tmp_path, ["BTC-USDT"])
    missing = {k: v for k, v in good.items() if k != "tick_size"}
    assert "tick_size" in _bad(tmp_path, [missing])
    assert "not a decimal" in _bad(tmp_path, [{**good, "lot_size": "abc"}])
    assert "decimal string" in _bad(tmp_path, [{**good, "lot_size": 0.1}])
    assert "finite" in _bad(tmp_path, [{**good, "tick_size": "Infinity"}])
    assert "> 0" in _bad(tmp_path, [{**good, "tick_size": "0"}])
    assert "duplicate symbol BTC-USDT" in _bad(tmp_path, [good, good])
    assert "unknown fields" in _bad(tmp_path, [{**good, "colour": "red"}])
    assert "upper-case" in _bad(tmp_path, [{**good, "symbol": "btc-usdt"}])
    assert "multiples of lot_size" in _bad(tmp_path, [{**good, "min_quantity": "0.000015"}])
    assert "min_quantity > max_quantity" in _bad(tmp_path, [{**good, "min_quantity": "2000"}])
    assert "fee rates" in _bad(tmp_path, [{**good, "taker_fee_rate": "-0.001"}])
    assert "rebate exceeds" in _bad(tmp_path, [{**good, "maker_fee_rate": "-0.002"}])
    assert "min_notional" in _bad(tmp_path, [{**good, "min_notional": "-1"}])
    assert "entry 1" in _bad(tmp_path, [good, {**good, "symbol": "X-Y", "lot_size": "x"}])
    assert "cannot read" in str(
        pytest.raises(SystemExit, load_markets, tmp_path / "missing.json").value
    )


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


def test_markets_survive_pickling() -> None:
    """The commit process receives the markets pickled (compiled or not)."""
    import pickle

    markets = load_markets()
    copies = pickle.loads(pickle.dumps(markets))
    for symbol, market in markets.items():
        copy = copies[symbol]
        assert copy.as_dict() == market.as_dict()
        assert (copy.maker_rate, copy.taker_rate) == (market.maker_rate, market.taker_rate)
        assert copy.min_notional_atoms == market.min_notional_atoms
        assert copy.tick.format(12345) == market.tick.format(12345)
