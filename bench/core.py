"""Matching-core benchmark: the engine against the bare matcher of ``bench baseline``, same run.

``python -m bench core [--json PATH] [--commands N] [--runs R] [--mixed-commands N]``

The headline is a ratio, because these shared machines swing 2-3x in speed from hour to hour:
the bare price-time matcher (``bench.baseline.BareBook``) and ``MatchingEngine.apply`` process
THE SAME flow (``bench.baseline.bare_flow``: ~60 % passive limits, ~25 % cancels, ~15 %
marketable limits), converted to engine commands (GTC limits in integer ticks and lots, cancels
by the owning account; buyers and sellers are distinct accounts, so self-trade prevention never
changes a match). After an untimed lead-in of each, runs alternate bare/engine, ABBA, and the
ratio engine/bare is the median of the per-pair ratios. Both end with the same trades and the
same resting book; this is checked on every run. Target: >= 0.5x.

Secondary figure, the rich mixed flow: every feature of the engine, with its own latency. The
flow is ~60 % passive limits near the mid, ~25 % cancels of live orders, ~15 % marketable
orders sweeping 1-3 levels (IOC/GTC limits and market orders), ~1 % of them stops. It is generated
by driving a scratch engine (so cancels hit live orders and sweeps really cross), then replayed on
a fresh engine: determinism makes the replay identical. Every feature stays on: fees, STP,
level/BBO events, stop checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
from typing import Any

import engine
from bench.baseline import BareBook, bare_flow, time_bare
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
#: target of the same-flow ratio engine / bare matcher
TARGET_RATIO = 0.5
#: bare-flow lots -> engine lots: 1-50 lots of 0.00001 BTC at 30,000 is below the 1 USDT minimum
#: notional; multiplying every quantity by one factor changes no match
LOT_SCALE = 100
#: accounts per side in the same flow (buyers b0.., sellers s0..: never a self-trade)
SIDE_ACCOUNTS = 100
TS0 = 1_700_000_000_000


# -- the same flow as the bare matcher --------------------------------------------------------


def engine_commands(flow: list[tuple[Any, ...]]) -> list[Command]:
    """``bare_flow`` as engine commands: the same orders, ids, prices and (scaled) sizes.

    Item ``i`` (from 1) of the flow is command id ``i``: a limit's order id is its position, so
    a cancel's own id is its position too.
    """
    owner: dict[int, str] = {}
    commands: list[Command] = []
    for i, item in enumerate(flow, 1):
        ts = TS0 + i // 4
        if item[0] == "limit":
            _, order_id, is_buy, price, qty = item
            account = f"{'b' if is_buy else 's'}{order_id % SIDE_ACCOUNTS}"
            owner[order_id] = account
            side = BUY if is_buy else SELL
            commands.append(NewOrder(order_id, ts, account, SYMBOL, side, LIMIT, GTC,
                                     price=price, quantity=qty * LOT_SCALE))  # fmt: skip
        else:
            order_id = item[1]
            commands.append(CancelOrder(i, ts, owner[order_id], order_id))
    return commands


Resting = dict[str, list[tuple[int, list[tuple[int, int]]]]]


def bare_resting(book: BareBook) -> Resting:
    """Live orders per level, best first: {"bids"|"asks": [(price, [(order id, lots)])]}."""
    out: Resting = {}
    for name, side, best_first in (("bids", book.bids, True), ("asks", book.asks, False)):
        prices = reversed(side.keys()) if best_first else side.keys()
        levels = [(p, [(o.order_id, o.qty) for o in side[p] if o.qty]) for p in prices]
        out[name] = [(p, orders) for p, orders in levels if orders]
    return out


def engine_resting(eng: MatchingEngine, scale: int = LOT_SCALE) -> Resting:
    """Like :func:`bare_resting`, from the engine's book (lots divided back by ``scale``)."""
    book = eng.book(SYMBOL)
    out: Resting = {}
    for name, side, best_first in (("bids", book.bids, True), ("asks", book.asks, False)):
        prices = reversed(side.keys()) if best_first else side.keys()
        levels = [(p, [(o.id, o.remaining // scale) for o in side[p].live_orders()])
                  for p in prices]  # fmt: skip
        out[name] = [(p, orders) for p, orders in levels if orders]
    return out


def time_engine(commands: list[Command]) -> tuple[float, MatchingEngine]:
    """One timed pass through a fresh engine: (commands/s, the engine). Nothing but ``apply``
    in the loop, like the bare matcher's."""
    eng = MatchingEngine(load_markets())
    apply = eng.apply
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        for cmd in commands:
            apply(cmd)
        elapsed = time.perf_counter() - start
    finally:
        gc.unfreeze()
    return len(commands) / elapsed, eng


def run_same_flow(count: int, runs: int, seed: int) -> dict[str, Any]:
    """Interleaved runs, ABBA, of the bare matcher and the engine on one flow; every run's end
    state is compared, so the ratio compares like with like."""
    flow = bare_flow(count, seed)
    commands = engine_commands(flow)
    warm = max(1, len(flow) // 4)  # an untimed lead-in of each: first-run costs out of the pairs
    time_bare(flow[:warm])
    time_engine(commands[:warm])
    bare_rates: list[float] = []
    engine_rates: list[float] = []
    reference: tuple[int, Resting] | None = None
    for run in range(runs):
        order = ("bare", "engine") if run % 2 == 0 else ("engine", "bare")
        for which in order:
            if which == "bare":
                rate, book = time_bare(flow)
                bare_rates.append(rate)
                state = (book.trades, bare_resting(book))
            else:
                rate, eng = time_engine(commands)
                engine_rates.append(rate)
                state = (eng.book(SYMBOL).trade_seq, engine_resting(eng))
            if reference is None:
                reference = state
            elif state != reference:
                raise AssertionError(f"run {run + 1}: the {which} ended in another state")
        print(f"run {run + 1}: bare {bare_rates[-1]:,.0f}, engine {engine_rates[-1]:,.0f} "
              f"commands/s ({engine_rates[-1] / bare_rates[-1]:.3f}x)")  # fmt: skip
    assert reference is not None
    ratios = [e / b for e, b in zip(engine_rates, bare_rates, strict=True)]
    trades, resting = reference
    return {
        "engine": {
            "commands_per_s": round(statistics.median(engine_rates)),
            "runs": [round(r) for r in engine_rates],
        },
        "bare_matcher": {
            "commands_per_s": round(statistics.median(bare_rates)),
            "runs": [round(r) for r in bare_rates],
        },
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "same_flow": {
            "commands": len(commands),
            "cancels": sum(1 for item in flow if item[0] == "cancel"),
            "trades": trades,
            "resting_orders": sum(len(o) for side in resting.values() for _, o in side),
            "identical_end_state": True,  # checked above, every run
            "seed": seed,
        },
    }


# -- the rich mixed flow ----------------------------------------------------------------------


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


def run_mixed_flow(count: int, runs: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    commands = generate_flow(count, seed)
    print(f"mixed flow: generated {len(commands):,} commands in {time.perf_counter() - t0:.1f} s")
    rates = []
    trades = 0
    for run in range(runs):
        rate, trades = run_throughput(commands)
        rates.append(rate)
        print(f"mixed flow run {run + 1}: {rate:,.0f} commands/s")
    samples = run_latency(commands)
    return {
        "commands_per_s": round(statistics.median(rates)),
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "p999_us": round(percentile(samples, 0.999), 2),
        "commands": len(commands),
        "trades": trades,
        "runs": [round(r) for r in rates],
        "seed": seed,
    }


def summary(result: dict[str, Any]) -> str:
    e, b, m = result["engine"], result["bare_matcher"], result.get("mixed_flow")
    line = (
        f"bench core: engine {e['commands_per_s']:,} commands/s vs bare matcher "
        f"{b['commands_per_s']:,} on the same flow = {result['ratio']}x (target >= "
        f"{TARGET_RATIO}x; {result['same_flow']['trades']:,} trades each)"
    )
    if m:
        line += (
            f"; mixed flow {m['commands_per_s']:,} commands/s, latency p50 {m['p50_us']} us, "
            f"p99 {m['p99_us']} us, p99.9 {m['p999_us']} us"
        )
    return line + f" ({'native' if result['native'] else 'pure Python'} modules)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench core", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--commands", type=int, default=1_000_000,
                        help="same-flow length (default: %(default)s)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3,
                        help="throughput runs of each; medians count (default: %(default)s)")
    parser.add_argument("--mixed-commands", type=int, default=None,
                        help="mixed-flow length (default: --commands; 0 skips it)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.commands < 1 or args.runs < 1:
        parser.error("--commands and --runs must be >= 1")
    mixed = args.commands if args.mixed_commands is None else args.mixed_commands

    result: dict[str, Any] = {"bench": "core", **run_same_flow(args.commands, args.runs, args.seed)}
    if mixed:
        result["mixed_flow"] = run_mixed_flow(mixed, args.runs, args.seed)
    result["target_ratio"] = TARGET_RATIO
    result["native"] = engine.native()
    result["cpus"] = os.cpu_count()
    result["load_average"] = os.getloadavg()[0]
    print(summary(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0
