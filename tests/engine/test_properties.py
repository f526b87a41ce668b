"""Property tests over random command flows (hypothesis): the invariants of a fair order book."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from engine_helpers import SMALL_SPECS, build_commands, ops_strategy, random_ops, small_markets
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import ReferenceEngine

from engine.commands import (
    BUY,
    CANCELLED,
    FILLED,
    FOK,
    PRICED_TYPES,
    REJECTED,
    SELL,
    AmendOrder,
    Command,
    NewOrder,
    Reason,
)
from engine.matcher import MatchingEngine

Event = tuple[Any, ...]
SYMBOLS = [s.symbol for s in SMALL_SPECS]
# Hand-drawn op lists shrink well; seeded flows (random_ops) reach deep, busy books more often.
FLOWS = st.one_of(
    st.lists(ops_strategy(len(SMALL_SPECS)), min_size=10, max_size=120),
    st.builds(
        lambda seed, n: random_ops(random.Random(seed), n),
        st.integers(0, 2**32),
        st.integers(10, 200),
    ),
)
SETTINGS = settings(max_examples=80)


@dataclass
class Run:
    commands: list[Command]
    events: list[list[Event]] = field(default_factory=list)
    #: per command, the reference book before it: symbol -> side -> [[id, price, remaining]]
    books_before: list[dict[str, dict[str, list[list[int]]]]] = field(default_factory=list)
    engine: MatchingEngine | None = None


def run(ops: list[tuple[Any, ...]], with_books: bool = False) -> Run:
    markets = small_markets()
    result = Run(build_commands(SMALL_SPECS, ops))
    engine = MatchingEngine(markets)
    ref = ReferenceEngine(markets) if with_books else None
    for cmd in result.commands:
        if ref is not None:
            result.books_before.append(
                {
                    s: {
                        side: [[o.id, o.price, o.remaining] for o in sym.side_orders(side)]
                        for side in (BUY, SELL)
                    }
                    for s, sym in ref.symbols.items()
                }
            )
            ref.apply(cmd)
        result.events.append(engine.apply(cmd))
        engine.check()  # every invariant, after every command
    result.engine = engine
    return result


def _order_info(commands: list[Command]) -> dict[int, NewOrder]:
    return {c.id: c for c in commands if isinstance(c, NewOrder)}


@SETTINGS
@given(FLOWS)
def test_book_never_crossed_at_rest(ops: list[tuple[Any, ...]]) -> None:
    markets = small_markets()
    engine = MatchingEngine(markets)
    for i, cmd in enumerate(build_commands(SMALL_SPECS, ops)):
        engine.apply(cmd)
        for s in SYMBOLS:
            bid, bid_qty, ask, ask_qty = engine.book(s).bbo()
            assert (bid is None) == (bid_qty == 0) and (ask is None) == (ask_qty == 0)
            assert bid is None or ask is None or bid < ask, (i, cmd, bid, ask)


@SETTINGS
@given(FLOWS)
def test_no_trade_through_price_time_priority(ops: list[tuple[Any, ...]]) -> None:
    """Trades at the maker's price, within the taker's limit, best price first, FIFO."""
    r = run(ops, with_books=True)
    info = _order_info(r.commands)
    price_of: dict[int, int | None] = {
        i: (c.price if c.type in PRICED_TYPES else None) for i, c in info.items()
    }
    for cmd, events, before in zip(r.commands, r.events, r.books_before, strict=True):
        if isinstance(cmd, AmendOrder) and cmd.price is not None:
            if any(e[0] == "order" and e[2] == cmd.order_id and e[8] == "amended" for e in events):
                price_of[cmd.order_id] = cmd.price
        shadow = {
            s: {side: [list(x) for x in lst] for side, lst in v.items()} for s, v in before.items()
        }
        for e in events:
            if e[0] == "order" and (e[4] in (CANCELLED, FILLED) or e[8] == "amended"):
                for side_list in shadow[e[1]].values():
                    side_list[:] = [x for x in side_list if x[0] != e[2]]
            if e[0] != "trade":
                continue
            _, symbol, _, price, qty, taker_side, maker_id, taker_id, ma, ta = e[:10]
            assert price_of[maker_id] == price, ("not at the maker's price", e)
            limit = price_of[taker_id]
            if limit is not None:
                assert price <= limit if taker_side == BUY else price >= limit, ("through", e)
            book_side = shadow[symbol][SELL if taker_side == BUY else BUY]
            known = [x for x in book_side if x[0] == maker_id]
            if known:
                better = [
                    x for x in book_side if (x[1] < price if taker_side == BUY else x[1] > price)
                ]
                assert not better, ("a better price was left on the book", e, better)
                at_level = [x for x in book_side if x[1] == price]
                assert at_level[0][0] == maker_id, ("FIFO broken", e, at_level)
                known[0][2] -= qty
                assert known[0][2] >= 0
                if known[0][2] == 0:
                    book_side.remove(known[0])


@SETTINGS
@given(FLOWS)
def test_quantity_conservation(ops: list[tuple[Any, ...]]) -> None:
    r = run(ops)
    info = _order_info(r.commands)
    total = {i: c.quantity for i, c in info.items()}
    traded: dict[int, int] = {}
    quote: dict[int, int] = {}
    for cmd, events in zip(r.commands, r.events, strict=True):
        if isinstance(cmd, AmendOrder) and cmd.quantity is not None:
            if any(e[0] == "order" and e[2] == cmd.order_id and e[8] == "amended" for e in events):
                total[cmd.order_id] = cmd.quantity
        for e in events:
            if e[0] == "trade":
                for oid in (e[6], e[7]):
                    traded[oid] = traded.get(oid, 0) + e[4]
                    quote[oid] = quote.get(oid, 0) + e[3] * e[4]
            elif e[0] == "order":
                _, _, oid, _, status, filled, remaining, cum, _ = e
                assert filled == traded.get(oid, 0), e
                assert cum == quote.get(oid, 0), e
                if status == REJECTED:
                    assert (filled, remaining, cum) == (0, 0, 0)
                    continue
                qty = total[oid]
                if qty is None:  # quote-budget market order
                    assert remaining == 0
                    assert cum <= info[oid].quote_quantity  # type: ignore[operator]
                elif status in (FILLED, CANCELLED):
                    assert remaining == 0 and filled <= qty, e
                    assert status != FILLED or filled == qty, e
                else:
                    assert filled + remaining == qty, e


@SETTINGS
@given(FLOWS)
def test_fok_is_all_or_nothing(ops: list[tuple[Any, ...]]) -> None:
    markets = small_markets()
    engine = MatchingEngine(markets)
    commands = build_commands(SMALL_SPECS, ops)
    fok = {c.id: c.quantity for c in commands if isinstance(c, NewOrder) and c.time_in_force == FOK}
    for cmd in commands:
        depth_before = {s: engine.book(s).depth(10**6) for s in SYMBOLS}
        events = engine.apply(cmd)
        for e in events:
            if e[0] == "order" and e[2] in fok and e[4] in (FILLED, CANCELLED):
                assert e[5] in (0, fok[e[2]]), e
        if cmd.id in fok and events[-1][8:] == (Reason.FOK_NOT_FILLABLE,):
            assert [e[4] for e in events] == ["new", CANCELLED], events
            assert {s: engine.book(s).depth(10**6) for s in SYMBOLS} == depth_before


@SETTINGS
@given(FLOWS)
def test_post_only_never_takes_and_no_self_trade(ops: list[tuple[Any, ...]]) -> None:
    r = run(ops)
    post_only = {c.id for c in r.commands if isinstance(c, NewOrder) and c.post_only}
    for events in r.events:
        for e in events:
            if e[0] == "trade":
                assert e[7] not in post_only, e
                assert e[8] != e[9], ("self-trade", e)


@SETTINGS
@given(FLOWS, st.data())
def test_snapshot_restore_equivalence(ops: list[tuple[Any, ...]], data: st.DataObject) -> None:
    markets = small_markets()
    commands = build_commands(SMALL_SPECS, ops)
    straight = MatchingEngine(markets)
    expected = [straight.apply(c) for c in commands]
    cuts = set(data.draw(st.lists(st.integers(0, len(commands)), max_size=3)))
    engine = MatchingEngine(markets)
    for i, cmd in enumerate(commands):
        if i in cuts:
            blob = engine.snapshot()
            engine = MatchingEngine.restore(markets, blob)
            assert engine.snapshot() == blob
        assert engine.apply(cmd) == expected[i], (i, cmd)
        engine.check()
    assert engine.snapshot() == straight.snapshot()


@SETTINGS
@given(FLOWS)
def test_determinism(ops: list[tuple[Any, ...]]) -> None:
    a, b = run(ops), run(ops)
    assert a.events == b.events
    assert a.engine is not None and b.engine is not None
    assert a.engine.snapshot() == b.engine.snapshot()


@SETTINGS
@given(FLOWS)
def test_level_events_match_the_book(ops: list[tuple[Any, ...]]) -> None:
    markets = small_markets()
    engine = MatchingEngine(markets)
    levels: dict[tuple[str, str, int], int] = {}
    reported: dict[str, tuple[Any, ...]] = {s: (None, 0, None, 0) for s in SYMBOLS}
    for cmd in build_commands(SMALL_SPECS, ops):
        for e in engine.apply(cmd):
            if e[0] == "level":
                levels[(e[1], e[2], e[3])] = e[4]
            elif e[0] == "bbo":
                assert tuple(e[2:]) != reported[e[1]], ("bbo without a change", e)
                reported[e[1]] = tuple(e[2:])
        for s in SYMBOLS:
            bids, asks = engine.book(s).depth(10**6)
            assert bids == sorted(
                ((p, q) for (sym, side, p), q in levels.items() if sym == s and side == BUY and q),
                reverse=True,
            )
            assert asks == sorted(
                (p, q) for (sym, side, p), q in levels.items() if sym == s and side == SELL and q
            )
            assert engine.book(s).bbo() == reported[s]


@SETTINGS
@given(FLOWS)
def test_depth_and_bbo_match_reference(ops: list[tuple[Any, ...]]) -> None:
    markets = small_markets()
    engine = MatchingEngine(markets)
    ref = ReferenceEngine(markets)
    for cmd in build_commands(SMALL_SPECS, ops):
        assert engine.apply(cmd) == ref.apply(cmd), cmd
        engine.check()
        for s in SYMBOLS:
            for n in (1, 3, 10**6):
                assert engine.book(s).depth(n) == ref.depth(s, n)
            assert engine.book(s).depth(0) == ([], [])
            assert engine.book(s).bbo() == ref.bbo(s)
            assert engine.last_price(s) == ref.last_price(s)
