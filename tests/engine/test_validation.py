"""Validation of client requests and journal entries, and wire command <-> engine command."""

from __future__ import annotations

from typing import Any

import pytest

from engine.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    NewOrder,
    make_public_id,
    partition_of_id,
)
from engine.markets import Market
from engine.units import ErrorCode, SchemaError
from engine.validation import command_from_wire, validate_amend_request, validate_order_request

BTC = "BTC-USDT"


def code_of(fn: Any, *args: Any) -> str:
    with pytest.raises(SchemaError) as info:
        fn(*args)
    assert info.value.message
    assert info.value.as_dict() == {"code": info.value.code, "message": info.value.message}
    return info.value.code


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
