"""Checking what a client sends, and wire command <-> engine command.

The web validates a request with these functions before it journals anything; the worker runs
the very same checks again on every journal entry (:func:`command_from_wire`), so a hand-made or
damaged entry becomes a clear rejection, never a crash. Identifiers and enumerations match in
full (``re.fullmatch``: ``$`` would let a trailing newline through).
"""

from __future__ import annotations

import re
from typing import Any, Final

from engine.commands import (
    DEFAULT_STP,
    DEPOSIT,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    NEW_ORDER_FIELDS,
    ORDER_TYPES,
    PRICED_TYPES,
    SIDES,
    STOP_LOSS,
    STOP_TYPES,
    STP_MODES,
    TAKE_PROFIT,
    TIME_IN_FORCES,
    WITHDRAWAL,
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    Deposit,
    NewOrder,
    Withdrawal,
)
from engine.markets import Asset, Market, assets_of
from engine.units import ErrorCode, SchemaError

#: Client-chosen identifiers and accounts: printable ASCII of this set only (they become key
#: names and JSON strings).
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")

#: What a client may send for a new order: the command's fields but those the system assigns.
ORDER_REQUEST_FIELDS: Final = frozenset(NEW_ORDER_FIELDS) - {"id", "ts", "account"}
AMEND_REQUEST_FIELDS: Final = frozenset(("quantity", "price"))
#: A journaled new order: the request's fields plus what the web and journal assign.
WIRE_ORDER_FIELDS: Final = ORDER_REQUEST_FIELDS | {"op", "id", "account", "reply_to"}

_WHY: Final = {t: f"for {t} orders" for t in ORDER_TYPES}


_PRINTABLE = re.compile(r"[\x20-\x7e]{1,40}")


def shown(value: Any) -> str:
    """A client's value as an error message may quote it: short printable ASCII text as is,
    anything else (control characters, Unicode, huge strings, other types) not at all."""
    if isinstance(value, str) and _PRINTABLE.fullmatch(value) is not None:
        return repr(value)
    return "(not shown)"


def check_identifier(value: Any, field: str) -> str:
    """An id chosen by a client or an operator (``client_order_id``, account ids)."""
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise SchemaError(
            ErrorCode.INVALID_FIELD, f"{field} must be 1-64 characters of A-Z a-z 0-9 _ . : -",
            field,
        )  # fmt: skip
    return value


def _choice(body: dict[str, Any], field: str, choices: tuple[str, ...], default: str | None) -> str:
    value = body.get(field)
    if value is None:
        value = default
    if value is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, f"{field} is required", field)
    if type(value) is not str or value not in choices:
        raise SchemaError(
            ErrorCode.INVALID_FIELD, f"{field} must be one of {', '.join(choices)}", field
        )
    return value


def _refuse(field: str, why: str) -> SchemaError:
    return SchemaError(ErrorCode.INVALID_FIELD, f"{field} is not allowed {why}", field)


def _require(field: str, why: str) -> SchemaError:
    return SchemaError(ErrorCode.MISSING_FIELD, f"{field} is required {why}", field)


def _unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    if not allowed.issuperset(body):
        unknown = sorted(set(body) - allowed)
        names = ", ".join(shown(k) for k in unknown[:5])
        raise SchemaError(ErrorCode.UNKNOWN_FIELD, f"unknown field(s): {names}", unknown[0])


def parse_order_request(
    body: Any, markets: dict[str, Market], allowed: frozenset[str] = ORDER_REQUEST_FIELDS
) -> NewOrder:
    """Check a client's order body and give the engine command (id, ts, account left blank).

    A field set to null counts as absent. ``allowed`` lets the worker pass a whole journal entry.
    """
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    _unknown_fields(body, allowed)
    get = body.get
    symbol = get("symbol")
    if symbol is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "symbol is required", "symbol")
    if type(symbol) is not str or symbol not in markets:
        raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {shown(symbol)}", "symbol")
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
    if coid is not None:
        check_identifier(coid, "client_order_id")
    why = _WHY[type_]
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
    if price is not None and quantity is not None and price * quantity < market.min_notional_atoms:
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
        0, 0, "", symbol, side, type_, tif, post_only, price, quantity, quote_quantity,
        stop_price, coid, stp,
    )  # fmt: skip


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

    ``id``, ``ts`` and ``account`` are filled in by the caller and the journal.
    """
    command = parse_order_request(body, markets)
    return wire_from_order(command, markets[command.symbol]), command


def parse_amend_request(body: Any, market: Market) -> tuple[int | None, int | None]:
    """Check a PATCH body; ``(quantity lots, price ticks)``, None where it keeps the value."""
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    _unknown_fields(body, AMEND_REQUEST_FIELDS)
    quantity, price = body.get("quantity"), body.get("price")
    if quantity is None and price is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "give quantity and/or price", "quantity")
    return (
        None if quantity is None else market.qty_to_lots(quantity),
        None if price is None else market.price_to_ticks(price),
    )


def validate_amend_request(body: Any, market: Market) -> dict[str, Any]:
    """Check a PATCH body; return the wire fields ``quantity``/``price`` (canonical strings)."""
    lots, ticks = parse_amend_request(body, market)
    return {
        "quantity": None if lots is None else market.format_qty(lots),
        "price": None if ticks is None else market.format_price(ticks),
    }


#: The reference field of each transfer kind, and what a request body may hold.
TRANSFER_REFERENCE: Final = {DEPOSIT: "deposit_id", WITHDRAWAL: "client_withdrawal_id"}
WITHDRAWAL_REQUEST_FIELDS: Final = frozenset(
    ("asset", "amount", "client_withdrawal_id", "partition")
)
DEPOSIT_REQUEST_FIELDS: Final = frozenset(
    ("account_id", "asset", "amount", "deposit_id", "partition")
)
_WIRE_TRANSFER_FIELDS: Final = {
    kind: frozenset(("op", "id", "account", "asset", "amount", ref, "reply_to"))
    for kind, ref in TRANSFER_REFERENCE.items()
}


def parse_transfer(
    body: Any, assets: dict[str, Asset], kind: str, allowed: frozenset[str]
) -> tuple[str, int, str]:
    """A deposit or withdrawal body's ``(asset, amount in units, reference)``."""
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    _unknown_fields(body, allowed)
    asset = body.get("asset")
    if asset is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "asset is required", "asset")
    if type(asset) is not str or asset not in assets:
        raise SchemaError(ErrorCode.UNKNOWN_ASSET, f"unknown asset {shown(asset)}", "asset")
    if body.get("amount") is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, "amount is required", "amount")
    units = assets[asset].to_units(body["amount"])
    ref_field = TRANSFER_REFERENCE[kind]
    if body.get(ref_field) is None:
        raise SchemaError(ErrorCode.MISSING_FIELD, f"{ref_field} is required", ref_field)
    return asset, units, check_identifier(body[ref_field], ref_field)


def validate_transfer_request(body: Any, assets: dict[str, Asset], kind: str) -> dict[str, Any]:
    """Check a withdrawal (or operator deposit) body; the wire fields ``op, asset, amount,
    <reference>`` (canonical amount) and, for a deposit, ``account``. ``partition`` is the
    caller's to check."""
    allowed = DEPOSIT_REQUEST_FIELDS if kind == DEPOSIT else WITHDRAWAL_REQUEST_FIELDS
    asset, units, reference = parse_transfer(body, assets, kind, allowed)
    out: dict[str, Any] = {"op": kind}
    if kind == DEPOSIT:
        if body.get("account_id") is None:
            raise SchemaError(ErrorCode.MISSING_FIELD, "account_id is required", "account_id")
        out["account"] = check_identifier(body["account_id"], "account_id")
    out.update(
        {"asset": asset, "amount": assets[asset].format(units), TRANSFER_REFERENCE[kind]: reference}
    )
    return out


def command_from_wire(
    wire: dict[str, Any],
    ts: int,
    markets: dict[str, Market],
    assets: dict[str, Asset] | None = None,
) -> Command:
    """A journaled wire command as an engine command (SchemaError if it is not valid)."""
    op = wire.get("op")
    cmd_id, account = wire.get("id"), wire.get("account")
    # hand-made entries may spell the id or an account number as the other JSON type
    if type(cmd_id) is str and cmd_id.isascii() and cmd_id.isdigit() and len(cmd_id) <= 20:
        cmd_id = int(cmd_id)
    if type(cmd_id) is not int or cmd_id <= 0:
        raise SchemaError(ErrorCode.INVALID_FIELD, "command lacks a valid id", "id")
    if type(account) is int:
        account = str(account)
    account = check_identifier(account, "account")
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
        if symbol is not None and (type(symbol) is not str or symbol not in markets):
            raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {shown(symbol)}", "symbol")
        return CancelAll(cmd_id, ts, account, symbol)
    if op == "amend":
        symbol = wire.get("symbol")
        if type(symbol) is not str or symbol not in markets:
            raise SchemaError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {shown(symbol)}", "symbol")
        body = {k: wire[k] for k in AMEND_REQUEST_FIELDS if wire.get(k) is not None}
        quantity, price = parse_amend_request(body, markets[symbol])
        return AmendOrder(cmd_id, ts, account, _int(wire, "order_id"), quantity, price)
    if op == DEPOSIT or op == WITHDRAWAL:
        asset, units, ref = parse_transfer(
            wire, assets if assets is not None else assets_of(markets), op,
            _WIRE_TRANSFER_FIELDS[op],
        )  # fmt: skip
        if op == DEPOSIT:
            return Deposit(cmd_id, ts, account, asset, units, ref)
        return Withdrawal(cmd_id, ts, account, asset, units, ref)
    raise SchemaError(ErrorCode.INVALID_FIELD, f"unknown op {shown(op)}", "op")


def _int(wire: dict[str, Any], field: str) -> int:
    value = wire.get(field)
    if type(value) is not int:
        raise SchemaError(ErrorCode.INVALID_FIELD, f"{field} must be an integer", field)
    return value
