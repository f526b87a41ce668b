"""Differential test: the engine against the naive reference matcher, event for event."""

from __future__ import annotations

import random
from typing import Any

import pytest
from engine_helpers import DIFF_SPECS, SMALL_SPECS, SymbolSpec, build_commands, random_ops
from reference import ReferenceEngine

from engine.commands import Command
from engine.markets import Market
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


def compare(
    markets: dict[str, Market],
    commands: list[Command],
    depth_every: int = 50,
) -> None:
    engine = MatchingEngine(markets)
    ref = ReferenceEngine(markets)
    symbols = sorted({c.symbol for c in commands if getattr(c, "symbol", None)})
    for i, cmd in enumerate(commands):
        got = engine.apply(cmd)
        want = ref.apply(cmd)
        engine.check()
        if got != want:
            recent = "\n".join(f"    #{j}: {commands[j]!r}" for j in range(max(0, i - 15), i))
            pytest.fail(_explain(i, cmd, got, want, "previous commands:\n" + recent))
        if i % depth_every == 0 or i == len(commands) - 1:
            for s in symbols:
                assert engine.book(s).depth(10**6) == ref.depth(s, 10**6), (i, s)
                assert engine.book(s).bbo() == ref.bbo(s), (i, s)
                assert engine.last_price(s) == ref.last_price(s), (i, s)


def _flow(seed: int, specs: tuple[SymbolSpec, ...]) -> list[Command]:
    return build_commands(specs, random_ops(random.Random(seed), N_COMMANDS))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_matches_reference_default_markets(seed: int) -> None:
    compare(load_markets(), _flow(seed, DIFF_SPECS))


def test_engine_matches_reference_small_markets(small_markets: dict[str, Market]) -> None:
    compare(small_markets, _flow(7, SMALL_SPECS))


def test_engine_matches_documented_rules_full_flow() -> None:
    """The same kind of flow, held to DESIGN.md's one bbo per command (after everything)."""
    compare(load_markets(), _flow(11, DIFF_SPECS))


@pytest.mark.parametrize("seed", [4, 5])
def test_snapshot_restore_every_1000_commands_equals_uninterrupted(seed: int) -> None:
    markets = load_markets()
    commands = _flow(seed, DIFF_SPECS)
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
        got = engine.apply(cmd)
        assert got == expected[i], _explain(i, cmd, got, expected[i], "(restored engine)")
    assert engine.snapshot() == straight.snapshot()
