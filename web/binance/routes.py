"""``/api/v3``: Binance's Spot REST endpoints over Fairbook's journal and records.

Public market data reads the records the worker commits (``book:<symbol>``,
``recent:<symbol>``); signed endpoints are verified by :mod:`web.binance.signing`, orders are
translated to the native body (:mod:`web.binance.translate`) and go through the same
``engine.validation`` and ``Journal.submit`` as ``POST /api/v1/orders``; reads come from the
order records and their ``open:``/``closed:`` indexes and from ``balances:<account>``.
"""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request

from engine.markets import Market
from protocol.candles import INTERVALS
from web import candles
from web.app import Fairbook, config_float, state
from web.binance import errors, signing, trading, translate
from web.binance.errors import BinanceError
from web.binance.trading import READ, TRADE, symbols
from web.binance.trading import book as _book
from web.binance.trading import int_param as _int
from web.binance.trading import now_ms as _now_ms
from web.binance.trading import orders as _orders
from web.binance.trading import rate as _rate
from web.binance.trading import ticker_24hr as _ticker_24hr
from web.binance.translate import Symbols
from web.limits import binance_limits, count_order, order_counts

public = Blueprint("binance_public", __name__, url_prefix="/api/v3")
signed = Blueprint("binance_signed", __name__, url_prefix="/api/v3")

DEFAULT_DEPTH = 100
BOOK_LEVELS = 500  # what the book key holds per side
MAX_TRADES = 1000  # what recent:<symbol> holds
DEFAULT_LIMIT = 500
AVG_PRICE_MINS = 5


def _public_params() -> dict[str, str]:
    query = request.query_string
    if not query.isascii():
        raise BinanceError(errors.ILLEGAL_CHARS, errors.MSG_ILLEGAL)
    return signing.parse(query)


def _market(native: str) -> Market:
    return state().markets[native]


def _recent(st: Fairbook, native: str, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` trades, oldest first."""
    rows = st.redis.lrange(st.namespace.keys_for(native).recent(native), 0, count - 1)
    return [json.loads(r) for r in reversed(rows)]


def _selected(params: dict[str, str]) -> list[str] | None:
    """``symbol=`` or ``symbols=["A","B"]`` as native symbols; None: neither was sent."""
    one, many = params.get("symbol"), params.get("symbols")
    if one and many:
        raise BinanceError(-1128, "Combination of optional parameters invalid.")
    if one:
        return [symbols().to_native(one)]
    if many:
        try:
            names = json.loads(many)
        except ValueError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise errors.invalid_parameter("symbols")
        return [symbols().to_native(n) for n in names]
    return None


# -- public -------------------------------------------------------------------------------------


@public.get("/ping")
def ping():
    """Connectivity: ``{}``."""
    return jsonify({})


@public.get("/time")
def server_time():
    """``{"serverTime"}`` in ms: what ``timestamp`` is checked against."""
    return jsonify({"serverTime": _now_ms()})


def _rate_limits() -> list[dict[str, Any]]:
    """The configured limits in Binance's shape (none when rate limits are off)."""
    limits = binance_limits(current_app)
    return [rule.described() for rule in limits.rules()] if limits is not None else []


@public.get("/exchangeInfo")
def exchange_info():
    """Markets as Binance symbols with their filters (``symbol`` / ``symbols`` select)."""
    params = _public_params()
    st = state()
    chosen = _selected(params) or list(st.markets)
    names = symbols().binance
    return jsonify({
        "timezone": "UTC",
        "serverTime": _now_ms(),
        "rateLimits": _rate_limits(),
        "exchangeFilters": [],
        "symbols": [translate.symbol_info(st.markets[s], names[s]) for s in chosen],
    })  # fmt: skip


@public.get("/depth")
def depth():
    """Top ``limit`` levels (default 100, at most the 500 the book key holds);
    ``lastUpdateId`` is the book's sequence, the one its increments carry."""
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    limit = _int(params, "limit", DEFAULT_DEPTH, 1, 5000) or DEFAULT_DEPTH
    limit = min(limit, BOOK_LEVELS)
    book = _book(state(), native)
    return jsonify({"lastUpdateId": book.get("sequence", 0),
                    "bids": (book.get("bids") or [])[:limit],
                    "asks": (book.get("asks") or [])[:limit]})  # fmt: skip


@public.get("/trades")
def trades():
    """The newest ``limit`` trades (default 500, max 1000), oldest first."""
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_TRADES) or DEFAULT_LIMIT
    return jsonify([translate.public_trade(t) for t in _recent(state(), native, limit)])


@signed.get("/historicalTrades")
def historical_trades():
    """Trades from ``fromId`` on (default: the newest), ``limit`` default 500 max 1000, oldest
    first; Binance's MARKET_DATA security: a live key in ``X-MBX-APIKEY``, no signature. Only
    the 1,000 newest trades are kept for this (``recent:<symbol>``)."""
    signing.identify()
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_TRADES) or DEFAULT_LIMIT
    from_id = _int(params, "fromId", None, 0)
    rows = _recent(state(), native, MAX_TRADES)
    if from_id is not None:
        rows = [t for t in rows if t["trade_id"] >= from_id][:limit]
    else:
        rows = rows[-limit:]
    return jsonify([translate.public_trade(t) for t in rows])


@public.get("/aggTrades")
def agg_trades():
    """Aggregate trades (one taker order at one price) of the newest 1000 trades;
    ``fromId`` / ``startTime`` / ``endTime`` select among them, ``limit`` default 500."""
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_TRADES) or DEFAULT_LIMIT
    from_id = _int(params, "fromId", None, 0)
    start, end = _int(params, "startTime", None, 0), _int(params, "endTime", None, 0)
    aggs = translate.agg_trades(_recent(state(), native, MAX_TRADES))
    if from_id is not None:
        aggs = [a for a in aggs if a["l"] >= from_id]
    if start is not None:
        aggs = [a for a in aggs if a["T"] >= start]
    if end is not None:
        aggs = [a for a in aggs if a["T"] <= end]
    forward = from_id is not None or start is not None
    return jsonify(aggs[:limit] if forward else aggs[-limit:])


def _kline_rows():
    """Binance's kline array: [open time, open, high, low, close, volume, close time, quote
    volume, trades, taker buy base volume, taker buy quote volume, "0"]."""
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    interval = params.get("interval")
    if not interval:
        raise errors.mandatory("interval")
    if interval not in INTERVALS:
        raise BinanceError(-1120, "Invalid interval.")
    limit = _int(params, "limit", candles.DEFAULT_LIMIT, 1, candles.MAX_LIMIT)
    start, end = _int(params, "startTime", None, 0), _int(params, "endTime", None, 0)
    if start is not None and end is not None and start > end:
        raise BinanceError(errors.INVALID_PARAMETER, "startTime cannot be greater than endTime.")
    st = state()
    rows = candles.klines(st.redis, st.namespace.keys_for(native), _market(native), interval,
                          start, end, limit or candles.DEFAULT_LIMIT)  # fmt: skip
    return jsonify([[c["open_time"], c["open"], c["high"], c["low"], c["close"], c["volume"],
                     c["close_time"], c["quote_volume"], c["trades"], c["taker_buy_volume"],
                     c["taker_buy_quote_volume"], "0"] for c in rows])  # fmt: skip


@public.get("/klines")
def klines():
    """Candles of any of Binance's intervals, oldest first (``startTime``, ``endTime``,
    ``limit`` default 500 max 1000), derived from the worker's 1s/1m/1h/1d candles."""
    return _kline_rows()


@public.get("/uiKlines")
def ui_klines():
    """As ``klines`` (Binance tunes these for charts; ours are the same candles)."""
    return _kline_rows()


@public.get("/ticker/24hr")
def ticker_24hr():
    """24 h statistics (the 1,440 one-minute candles ending with the last trade's minute):
    one ``symbol`` -> an object, ``symbols`` or none -> an array; ``type`` FULL or MINI."""
    params = _public_params()
    kind = params.get("type") or "FULL"
    if kind not in ("FULL", "MINI"):
        raise errors.invalid_parameter("type")
    st = state()
    return _one_or_many(params, lambda s: _ticker_24hr(st, s, kind == "FULL"))


_WINDOW = re.compile(r"([1-9][0-9]?)([mhd])")
_WINDOW_LIMITS = {"m": (59, 1), "h": (23, 60), "d": (7, 1440)}  # Binance's ranges; minutes


@public.get("/ticker")
def rolling_ticker():
    """Rolling window statistics: ``windowSize`` 1m-59m, 1h-23h, 1d-7d (default 1d) of
    one-minute candles ending with the last trade's minute; ``symbol`` or ``symbols``
    (required, at most 100); ``type`` FULL or MINI."""
    params = _public_params()
    kind = params.get("type") or "FULL"
    if kind not in ("FULL", "MINI"):
        raise errors.invalid_parameter("type")
    size = params.get("windowSize") or "1d"
    match = _WINDOW.fullmatch(size)
    if match is None or int(match.group(1)) > _WINDOW_LIMITS[match.group(2)][0]:
        raise errors.invalid_parameter("windowSize")
    minutes = int(match.group(1)) * _WINDOW_LIMITS[match.group(2)][1]
    chosen = _selected(params)
    if chosen is None:
        raise errors.mandatory("symbol")
    if len(chosen) > 100:
        raise errors.invalid_parameter("symbols")
    st = state()
    return _one_or_many(params, lambda s: _ticker_24hr(st, s, kind == "FULL", minutes, True))


def _last_price(st: Fairbook, native: str) -> str:
    rows = st.redis.lrange(st.namespace.keys_for(native).recent(native), 0, 0)
    return json.loads(rows[0])["price"] if rows else _market(native).format_price(0)


def _one_or_many(params: dict[str, str], item: Any):
    chosen = _selected(params)
    if chosen is not None and params.get("symbol"):
        return jsonify(item(chosen[0]))
    return jsonify([item(s) for s in (chosen or list(state().markets))])


@public.get("/ticker/price")
def ticker_price():
    """Last trade price: one symbol -> an object, ``symbols`` or none -> an array."""
    st = state()
    names = symbols().binance
    return _one_or_many(_public_params(),
                        lambda s: {"symbol": names[s], "price": _last_price(st, s)})  # fmt: skip


@public.get("/ticker/bookTicker")
def book_ticker():
    """Best bid and ask with their quantities (zeros for an empty side)."""
    st = state()
    names = symbols().binance

    def item(native: str) -> dict[str, Any]:
        book = _book(st, native)
        market = _market(native)
        zero_p, zero_q = market.format_price(0), market.format_qty(0)
        bids, asks = book.get("bids") or [], book.get("asks") or []
        bid = bids[0] if bids else [zero_p, zero_q]
        ask = asks[0] if asks else [zero_p, zero_q]
        return {"symbol": names[native], "bidPrice": bid[0], "bidQty": bid[1],
                "askPrice": ask[0], "askQty": ask[1]}  # fmt: skip

    return _one_or_many(_public_params(), item)


@public.get("/avgPrice")
def avg_price():
    """Volume-weighted price of the last 5 minutes' trades (the last price if none)."""
    params = _public_params()
    native = symbols().to_native(params.get("symbol"))
    market = _market(native)
    recent = _recent(state(), native, MAX_TRADES)
    since = _now_ms() - AVG_PRICE_MINS * 60_000
    window = [t for t in recent if t["timestamp"] >= since]
    if window:
        qty = sum((Decimal(t["quantity"]) for t in window), Decimal(0))
        notional = sum((Decimal(t["price"]) * Decimal(t["quantity"]) for t in window), Decimal(0))
        price = format((notional / qty).quantize(market.tick_size), "f")
    else:
        price = recent[-1]["price"] if recent else market.format_price(0)
    close = recent[-1]["timestamp"] if recent else 0
    return jsonify({"mins": AVG_PRICE_MINS, "price": price, "closeTime": close})


# -- signed: orders -----------------------------------------------------------------------------


@signed.post("/order")
def new_order():
    """Place an order: translated, validated and journaled exactly as a native one. An
    engine rejection is an error as on Binance (-2010 ...); ``ACK`` answers once journaled."""
    s = signing.verify(TRADE)
    count_order(s.account)  # every verified attempt counts, valid or not
    placed = trading.place(s.account, s.params)
    st = state()
    order_id, reply = st.journal(placed.partition).submit(placed.wire, st.reply_timeout)
    return jsonify(placed.answer(order_id, reply))


@signed.post("/order/test")
def test_order():
    """Everything ``POST /order`` checks, nothing journaled: ``{}`` (or the commission rates
    with ``computeCommissionRates=true``)."""
    s = signing.verify(TRADE)
    return jsonify(trading.test_order(s.params))


@signed.get("/order")
def query_order():
    """One own order of ``symbol`` by ``orderId`` or ``origClientOrderId`` (-2013 if none)."""
    s = signing.verify(READ)
    return jsonify(trading.query_order(s.account, s.params))


def _journaled_cancel(cancel: trading.Cancel):
    st = state()
    _, reply = st.journal(cancel.partition).submit(cancel.wire, st.reply_timeout)
    return jsonify(cancel.answer(reply))


@signed.delete("/order")
def cancel_order():
    """Cancel one own open order (-2011 "Unknown order sent." if there is none such)."""
    s = signing.verify(TRADE)
    return _journaled_cancel(trading.cancel(s.account, s.params))


@signed.get("/openOrders")
def open_orders():
    """Own open orders, of ``symbol`` or of every symbol, oldest first."""
    s = signing.verify(READ)
    return jsonify(trading.open_orders(s.account, s.params))


@signed.delete("/openOrders")
def cancel_open_orders():
    """Cancel every own open order of ``symbol`` (one journaled cancel_all); -2011 if none."""
    s = signing.verify(TRADE)
    return _journaled_cancel(trading.cancel_all(s.account, s.params))


def _window(items: list[dict[str, Any]], params: dict[str, str], id_name: str, id_field: str,
            time_field: str) -> list[dict[str, Any]]:  # fmt: skip
    """Binance's selection: ``<id_name>`` (from that id on), ``startTime``/``endTime``,
    ``limit`` (default 500, max 1000); oldest first."""
    first = _int(params, id_name, None, 0)
    start, end = _int(params, "startTime", None, 0), _int(params, "endTime", None, 0)
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, 1000) or DEFAULT_LIMIT
    items.sort(key=lambda i: i[id_field])
    if first is not None:
        items = [i for i in items if i[id_field] >= first]
    if start is not None:
        items = [i for i in items if i[time_field] >= start]
    if end is not None:
        items = [i for i in items if i[time_field] <= end]
    forward = first is not None or start is not None
    return items[:limit] if forward else items[-limit:]


@signed.get("/allOrders")
def all_orders():
    """Own orders of ``symbol``, open and closed (the newest 1,000 closed ones are kept)."""
    s = signing.verify(READ)
    native = symbols().to_native(s.params.get("symbol"))
    st = state()
    market, bsym = _market(native), symbols().binance[native]
    orders = _orders(st, st.namespace.partition(native), s.account, ("open", "closed"), native)
    items = [translate.order_object(o, market, bsym) for o in orders]
    return jsonify(_window(items, s.params, "orderId", "orderId", "time"))


def _trade_times(st: Fairbook, partition: int, account: str, native: str) -> dict[int, int]:
    """trade id -> time of the caller's fills of ``native``, from its ledger (fills in order
    records carry no time of their own; the ledger keeps the newest 1,000 entries)."""
    out: dict[int, int] = {}
    for raw in st.redis.lrange(st.keys(partition).ledger(account), 0, 999):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("symbol") == native and entry.get("trade_id") is not None:
            out.setdefault(entry["trade_id"], entry.get("timestamp") or 0)
    return out


@signed.get("/myTrades")
def my_trades():
    """Own fills of ``symbol`` from the order records (``orderId``, ``fromId``, times,
    ``limit``), oldest first."""
    s = signing.verify(READ)
    native = symbols().to_native(s.params.get("symbol"))
    st = state()
    partition = st.namespace.partition(native)
    only = _int(s.params, "orderId", None, 1)
    orders = _orders(st, partition, s.account, ("open", "closed"), native)
    times = _trade_times(st, partition, s.account, native)
    bsym = symbols().binance[native]
    items = []
    for order in orders:
        if only is not None and order.get("order_id") != only:
            continue
        for fill in order.get("fills") or []:
            when = fill.get("timestamp") or times.get(fill["trade_id"]) or order.get("updated_at")
            items.append(translate.my_trade(fill, order, bsym, int(when or 0)))
    return jsonify(_window(items, s.params, "fromId", "id", "time"))


@signed.get("/account")
def account():
    """Balances (free = available, locked, summed over the partitions), commission rates
    (the markets' own when they agree, else the highest of them) and the key's permissions."""
    s = signing.verify(READ)
    return jsonify(trading.account_info(s.key, s.params))


@signed.get("/account/commission")
def account_commission():
    """The commission rates of one symbol (the account-wide ones in ``account`` are only the
    highest when the markets differ)."""
    s = signing.verify(READ)
    native = symbols().to_native(s.params.get("symbol"))
    market = _market(native)
    zero = _rate(Decimal(0))
    nothing = {"maker": zero, "taker": zero, "buyer": zero, "seller": zero}
    return jsonify({
        "symbol": symbols().binance[native],
        "standardCommission": {"maker": _rate(market.maker_fee_rate),
                               "taker": _rate(market.taker_fee_rate), "buyer": zero,
                               "seller": zero},
        "specialCommission": nothing,
        "taxCommission": nothing,
        "discount": {"enabledForAccount": False, "enabledForSymbol": False,
                     "discountAsset": None, "discount": zero},
    })  # fmt: skip


@signed.get("/rateLimit/order")
def rate_limit_order():
    """The account's ORDERS limits with the orders counted in their current windows (Binance's
    "unfilled order count"; here every order placed counts: fills give nothing back)."""
    s = signing.verify(READ)
    return jsonify(order_counts(s.account))


# -- user data stream (legacy listenKey; the stream itself is served by the WebSocket side) -----
#: Binance: a listen key lives 60 minutes unless kept alive by a PUT
#: (``FAIRBOOK_BINANCE_LISTEN_KEY_TTL`` seconds: shorter for tests)
LISTEN_KEY_TTL_S = 3600


def listen_key_ttl() -> int:
    return max(1, int(config_float(current_app.config, "FAIRBOOK_BINANCE_LISTEN_KEY_TTL",
                                   LISTEN_KEY_TTL_S)))  # fmt: skip
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@signed.post("/userDataStream")
def user_data_stream_open():
    """USER_STREAM security (the key, no signature): the key's listen key, created or kept
    alive; the same one while it lives, as Binance answers."""
    key = signing.identify()
    keys = state().namespace.global_keys
    r = state().redis
    listen_key = r.get(keys.listen_key_of(key.key_hash))  # (the web's client decodes replies)
    if listen_key is None or not r.exists(keys.listen_key(listen_key)):
        listen_key = "".join(secrets.choice(_ALPHABET) for _ in range(60))
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.listen_key(listen_key), mapping={"account": key.account, "key": key.key_hash})
    pipe.expire(keys.listen_key(listen_key), listen_key_ttl())
    pipe.set(keys.listen_key_of(key.key_hash), listen_key, ex=listen_key_ttl())
    pipe.execute()
    return jsonify({"listenKey": listen_key})


def _own_listen_key() -> str:
    """The ``listenKey`` parameter, if it is a live key of the caller's API key (else -1125)."""
    key = signing.identify()
    params, _, _ = signing.request_params()
    listen_key = params.get("listenKey")
    if listen_key is None:
        raise errors.mandatory("listenKey")
    keys = state().namespace.global_keys
    owner = None
    if trading.LISTEN_KEY.fullmatch(listen_key):
        owner = state().redis.hget(keys.listen_key(listen_key), "key")
    if owner != key.key_hash:
        raise BinanceError(errors.INVALID_LISTEN_KEY, errors.MSG_LISTEN_KEY)
    return listen_key


@signed.put("/userDataStream")
def user_data_stream_keepalive():
    listen_key = _own_listen_key()
    keys = state().namespace.global_keys
    state().redis.expire(keys.listen_key(listen_key), listen_key_ttl())
    return jsonify({})


@signed.delete("/userDataStream")
def user_data_stream_close():
    listen_key = _own_listen_key()
    state().redis.delete(state().namespace.global_keys.listen_key(listen_key))
    return jsonify({})


def init_app(app: Flask) -> None:
    """Both blueprints under ``/api/v3`` and the symbol map (a collision stops start-up)."""
    app.extensions["fairbook_binance_symbols"] = Symbols(app.extensions["fairbook"].markets)
    app.register_blueprint(public)
    app.register_blueprint(signed)
