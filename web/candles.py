"""Reading candles and 24 h tickers from the worker's ``kline:<symbol>:<interval>`` zsets.

Shared by ``/api/v1/klines``, ``/api/v1/ticker`` and their Binance twins. Every interval of
``protocol.candles.INTERVALS`` is answered from the base interval that divides it: the base
candles of a time window are read with one ``ZRANGE ... BYSCORE`` and aggregated
(``protocol.candles.aggregate``); a read takes at most ``limit`` x (base candles per
candle) members, so it never scans more than its answer needs. The 24 h ticker is the 1,440
one-minute candles ending with the last trade's minute (journal time: a quiet market shows
its last day of trading, the same after any restart or replay).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from engine.markets import Market
from protocol import wire
from protocol.candles import DAY, DERIVED_FROM, INTERVALS, MINUTE, aggregate, close_time, open_time
from protocol.keys import Keys

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
#: the ticker's window: this many 1m candles, the last one holding the newest trade
TICKER_MINUTES = DAY // MINUTE


def _ratio(interval: str) -> int:
    """At most this many base candles make one candle of ``interval``."""
    base, span = INTERVALS[interval]
    return 31 if span == 0 else span // INTERVALS[base][1]


def klines(client: Any, keys: Keys, market: Market, interval: str, start: int | None,
           end: int | None, limit: int) -> list[dict[str, Any]]:  # fmt: skip
    """Candles of ``interval`` (stored form, oldest first) whose open time is in
    ``[start, end]``: the first ``limit`` from ``start`` when it is given, else the last
    ``limit`` up to ``end`` (default: the newest). Intervals without a trade have no candle.

    At most ``limit`` x (base candles per candle) members are read; a candle cut by that
    count is always beyond the ``limit`` kept."""
    key = keys.kline(market.symbol, DERIVED_FROM[interval])
    count = limit * _ratio(interval)
    high: int | str = "+inf" if end is None else close_time(interval, open_time(interval, end))
    if start is not None:
        first = open_time(interval, start)
        if first < start:
            first = close_time(interval, first) + 1
        if high != "+inf" and int(high) < first:
            return []
        rows = client.zrangebyscore(key, first, high, start=0, num=count)
        return aggregate(market, interval, _parsed(rows))[:limit]
    rows = client.zrevrangebyscore(key, high, "-inf", start=0, num=count)
    rows.reverse()
    return aggregate(market, interval, _parsed(rows))[-limit:]


def _parsed(rows: list[Any]) -> list[dict[str, Any]]:
    return [c for c in (wire.parse_candle(r) for r in rows) if c is not None]


class Window:
    """The 24 h rolling window of one symbol (see the module docstring)."""

    __slots__ = ("candle", "prev_close", "last_trade", "open_time", "close_time")

    def __init__(self, candle: dict[str, Any] | None, prev_close: str | None,
                 last_trade: dict[str, Any] | None, opened: int | None,
                 closed: int | None) -> None:  # fmt: skip
        self.candle = candle  # the window as one candle (stored form), None: no trades yet
        self.prev_close = prev_close  # the close before the window, None if none is kept
        self.last_trade = last_trade
        self.open_time = opened
        self.close_time = closed


def window(client: Any, keys: Keys, market: Market, minutes: int = TICKER_MINUTES) -> Window:
    """The ``minutes`` one-minute candles ending with the symbol's newest (at most the 10,080
    that ``1m`` keeps)."""
    symbol = market.symbol
    key = keys.kline(symbol, "1m")
    pipe = client.pipeline(transaction=False)
    pipe.zrange(key, -1, -1, withscores=True)
    pipe.lindex(keys.recent(symbol), 0)
    newest, last_raw = pipe.execute()
    last_trade = None
    if last_raw:
        try:
            last_trade = wire.loads(last_raw)
        except wire.DecodeError:
            last_trade = None
    if not newest:
        return Window(None, None, last_trade, None, None)
    last_open = int(newest[0][1])
    first = last_open - (minutes - 1) * MINUTE
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(key, first, last_open)
    pipe.zrevrangebyscore(key, first - 1, "-inf", start=0, num=1)
    rows, before = pipe.execute()
    candles = _parsed(rows)
    if not candles:
        return Window(None, None, last_trade, None, None)
    # one candle for the whole window: aggregate as if it were one long interval
    whole = aggregate(market, "1M", [{**c, "open_time": 0} for c in candles])[0]
    prev = wire.parse_candle(before[0]) if before else None
    closed = last_open + MINUTE - 1
    if isinstance(last_trade, dict) and isinstance(last_trade.get("timestamp"), int):
        closed = min(closed, last_trade["timestamp"])
    return Window(whole, None if prev is None else prev["close"], last_trade, first, closed)


def change(market: Market, opened: str, last: str) -> tuple[str, str]:
    """(price change, percent change to 3 places) between two prices of the market."""
    a, b = market.tick.units(opened) or 0, market.tick.units(last) or 0
    pct = Decimal(0) if a == 0 else (Decimal(b - a) * 100 / Decimal(a))
    return market.format_price(b - a), format(pct.quantize(Decimal("0.001"), ROUND_HALF_UP), "f")


def native_ticker(market: Market, w: Window) -> dict[str, Any]:
    """``GET /api/v1/ticker/<symbol>``."""
    c = w.candle
    if c is None:
        return {"symbol": market.symbol, "open_time": None, "close_time": None, "open": None,
                "high": None, "low": None, "last": None, "volume": market.format_qty(0),
                "quote_volume": market.format_quote(0), "price_change": None,
                "price_change_percent": None, "trades": 0}  # fmt: skip
    diff, pct = change(market, c["open"], c["close"])
    return {"symbol": market.symbol, "open_time": w.open_time, "close_time": w.close_time,
            "open": c["open"], "high": c["high"], "low": c["low"], "last": c["close"],
            "volume": c["volume"], "quote_volume": c["quote_volume"], "price_change": diff,
            "price_change_percent": pct, "trades": c["trades"]}  # fmt: skip
