"""Candles and 24 h tickers over HTTP: /api/v1/klines, /api/v1/ticker and the /api/v3 twins.

The candles are made by the worker's own code (a Processor over journal entries, its batch
written with ``worker.commit.batch_commands``), so the routes read exactly what a worker
commits; the live-stack and ccxt tests are in tests/web/binance/test_binance_ccxt.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from protocol import wire
from protocol.config import load_markets
from protocol.keys import Keys
from worker.commit import batch_commands
from worker.processor import Processor

MARKETS = load_markets()
START = 1_709_078_400_000  # Wednesday 2024-02-28 00:00 UTC
MIN, DAY = 60_000, 86_400_000
#: (ms, price, quantity, taker side)
TRADES = [
    (START + 1_000, "100.01", "0.01", "buy"),
    (START + 31_000, "100.05", "0.02", "sell"),
    (START + 2 * MIN, "100.02", "0.01", "buy"),
    (START + DAY + 5 * MIN + 7, "100.10", "0.03", "buy"),  # Thursday 2024-02-29 00:05
]


def _entries() -> list[tuple[bytes, dict[bytes, bytes]]]:
    out: list[tuple[bytes, dict[bytes, bytes]]] = []

    def add(ms: int, command: dict[str, Any]) -> None:
        command["id"] = (len(out) + 1) << 8
        out.append((f"{ms}-{len(out)}".encode(), {b"c": wire.dumps(command)}))

    for account in ("1", "2"):
        for asset in ("BTC", "USDT"):
            add(START - 1, {"op": "deposit", "account": account, "asset": asset,
                            "amount": "100000", "deposit_id": f"k-{account}-{asset}"})
    for ms, price, qty, taker in TRADES:
        common = {"symbol": "BTC-USDT", "type": "limit", "post_only": False, "price": price,
                  "quantity": qty, "quote_quantity": None, "stop_price": None,
                  "client_order_id": None, "stp": "cancel_maker"}  # fmt: skip
        add(ms, {"op": "new", "account": "1", "side": "sell" if taker == "buy" else "buy",
                 "time_in_force": "GTC", **common})  # fmt: skip
        add(ms, {"op": "new", "account": "2", "side": taker, "time_in_force": "IOC", **common})
    return out


@pytest.fixture
def traded(redis_url, web_app) -> None:
    """The four trades committed as a worker commits them (two batches)."""
    raw = redis.Redis.from_url(redis_url)
    proc = Processor(MARKETS)
    entries = _entries()
    for chunk in (entries[:7], entries[7:]):
        batch = proc.process(chunk)
        for command in batch_commands(batch, Keys(0)):
            raw.execute_command(*command)
    raw.close()


def test_native_klines_every_interval_and_selection(client, traded):
    one = client.get("/api/v1/klines/BTC-USDT").get_json()  # default 1m
    assert [c["open_time"] for c in one] == [START, START + 2 * MIN, START + DAY + 5 * MIN]
    assert one[0] == {"open_time": START, "close_time": START + MIN - 1, "open": "100.01",
                      "high": "100.05", "low": "100.01", "close": "100.05",
                      "volume": "0.03000", "quote_volume": "3.0011000", "trades": 2}
    five = client.get("/api/v1/klines/BTC-USDT?interval=5m").get_json()
    assert [(c["open_time"], c["trades"], c["close"]) for c in five] == [
        (START, 3, "100.02"), (START + DAY + 5 * MIN, 1, "100.10")]
    week = client.get("/api/v1/klines/BTC-USDT?interval=1w").get_json()
    monday = START - 2 * DAY
    assert [(c["open_time"], c["close_time"], c["trades"], c["high"]) for c in week] == [
        (monday, monday + 7 * DAY - 1, 4, "100.10")]
    month = client.get("/api/v1/klines/BTC-USDT?interval=1M").get_json()
    feb, mar = 1_706_745_600_000, 1_709_251_200_000
    assert [(c["open_time"], c["close_time"]) for c in month] == [(feb, mar - 1)]
    assert month[0]["volume"] == "0.07000" and month[0]["low"] == "100.01"
    for interval in ("1s", "3m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d"):
        rows = client.get(f"/api/v1/klines/BTC-USDT?interval={interval}").get_json()
        assert sum(c["trades"] for c in rows) == 4, interval
        assert [c["open_time"] for c in rows] == sorted(c["open_time"] for c in rows)
    # newest `limit`; from start_time on; up to end_time
    assert [c["open_time"] for c in client.get(
        "/api/v1/klines/BTC-USDT?limit=1").get_json()] == [START + DAY + 5 * MIN]
    got = client.get(f"/api/v1/klines/BTC-USDT?start_time={START + 1}&limit=1").get_json()
    assert [c["open_time"] for c in got] == [START + 2 * MIN]
    got = client.get(f"/api/v1/klines/BTC-USDT?end_time={START + 2 * MIN}").get_json()
    assert [c["open_time"] for c in got] == [START, START + 2 * MIN]
    got = client.get(f"/api/v1/klines/BTC-USDT?start_time={START}&end_time={START}").get_json()
    assert [c["open_time"] for c in got] == [START]
    assert client.get("/api/v1/klines/ETH-USDT").get_json() == []


@pytest.mark.parametrize("query", ["interval=2m", "interval=1M1", "limit=0", "limit=1001",
                                   "start_time=-1", "end_time=x"])  # fmt: skip
def test_native_klines_bad_queries(client, query):
    resp = client.get(f"/api/v1/klines/BTC-USDT?{query}")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_field"


def test_native_routes_unknown_symbol(client):
    assert client.get("/api/v1/klines/NOPE-USDT").status_code == 404
    assert client.get("/api/v1/ticker/NOPE-USDT").status_code == 404


def test_native_ticker_window_ends_at_the_last_trade(client, traded):
    got = client.get("/api/v1/ticker/BTC-USDT").get_json()
    # the 1,440 minutes ending with 2024-02-29 00:05 begin at 02-28 00:06: only the last trade
    assert got == {"symbol": "BTC-USDT", "open_time": START + 6 * MIN,
                   "close_time": START + DAY + 5 * MIN + 7, "open": "100.10", "high": "100.10",
                   "low": "100.10", "last": "100.10", "volume": "0.03000",
                   "quote_volume": "3.0030000", "price_change": "0.00",
                   "price_change_percent": "0.000", "trades": 1}  # fmt: skip
    empty = client.get("/api/v1/ticker/ETH-USDT").get_json()
    assert empty["open"] is None and empty["trades"] == 0 and empty["volume"] == "0.0000"


def test_binance_klines_and_ui_klines(client, traded):
    for path in ("klines", "uiKlines"):
        rows = client.get(f"/api/v3/{path}?symbol=BTCUSDT&interval=1m").get_json()
        assert rows[0] == [START, "100.01", "100.05", "100.01", "100.05", "0.03000",
                           START + MIN - 1, "3.0011000", 2, "0.01000", "1.0001000", "0"]
        assert len(rows) == 3
    rows = client.get(f"/api/v3/klines?symbol=BTCUSDT&interval=1d&startTime={START}"
                         f"&endTime={START + DAY}&limit=1").get_json()  # fmt: skip
    assert [r[0] for r in rows] == [START] and rows[0][8] == 3
    bad = client.get("/api/v3/klines?symbol=BTCUSDT&interval=7m")
    assert bad.status_code == 400 and bad.get_json() == {"code": -1120, "msg": "Invalid interval."}
    missing = client.get("/api/v3/klines?symbol=BTCUSDT").get_json()
    assert missing["code"] == -1102 and "'interval'" in missing["msg"]
    assert client.get("/api/v3/klines?symbol=NOPE&interval=1m").get_json()["code"] == -1121


def test_binance_ticker_24hr(client, traded):
    one = client.get("/api/v3/ticker/24hr?symbol=BTCUSDT").get_json()
    assert one == {"symbol": "BTCUSDT", "priceChange": "0.00", "priceChangePercent": "0.000",
                   "weightedAvgPrice": "100.10", "prevClosePrice": "100.02",
                   "lastPrice": "100.10", "lastQty": "0.03000", "bidPrice": "0.00",
                   "bidQty": "0.00000", "askPrice": "0.00", "askQty": "0.00000",
                   "openPrice": "100.10", "highPrice": "100.10", "lowPrice": "100.10",
                   "volume": "0.03000", "quoteVolume": "3.0030000",
                   "openTime": START + 6 * MIN, "closeTime": START + DAY + 5 * MIN + 7,
                   "firstId": 4, "lastId": 4, "count": 1}  # fmt: skip
    mini = client.get("/api/v3/ticker/24hr?symbol=BTCUSDT&type=MINI").get_json()
    assert set(mini) == {"symbol", "openPrice", "highPrice", "lowPrice", "lastPrice", "volume",
                         "quoteVolume", "openTime", "closeTime", "firstId", "lastId", "count"}
    many = client.get('/api/v3/ticker/24hr?symbols=["BTCUSDT","ETHUSDT"]').get_json()
    assert [t["symbol"] for t in many] == ["BTCUSDT", "ETHUSDT"]
    assert many[1]["count"] == 0 and many[1]["firstId"] == -1
    every = client.get("/api/v3/ticker/24hr").get_json()
    assert len(every) == len(MARKETS)
    assert client.get("/api/v3/ticker/24hr?type=HUGE").get_json()["code"] == -1130


def test_binance_rolling_window_ticker(client, traded):
    day = client.get("/api/v3/ticker?symbol=BTCUSDT").get_json()  # windowSize 1d
    assert day == {"symbol": "BTCUSDT", "priceChange": "0.00", "priceChangePercent": "0.000",
                   "weightedAvgPrice": "100.10", "openPrice": "100.10", "highPrice": "100.10",
                   "lowPrice": "100.10", "lastPrice": "100.10", "volume": "0.03000",
                   "quoteVolume": "3.0030000", "openTime": START + 6 * MIN,
                   "closeTime": START + DAY + 5 * MIN + 7, "firstId": 4, "lastId": 4,
                   "count": 1}  # fmt: skip
    two = client.get("/api/v3/ticker?symbol=BTCUSDT&windowSize=2d&type=MINI").get_json()
    assert two["count"] == 4 and two["openPrice"] == "100.01" and "priceChange" not in two
    assert two["openTime"] == START + DAY + 5 * MIN - (2 * 1440 - 1) * MIN
    many = client.get('/api/v3/ticker?symbols=["BTCUSDT","ETHUSDT"]&windowSize=5m').get_json()
    assert [t["count"] for t in many] == [1, 0]
    for bad in ("60m", "24h", "8d", "0m", "1w", "x"):
        got = client.get(f"/api/v3/ticker?symbol=BTCUSDT&windowSize={bad}").get_json()
        assert got["code"] == -1130, bad
    assert client.get("/api/v3/ticker").get_json()["code"] == -1102
