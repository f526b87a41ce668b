"""Placing, cancelling and reading orders for ``/api/v3`` and the WebSocket API alike.

Why one module: ``POST /api/v3/order`` and ``order.place`` must accept, refuse and answer an
order identically, so both transports call these functions with the caller's account and its
parameters (``dict[str, str]``, the signature already checked) and only render the result. A
journaled operation is split in two: :func:`place` / :func:`cancel` / :func:`cancel_all` check
and build the wire command (in the request's app context); its ``answer`` turns the worker's
reply into Binance's object or error, using nothing but what the command captured, so the
WebSocket API can call it from the inbox's reader when the reply comes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import current_app

from engine.commands import partition_of_id
from engine.markets import Market, assets_of
from engine.units import SchemaError
from engine.validation import validate_order_request
from protocol.wire import parse_balances, parse_order_record
from web import candles
from web.app import Fairbook, state
from web.binance import errors, translate
from web.binance.errors import BinanceError
from web.binance.keys import ApiKey
from web.binance.translate import Symbols

READ = "read"
TRADE = "trade"
#: open orders read per partition at most for one answer (the closed index is trimmed to 1,000)
MAX_SCAN = 5000
_INTEGER = re.compile(r"[0-9]{1,19}")
#: a listen key: 60 letters and digits (REST's listenKey, the streams' ``/ws/<listenKey>``)
LISTEN_KEY = re.compile(r"[A-Za-z0-9]{60}")


def symbols() -> Symbols:
    return current_app.extensions["fairbook_binance_symbols"]


def now_ms() -> int:
    return int(time.time() * 1000)


def book(st: Fairbook, native: str) -> dict[str, Any]:
    """The symbol's book key (the worker's top 500 levels and ``sequence``)."""
    raw = st.get(st.namespace.keys_for(native).book(native))
    return json.loads(raw) if raw else {"sequence": 0, "bids": [], "asks": []}


def ticker_24hr(st: Fairbook, native: str, full: bool, minutes: int = candles.TICKER_MINUTES,
                rolling: bool = False) -> dict[str, Any]:  # fmt: skip
    """``GET /api/v3/ticker/24hr``'s (``/ticker``'s with ``rolling``) statistics of one symbol:
    the REST routes and the ``@ticker`` streams share this one definition."""
    market = st.markets[native]
    w = candles.window(st.redis, st.namespace.keys_for(native), market, minutes)
    zero_p, zero_q, zero_a = market.format_price(0), market.format_qty(0), market.format_quote(0)
    c = w.candle
    out: dict[str, Any] = {"symbol": symbols().binance[native]}
    if c is None:
        change, pct, wavg = zero_p, "0.000", zero_p
        opened = high = low = last = zero_p
        volume, quote, first, last_id, count = zero_q, zero_a, -1, -1, 0
    else:
        change, pct = candles.change(market, c["open"], c["close"])
        wavg = format((Decimal(c["quote_volume"]) / Decimal(c["volume"])).quantize(
            market.tick_size), "f")  # fmt: skip
        opened, high, low, last = c["open"], c["high"], c["low"], c["close"]
        volume, quote = c["volume"], c["quote_volume"]
        first, last_id, count = c["first_trade_id"], c["last_trade_id"], c["trades"]
    times = {"openTime": w.open_time or 0, "closeTime": w.close_time or 0, "firstId": first,
             "lastId": last_id, "count": count}  # fmt: skip
    if rolling:  # /ticker: no book, no previous close, no last quantity
        if not full:
            return {**out, "openPrice": opened, "highPrice": high, "lowPrice": low,
                    "lastPrice": last, "volume": volume, "quoteVolume": quote, **times}
        return {**out, "priceChange": change, "priceChangePercent": pct,
                "weightedAvgPrice": wavg, "openPrice": opened, "highPrice": high,
                "lowPrice": low, "lastPrice": last, "volume": volume, "quoteVolume": quote,
                **times}  # fmt: skip
    if not full:
        return {**out, "openPrice": opened, "highPrice": high, "lowPrice": low,
                "lastPrice": last, "volume": volume, "quoteVolume": quote, **times}  # fmt: skip
    book_ = book(st, native)
    bids, asks = book_.get("bids") or [], book_.get("asks") or []
    bid = bids[0] if bids else [zero_p, zero_q]
    ask = asks[0] if asks else [zero_p, zero_q]
    trade = w.last_trade if isinstance(w.last_trade, dict) else {}
    return {**out, "priceChange": change, "priceChangePercent": pct, "weightedAvgPrice": wavg,
            "prevClosePrice": w.prev_close or zero_p, "lastPrice": last,
            "lastQty": trade.get("quantity", zero_q), "bidPrice": bid[0], "bidQty": bid[1],
            "askPrice": ask[0], "askQty": ask[1], "openPrice": opened, "highPrice": high,
            "lowPrice": low, "volume": volume, "quoteVolume": quote, **times}  # fmt: skip


def int_param(params: dict[str, str], name: str, default: int | None, low: int = 1,
              high: int | None = None) -> int | None:  # fmt: skip
    """An integer parameter: -1100 if it is not one, clamped to ``high``, -1130 below ``low``."""
    text = params.get(name)
    if text is None or text == "":
        return default
    if not _INTEGER.fullmatch(text):
        raise errors.illegal(name, errors.INTEGER_RANGE)
    value = int(text)
    if value < low:
        raise errors.invalid_parameter(name)
    return min(value, high) if high is not None else value


def timeout() -> BinanceError:
    return BinanceError(errors.TIMEOUT, errors.MSG_TIMEOUT, 503)


def rate(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.00000001")), "f")


def amount(value: Decimal, decimals: int) -> str:
    """An amount with exactly the asset's decimals (as the balance records write them)."""
    return format(value.quantize(Decimal(1).scaleb(-decimals)), "f")


# -- reads --------------------------------------------------------------------------------------


def record(st: Fairbook, order_id: int) -> tuple[str, dict[str, Any]] | None:
    partition = partition_of_id(order_id)
    if partition not in st.partitions:
        return None
    return parse_order_record(st.get(st.keys(partition).order(order_id)))


def listed(order: dict[str, Any], symbol: str | None) -> bool:
    """Whether ``/api/v3`` shows the order: a rejected one never was an order on Binance (the
    request failed with -2010), so it is not found, listed or traded."""
    return order.get("status") != "rejected" and (symbol is None or order.get("symbol") == symbol)


def orders(st: Fairbook, partition: int, account: str, kinds: tuple[str, ...],
           symbol: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """The account's orders of the partition's ``open``/``closed`` indexes (newest first per
    index), optionally of one symbol, rejected ones left out."""
    k = st.keys(partition)
    out: list[dict[str, Any]] = []
    for kind in kinds:
        key = k.open(account) if kind == "open" else k.closed(account)
        ids = st.redis.zrevrange(key, 0, MAX_SCAN - 1)
        for start in range(0, len(ids), 500):
            chunk = [k.order(i) for i in ids[start : start + 500]]
            for raw in st.redis.mget(chunk):
                found = parse_order_record(raw)
                if found is not None and listed(found[1], symbol):
                    out.append(found[1])
    return out


def find_order(account: str, params: dict[str, str], native: str, open_only: bool
               ) -> dict[str, Any] | None:  # fmt: skip
    """The caller's order of ``symbol`` by ``orderId`` or ``origClientOrderId``: None when it
    is missing, another account's or another symbol's (one answer for all three)."""
    st = state()
    order_id = int_param(params, "orderId", None, 1)
    client_id = params.get("origClientOrderId") or None
    if order_id is None and client_id is None:
        raise BinanceError(errors.MANDATORY_PARAM, "Param 'origClientOrderId' or 'orderId' "
                           "must be sent, but both were empty/null!")  # fmt: skip
    if order_id is not None:
        if order_id >= 2**63:
            return None
        found = record(st, order_id)
        if found is None or found[0] != account or not listed(found[1], native):
            return None
        order = found[1]
        if client_id is not None and order.get("client_order_id") != client_id:
            return None
        return order
    kinds = ("open",) if open_only else ("open", "closed")
    for order in orders(st, st.namespace.partition(native), account, kinds, native):
        if order.get("client_order_id") == client_id:
            return order  # open first, then the newest closed one
    return None


def query_order(account: str, params: dict[str, str]) -> dict[str, Any]:
    """One own order of ``symbol`` by ``orderId`` or ``origClientOrderId`` (-2013 if none)."""
    native = symbols().to_native(params.get("symbol"))
    order = find_order(account, params, native, open_only=False)
    if order is None:
        raise errors.no_such_order()
    return translate.order_object(order, state().markets[native], symbols().binance[native])


def open_orders(account: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Own open orders, of ``symbol`` or of every symbol, oldest first."""
    st = state()
    chosen = params.get("symbol")
    native = symbols().to_native(chosen) if chosen else None
    partitions = [st.namespace.partition(native)] if native else list(st.partitions)
    found = [o for p in partitions for o in orders(st, p, account, ("open",), native)]
    found.sort(key=lambda o: o.get("order_id") or 0)
    names = symbols().binance
    return [translate.order_object(o, st.markets[o["symbol"]], names[o["symbol"]])
            for o in found if o.get("symbol") in names]  # fmt: skip


def account_info(key: ApiKey, params: dict[str, str]) -> dict[str, Any]:
    """Balances (free = available, locked, summed over the partitions), commission rates
    (the markets' own when they agree, else the highest of them) and the key's permissions."""
    omit_zero = params.get("omitZeroBalances") == "true"
    st = state()
    assets = assets_of(st.markets)
    totals = {name: [Decimal(0), Decimal(0)] for name in assets}
    for partition in st.partitions:
        raw = st.redis.hgetall(st.keys(partition).balances(key.account))
        for row in parse_balances(raw):
            if row["asset"] in totals:
                totals[row["asset"]][0] += Decimal(row["available"])
                totals[row["asset"]][1] += Decimal(row["locked"])
    markets = list(st.markets.values())
    maker = max((m.maker_fee_rate for m in markets), default=Decimal(0))
    taker = max((m.taker_fee_rate for m in markets), default=Decimal(0))
    perms = key.permissions
    return {
        "makerCommission": int(maker * 10000),
        "takerCommission": int(taker * 10000),
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": rate(maker), "taker": rate(taker),
                            "buyer": rate(Decimal(0)), "seller": rate(Decimal(0))},
        "canTrade": TRADE in perms,
        "canWithdraw": "withdraw" in perms,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": now_ms(),
        "accountType": "SPOT",
        "balances": [{"asset": name, "free": amount(free, assets[name].decimals),
                      "locked": amount(locked, assets[name].decimals)}
                     for name, (free, locked) in totals.items()
                     if not (omit_zero and free == 0 and locked == 0)],
        "permissions": ["SPOT"],
        "uid": int(key.account) if key.account.isdigit() else 0,
    }  # fmt: skip


# -- orders -------------------------------------------------------------------------------------


def _validated(params: dict[str, str]) -> tuple[dict[str, Any], str, str, str]:
    """(native wire command, native symbol, Binance type, response type) of a new order."""
    native = symbols().to_native(params.get("symbol"))
    body, kind, response_type = translate.order_request(params, native)
    try:
        wire, _ = validate_order_request(body, state().markets)
    except SchemaError as exc:
        raise errors.from_schema(exc, params, kind == "MARKET") from None
    return wire, native, kind, response_type


@dataclass(slots=True)
class Placement:
    """A checked new order: its wire command, where it goes, and how its answer reads."""

    wire: dict[str, Any]
    partition: int
    market: Market
    symbol: str  # Binance's name
    response_type: str

    def answer(self, order_id: int, reply: dict[str, Any] | None) -> dict[str, Any]:
        """The answer of ``POST /api/v3/order`` / ``order.place`` once the worker replied
        (None: no reply in time; an ACK is then answered, anything else is -1007)."""
        if reply is None:
            if self.response_type != "ACK":
                raise timeout()
            return {"symbol": self.symbol, "orderId": order_id, "orderListId": -1,
                    "clientOrderId": self.wire["client_order_id"],
                    "transactTime": now_ms()}  # fmt: skip
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise errors.rejected(str(error.get("code") or ""))
        order = reply["order"]
        if order.get("status") == "rejected":
            raise errors.rejected(order.get("reject_reason"))
        stp = translate.stp_name(self.wire.get("stp"))
        return translate.new_order_response(order, self.market, self.symbol,
                                            self.response_type, stp)  # fmt: skip


def place(account: str, params: dict[str, str]) -> Placement:
    """A new order of ``account``, translated and validated exactly as a native one."""
    wire, native, _, response_type = _validated(params)
    wire["account"] = account
    st = state()
    return Placement(wire, st.namespace.partition(native), st.markets[native],
                     symbols().binance[native], response_type)  # fmt: skip


def test_order(params: dict[str, str]) -> dict[str, Any]:
    """Everything a new order is checked for, nothing journaled: ``{}`` (or the commission
    rates with ``computeCommissionRates=true``)."""
    _, native, _, _ = _validated(params)
    if params.get("computeCommissionRates") != "true":
        return {}
    market = state().markets[native]
    return {
        "standardCommissionForOrder": {"maker": rate(market.maker_fee_rate),
                                       "taker": rate(market.taker_fee_rate)},
        "specialCommissionForOrder": {"maker": rate(Decimal(0)), "taker": rate(Decimal(0))},
        "taxCommissionForOrder": {"maker": rate(Decimal(0)), "taker": rate(Decimal(0))},
        "discount": {"enabledForAccount": False, "enabledForSymbol": False,
                     "discountAsset": None, "discount": rate(Decimal(0))},
    }  # fmt: skip


@dataclass(slots=True)
class Cancel:
    """A checked cancel of one open order (or of a symbol's open orders: ``every``)."""

    wire: dict[str, Any]
    partition: int
    market: Market
    symbol: str
    every: bool = False

    def answer(self, reply: dict[str, Any] | None) -> Any:
        """The cancel's answer (a list for ``every``); -2011 when nothing was cancelled."""
        if reply is None:
            raise timeout()
        if self.every:
            cancelled = (reply.get("cancelled") or []) if reply.get("ok") else []
            if not cancelled:
                raise errors.unknown_order()
            return [translate.cancel_response(o, self.market, self.symbol) for o in cancelled]
        if not reply.get("ok"):
            raise errors.unknown_order()
        return translate.cancel_response(reply["order"], self.market, self.symbol)


def cancel(account: str, params: dict[str, str]) -> Cancel:
    """Cancel one own open order (-2011 "Unknown order sent." if there is none such)."""
    native = symbols().to_native(params.get("symbol"))
    order = find_order(account, params, native, open_only=True)
    if order is None:
        raise errors.unknown_order()
    oid = order["order_id"]
    wire = {"op": "cancel", "account": account, "order_id": oid}
    return Cancel(wire, partition_of_id(oid), state().markets[native], symbols().binance[native])


def cancel_all(account: str, params: dict[str, str]) -> Cancel:
    """Cancel every own open order of ``symbol`` (one journaled cancel_all)."""
    native = symbols().to_native(params.get("symbol"))
    st = state()
    wire = {"op": "cancel_all", "account": account, "symbol": native}
    return Cancel(wire, st.namespace.partition(native), st.markets[native],
                  symbols().binance[native], every=True)  # fmt: skip
