"""Differential test: the engine against the naive reference matcher and ledger, event for event
and, after every command, balance for balance (every account, every asset, the fee account
included), supply for supply and lock for lock (every open order)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from engine_helpers import (
    DIFF_SPECS,
    SMALL_SPECS,
    SymbolSpec,
    build_commands,
    engine_accounts,
    random_ops,
)
from reference import FEES, ReferenceEngine

from engine.commands import Command, Deposit, NewOrder, Reason, Withdrawal
from engine.ledger import FEE_ACCOUNT
from engine.markets import Market, assets_of
from engine.matcher import MatchingEngine
from protocol.config import load_markets

N_COMMANDS = 10_000


def _explain(i: int, cmd: Command, got: list[Any], want: list[Any], history: str) -> str:
    lines = [f"divergence at command #{i}: {cmd!r}", "engine events:"]
    lines += [f"    {e!r}" for e in got]
    lines.append("reference events:")
    lines += [f"    {e!r}" for e in want]
    lines.append(history)
    return "\n".join(lines)


def ledger_differences(engine: MatchingEngine, ref: ReferenceEngine) -> list[str]:
    """Every balance, supply and order lock on which the engine and the reference differ."""
    assert engine.ledger is not None and ref.ledger is not None
    out = []
    assets = list(assets_of(engine.markets))
    for account in sorted(engine_accounts(engine) | set(ref.ledger.accounts()) | {FEES}):
        for asset in assets:
            got = engine.ledger.balance(account, asset)
            want = ref.ledger.balance(account, asset)
            if got != want:
                out.append(f"{account} {asset}: engine {got}, reference {want}")
    for asset in assets:
        if engine.ledger.supply[asset] != ref.ledger.supply(asset):
            out.append(f"supply {asset}: {engine.ledger.supply[asset]} {ref.ledger.supply(asset)}")
    for oid, o in ref.open.items():
        mine = engine.order(oid)
        if mine is None or mine.locked != o.lock:
            out.append(f"order {oid} lock: engine {mine and mine.locked}, reference {o.lock}")
    return out


def compare(
    markets: dict[str, Market],
    commands: list[Command],
    depth_every: int = 50,
    risk: bool = True,
) -> dict[str, int]:
    """Run both; fail at the first difference. Returns counts of what the flow exercised."""
    engine = MatchingEngine(markets, risk=risk)
    ref = ReferenceEngine(markets, risk=risk)
    symbols = sorted({c.symbol for c in commands if getattr(c, "symbol", None)})
    seen: dict[str, int] = {}
    for i, cmd in enumerate(commands):
        got = engine.apply(cmd)
        want = ref.apply(cmd)
        engine.check()
        ref.check()
        recent = "\n".join(f"    #{j}: {commands[j]!r}" for j in range(max(0, i - 15), i))
        if got != want:
            pytest.fail(_explain(i, cmd, got, want, "previous commands:\n" + recent))
        if risk:
            diff = ledger_differences(engine, ref)
            if diff:
                pytest.fail(_explain(i, cmd, got, want, "\n".join(diff) + "\n" + recent))
        for e in got:
            key = e[0]
            if e[0] == "order":
                key = f"order:{e[4]}:{e[8]}"
            elif e[0] == "transfer":
                key = f"transfer:{e[2]}:{e[7]}:{e[8]}:{'repeat' if e[9] != e[1] else 'first'}"
            elif e[0] == "reject":
                key = f"reject:{e[3]}"
            seen[key] = seen.get(key, 0) + 1
        if i % depth_every == 0 or i == len(commands) - 1:
            for s in symbols:
                assert engine.book(s).depth(10**6) == ref.depth(s, 10**6), (i, s)
                assert engine.book(s).bbo() == ref.bbo(s), (i, s)
                assert engine.last_price(s) == ref.last_price(s), (i, s)
    return seen


def _flow(seed: int, specs: tuple[SymbolSpec, ...], funding: bool = True) -> list[Command]:
    return build_commands(specs, random_ops(random.Random(seed), N_COMMANDS, funding=funding))


def _exercised(seen: dict[str, int]) -> None:
    """The flow met the money rules, not only matching: every kind of outcome happened."""
    funds = Reason.INSUFFICIENT_FUNDS
    wanted = [
        f"order:rejected:{funds}",  # new orders not covered
        f"order:cancelled:{funds}",  # market orders that ran out of funds
        f"reject:{funds}",  # amends not covered
        "transfer:deposit:completed:None:first",
        "transfer:deposit:completed:None:repeat",
        "transfer:withdrawal:completed:None:first",
        f"transfer:withdrawal:rejected:{funds}:first",
        "transfer:withdrawal:completed:None:repeat",
        "trade",
    ]
    missing = [w for w in wanted if not seen.get(w)]
    assert not missing, (missing, seen)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_matches_reference_default_markets(seed: int) -> None:
    _exercised(compare(load_markets(), _flow(seed, DIFF_SPECS)))


def test_engine_matches_reference_small_markets(small_markets: dict[str, Market]) -> None:
    _exercised(compare(small_markets, _flow(7, SMALL_SPECS)))


def test_engine_matches_documented_rules_full_flow() -> None:
    """The same kind of flow, held to DESIGN.md's one bbo per command (after everything)."""
    compare(load_markets(), _flow(11, DIFF_SPECS))


@pytest.mark.parametrize("seed", [21, 22])
def test_engine_matches_reference_without_risk(seed: int) -> None:
    """``risk=False`` (the benchmarks' switch): matching alone, no funds needed."""
    seen = compare(load_markets(), _flow(seed, DIFF_SPECS, funding=False), risk=False)
    assert not any("insufficient" in k for k in seen)


def test_fee_account_is_compared() -> None:
    """The fee account of the reference is the engine's."""
    assert FEES == FEE_ACCOUNT == "@fees"


@pytest.mark.parametrize("seed", [4, 5])
def test_snapshot_restore_every_1000_commands_equals_uninterrupted(seed: int) -> None:
    markets = load_markets()
    commands = _flow(seed, DIFF_SPECS)
    assert any(isinstance(c, Deposit) for c in commands)
    assert any(isinstance(c, Withdrawal) for c in commands)
    assert any(isinstance(c, NewOrder) for c in commands)
    straight = MatchingEngine(markets)
    expected: list[list[Any]] = []
    straight_blobs: dict[int, bytes] = {}
    for i, cmd in enumerate(commands):
        if i % 1_000 == 0:
            straight_blobs[i] = straight.snapshot()
        expected.append(straight.apply(cmd))
    engine = MatchingEngine(markets)
    for i, cmd in enumerate(commands):
        if i and i % 1_000 == 0:
            blob = engine.snapshot()
            engine = MatchingEngine.restore(markets, blob)
            assert engine.snapshot() == blob, f"snapshot of a restore differs at #{i}"
            assert blob == straight_blobs[i], f"snapshot bytes differ from the uninterrupted #{i}"
            engine.check()
        got = engine.apply(cmd)
        assert got == expected[i], _explain(i, cmd, got, expected[i], "(restored engine)")
    assert engine.snapshot() == straight.snapshot()
    assert engine.ledger is not None and straight.ledger is not None
    for account in engine_accounts(straight) | engine_accounts(engine):
        assert engine.ledger.balances(account) == straight.ledger.balances(account), account
    assert engine.ledger.supply == straight.ledger.supply
