"""Binance's error shape ``{"code", "msg"}``, with its codes and exact messages.

Why exact texts: clients map errors by them. ccxt matches ``msg`` first ("Account has
insufficient balance for requested action." -> InsufficientFunds, "Order would immediately
match and take." -> OrderImmediatelyFillable), then ``code`` (-2011/-2013 -> OrderNotFound,
-1121 -> BadSymbol, -1022/-2014/-2015 -> AuthenticationError, -1021 -> InvalidNonce), and
any body naming ``LOT_SIZE`` or ``PRICE_FILTER`` is an InvalidOrder. Texts are from Binance's
errors.md; ``%s`` places are filled the way Binance fills them.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, jsonify, request

from engine.commands import Reason
from engine.units import ErrorCode, SchemaError

PREFIX = "/api/v3"

UNKNOWN = -1000
DISCONNECTED = -1001
TOO_MANY_REQUESTS = -1003
TIMEOUT = -1007
SERVER_BUSY = -1008
INVALID_MESSAGE = -1013
UNKNOWN_ORDER_COMPOSITION = -1014
TOO_MANY_ORDERS = -1015
UNSUPPORTED_OPERATION = -1020
INVALID_TIMESTAMP = -1021
INVALID_SIGNATURE = -1022
ILLEGAL_CHARS = -1100
TOO_MANY_PARAMETERS = -1101
MANDATORY_PARAM = -1102
UNREAD_PARAMETERS = -1104
PARAM_NOT_REQUIRED = -1106
BAD_PRECISION = -1111
TIF_NOT_REQUIRED = -1114
INVALID_TIF = -1115
INVALID_ORDER_TYPE = -1116
INVALID_SIDE = -1117
BAD_SYMBOL = -1121
INVALID_PARAMETER = -1130
INVALID_JSON = -1135
BAD_RECV_WINDOW = -1131
NEW_ORDER_REJECTED = -2010
CANCEL_REJECTED = -2011
NO_SUCH_ORDER = -2013
BAD_API_KEY_FMT = -2014
REJECTED_MBX_KEY = -2015
INVALID_LISTEN_KEY = -1125

MSG_TIMESTAMP_OUTSIDE = "Timestamp for this request is outside of the recvWindow."
MSG_TIMESTAMP_AHEAD = "Timestamp for this request was 1000ms ahead of the server's time."
MSG_SIGNATURE = "Signature for this request is not valid."
MSG_KEY_FORMAT = "API-key format invalid."
MSG_KEY_REJECTED = "Invalid API-key, IP, or permissions for action."
MSG_LISTEN_KEY = "This listenKey does not exist."
MSG_DUPLICATE = "Duplicate values for a parameter detected."
MSG_BAD_SYMBOL = "Invalid symbol."
MSG_UNKNOWN_ORDER = "Unknown order sent."
MSG_NO_SUCH_ORDER = "Order does not exist."
MSG_INSUFFICIENT = "Account has insufficient balance for requested action."
MSG_WOULD_TAKE = "Order would immediately match and take."
MSG_WOULD_TRIGGER = "Order would trigger immediately."
MSG_DUPLICATE_ORDER = "Duplicate order sent."
MSG_COMBINATION = "Unsupported order combination"
MSG_RECV_WINDOW = "recvWindow must be less than 60000."
MSG_UNKNOWN_ERROR = "An unknown error occurred while processing the request."
MSG_INTERNAL = "Internal error; unable to process your request. Please try again."
MSG_TIMEOUT = ("Timeout waiting for response from backend server. Send status unknown; "
               "execution status unknown.")  # fmt: skip
MSG_BUSY = "Server is currently overloaded with other requests. Please try again in a few minutes."
MSG_ILLEGAL = "Illegal characters found in a parameter."
MSG_UNSUPPORTED = "This operation is not supported."
#: Binance's legal range for decimals (its -1100 message quotes it)
DECIMAL_RANGE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
INTEGER_RANGE = r"^[0-9]{1,20}$"
CLIENT_ID_RANGE = r"^[A-Za-z0-9_.:-]{1,64}$"


class BinanceError(Exception):
    """An answer ``{"code", "msg"}`` with an HTTP status, raised anywhere under ``/api/v3``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def mandatory(name: str) -> BinanceError:
    return BinanceError(
        MANDATORY_PARAM, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def not_required(name: str) -> BinanceError:
    return BinanceError(PARAM_NOT_REQUIRED, f"Parameter '{name}' sent when not required.")


def illegal(name: str, legal: str) -> BinanceError:
    return BinanceError(
        ILLEGAL_CHARS, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'."
    )


def invalid_parameter(name: str) -> BinanceError:
    return BinanceError(INVALID_PARAMETER, f"Data sent for parameter '{name}' is not valid.")


def filter_failure(name: str) -> BinanceError:
    return BinanceError(INVALID_MESSAGE, f"Filter failure: {name}")


def bad_symbol() -> BinanceError:
    return BinanceError(BAD_SYMBOL, MSG_BAD_SYMBOL)


def unknown_order() -> BinanceError:
    """A cancel of an order that is missing, closed or another account's."""
    return BinanceError(CANCEL_REJECTED, MSG_UNKNOWN_ORDER)


def no_such_order() -> BinanceError:
    """A query of an order that is missing or another account's."""
    return BinanceError(NO_SUCH_ORDER, MSG_NO_SUCH_ORDER)


#: engine rejection reasons of a new order -> (code, msg)
_REJECTIONS = {
    Reason.INSUFFICIENT_FUNDS: (NEW_ORDER_REJECTED, MSG_INSUFFICIENT),
    Reason.POST_ONLY_WOULD_TAKE: (NEW_ORDER_REJECTED, MSG_WOULD_TAKE),
    Reason.WOULD_TRIGGER_IMMEDIATELY: (NEW_ORDER_REJECTED, MSG_WOULD_TRIGGER),
    Reason.DUPLICATE_CLIENT_ORDER_ID: (NEW_ORDER_REJECTED, MSG_DUPLICATE_ORDER),
    Reason.DUPLICATE_ORDER_ID: (NEW_ORDER_REJECTED, MSG_DUPLICATE_ORDER),
    Reason.MIN_NOTIONAL: (INVALID_MESSAGE, "Filter failure: NOTIONAL"),
    Reason.UNKNOWN_SYMBOL: (BAD_SYMBOL, MSG_BAD_SYMBOL),
    Reason.INVALID_ORDER: (UNKNOWN_ORDER_COMPOSITION, MSG_COMBINATION),
}


def rejected(reason: str | None) -> BinanceError:
    """A new order the engine rejected, as Binance answers it (an error, not an order)."""
    code, msg = _REJECTIONS.get(reason or "", (NEW_ORDER_REJECTED, (reason or "rejected")))
    return BinanceError(code, msg)


#: native order field -> (Binance parameter, its filter)
_FIELDS = {
    "price": ("price", "PRICE_FILTER"),
    "stop_price": ("stopPrice", "PRICE_FILTER"),
    "quantity": ("quantity", "LOT_SIZE"),
    "quote_quantity": ("quoteOrderQty", "NOTIONAL"),
    "client_order_id": ("newClientOrderId", ""),
}


_BINANCE_DECIMAL = re.compile(DECIMAL_RANGE[1:-1])


def from_schema(exc: SchemaError, params: dict[str, str], market_order: bool = False
                ) -> BinanceError:  # fmt: skip
    """The shared validator's refusal of a translated order, in Binance's words: a value
    Binance would parse as a decimal fails its filter, anything else is illegal characters."""
    name, filter_name = _FIELDS.get(exc.field or "", (exc.field or "", ""))
    if market_order and filter_name == "LOT_SIZE":
        filter_name = "MARKET_LOT_SIZE"
    code = exc.code
    if code == ErrorCode.MIN_NOTIONAL:
        return filter_failure("NOTIONAL")
    if name == "newClientOrderId":
        return illegal(name, CLIENT_ID_RANGE)
    if code == ErrorCode.INVALID_DECIMAL and not _BINANCE_DECIMAL.fullmatch(
        params.get(name) or ""
    ):
        return illegal(name, DECIMAL_RANGE)
    if code == ErrorCode.OFF_QUOTE_INCREMENT:
        return BinanceError(BAD_PRECISION, f"Parameter '{name}' has too much precision.")
    if filter_name:
        return filter_failure(filter_name)
    if code == ErrorCode.UNKNOWN_SYMBOL:
        return bad_symbol()
    if code == ErrorCode.MISSING_FIELD:
        return mandatory(name)
    return BinanceError(UNKNOWN_ORDER_COMPOSITION, MSG_COMBINATION)


#: native error codes (web.app.error_response) -> Binance (code, msg) under /api/v3
_NATIVE = {
    "rate_limited": (TOO_MANY_REQUESTS, None),
    "too_many_requests": (TOO_MANY_REQUESTS, None),
    "overloaded": (SERVER_BUSY, MSG_BUSY),
    "unavailable": (DISCONNECTED, MSG_INTERNAL),
    "internal_error": (UNKNOWN, MSG_UNKNOWN_ERROR),
    "not_found": (UNSUPPORTED_OPERATION, MSG_UNSUPPORTED),
    "method_not_allowed": (UNSUPPORTED_OPERATION, MSG_UNSUPPORTED),
}


def render(status: int, code: int, msg: str) -> Any:
    response = jsonify({"code": code, "msg": msg})
    response.status_code = status
    return response


def native_to_binance(status: int, code: str, message: str) -> Any:
    """An error raised by the shared machinery (rate limits, Redis down, 404...) on an
    ``/api/v3`` path, in Binance's shape; the HTTP status (and headers the caller adds, such
    as ``Retry-After``) stay."""
    mapped, msg = _NATIVE.get(code, (UNKNOWN, MSG_UNKNOWN_ERROR))
    return render(status, mapped, msg or message)


def is_binance_path() -> bool:
    path = request.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def init_app(app: Flask) -> None:
    """``BinanceError`` anywhere renders as ``{"code", "msg"}``; the shared error handlers
    render in this shape too on ``/api/v3`` paths (``web.app.error_response``)."""

    @app.errorhandler(BinanceError)
    def _binance_error(exc: BinanceError):
        return render(exc.status, exc.code, exc.msg)

    app.extensions.setdefault("fairbook_error_renderers", []).append(
        (is_binance_path, native_to_binance)
    )
