"""Matching-core benchmark: the engine against the bare matcher of ``bench baseline``, same run,
and the engine with its ledger (pre-trade risk, settlement) on against the same engine with it off.

``python -m bench core [--json PATH] [--commands N] [--runs R] [--mixed-commands N]``

The headline is a ratio, because these shared machines swing 2-3x in speed from hour to hour:
the bare price-time matcher (``bench.baseline.BareBook``) and ``MatchingEngine.apply`` process
THE SAME flow (``bench.baseline.bare_flow``: ~60 % passive limits, ~25 % cancels, ~15 %
marketable limits), converted to engine commands (GTC limits in integer ticks and lots, cancels
by the owning account; buyers and sellers are distinct accounts, so self-trade prevention never
changes a match). The engine runs with the ledger on, as deployed: before the clock starts, each
account gets a deposit covering every order it will ever place resting at once (price x quantity
x 2 for a buyer, the quantity for a seller), so no order is refused for funds and the matches are
the bare matcher's. After an untimed lead-in of each, runs alternate bare / engine / switch, in
the order ABC then CBA, and the ratio engine/bare is the median of the per-run ratios (target:
>= 0.5x). The switch measures what the ledger costs: a fresh engine with it and one without
(``MatchingEngine(markets, risk=False)``: no ledger, no deposits) take turns on the flow every
2,000 commands (who goes first alternates), each turn timed alone with the garbage collector
paused, so a machine that changes speed mid-run slows both alike; the ratio ledger on/off is the
median of the per-run ratios (target: >= 0.85x, the ledger costs at most 15 %). Whole runs of
the two swing too much on these machines to tell 15 % apart. All of them end with the same
trades and the same resting book; this is checked on every run.

Secondary figure, the rich mixed flow: every feature of the engine, with its own latency. The
flow is ~60 % passive limits near the mid, ~25 % cancels of live orders, ~15 % marketable
orders sweeping 1-3 levels (IOC/GTC limits and market orders), ~1 % of them stops. It is generated
by driving a scratch engine (so cancels hit live orders and sweeps really cross), then replayed on
a fresh engine: determinism makes the replay identical. Every feature stays on: fees, STP,
level/BBO events, stop checks, the ledger (each of the 200 accounts is funded first, untimed,
with 100 million USDT and that worth of BTC). Each of its runs has a switch of its own too.
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
from bench.flow import FUNDING_VALUE, funding_amounts
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
    Deposit,
    NewOrder,
    Reason,
)
from engine.markets import Market
from engine.matcher import MatchingEngine
from protocol.config import load_markets

SYMBOL = "BTC-USDT"
#: target of the same-flow ratio engine / bare matcher
TARGET_RATIO = 0.5
#: target of the ratio engine with the ledger on / off (``risk=False``), same flow, same run
TARGET_RISK_RATIO = 0.85
#: commands per turn when the two engines (ledger on / off) take turns on one flow
PAIR_CHUNK = 2000
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


def same_flow_deposits(commands: list[Command], market: Market) -> list[Deposit]:
    """One deposit per account and asset covering every order the account places resting at
    once: ``price x quantity x 2`` quote for a buy (the lock is price plus a taker fee of well
    under 100 %), the quantity for a sell. Ids follow the flow's, so no order id is taken."""
    need: dict[tuple[str, str], int] = {}
    for cmd in commands:
        if type(cmd) is NewOrder:
            assert cmd.quantity is not None and cmd.price is not None
            if cmd.side == BUY:
                key = (cmd.account, market.quote_asset)
                units = cmd.quantity * cmd.price * 2 * market.atom_units
            else:
                key = (cmd.account, market.base_asset)
                units = cmd.quantity * market.lot_units
            need[key] = need.get(key, 0) + units
    first = len(commands) + 1
    return [Deposit(first + i, TS0, account, asset, units, f"fund-{account}-{asset}")
            for i, ((account, asset), units) in enumerate(sorted(need.items()))]  # fmt: skip


def new_engine(deposits: list[Deposit] | None, risk: bool = True) -> MatchingEngine:
    """A fresh engine, ledger on (``deposits`` applied) or off (``risk=False``, none needed)."""
    if not risk:
        return MatchingEngine(load_markets(), risk=False)
    eng = MatchingEngine(load_markets())
    for deposit in deposits or ():
        eng.apply(deposit)
    return eng


def time_engine(
    commands: list[Command], deposits: list[Deposit] | None = None, risk: bool = True
) -> tuple[float, MatchingEngine]:
    """One timed pass through a fresh engine: (commands/s, the engine). Nothing but ``apply``
    in the loop, like the bare matcher's; the deposits (ledger on) are applied before the clock
    starts."""
    eng = new_engine(deposits, risk)
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


def time_engine_pair(
    commands: list[Command], deposits: list[Deposit], count_trades: bool = False,
    chunk: int = PAIR_CHUNK,
) -> tuple[dict[bool, float], dict[bool, MatchingEngine], dict[bool, int]]:  # fmt: skip
    """The measured switch: one pass of the flow through two fresh engines, ledger on
    (``True``) and off, taking turns every ``chunk`` commands (who goes first alternates), each
    turn timed alone, so a machine that changes speed mid-run slows both alike. The garbage
    collector is paused meanwhile (a collection would bill whichever engine is on turn for
    walking both engines' objects; the flow makes no cyclic garbage). Nothing but ``apply`` in
    the timed loops (with ``count_trades``, also a look at each event's kind, as the mixed flow
    has always done). Returns the commands/s, the engines and the trades counted of each."""
    engines = {True: new_engine(deposits), False: new_engine(None, risk=False)}
    spent = {True: 0.0, False: 0.0}
    trades = {True: 0, False: 0}
    clock = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for n, at in enumerate(range(0, len(commands), chunk)):
            part = commands[at : at + chunk]
            for risk in (True, False) if n % 2 == 0 else (False, True):
                apply = engines[risk].apply
                got = 0
                if count_trades:
                    start = clock()
                    for cmd in part:
                        for event in apply(cmd):
                            if event[0] == "trade":
                                got += 1
                else:
                    start = clock()
                    for cmd in part:
                        apply(cmd)
                spent[risk] += clock() - start
                trades[risk] += got
    finally:
        gc.enable()
    rates = {risk: len(commands) / spent[risk] for risk in spent}
    return rates, engines, trades


def run_same_flow(count: int, runs: int, seed: int) -> dict[str, Any]:
    """Runs of the bare matcher, the engine (ledger on) and the engine pair (ledger on / off,
    taking turns) on one flow, in the order ABC then CBA; every run's end state is compared,
    so the ratios compare like with like."""
    flow = bare_flow(count, seed)
    commands = engine_commands(flow)
    deposits = same_flow_deposits(commands, load_markets()[SYMBOL])
    warm = max(1, len(flow) // 4)  # an untimed lead-in of each: first-run costs out of the runs
    time_bare(flow[:warm])
    time_engine(commands[:warm], deposits)
    time_engine_pair(commands[:warm], deposits)
    rates: dict[str, list[float]] = {"bare": [], "engine": [], "pair_on": [], "pair_off": []}
    reference: tuple[int, Resting] | None = None
    for run in range(runs):
        states: list[tuple[str, tuple[int, Resting]]] = []
        order = ("bare", "engine", "pair")
        for which in order if run % 2 == 0 else order[::-1]:
            if which == "bare":
                rate, book = time_bare(flow)
                rates["bare"].append(rate)
                states.append(("bare matcher", (book.trades, bare_resting(book))))
            elif which == "engine":
                rate, eng = time_engine(commands, deposits)
                rates["engine"].append(rate)
                states.append(("engine", (eng.book(SYMBOL).trade_seq, engine_resting(eng))))
            else:
                pair, engines, _ = time_engine_pair(commands, deposits)
                rates["pair_on"].append(pair[True])
                rates["pair_off"].append(pair[False])
                for risk, name in ((True, "engine"), (False, "engine with the ledger off")):
                    eng = engines[risk]
                    states.append((name, (eng.book(SYMBOL).trade_seq, engine_resting(eng))))
        for name, state in states:
            if reference is None:
                reference = state
            elif state != reference:
                raise AssertionError(f"run {run + 1}: the {name} ended in another state")
        bare, engine_rate, on, off = (rates[k][-1] for k in rates)
        print(f"run {run + 1}: bare {bare:,.0f}, engine {engine_rate:,.0f} commands/s "
              f"({engine_rate / bare:.3f}x); turn by turn, ledger on {on:,.0f} vs off "
              f"{off:,.0f} = {on / off:.3f}x")  # fmt: skip
    assert reference is not None
    ratios = [e / b for e, b in zip(rates["engine"], rates["bare"], strict=True)]
    risk_ratios = [e / o for e, o in zip(rates["pair_on"], rates["pair_off"], strict=True)]
    trades, resting = reference
    return {
        "engine": {
            "commands_per_s": round(statistics.median(rates["engine"])),
            "runs": [round(r) for r in rates["engine"]],
            "ledger": True,
        },
        "bare_matcher": {
            "commands_per_s": round(statistics.median(rates["bare"])),
            "runs": [round(r) for r in rates["bare"]],
        },
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        # the measured switch (time_engine_pair): the same flow, ledger on and off, same runs
        "risk_switch": {
            "ledger_on_commands_per_s": round(statistics.median(rates["pair_on"])),
            "ledger_off_commands_per_s": round(statistics.median(rates["pair_off"])),
            "ledger_on_runs": [round(r) for r in rates["pair_on"]],
            "ledger_off_runs": [round(r) for r in rates["pair_off"]],
            "turn_commands": PAIR_CHUNK,
            "gc": "paused while timed",
        },
        "risk_ratio": round(statistics.median(risk_ratios), 3),
        "risk_ratios": [round(r, 3) for r in risk_ratios],
        "same_flow": {
            "commands": len(commands),
            "cancels": sum(1 for item in flow if item[0] == "cancel"),
            "trades": trades,
            "resting_orders": sum(len(o) for side in resting.values() for _, o in side),
            "deposits": len(deposits),  # applied before each ledger-on run, untimed
            "identical_end_state": True,  # checked above, every run, all four
            "seed": seed,
        },
    }


# -- the rich mixed flow ----------------------------------------------------------------------


MIXED_ACCOUNTS = [f"acct{i}" for i in range(200)]
MIXED_MID = 3_000_000  # 30,000.00 USDT in ticks


def mixed_flow_deposits(count: int) -> list[Deposit]:
    """Each mixed-flow account funded like :class:`bench.flow.OrderFlow` funds its accounts
    (``FUNDING_VALUE`` USDT and that worth of BTC at the starting mid); ids after the flow's."""
    amounts = funding_amounts(load_markets(), [SYMBOL], MIXED_MID, FUNDING_VALUE)
    pairs = [(a, asset) for a in MIXED_ACCOUNTS for asset in sorted(amounts)]
    return [Deposit(count + 1 + i, TS0, account, asset, amounts[asset], f"fund-{account}-{asset}")
            for i, (account, asset) in enumerate(pairs)]  # fmt: skip


def generate_flow(count: int, seed: int) -> tuple[list[Deposit], list[Command], int]:
    """Build ``count`` commands by consulting a scratch engine (its accounts funded first) for
    live orders and depth: (the deposits, the commands, how many orders the ledger refused or
    cut short for insufficient funds: the funding keeps it 0)."""
    rng = random.Random(seed)
    markets = load_markets()
    engine = MatchingEngine(markets)
    deposits = mixed_flow_deposits(count)
    for deposit in deposits:
        engine.apply(deposit)
    book = engine.book(SYMBOL)
    mid = MIXED_MID
    accounts = MIXED_ACCOUNTS
    live: list[int] = []
    commands: list[Command] = []
    short = 0
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
        for event in engine.apply(cmd):
            short += event[0] == "order" and event[8] == Reason.INSUFFICIENT_FUNDS
        commands.append(cmd)
    return deposits, commands, short


def run_latency(commands: list[Command], deposits: list[Deposit]) -> list[int]:
    engine = new_engine(deposits)
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


def run_throughput(commands: list[Command], deposits: list[Deposit]) -> tuple[float, int]:
    engine = new_engine(deposits)
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


def run_mixed_flow(count: int, runs: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    deposits, commands, short = generate_flow(count, seed)
    print(f"mixed flow: generated {len(commands):,} commands in {time.perf_counter() - t0:.1f} s"
          f" ({short} orders short of funds)")  # fmt: skip
    rates: list[float] = []
    switch: dict[bool, list[float]] = {True: [], False: []}
    trades = 0
    for run in range(runs):
        for which in ("engine", "switch") if run % 2 == 0 else ("switch", "engine"):
            if which == "engine":
                rate, trades = run_throughput(commands, deposits)
                rates.append(rate)
                continue
            pair, _, counted = time_engine_pair(commands, deposits, count_trades=True)
            if counted[True] != counted[False]:
                raise AssertionError(f"mixed flow: {counted[True]} trades with the ledger, "
                                     f"{counted[False]} without")  # fmt: skip
            for risk in (True, False):
                switch[risk].append(pair[risk])
        print(f"mixed flow run {run + 1}: {rates[-1]:,.0f} commands/s; turn by turn, ledger on "
              f"{switch[True][-1]:,.0f} vs off {switch[False][-1]:,.0f} = "
              f"{switch[True][-1] / switch[False][-1]:.3f}x")  # fmt: skip
    samples = run_latency(commands, deposits)
    risk_ratios = [a / b for a, b in zip(switch[True], switch[False], strict=True)]
    return {
        "commands_per_s": round(statistics.median(rates)),
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "p999_us": round(percentile(samples, 0.999), 2),
        "commands": len(commands),
        "trades": trades,
        "runs": [round(r) for r in rates],
        "risk_switch": {
            "ledger_on_commands_per_s": round(statistics.median(switch[True])),
            "ledger_off_commands_per_s": round(statistics.median(switch[False])),
            "ledger_on_runs": [round(r) for r in switch[True]],
            "ledger_off_runs": [round(r) for r in switch[False]],
        },
        "risk_ratio": round(statistics.median(risk_ratios), 3),
        "risk_ratios": [round(r, 3) for r in risk_ratios],
        "deposits": len(deposits),
        "insufficient_funds": short,
        "seed": seed,
    }


def summary(result: dict[str, Any]) -> str:
    e, b, m = result["engine"], result["bare_matcher"], result.get("mixed_flow")
    switch = result["risk_switch"]
    line = (
        f"bench core: engine {e['commands_per_s']:,} commands/s vs bare matcher "
        f"{b['commands_per_s']:,} on the same flow = {result['ratio']}x (target >= "
        f"{TARGET_RATIO}x; {result['same_flow']['trades']:,} trades each); ledger on "
        f"{switch['ledger_on_commands_per_s']:,} vs off {switch['ledger_off_commands_per_s']:,} "
        f"commands/s turn by turn = {result['risk_ratio']}x (target >= {TARGET_RISK_RATIO}x)"
    )
    if m:
        line += (
            f"; mixed flow {m['commands_per_s']:,} commands/s (ledger on/off turn by turn "
            f"{m['risk_ratio']}x), latency p50 "
            f"{m['p50_us']} us, p99 {m['p99_us']} us, p99.9 {m['p999_us']} us"
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
    result["target_risk_ratio"] = TARGET_RISK_RATIO
    result["native"] = engine.native()
    result["cpus"] = os.cpu_count()
    result["load_average"] = os.getloadavg()[0]
    print(summary(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0
