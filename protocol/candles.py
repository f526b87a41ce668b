"""Candles (klines): the intervals, their boundaries, and deriving one interval from another.

The worker keeps four *base* intervals per symbol (``1s 1m 1h 1d``, :data:`BASE`), one candle
per base interval that saw a trade, in the ``kline:<symbol>:<interval>`` zset. Every other
interval of Binance's list is derived on read by :func:`aggregate` from the base interval that
divides it (:data:`DERIVED_FROM`). Boundaries are UTC and follow Binance: weeks open on Monday
00:00, months on the 1st, everything else (``3d`` included) on multiples of its length since
the Unix epoch. Time is the trade's journal time (its command's stream id), never a clock.

A stored candle is the JSON object of :func:`protocol.wire.candle_value` (decimal strings in
the market's increments); aggregation parses them back to integer units, so no rounding.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from typing import Any, Final

from engine.markets import Market

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
WEEK: Final = 7 * DAY
#: The Unix epoch was a Thursday: Monday 1970-01-05 00:00 UTC is 4 days later.
WEEK_ORIGIN: Final = 4 * DAY

#: The intervals the worker stores, shortest first, with how many candles each keeps.
BASE: Final = ("1s", "1m", "1h", "1d")
BASE_SPANS: Final = (SECOND, MINUTE, HOUR, DAY)
RETENTION: Final = {"1s": 3_600, "1m": 10_080, "1h": 8_760, "1d": 3_650}

#: Every Binance interval -> (the base interval it is built from, its length in ms; 0 = a month)
INTERVALS: Final = {
    "1s": ("1s", SECOND),
    "1m": ("1m", MINUTE), "3m": ("1m", 3 * MINUTE), "5m": ("1m", 5 * MINUTE),
    "15m": ("1m", 15 * MINUTE), "30m": ("1m", 30 * MINUTE),
    "1h": ("1h", HOUR), "2h": ("1h", 2 * HOUR), "4h": ("1h", 4 * HOUR), "6h": ("1h", 6 * HOUR),
    "8h": ("1h", 8 * HOUR), "12h": ("1h", 12 * HOUR),
    "1d": ("1d", DAY), "3d": ("1d", 3 * DAY), "1w": ("1d", WEEK), "1M": ("1d", 0),
}  # fmt: skip
DERIVED_FROM: Final = {name: base for name, (base, _) in INTERVALS.items()}


def open_time(interval: str, ts: int) -> int:
    """The open time (ms) of the ``interval`` candle that holds the moment ``ts`` (ms)."""
    span = INTERVALS[interval][1]
    if interval == "1w":
        return ts - (ts - WEEK_ORIGIN) % WEEK
    if span == 0:  # calendar month, UTC
        year, month = _year_month(ts)
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
    return ts - ts % span


def close_time(interval: str, opened: int) -> int:
    """The last millisecond of the candle opened at ``opened``: the next one's open - 1."""
    span = INTERVALS[interval][1]
    if span == 0:
        year, month = _year_month(opened)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000 - 1
    return opened + span - 1


def _year_month(ts: int) -> tuple[int, int]:
    days = ts // DAY
    # civil-from-days (Howard Hinnant), exact for any day number
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month


def aggregate(market: Market, interval: str, candles: Iterable[dict[str, Any]]
              ) -> list[dict[str, Any]]:  # fmt: skip
    """Stored base candles (oldest first, of :data:`DERIVED_FROM` ``[interval]``) -> the
    ``interval`` candles they make, oldest first, in the stored form."""
    tick, lot, quote = market.tick.units, market.lot.units, market.quote.units
    out: list[dict[str, Any]] = []
    cur: list[Any] | None = None  # [open_time, o, h, l, c, vol, qv, n, tbv, tbq, first, last]

    def flush() -> None:
        if cur is not None:
            out.append(_stored(market, interval, cur))

    for c in candles:
        t = open_time(interval, c["open_time"])
        high, low = tick(c["high"]), tick(c["low"])
        vol, qv = lot(c["volume"]), quote(c["quote_volume"])
        tbv, tbq = lot(c["taker_buy_volume"]), quote(c["taker_buy_quote_volume"])
        if cur is None or cur[0] != t:
            flush()
            cur = [t, tick(c["open"]), high, low, tick(c["close"]), vol, qv, c["trades"], tbv,
                   tbq, c["first_trade_id"], c["last_trade_id"]]  # fmt: skip
            continue
        cur[2] = max(cur[2], high)
        cur[3] = min(cur[3], low)
        cur[4] = tick(c["close"])
        cur[5] += vol
        cur[6] += qv
        cur[7] += c["trades"]
        cur[8] += tbv
        cur[9] += tbq
        cur[11] = c["last_trade_id"]
    flush()
    return out


def _stored(market: Market, interval: str, c: list[Any]) -> dict[str, Any]:
    fp, fq, fa = market.format_price, market.format_qty, market.format_quote
    return {"open_time": c[0], "close_time": close_time(interval, c[0]), "open": fp(c[1]),
            "high": fp(c[2]), "low": fp(c[3]), "close": fp(c[4]), "volume": fq(c[5]),
            "quote_volume": fa(c[6]), "trades": c[7], "taker_buy_volume": fq(c[8]),
            "taker_buy_quote_volume": fa(c[9]), "first_trade_id": c[10],
            "last_trade_id": c[11]}  # fmt: skip


#: The native API's candle: the stored one without the taker and trade-id fields.
NATIVE_FIELDS: Final = ("open_time", "close_time", "open", "high", "low", "close", "volume",
                        "quote_volume", "trades")  # fmt: skip


def native(candle: dict[str, Any]) -> dict[str, Any]:
    return {name: candle[name] for name in NATIVE_FIELDS}
