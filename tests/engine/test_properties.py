"""Property tests over random command flows (hypothesis): the invariants of a fair order book,
and of the money in it (conservation, exact holds, nothing negative, snapshots and replays that
keep every balance)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from engine_helpers import (
    SMALL_SPECS,
    build_commands,
    engine_accounts,
    flow_strategy,
    random_ops,
    small_markets,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import ReferenceEngine

from engine.commands import (
    BUY,
    CANCELLED,
    COMPLETED,
    DEPOSIT,
    FILLED,
    FOK,
    NEW,
    PRICED_TYPES,
    REJECTED,
    SELL,
    STOP_LOSS,
    TAKE_PROFIT,
    AmendOrder,
    Command,
    Deposit,
    NewOrder,
    Reason,
    Withdrawal,
)
from engine.ledger import FEE_ACCOUNT
from engine.markets import assets_of
from engine.matcher import MatchingEngine

Event = tuple[Any, ...]
SYMBOLS = [s.symbol for s in SMALL_SPECS]
ASSETS = list(assets_of(small_markets()))
# Hand-drawn op lists shrink well; seeded flows (random_ops) reach deep, busy books more often.
# Both start with deposits and mix in deposits and withdrawals.
FLOWS = st.one_of(
    flow_strategy(len(SMALL_SPECS)),
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
            balances = all_balances(engine)
            locks = {o.id: o.locked for o in engine.index.orders.values()}
            blob = engine.snapshot()
            engine = MatchingEngine.restore(markets, blob)
            assert engine.snapshot() == blob
            assert all_balances(engine) == balances
            assert {o.id: o.locked for o in engine.index.orders.values()} == locks
            engine.check()
        assert engine.apply(cmd) == expected[i], (i, cmd)
        engine.check()
    assert engine.snapshot() == straight.snapshot()
    assert all_balances(engine) == all_balances(straight)
    assert engine.ledger is not None and straight.ledger is not None
    assert engine.ledger.supply == straight.ledger.supply


@SETTINGS
@given(FLOWS)
def test_determinism(ops: list[tuple[Any, ...]]) -> None:
    """Replaying the same commands gives byte-identical events and balances."""
    a, b = run(ops), run(ops)
    assert a.events == b.events
    assert repr(a.events).encode() == repr(b.events).encode()
    assert a.engine is not None and b.engine is not None
    assert a.engine.snapshot() == b.engine.snapshot()
    assert repr(all_balances(a.engine)).encode() == repr(all_balances(b.engine)).encode()


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


# -- money ----------------------------------------------------------------------------------------


def all_balances(engine: MatchingEngine) -> dict[str, dict[str, tuple[int, int]]]:
    assert engine.ledger is not None
    accounts = engine_accounts(engine) | {FEE_ACCOUNT}
    return {a: {x: engine.ledger.balance(a, x) for x in ASSETS} for a in sorted(accounts)}


@SETTINGS
@given(FLOWS)
def test_conservation_after_every_command(ops: list[tuple[Any, ...]]) -> None:
    """Recomputed here from the ledger's reading API and the transfer events, not from
    ``check()``: per asset the sum over accounts (fee account included) of available + locked
    is deposits - withdrawals; each account's locked is what its open orders hold; nothing is
    negative."""
    markets = small_markets()
    engine = MatchingEngine(markets)
    assert engine.ledger is not None
    net = dict.fromkeys(ASSETS, 0)
    for cmd in build_commands(SMALL_SPECS, ops):
        events = engine.apply(cmd)
        engine.check()
        for e in events:
            if e[0] == "transfer" and e[9] == e[1] and e[7] == COMPLETED:  # a first outcome
                net[e[4]] += e[5] if e[2] == DEPOSIT else -e[5]
        balances = all_balances(engine)
        for asset in ASSETS:
            total = sum(b[asset][0] + b[asset][1] for b in balances.values())
            assert total == net[asset] == engine.ledger.supply[asset], (asset, cmd)
        held: dict[tuple[str, str], int] = {}
        for order in engine.index.orders.values():
            m = markets[order.symbol]
            key = (order.account, m.quote_asset if order.side == BUY else m.base_asset)
            assert order.locked > 0, order  # every open order holds something
            held[key] = held.get(key, 0) + order.locked
        for account, mine in balances.items():
            for asset, (available, locked) in mine.items():
                assert available >= 0 and locked >= 0, (account, asset, cmd)
                assert locked == held.get((account, asset), 0), (account, asset, cmd)


def _fee1(price: int, rate: Fraction) -> int:
    return math.ceil(price * rate)


@SETTINGS
@given(FLOWS)
def test_open_orders_hold_exactly_their_rule(ops: list[tuple[Any, ...]]) -> None:
    """After every command each open order holds exactly what the contract's hold rule says
    for its remainder (a priced buy ``remaining * (P + fee1(P)) * atom_units``, a waiting
    stop-market buy the same at its stop price, a sell ``remaining * lot_units``)."""
    markets = small_markets()
    engine = MatchingEngine(markets)
    for cmd in build_commands(SMALL_SPECS, ops):
        engine.apply(cmd)
        for order in engine.index.orders.values():
            m = markets[order.symbol]
            if order.side == SELL:
                want = order.remaining * m.lot_units
            else:
                waiting_market = order.type in (STOP_LOSS, TAKE_PROFIT) and order.status == NEW
                price = order.stop_price if waiting_market else order.price
                assert price is not None, order
                rate = Fraction(m.taker_fee_rate)
                want = order.remaining * (price + _fee1(price, rate)) * m.atom_units
            assert order.locked == want, (cmd, order.id, order.locked, want)


@SETTINGS
@given(FLOWS)
def test_refusals_and_repeats_change_no_balance(ops: list[tuple[Any, ...]]) -> None:
    """An order rejected at entry, an amend refused, a withdrawal rejected and a repeated
    transfer reference leave every balance as it was."""
    engine = MatchingEngine(small_markets())
    for cmd in build_commands(SMALL_SPECS, ops):
        before = all_balances(engine)
        events = engine.apply(cmd)
        first = events[0] if events else None
        unchanged = False
        if isinstance(cmd, NewOrder) and first is not None and first[4] == REJECTED:
            unchanged = True
            assert events == [first]
        elif isinstance(cmd, AmendOrder) and first is not None and first[0] == "reject":
            unchanged = True
            assert events == [first]
        elif isinstance(cmd, (Deposit, Withdrawal)):
            (e,) = events
            assert e[0] == "transfer" and e[1] == cmd.id
            unchanged = e[9] != cmd.id or e[7] == REJECTED
            if e[9] == cmd.id:  # a first outcome reports the command itself
                assert e[3:6] == (cmd.account, cmd.asset, cmd.amount) and e[10] == cmd.ts
        if unchanged:
            after = all_balances(engine)
            assert {a: b for a, b in after.items() if a in before} == before, cmd
            assert all(v == (0, 0) for a, b in after.items() if a not in before for v in b.values())


@SETTINGS
@given(FLOWS)
def test_balances_match_the_reference_ledger(ops: list[tuple[Any, ...]]) -> None:
    markets = small_markets()
    engine = MatchingEngine(markets)
    ref = ReferenceEngine(markets)
    assert ref.ledger is not None and engine.ledger is not None
    for cmd in build_commands(SMALL_SPECS, ops):
        assert engine.apply(cmd) == ref.apply(cmd), cmd
        ref.check()
        for account in engine_accounts(engine) | set(ref.ledger.accounts()) | {FEE_ACCOUNT}:
            for asset in ASSETS:
                assert engine.ledger.balance(account, asset) == ref.balance(account, asset), (
                    cmd,
                    account,
                    asset,
                )
        for oid, o in ref.open.items():
            mine = engine.order(oid)
            assert mine is not None and mine.locked == o.lock, (cmd, oid)
