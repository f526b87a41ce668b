"""Binance's parameters and objects <-> Fairbook's native ones.

Why a translation and not a second implementation: a Binance order becomes the native order
body and goes through the very same ``engine.validation`` and journal as ``POST /api/v1/orders``;
what comes back (the worker's REST order object, trade records, book keys) is only renamed.
Symbols lose their dash (``BTC-USDT`` -> ``BTCUSDT``).
"""

from __future__ import annotations

import os
import string
from decimal import Decimal
from typing import Any

from engine.commands import Reason
from engine.markets import Market
from engine.units import MAX_UNITS
from web.binance import errors
from web.binance.errors import BinanceError

#: Binance order type -> (native type, post_only)
ORDER_TYPES: dict[str, tuple[str, bool]] = {
    "LIMIT": ("limit", False),
    "LIMIT_MAKER": ("limit", True),
    "MARKET": ("market", False),
    "STOP_LOSS": ("stop_loss", False),
    "STOP_LOSS_LIMIT": ("stop_limit", False),
    "TAKE_PROFIT": ("take_profit", False),
    "TAKE_PROFIT_LIMIT": ("take_profit_limit", False),
}
_NATIVE_TYPES = {native: name for name, (native, post) in ORDER_TYPES.items() if not post}
STP_MODES = {"EXPIRE_TAKER": "cancel_taker", "EXPIRE_MAKER": "cancel_maker",
             "EXPIRE_BOTH": "cancel_both"}  # fmt: skip
_STP_NAMES = {native: name for name, native in STP_MODES.items()}
DEFAULT_STP = "EXPIRE_MAKER"
TIME_IN_FORCES = ("GTC", "IOC", "FOK")
RESPONSE_TYPES = ("ACK", "RESULT", "FULL")
#: what each Binance type needs and refuses (besides symbol, side, type)
_NEEDS = {
    "LIMIT": ("quantity", "price", "timeInForce"),
    "LIMIT_MAKER": ("quantity", "price"),
    "MARKET": (),
    "STOP_LOSS": ("quantity", "stopPrice"),
    "STOP_LOSS_LIMIT": ("quantity", "price", "stopPrice", "timeInForce"),
    "TAKE_PROFIT": ("quantity", "stopPrice"),
    "TAKE_PROFIT_LIMIT": ("quantity", "price", "stopPrice", "timeInForce"),
}
_PRICED = ("price", "stopPrice", "timeInForce")
#: parameters ``POST /api/v3/order`` reads; any other is -1104, as Binance answers
ORDER_PARAMS = frozenset((
    "symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price",
    "newClientOrderId", "stopPrice", "newOrderRespType", "selfTradePreventionMode",
    "strategyId", "strategyType", "icebergQty", "trailingDelta", "pegPriceType",
    "pegOffsetValue", "pegOffsetType", "computeCommissionRates",
))  # fmt: skip
#: parameters Binance has and Fairbook does not support (sent non-empty: refused)
_UNSUPPORTED = {
    "icebergQty": "Iceberg orders are not supported for this symbol.",
    "trailingDelta": "Trailing stop orders are not supported for this symbol.",
    "pegPriceType": "Pegged orders are not supported for this symbol.",
    "pegOffsetValue": "Pegged orders are not supported for this symbol.",
    "pegOffsetType": "Pegged orders are not supported for this symbol.",
}
_CLIENT_ID_CHARS = string.ascii_letters + string.digits


class Symbols:
    """``BTCUSDT`` <-> ``BTC-USDT`` for this deployment's markets (collisions fail start-up)."""

    def __init__(self, markets: dict[str, Market]) -> None:
        self.native: dict[str, str] = {}
        for symbol in markets:
            name = symbol.replace("-", "")
            if name in self.native:
                raise SystemExit(f"fairbook: {symbol} and {self.native[name]} are both {name} "
                                 "in the Binance API")  # fmt: skip
            self.native[name] = symbol
        self.binance = {v: k for k, v in self.native.items()}

    def to_native(self, name: str | None) -> str:
        """The native symbol of a Binance one: -1102 when absent, -1121 when unknown."""
        if name is None or name == "":
            raise errors.mandatory("symbol")
        found = self.native.get(name)
        if found is None:
            raise errors.bad_symbol()
        return found


def client_order_id() -> str:
    """A Binance-like generated id (22 letters and digits) when the client sends none, so
    every order can be found by ``origClientOrderId``. One ``urandom`` read, not 22
    ``secrets.choice`` calls (that was ~40 us per order); the slight bias of ``% 62`` does
    not matter for an id that only has to be unique."""
    return "".join([_CLIENT_ID_CHARS[b % 62] for b in os.urandom(22)])


def order_request(params: dict[str, str], symbol: str) -> tuple[dict[str, Any], str, str]:
    """A ``POST /api/v3/order`` as the native order body; also its Binance type and
    ``newOrderRespType``. Shape checks only: values go to ``engine.validation``."""
    unknown = sorted(set(params) - ORDER_PARAMS)
    if unknown:
        read = len(params) - len(unknown)
        raise BinanceError(
            errors.UNREAD_PARAMETERS,
            f"Not all sent parameters were read; read '{read}' parameter(s) but was sent "
            f"'{len(params)}'.",
        )
    for name, why in _UNSUPPORTED.items():
        if params.get(name) not in (None, "", "0"):
            raise BinanceError(errors.NEW_ORDER_REJECTED, why)
    side = params.get("side")
    if not side:
        raise errors.mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(errors.INVALID_SIDE, "Invalid side.")
    kind = params.get("type")
    if not kind:
        raise errors.mandatory("type")
    if kind not in ORDER_TYPES:
        raise BinanceError(errors.INVALID_ORDER_TYPE, "Invalid orderType.")
    needs = _NEEDS[kind]
    for name in needs:
        if not params.get(name):
            raise errors.mandatory(name)
    for name in _PRICED:
        if name not in needs and params.get(name):
            if name == "timeInForce":
                raise BinanceError(errors.TIF_NOT_REQUIRED,
                                   "TimeInForce parameter sent when not required.")  # fmt: skip
            raise errors.not_required(name)
    tif = params.get("timeInForce")
    if tif is not None and tif not in TIME_IN_FORCES:
        raise BinanceError(errors.INVALID_TIF, "Invalid timeInForce.")
    quantity, quote = params.get("quantity") or None, params.get("quoteOrderQty") or None
    if kind == "MARKET":
        if quantity is None and quote is None:
            raise BinanceError(errors.MANDATORY_PARAM, "Param 'quantity' or 'quoteOrderQty' "
                               "must be sent, but both were empty/null!")  # fmt: skip
        if quantity is not None and quote is not None:
            raise errors.not_required("quoteOrderQty")
    elif quote is not None:
        raise errors.not_required("quoteOrderQty")
    stp = params.get("selfTradePreventionMode") or DEFAULT_STP
    if stp not in STP_MODES:
        raise errors.invalid_parameter("selfTradePreventionMode")
    response_type = params.get("newOrderRespType") or (
        "FULL" if kind in ("MARKET", "LIMIT") else "ACK"
    )
    if response_type not in RESPONSE_TYPES:
        raise errors.invalid_parameter("newOrderRespType")
    native_type, post_only = ORDER_TYPES[kind]
    coid = params.get("newClientOrderId") or client_order_id()
    body = {
        "symbol": symbol,
        "side": side.lower(),
        "type": native_type,
        "time_in_force": tif or ("GTC" if kind == "LIMIT_MAKER" else None),
        "post_only": post_only,
        "price": params.get("price") or None,
        "stop_price": params.get("stopPrice") or None,
        "quantity": quantity,
        "quote_quantity": quote,
        "client_order_id": coid,
        "stp": STP_MODES[stp],
    }
    return body, kind, response_type


# -- native objects -> Binance ------------------------------------------------------------------


def order_status(order: dict[str, Any]) -> str:
    """Binance's status: an unfilled remainder the market took away is EXPIRED, one that
    self-trade prevention took is EXPIRED_IN_MATCH, a cancel by the owner is CANCELED."""
    status = order.get("status")
    if status in ("new", "triggered"):
        return "NEW"
    if status == "partially_filled":
        return "PARTIALLY_FILLED"
    if status == "filled":
        return "FILLED"
    if status == "rejected":
        return "REJECTED"
    reason = order.get("reject_reason")
    if reason == Reason.SELF_TRADE_PREVENTION:
        return "EXPIRED_IN_MATCH"
    if reason in (None, Reason.USER_CANCELLED):
        return "CANCELED"
    return "EXPIRED"


def order_type(order: dict[str, Any]) -> str:
    if order.get("post_only"):
        return "LIMIT_MAKER"
    return _NATIVE_TYPES.get(order.get("type") or "", "LIMIT")


def _zero_price(market: Market) -> str:
    return market.format_price(0)


def order_object(order: dict[str, Any], market: Market, binance_symbol: str,
                 stp: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``GET /api/v3/order``'s object for a native order (its record or a reply)."""
    kind = order_type(order)
    waiting = order.get("status") == "new" and kind in (
        "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"
    )  # fmt: skip
    created = order.get("created_at") or 0
    return {
        "symbol": binance_symbol,
        "orderId": order.get("order_id"),
        "orderListId": -1,
        "clientOrderId": order.get("client_order_id") or "",
        "price": order.get("price") or _zero_price(market),
        "origQty": order.get("quantity") or order.get("filled_quantity") or "0",
        "executedQty": order.get("filled_quantity") or "0",
        "cummulativeQuoteQty": order.get("cum_quote") or "0",
        "status": order_status(order),
        "timeInForce": order.get("time_in_force") or "GTC",
        "type": kind,
        "side": str(order.get("side") or "").upper(),
        "stopPrice": order.get("stop_price") or _zero_price(market),
        "icebergQty": market.format_qty(0),
        "time": created,
        "updateTime": order.get("updated_at") or created,
        "isWorking": not waiting,
        "workingTime": -1 if waiting else created,
        "origQuoteOrderQty": order.get("quote_quantity") or market.format_quote(0),
        "selfTradePreventionMode": stp or DEFAULT_STP,
    }


def stp_name(native: str | None) -> str | None:
    return _STP_NAMES.get(native or "")


def fills(order: dict[str, Any]) -> list[dict[str, Any]]:
    """``FULL`` responses' fills."""
    return [{"price": f.get("price"), "qty": f.get("quantity"), "commission": f.get("fee"),
             "commissionAsset": f.get("fee_asset"), "tradeId": f.get("trade_id")}
            for f in order.get("fills") or []]  # fmt: skip


def new_order_response(order: dict[str, Any], market: Market, binance_symbol: str,
                       response_type: str, stp: str | None) -> dict[str, Any]:  # fmt: skip
    """``POST /api/v3/order``'s answer in the requested ``newOrderRespType``."""
    full = order_object(order, market, binance_symbol, stp)
    ack = {"symbol": binance_symbol, "orderId": full["orderId"], "orderListId": -1,
           "clientOrderId": full["clientOrderId"], "transactTime": full["time"]}  # fmt: skip
    if response_type == "ACK":
        return ack
    out = {**ack}
    for name in ("price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty",
                 "status", "timeInForce", "type", "side", "workingTime",
                 "selfTradePreventionMode"):  # fmt: skip
        out[name] = full[name]
    if full["type"] not in ("LIMIT", "LIMIT_MAKER", "MARKET"):
        out["stopPrice"] = full["stopPrice"]
    if response_type == "FULL":
        out["fills"] = fills(order)
    return out


def cancel_response(order: dict[str, Any], market: Market, binance_symbol: str
                    ) -> dict[str, Any]:  # fmt: skip
    """``DELETE /api/v3/order``'s answer (also each item of ``DELETE openOrders``)."""
    full = order_object(order, market, binance_symbol)
    out = {"symbol": binance_symbol, "origClientOrderId": full["clientOrderId"],
           "orderId": full["orderId"], "orderListId": -1,
           "clientOrderId": full["clientOrderId"],
           "transactTime": order.get("updated_at") or full["time"]}  # fmt: skip
    for name in ("price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty",
                 "status", "timeInForce", "type", "side", "selfTradePreventionMode"):
        out[name] = full[name]
    if full["type"] not in ("LIMIT", "LIMIT_MAKER", "MARKET"):
        out["stopPrice"] = full["stopPrice"]
    return out


def quote_qty(price: str, qty: str) -> str:
    """price * qty, exact, without exponent."""
    return format(Decimal(price) * Decimal(qty), "f")


def public_trade(trade: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/v3/trades``'s item for a native trade record."""
    return {"id": trade["trade_id"], "price": trade["price"], "qty": trade["quantity"],
            "quoteQty": quote_qty(trade["price"], trade["quantity"]),
            "time": trade["timestamp"], "isBuyerMaker": trade["aggressor_side"] == "sell",
            "isBestMatch": True}  # fmt: skip


def agg_trades(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``GET /api/v3/aggTrades``: consecutive trades of one taker order at one price are one
    aggregate (Binance's rule); the aggregate's id is its first trade's id. Oldest first."""
    out: list[dict[str, Any]] = []
    for t in trades:
        last = out[-1] if out else None
        if (last is not None and last["_taker"] == t["taker_order_id"]
                and last["p"] == t["price"] and last["l"] + 1 == t["trade_id"]):  # fmt: skip
            last["q"] = format(Decimal(last["q"]) + Decimal(t["quantity"]), "f")
            last["l"] = t["trade_id"]
            continue
        out.append({"a": t["trade_id"], "p": t["price"], "q": t["quantity"],
                    "f": t["trade_id"], "l": t["trade_id"], "T": t["timestamp"],
                    "m": t["aggressor_side"] == "sell", "M": True,
                    "_taker": t["taker_order_id"]})  # fmt: skip
    for agg in out:
        del agg["_taker"]
    return out


def my_trade(fill: dict[str, Any], order: dict[str, Any], binance_symbol: str, time_ms: int
             ) -> dict[str, Any]:  # fmt: skip
    """``GET /api/v3/myTrades``'s item for one fill of one of the caller's orders."""
    return {"symbol": binance_symbol, "id": fill["trade_id"], "orderId": order["order_id"],
            "orderListId": -1, "price": fill["price"], "qty": fill["quantity"],
            "quoteQty": quote_qty(fill["price"], fill["quantity"]),
            "commission": fill["fee"], "commissionAsset": fill["fee_asset"], "time": time_ms,
            "isBuyer": order.get("side") == "buy", "isMaker": fill.get("liquidity") == "maker",
            "isBestMatch": True}  # fmt: skip


def symbol_info(market: Market, binance_symbol: str) -> dict[str, Any]:
    """One ``exchangeInfo`` symbol: the market's rules as Binance's filters."""
    tick, lot = str(market.tick_size), str(market.lot_size)
    max_price = market.format_price(MAX_UNITS)  # the validator's bound, in ticks
    return {
        "symbol": binance_symbol,
        "status": "TRADING",
        "baseAsset": market.base_asset,
        "baseAssetPrecision": market.base_decimals,
        "quoteAsset": market.quote_asset,
        "quotePrecision": market.quote_decimals,
        "quoteAssetPrecision": market.quote_decimals,
        "baseCommissionPrecision": market.base_decimals,
        "quoteCommissionPrecision": market.quote_decimals,
        "orderTypes": list(ORDER_TYPES),
        "icebergAllowed": False,
        "ocoAllowed": False,
        "otoAllowed": False,
        "opoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": False,
        "amendAllowed": False,
        "pegInstructionsAllowed": False,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": max_price,
             "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": str(market.min_quantity),
             "maxQty": str(market.max_quantity), "stepSize": lot},
            {"filterType": "MARKET_LOT_SIZE", "minQty": str(market.min_quantity),
             "maxQty": str(market.max_quantity), "stepSize": lot},
            {"filterType": "NOTIONAL", "minNotional": str(market.min_notional),
             "applyMinToMarket": False, "maxNotional": "9000000000000000",
             "applyMaxToMarket": False, "avgPriceMins": 0},
        ],  # fmt: skip
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": DEFAULT_STP,
        "allowedSelfTradePreventionModes": list(STP_MODES),
    }
