"""Matching-core benchmark: a seeded mixed flow straight into ``MatchingEngine.apply``.

The flow is ~60 % passive limits near the mid, ~25 % cancels of live orders, ~15 % marketable
orders sweeping 1-3 levels (IOC/GTC limits and market orders), ~1 % of them stops. It is generated
by driving a scratch engine (so cancels hit live orders and sweeps really cross), then replayed on
a fresh engine: determinism makes the replay identical. Every feature stays on: fees, STP,
level/BBO events, stop checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from typing import Any

import engine
from engine.commands import (
    BUY,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STOP_LOSS,
    CancelOrder,
    Command,
    NewOrder,
)
from engine.matcher import MatchingEngine
from protocol.config import load_markets

SYMBOL = "BTC-USDT"


def generate_flow(count: int, seed: int) -> list[Command]:
    """Build ``count`` commands by consulting a scratch engine for live orders and depth."""
    rng = random.Random(seed)
    markets = load_markets()
    engine = MatchingEngine(markets)
    book = engine.book(SYMBOL)
    mid = 3_000_000  # 30,000.00 USDT in ticks
    accounts = [f"acct{i}" for i in range(200)]
    live: list[int] = []
    commands: list[Command] = []
    ts = 1_700_000_000_000
    for i in range(1, count + 1):
        ts += rng.random() < 0.3
        roll = rng.random()
        account = rng.choice(accounts)
        cmd: Command
        if roll < 0.25 and live:
            pick = rng.randrange(len(live))
            live[pick], live[-1] = live[-1], live[pick]
            cmd = CancelOrder(i, ts, account, 0)
            order_id = live.pop()
            order = engine.order(order_id)
            if order is not None:
                cmd.account = order.account
            cmd.order_id = order_id
        elif roll < 0.40:
            side = BUY if rng.random() < 0.5 else SELL
            levels = rng.randint(1, 3)
            bids, asks = book.depth(levels)
            opposite = asks if side == BUY else bids
            if not opposite:
                qty = rng.randint(1, 50) * 100
                cmd = NewOrder(i, ts, account, SYMBOL, side, MARKET, IOC, quantity=qty)
            else:
                qty = sum(q for _, q in opposite[:levels])
                limit = opposite[min(levels, len(opposite)) - 1][0]
                style = rng.random()
                if style < 0.02:
                    stop_type_price = (book.last_price or mid) + (25 if side == BUY else -25)
                    cmd = NewOrder(i, ts, account, SYMBOL, side, STOP_LOSS, IOC,
                                   quantity=max(qty // 4, 1), stop_price=stop_type_price)
                elif style < 0.35:
                    cmd = NewOrder(i, ts, account, SYMBOL, side, MARKET, IOC, quantity=qty)
                elif style < 0.7:
                    cmd = NewOrder(i, ts, account, SYMBOL, side, LIMIT, IOC, price=limit,
                                   quantity=qty)
                else:
                    cmd = NewOrder(i, ts, account, SYMBOL, side, LIMIT, GTC, price=limit,
                                   quantity=qty + rng.randint(1, 20) * 100)
        else:
            side = BUY if rng.random() < 0.5 else SELL
            mid += rng.choice((-1, 0, 0, 1))
            offset = 1 + int(rng.expovariate(0.25))
            price = mid - offset if side == BUY else mid + offset
            if side == BUY and book.best_ask is not None and price >= book.best_ask:
                price = book.best_ask - 1
            if side == SELL and book.best_bid is not None and price <= book.best_bid:
                price = book.best_bid + 1
            qty = rng.randint(1, 100) * 100
            cmd = NewOrder(i, ts, account, SYMBOL, side, LIMIT, GTC, price=price, quantity=qty)
            live.append(i)
        engine.apply(cmd)
        commands.append(cmd)
    return commands


def run_throughput(commands: list[Command]) -> tuple[float, int]:
    engine = MatchingEngine(load_markets())
    apply = engine.apply
    trades = 0
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    for cmd in commands:
        for event in apply(cmd):
            if event[0] == "trade":
                trades += 1
    elapsed = time.perf_counter() - start
    gc.unfreeze()
    return len(commands) / elapsed, trades


def run_latency(commands: list[Command]) -> list[int]:
    engine = MatchingEngine(load_markets())
    apply = engine.apply
    clock = time.perf_counter_ns
    samples = [0] * len(commands)
    gc.collect()
    gc.freeze()
    for i, cmd in enumerate(commands):
        t0 = clock()
        apply(cmd)
        samples[i] = clock() - t0
    gc.unfreeze()
    samples.sort()
    return samples


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench core", description=__doc__)
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs; the median counts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    commands = generate_flow(args.commands, args.seed)
    print(f"generated {len(commands):,} commands in {time.perf_counter() - t0:.1f} s")
    rates = []
    trades = 0
    for run in range(args.runs):
        rate, trades = run_throughput(commands)
        rates.append(rate)
        print(f"run {run + 1}: {rate:,.0f} commands/s")
    samples = run_latency(commands)
    result: dict[str, Any] = {
        "commands_per_s": round(statistics.median(rates)),
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "p999_us": round(percentile(samples, 0.999), 2),
        "commands": len(commands),
        "trades": trades,
        "runs": [round(r) for r in rates],
        "native": engine.native(),
    }
    print(
        f"median {result['commands_per_s']:,} commands/s over {args.runs} runs; "
        f"{trades:,} trades; latency p50 {result['p50_us']} us, p99 {result['p99_us']} us, "
        f"p99.9 {result['p999_us']} us ({'native' if result['native'] else 'pure Python'} modules)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0
