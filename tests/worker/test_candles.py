"""Candles: what the worker stores equals a naive recomputation from the trades, every interval.

The processor is driven with generated journal entries (two funded accounts, a maker order and
a crossing taker per trade, times that cross second/minute/hour/day/week/month boundaries,
batches cut anywhere); the ``kline:`` zsets are modelled as the commit writes them (one member
per open time, newest wins, trimmed); then every Binance interval is derived with
``protocol.candles.aggregate`` and compared with candles computed here from the trade records
with plain ``Decimal`` arithmetic and ``datetime`` calendars.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.markets import Market
from protocol import wire
from protocol.candles import DERIVED_FROM, INTERVALS, RETENTION, aggregate, native
from protocol.config import load_markets
from worker.batch import Batch
from worker.processor import Processor

MARKETS = load_markets()
SYMBOLS = ["BTC-USDT", "ETH-BTC"]
START = 1_709_078_400_000  # 2024-02-28 00:00 UTC (a leap February, a Wednesday)
STEPS = [0, 1, 999, 1_000, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999, 86_400_000,
         3 * 86_400_000, 7 * 86_400_000, 31 * 86_400_000]  # fmt: skip

trade_st = st.tuples(
    st.sampled_from(STEPS),  # ms after the previous trade
    st.sampled_from(SYMBOLS),
    st.integers(1, 50),  # price, in ticks above a base
    st.integers(1, 20),  # quantity multiple
    st.booleans(),  # the taker buys
)


class Journal:
    def __init__(self) -> None:
        self.entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.next_id = 0
        self.seq = 0
        self.last_ms = 0

    def add(self, ms: int, command: dict[str, Any]) -> None:
        self.next_id += 1
        self.seq = self.seq + 1 if ms == self.last_ms else 0
        self.last_ms = ms
        command["id"] = self.next_id << 8
        self.entries.append((f"{ms}-{self.seq}".encode(), {b"c": wire.dumps(command)}))


def journal_of(trades: list[tuple[int, str, int, int, bool]]) -> Journal:
    j = Journal()
    for account in ("1", "2"):
        for asset in ("BTC", "ETH", "USDT"):
            j.add(START - 1, {"op": "deposit", "account": account, "asset": asset,
                              "amount": "100000", "deposit_id": f"d-{account}-{asset}"})
    ms = START
    for step, symbol, price, qty, taker_buys in trades:
        ms += step
        market = MARKETS[symbol]
        base = Decimal("100" if symbol == "BTC-USDT" else "0.05")
        p = format(base + price * market.tick_size, "f")
        lots = market.min_lots * qty * (1000 if symbol == "BTC-USDT" else 20)
        q = market.format_qty(lots)
        maker_side, taker_side = ("sell", "buy") if taker_buys else ("buy", "sell")
        common = {"symbol": symbol, "type": "limit", "post_only": False, "price": p,
                  "quantity": q, "quote_quantity": None, "stop_price": None,
                  "client_order_id": None, "stp": "cancel_maker"}  # fmt: skip
        j.add(ms, {"op": "new", "account": "1", "side": maker_side, "time_in_force": "GTC",
                   **common})  # fmt: skip
        j.add(ms, {"op": "new", "account": "2", "side": taker_side, "time_in_force": "IOC",
                   **common})  # fmt: skip
    return j


def naive(market: Market, interval: str, trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candles straight from the trade records, no shared code."""

    def bucket(ts: int) -> tuple[int, int]:
        when = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
        if interval == "1M":
            start = when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            nxt = (start + dt.timedelta(days=32)).replace(day=1)
        elif interval == "1w":
            day = when.replace(hour=0, minute=0, second=0, microsecond=0)
            start = day - dt.timedelta(days=day.weekday())
            nxt = start + dt.timedelta(days=7)
        else:
            span = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[interval[-1]]
            span *= int(interval[:-1])
            return ts // span * span, ts // span * span + span - 1
        return int(start.timestamp() * 1000), int(nxt.timestamp() * 1000) - 1

    out: dict[int, dict[str, Any]] = {}
    for t in trades:
        opened, closed = bucket(t["timestamp"])
        price, qty = Decimal(t["price"]), Decimal(t["quantity"])
        c = out.get(opened)
        if c is None:
            c = out[opened] = {"open_time": opened, "close_time": closed, "open": price,
                               "high": price, "low": price, "volume": Decimal(0),
                               "quote_volume": Decimal(0), "trades": 0, "tbv": Decimal(0),
                               "tbq": Decimal(0), "first": t["trade_id"]}  # fmt: skip
        c["high"], c["low"], c["close"] = max(c["high"], price), min(c["low"], price), price
        c["volume"] += qty
        c["quote_volume"] += price * qty
        c["trades"] += 1
        c["last"] = t["trade_id"]
        if t["aggressor_side"] == "buy":
            c["tbv"] += qty
            c["tbq"] += price * qty
    return [out[k] for k in sorted(out)]


def same(mine: dict[str, Any], want: dict[str, Any]) -> bool:
    return (
        mine["open_time"] == want["open_time"] and mine["close_time"] == want["close_time"]
        and all(Decimal(mine[k]) == want[k] for k in ("open", "high", "low", "close", "volume",
                                                     "quote_volume"))
        and Decimal(mine["taker_buy_volume"]) == want["tbv"]
        and Decimal(mine["taker_buy_quote_volume"]) == want["tbq"]
        and mine["trades"] == want["trades"] and mine["first_trade_id"] == want["first"]
        and mine["last_trade_id"] == want["last"]
    )  # fmt: skip


def store(zsets: dict[tuple[str, str], dict[int, bytes]], batch: Batch) -> None:
    """What the commit's ZREMRANGEBYSCORE + ZADD + ZREMRANGEBYRANK do to the zsets."""
    for c in batch.candles:
        kept = zsets.setdefault((c.symbol, c.interval), {})
        kept[c.open_time] = c.value
        while len(kept) > RETENTION[c.interval]:
            del kept[min(kept)]


@settings(max_examples=60)
@given(trades=st.lists(trade_st, min_size=1, max_size=60), cuts=st.lists(st.integers(1, 40)),
       snapshot_at=st.integers(0, 5))  # fmt: skip
def test_klines_of_every_interval_equal_a_recomputation(trades, cuts, snapshot_at):
    journal = journal_of(trades)
    proc = Processor(MARKETS)
    zsets: dict[tuple[str, str], dict[int, bytes]] = {}
    records: list[dict[str, Any]] = []
    at, n = 0, 0
    entries = journal.entries
    for cut in [*cuts, len(entries)]:
        chunk = entries[at : at + cut]
        at += len(chunk)
        if not chunk:
            break
        batch = proc.process(chunk)
        store(zsets, batch)
        records += [wire.loads(t.record) for t in batch.trades]
        n += 1
        if n == snapshot_at:  # a restart from a snapshot continues the open candles
            proc = Processor.from_blob(MARKETS, proc.snapshot_blob())
    if at < len(entries):
        batch = proc.process(entries[at:])
        store(zsets, batch)
        records += [wire.loads(t.record) for t in batch.trades]
    assert len(records) == len(trades)  # every generated pair traded
    for symbol in SYMBOLS:
        market = MARKETS[symbol]
        mine_trades = [t for t in records if t["symbol"] == symbol]
        for interval in INTERVALS:
            base = DERIVED_FROM[interval]
            stored = [wire.loads(v) for _, v in sorted(zsets.get((symbol, base), {}).items())]
            mine = aggregate(market, interval, stored)
            want = naive(market, interval, mine_trades)
            assert len(mine) == len(want), (symbol, interval)
            for m, w in zip(mine, want, strict=True):
                assert same(m, w), (symbol, interval, m, w)
                assert list(native(m)) == ["open_time", "close_time", "open", "high", "low",
                                           "close", "volume", "quote_volume", "trades"]


def test_state_only_mode_advances_candles_too():
    """Recovery replays with emit=False: the open candles must come out the same."""
    journal = journal_of([(0, "BTC-USDT", 1, 1, True), (1000, "BTC-USDT", 3, 2, False),
                          (5, "BTC-USDT", 2, 1, True)])  # fmt: skip
    live, silent = Processor(MARKETS), Processor(MARKETS)
    live.process(journal.entries[:5])
    silent.process(journal.entries[:5], emit=False)
    assert live.process(journal.entries[5:]).candles
    assert silent.process(journal.entries[5:], emit=False).candles == []
    assert live.candles == silent.candles
    assert Processor.from_blob(MARKETS, silent.snapshot_blob()).candles == live.candles


def test_commit_writes_one_member_per_candle_and_trims(redis_client, monkeypatch):
    """On a real Redis: a candle rewritten by later batches stays one member (its final
    value), and a key is trimmed to its retention when a batch opens a candle."""
    from protocol.candles import RETENTION as retention
    from protocol.keys import Keys
    from worker.commit import batch_commands

    monkeypatch.setitem(retention, "1s", 3)
    trades = [(0, "BTC-USDT", 1, 1, True), (10, "BTC-USDT", 2, 1, False)]
    trades += [(1000, "BTC-USDT", i, 1, True) for i in range(3, 8)]
    journal = journal_of(trades)
    proc, keys = Processor(MARKETS), Keys(0)
    zsets: dict[tuple[str, str], dict[int, bytes]] = {}
    for start in range(0, len(journal.entries), 2):  # one trade per batch after the deposits
        batch = proc.process(journal.entries[start : start + 2])
        store(zsets, batch)
        for command in batch_commands(batch, keys):
            redis_client.execute_command(*command)
    for interval in ("1s", "1m"):
        key = keys.kline("BTC-USDT", interval)
        stored = redis_client.zrange(key, 0, -1, withscores=True)
        want = sorted(zsets[("BTC-USDT", interval)].items())
        assert [(int(s), m) for m, s in stored] == want
    assert len(want) == 1 and wire.loads(want[0][1])["trades"] == 7  # 1m: one candle, all
    assert redis_client.zcard(keys.kline("BTC-USDT", "1s")) == 3
