"""Unit tests of the matching core: order types, cancel, amend, rejects, STP, fees, snapshots.

Most scenarios use ``AB-C`` (tick 1, lot 1, no fees, no minimum notional) so the numbers read
as they are; ``XY-Z`` has a minimum notional of 50 atoms. The ledger is on (the default): every
engine here is :func:`engine_helpers.funded` first, so that no scenario meets
``insufficient_funds`` (the money rules have their own tests, test_ledger.py); the funding
deposits' events are not part of any compared list.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import Cmds, funded, kinds, make_market, of_kind, order_events

from engine.commands import (
    BUY,
    CANCEL_BOTH,
    CANCEL_TAKER,
    FOK,
    IOC,
    SELL,
    STOP_LIMIT,
    STOP_LOSS,
    TAKE_PROFIT,
    TAKE_PROFIT_LIMIT,
    AmendOrder,
    CancelOrder,
    NewOrder,
    Reason,
)
from engine.markets import Market
from engine.matcher import MatchingEngine
from protocol.config import load_markets

S = "AB-C"


@pytest.fixture
def mk() -> dict[str, Market]:
    return {
        "AB-C": make_market("AB-C"),
        "XY-Z": make_market("XY-Z", min_notional="50"),
    }


@pytest.fixture
def eng(mk: dict[str, Market]) -> MatchingEngine:
    return funded(mk)


@pytest.fixture
def c() -> Cmds:
    return Cmds(S)


def apply(eng: MatchingEngine, *cmds: Any) -> list[tuple[Any, ...]]:
    """Apply commands, return the events of the last one."""
    out: list[tuple[Any, ...]] = []
    for cmd in cmds:
        out = eng.apply(cmd)
    return out


def o(
    oid: int,
    acct: str,
    status: str,
    filled: int,
    rem: int,
    cum: int,
    reason: Any = None,
    sym: str = S,
) -> tuple[Any, ...]:
    return ("order", sym, oid, acct, status, filled, rem, cum, reason)


def t(
    tid: int,
    price: int,
    qty: int,
    side: str,
    maker: int,
    taker: int,
    macct: str,
    tacct: str,
    ts: int,
    mfee: int = 0,
    tfee: int = 0,
    sym: str = S,
) -> tuple[Any, ...]:
    return ("trade", sym, tid, price, qty, side, maker, taker, macct, tacct, mfee, tfee, ts)


def lv(side: str, price: int, total: int, sym: str = S) -> tuple[Any, ...]:
    return ("level", sym, side, price, total)


def bbo(bid: int | None, bq: int, ask: int | None, aq: int, sym: str = S) -> tuple[Any, ...]:
    return ("bbo", sym, bid, bq, ask, aq)


# -- limit orders ------------------------------------------------------------------------------


def test_limit_rests_when_it_cannot_cross(eng: MatchingEngine, c: Cmds) -> None:
    assert eng.apply(c.limit("a", BUY, 100, 5)) == [
        o(1, "a", "new", 0, 5, 0),
        lv(BUY, 100, 5),
        bbo(100, 5, None, 0),
    ]
    assert eng.apply(c.limit("a", BUY, 99, 2)) == [o(2, "a", "new", 0, 2, 0), lv(BUY, 99, 2)]
    assert eng.apply(c.limit("b", SELL, 101, 3)) == [
        o(3, "b", "new", 0, 3, 0),
        lv(SELL, 101, 3),
        bbo(100, 5, 101, 3),
    ]
    assert eng.book(S).depth(5) == ([(100, 5), (99, 2)], [(101, 3)])
    assert eng.book(S).bbo() == (100, 5, 101, 3)


def test_limit_fills_fully_against_one_maker(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 5))
    assert eng.apply(c.limit("b", BUY, 100, 5)) == [
        o(2, "b", "new", 0, 5, 0),
        t(1, 100, 5, BUY, 1, 2, "a", "b", 20),
        o(1, "a", "filled", 5, 0, 500),
        lv(SELL, 100, 0),
        o(2, "b", "filled", 5, 0, 500),
        bbo(None, 0, None, 0),
    ]
    assert eng.last_price(S) == 100


def test_limit_partial_fill_rests_remainder(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2))
    assert eng.apply(c.limit("b", BUY, 101, 5)) == [
        o(2, "b", "new", 0, 5, 0),
        t(1, 100, 2, BUY, 1, 2, "a", "b", 20),
        o(1, "a", "filled", 2, 0, 200),
        lv(SELL, 100, 0),
        o(2, "b", "partially_filled", 2, 3, 200),
        lv(BUY, 101, 3),
        bbo(101, 3, None, 0),
    ]


def test_sweep_multiple_levels_at_maker_prices_fifo(eng: MatchingEngine, c: Cmds) -> None:
    apply(
        eng,
        c.limit("a", SELL, 101, 2),
        c.limit("b", SELL, 100, 1),
        c.limit("c", SELL, 101, 3),
        c.limit("a", SELL, 103, 4),
    )
    ev = eng.apply(c.limit("d", BUY, 102, 10))
    assert ev == [
        o(5, "d", "new", 0, 10, 0),
        t(1, 100, 1, BUY, 2, 5, "b", "d", 50),
        o(2, "b", "filled", 1, 0, 100),
        lv(SELL, 100, 0),
        t(2, 101, 2, BUY, 1, 5, "a", "d", 50),
        o(1, "a", "filled", 2, 0, 202),
        t(3, 101, 3, BUY, 3, 5, "c", "d", 50),
        o(3, "c", "filled", 3, 0, 303),
        lv(SELL, 101, 0),
        o(5, "d", "partially_filled", 6, 4, 605),
        lv(BUY, 102, 4),
        bbo(102, 4, 103, 4),
    ]  # the limit never trades through 102: the ask at 103 stays


def test_ioc_limit_remainder_expires(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2), c.limit("a", SELL, 102, 2))
    ev = eng.apply(c.limit("b", BUY, 101, 5, tif=IOC))
    assert ev[-2:] == [o(3, "b", "cancelled", 2, 0, 200, Reason.IOC_EXPIRED), bbo(None, 0, 102, 2)]
    assert eng.apply(c.limit("b", BUY, 101, 5, tif=IOC)) == [
        o(4, "b", "new", 0, 5, 0),
        o(4, "b", "cancelled", 0, 0, 0, Reason.IOC_EXPIRED),
    ]
    assert eng.book(S).depth(5) == ([], [(102, 2)])


def test_fok_not_fillable_touches_nothing(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2), c.limit("a", SELL, 101, 2), c.limit("a", SELL, 103, 9))
    before = eng.snapshot()
    assert eng.apply(c.limit("b", BUY, 101, 5, tif=FOK)) == [
        o(4, "b", "new", 0, 5, 0),
        o(4, "b", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE),
    ]
    after = MatchingEngine.restore(eng.markets, before)
    assert eng.book(S).depth(9) == after.book(S).depth(9)
    assert eng.last_price(S) is None


def test_fok_fills_across_levels(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2), c.limit("a", SELL, 101, 3))
    ev = eng.apply(c.limit("b", BUY, 101, 5, tif=FOK))
    assert kinds(ev) == [
        "order",
        "trade",
        "order",
        "level",
        "trade",
        "order",
        "level",
        "order",
        "bbo",
    ]
    assert ev[-2] == o(3, "b", "filled", 5, 0, 503)


def test_fok_skips_own_orders_under_cancel_maker(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("b", SELL, 100, 3), c.limit("a", SELL, 100, 2))
    # only 2 lots of others' liquidity: not fillable, and the own order is not cancelled
    assert eng.apply(c.limit("b", BUY, 100, 3, tif=FOK))[-1] == o(
        3, "b", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE
    )
    apply(eng, c.limit("c", SELL, 100, 1))
    ev = eng.apply(c.limit("b", BUY, 100, 3, tif=FOK))
    assert ev[1] == o(1, "b", "cancelled", 0, 0, 0, Reason.SELF_TRADE_PREVENTION)
    assert order_events(ev, 5)[-1] == o(5, "b", "filled", 3, 0, 300)


def test_fok_fails_at_own_order_under_cancel_taker(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("b", SELL, 100, 3), c.limit("a", SELL, 100, 5))
    ev = eng.apply(c.limit("b", BUY, 100, 3, tif=FOK, stp=CANCEL_TAKER))
    assert ev == [
        o(3, "b", "new", 0, 3, 0),
        o(3, "b", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE),
    ]
    ev = eng.apply(c.limit("a", BUY, 100, 5, tif=FOK, stp=CANCEL_BOTH))
    assert ev[-1] == o(4, "a", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE)


def test_post_only_rests_or_is_rejected(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2))
    assert eng.apply(c.limit("b", BUY, 100, 1, post_only=True)) == [
        o(2, "b", "rejected", 0, 0, 0, Reason.POST_ONLY_WOULD_TAKE)
    ]
    assert eng.apply(c.limit("b", BUY, 99, 1, post_only=True)) == [
        o(3, "b", "new", 0, 1, 0),
        lv(BUY, 99, 1),
        bbo(99, 1, 100, 2),
    ]


# -- market orders -----------------------------------------------------------------------------


def test_market_by_quantity_sweeps_and_fills(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 2), c.limit("a", BUY, 98, 2))
    ev = eng.apply(c.market("b", SELL, qty=3))
    assert [e[3] for e in of_kind(ev, "trade")] == [100, 98]
    assert ev[-2:] == [o(3, "b", "filled", 3, 0, 298), bbo(98, 1, None, 0)]


def test_market_remainder_no_liquidity(eng: MatchingEngine, c: Cmds) -> None:
    assert eng.apply(c.market("b", BUY, qty=3)) == [
        o(1, "b", "new", 0, 3, 0),
        o(1, "b", "cancelled", 0, 0, 0, Reason.NO_LIQUIDITY),
    ]
    apply(eng, c.limit("a", SELL, 100, 2))
    ev = eng.apply(c.market("b", BUY, qty=3))
    assert ev[-2:] == [
        o(3, "b", "cancelled", 2, 0, 200, Reason.NO_LIQUIDITY),
        bbo(None, 0, None, 0),
    ]


def test_market_buy_by_quote_stops_where_a_lot_is_unaffordable(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.limit("a", SELL, 100, 1), c.limit("a", SELL, 110, 5))
    ev = eng.apply(c.market("b", BUY, quote=350))
    assert ev == [
        o(3, "b", "new", 0, 0, 0),
        t(1, 100, 1, BUY, 1, 3, "a", "b", 30),
        o(1, "a", "filled", 1, 0, 100),
        lv(SELL, 100, 0),
        t(2, 110, 2, BUY, 2, 3, "a", "b", 30),
        o(2, "a", "partially_filled", 2, 3, 220),
        lv(SELL, 110, 3),
        o(3, "b", "filled", 3, 0, 320),  # 30 atoms left, a lot costs 110
        bbo(None, 0, 110, 3),
    ]


def test_market_quote_book_runs_dry_is_no_liquidity(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 1))
    ev = eng.apply(c.market("b", BUY, quote=250))
    assert ev[-2:] == [
        o(2, "b", "cancelled", 1, 0, 100, Reason.NO_LIQUIDITY),
        bbo(None, 0, None, 0),
    ]
    # dry, but less than the last price (100) unspent: filled
    apply(eng, c.limit("a", SELL, 100, 1))
    assert eng.apply(c.market("b", BUY, quote=150))[-2] == o(4, "b", "filled", 1, 0, 100)
    # cannot afford a single lot: nothing happens, cancelled
    apply(eng, c.limit("a", SELL, 100, 1))
    assert eng.apply(c.market("b", BUY, quote=99)) == [
        o(6, "b", "new", 0, 0, 0),
        o(6, "b", "cancelled", 0, 0, 0, Reason.NO_LIQUIDITY),
    ]


def test_market_sell_by_quote(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 5))
    ev = eng.apply(c.market("b", SELL, quote=250))
    assert ev == [
        o(2, "b", "new", 0, 0, 0),
        t(1, 100, 2, SELL, 1, 2, "a", "b", 20),
        o(1, "a", "partially_filled", 2, 3, 200),
        lv(BUY, 100, 3),
        o(2, "b", "filled", 2, 0, 200),
        bbo(100, 3, None, 0),
    ]


def test_quote_sell_continues_to_cheaper_level_after_level_runs_dry(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.limit("a", BUY, 100, 1), c.limit("a", BUY, 40, 5))
    assert eng.apply(c.market("b", SELL, quote=150)) == [
        o(3, "b", "new", 0, 0, 0),
        t(1, 100, 1, SELL, 1, 3, "a", "b", 30),
        o(1, "a", "filled", 1, 0, 100),
        lv(BUY, 100, 0),
        t(2, 40, 1, SELL, 2, 3, "a", "b", 30),
        o(2, "a", "partially_filled", 1, 4, 40),
        lv(BUY, 40, 4),
        o(3, "b", "filled", 2, 0, 140),
        bbo(40, 4, None, 0),
    ]


# -- stops -------------------------------------------------------------------------------------


def _trade_at(eng: MatchingEngine, c: Cmds, price: int) -> list[tuple[Any, ...]]:
    """Make a 1-lot trade at ``price`` between accounts y and z."""
    apply(eng, c.limit("y", SELL, price, 1))
    return eng.apply(c.limit("z", BUY, price, 1))


def test_stop_with_no_last_price_is_accepted_and_waits(eng: MatchingEngine, c: Cmds) -> None:
    assert eng.apply(c.stop("a", SELL, STOP_LOSS, 90, 2)) == [o(1, "a", "new", 0, 2, 0)]
    assert eng.book(S).depth(5) == ([], [])


@pytest.mark.parametrize(
    ("side", "type_", "stop", "ok_stop"),
    [
        (BUY, STOP_LOSS, 100, 101),  # buy stop fires when last >= stop
        (SELL, STOP_LOSS, 100, 99),
        (BUY, TAKE_PROFIT, 100, 99),
        (SELL, TAKE_PROFIT, 100, 101),
        (BUY, STOP_LIMIT, 100, 101),
        (SELL, TAKE_PROFIT_LIMIT, 100, 101),
    ],
)
def test_would_trigger_immediately(
    eng: MatchingEngine, c: Cmds, side: str, type_: str, stop: int, ok_stop: int
) -> None:
    _trade_at(eng, c, 100)
    price = 100 if type_ in (STOP_LIMIT, TAKE_PROFIT_LIMIT) else None
    cmd = c.stop("a", side, type_, stop, 1, price=price)
    assert eng.apply(cmd) == [o(cmd.id, "a", "rejected", 0, 0, 0, Reason.WOULD_TRIGGER_IMMEDIATELY)]
    cmd = c.stop("a", side, type_, ok_stop, 1, price=price)
    assert eng.apply(cmd) == [o(cmd.id, "a", "new", 0, 1, 0)]


def test_sell_stop_loss_triggers_as_market(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)  # ids 1, 2
    apply(eng, c.stop("a", SELL, STOP_LOSS, 95, 3))  # 3
    apply(eng, c.limit("m", BUY, 96, 1), c.limit("m", BUY, 94, 5))  # 4, 5
    ev = eng.apply(c.market("x", SELL, qty=1))  # 6: trades at 96 -> last 96 > 95: nothing
    assert order_events(ev, 3) == []
    ev = eng.apply(c.market("x", SELL, qty=1))  # 7: trades at 94 -> fires
    assert ev == [
        o(7, "x", "new", 0, 1, 0),
        t(3, 94, 1, SELL, 5, 7, "m", "x", 70),
        o(5, "m", "partially_filled", 1, 4, 94),
        lv(BUY, 94, 4),
        o(7, "x", "filled", 1, 0, 94),
        o(3, "a", "triggered", 0, 3, 0),
        t(4, 94, 3, SELL, 5, 3, "m", "a", 70),
        o(5, "m", "partially_filled", 4, 1, 376),
        lv(BUY, 94, 1),
        o(3, "a", "filled", 3, 0, 282),
        bbo(94, 1, None, 0),
    ]


def test_triggered_stop_market_remainder_is_no_liquidity(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)
    apply(eng, c.stop("a", BUY, TAKE_PROFIT, 90, 4))  # 3: buy take-profit, fires at <= 90
    apply(eng, c.limit("m", SELL, 90, 2))  # 4
    ev = eng.apply(c.limit("x", BUY, 90, 1))  # 5
    assert order_events(ev, 3) == [
        o(3, "a", "triggered", 0, 4, 0),
        o(3, "a", "cancelled", 1, 0, 90, Reason.NO_LIQUIDITY),
    ]


def test_stop_limit_rests_after_trigger_behind_earlier_orders(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)  # 1, 2
    stop = c.stop("a", BUY, STOP_LIMIT, 105, 2, price=103)  # 3
    apply(eng, stop, c.limit("b", BUY, 103, 1))  # 4 rests before the stop fires
    apply(eng, c.limit("m", SELL, 105, 1))  # 5
    ev = eng.apply(c.limit("x", BUY, 105, 1))  # 6: trade at 105 fires the stop-limit
    assert order_events(ev, 3) == [o(3, "a", "triggered", 0, 2, 0)]
    assert ev[-2:] == [lv(BUY, 103, 3), bbo(103, 3, None, 0)]
    assert eng.apply(AmendOrder(50, 500, "a", 3, 1, None))[-2][-1] == "amended"  # amendable now
    ev = eng.apply(c.market("y", SELL, qty=2))
    assert [e[6] for e in of_kind(ev, "trade")] == [4, 3]  # FIFO: b rested first


def test_take_profit_limit_fok_after_trigger(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)
    apply(eng, c.stop("a", SELL, TAKE_PROFIT_LIMIT, 102, 5, price=101, tif=FOK))  # 3
    apply(eng, c.limit("m", SELL, 102, 1), c.limit("n", BUY, 101, 2))  # 4, 5
    ev = eng.apply(c.limit("x", BUY, 102, 1))  # 6: last 102 fires; only 2 lots at >= 101
    assert order_events(ev, 3) == [
        o(3, "a", "triggered", 0, 5, 0),
        o(3, "a", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE),
    ]


def test_stop_cascade_and_arrival_order(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)  # 1, 2
    s1 = c.stop("a", SELL, STOP_LOSS, 97, 1)  # 3: fires second (higher stop, later arrival)
    s2 = c.stop("b", SELL, STOP_LOSS, 99, 1)  # 4
    s3 = c.stop("c", SELL, STOP_LOSS, 95, 1)  # 5: only reached by the cascade
    apply(eng, s2, s1, s3)  # arrival order: s2 (id 4), s1 (id 3), s3 (id 5)
    apply(eng, c.limit("m", BUY, 98, 1), c.limit("m", BUY, 96, 1), c.limit("m", BUY, 95, 1))
    ev = eng.apply(c.market("x", SELL, qty=1))  # trade at 98: s2 (99) fires, not s1 (97)
    trig = [e[2] for e in ev if e[0] == "order" and e[4] == "triggered"]
    assert trig == [4, 3, 5]  # s2 -> trade at 96 -> s1 -> trade at 95 -> s3
    assert [e[3] for e in of_kind(ev, "trade")] == [98, 96, 95]
    assert order_events(ev, 5)[-1] == o(5, "c", "cancelled", 0, 0, 0, Reason.NO_LIQUIDITY)


def test_stops_firing_together_go_in_arrival_order(eng: MatchingEngine, c: Cmds) -> None:
    _trade_at(eng, c, 100)  # 1, 2
    apply(eng, c.stop("a", SELL, STOP_LOSS, 95, 1))  # 3
    apply(eng, c.stop("b", SELL, STOP_LOSS, 99, 1))  # 4
    apply(eng, c.stop("c", BUY, TAKE_PROFIT, 97, 1))  # 5 (buy take-profit fires at <= 97)
    apply(eng, c.limit("m", BUY, 90, 5), c.limit("m", SELL, 120, 5))
    ev = eng.apply(c.market("x", SELL, qty=1))  # trade at 90 reaches all three
    trig = [e[2] for e in ev if e[0] == "order" and e[4] == "triggered"]
    assert trig == [3, 4, 5]


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_resting_and_stop(eng: MatchingEngine, c: Cmds) -> None:
    apply(
        eng,
        c.limit("a", BUY, 100, 5),
        c.limit("a", BUY, 99, 1),
        c.stop("a", SELL, STOP_LOSS, 90, 1),
    )
    assert eng.apply(c.cancel("a", 1)) == [
        lv(BUY, 100, 0),
        o(1, "a", "cancelled", 0, 0, 0, Reason.USER_CANCELLED),
        bbo(99, 1, None, 0),
    ]
    assert eng.apply(c.cancel("a", 3)) == [o(3, "a", "cancelled", 0, 0, 0, Reason.USER_CANCELLED)]


def test_cancel_rejects(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 5), c.limit("b", SELL, 100, 5))  # 1 filled
    apply(eng, c.limit("a", BUY, 99, 1))  # 3
    assert eng.apply(c.cancel("a", 1)) == [("reject", 4, "a", Reason.UNKNOWN_ORDER)]  # filled
    assert eng.apply(c.cancel("b", 3)) == [("reject", 5, "b", Reason.UNKNOWN_ORDER)]  # not his
    assert eng.apply(c.cancel("a", 777)) == [("reject", 6, "a", Reason.UNKNOWN_ORDER)]
    apply(eng, c.cancel("a", 3))
    assert eng.apply(c.cancel("a", 3)) == [("reject", 8, "a", Reason.UNKNOWN_ORDER)]


def test_cancel_all_per_symbol_and_everywhere(eng: MatchingEngine, c: Cmds) -> None:
    x = Cmds("XY-Z")
    x.next_id = 100
    apply(
        eng,
        c.limit("a", BUY, 99, 1),
        x.limit("a", SELL, 50, 2),
        c.limit("b", BUY, 98, 1),
        c.stop("a", SELL, STOP_LOSS, 90, 1),
        c.limit("a", SELL, 120, 1),
    )
    ev = eng.apply(c.cancel_all("a", S))
    cancelled = [e[2] for e in ev if e[0] == "order"]
    assert cancelled == [1, 3, 4]  # arrival order, stops included, XY-Z and b untouched
    assert all(e[8] == Reason.USER_CANCELLED for e in ev if e[0] == "order")
    assert eng.book(S).depth(5) == ([(98, 1)], [])
    assert eng.apply(c.cancel_all("a", S)) == []
    ev = eng.apply(c.cancel_all("a"))
    assert [e[2] for e in ev if e[0] == "order"] == [101]
    assert eng.apply(c.cancel_all("nobody")) == []


def test_cancel_all_reports_bbo_once(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 1), c.limit("a", BUY, 99, 5))
    assert eng.apply(c.cancel_all("a", S)) == [
        lv(BUY, 100, 0),
        o(1, "a", "cancelled", 0, 0, 0, Reason.USER_CANCELLED),
        lv(BUY, 99, 0),
        o(2, "a", "cancelled", 0, 0, 0, Reason.USER_CANCELLED),
        bbo(None, 0, None, 0),
    ]


# -- amend -------------------------------------------------------------------------------------


def test_amend_shrink_keeps_priority(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 5), c.limit("b", BUY, 100, 5))
    assert eng.apply(c.amend("a", 1, qty=3)) == [
        lv(BUY, 100, 8),
        o(1, "a", "new", 0, 3, 0, "amended"),
        bbo(100, 8, None, 0),
    ]
    ev = eng.apply(c.market("x", SELL, qty=4))
    assert [(e[6], e[4]) for e in of_kind(ev, "trade")] == [(1, 3), (2, 1)]


@pytest.mark.parametrize("change", [{"qty": 6}, {"price": 99}])
def test_amend_increase_or_reprice_loses_priority(
    eng: MatchingEngine, c: Cmds, change: dict[str, int]
) -> None:
    apply(eng, c.limit("a", BUY, 100, 5), c.limit("b", BUY, 100, 5), c.limit("b", BUY, 99, 5))
    ev = eng.apply(c.amend("a", 1, **change))
    price = change.get("price", 100)
    qty = change.get("qty", 5)
    assert ev[:3] == [
        lv(BUY, 100, 5),
        o(1, "a", "new", 0, qty, 0, "amended"),
        lv(BUY, price, 5 + qty),
    ]
    ev = eng.apply(c.market("x", SELL, qty=20))
    makers = [e[6] for e in of_kind(ev, "trade")]
    assert makers == ([2, 1, 3] if price == 100 else [2, 3, 1])


def test_amend_may_trade_and_keeps_fills(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 5), c.market("x", SELL, qty=2))  # a: 2 filled, 3 left
    apply(eng, c.limit("m", SELL, 102, 2))  # 3
    ev = eng.apply(c.amend("a", 1, qty=6, price=102))
    assert ev == [
        lv(BUY, 100, 0),
        o(1, "a", "partially_filled", 2, 4, 200, "amended"),
        t(2, 102, 2, BUY, 3, 1, "m", "a", 40),
        o(3, "m", "filled", 2, 0, 204),
        lv(SELL, 102, 0),
        o(1, "a", "partially_filled", 4, 2, 404),
        lv(BUY, 102, 2),
        bbo(102, 2, None, 0),
    ]


def test_amend_post_only_that_would_cross_is_rejected(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 98, 5, post_only=True), c.limit("m", SELL, 100, 1))
    assert eng.apply(c.amend("a", 1, price=100)) == [
        ("reject", 3, "a", Reason.POST_ONLY_WOULD_TAKE)
    ]
    assert eng.book(S).depth(5) == ([(98, 5)], [(100, 1)])
    assert eng.apply(c.amend("a", 1, price=99))[1] == o(1, "a", "new", 0, 5, 0, "amended")


def test_amend_rejects(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 5), c.stop("a", SELL, STOP_LOSS, 90, 1))  # 1, 2
    apply(eng, c.market("x", SELL, qty=2))  # 3: a has 2 filled
    assert eng.apply(c.amend("b", 1, qty=4))[0] == ("reject", 4, "b", Reason.UNKNOWN_ORDER)
    assert eng.apply(c.amend("a", 999, qty=4))[0] == ("reject", 5, "a", Reason.UNKNOWN_ORDER)
    assert eng.apply(c.amend("a", 2, qty=4)) == [("reject", 6, "a", Reason.NOT_AMENDABLE)]
    assert eng.apply(c.amend("a", 1, qty=5)) == [("reject", 7, "a", Reason.INVALID_AMEND)]
    assert eng.apply(c.amend("a", 1, qty=5, price=100)) == [
        ("reject", 8, "a", Reason.INVALID_AMEND)
    ]
    assert eng.apply(c.amend("a", 1, qty=2)) == [("reject", 9, "a", Reason.INVALID_AMEND)]
    assert eng.apply(c.amend("a", 1, qty=1)) == [("reject", 10, "a", Reason.INVALID_AMEND)]
    x = Cmds("XY-Z")
    x.next_id = 100
    apply(eng, x.limit("a", BUY, 10, 6))  # 101, notional 60 >= 50
    assert eng.apply(x.amend("a", 101, qty=4)) == [("reject", 102, "a", Reason.MIN_NOTIONAL)]
    assert eng.apply(x.amend("a", 101, qty=5))[-2][-1] == "amended"


# -- accept checks -----------------------------------------------------------------------------


def test_unknown_symbol(eng: MatchingEngine) -> None:
    cmd = NewOrder(1, 1, "a", "NOPE-X", BUY, price=1, quantity=1)
    assert eng.apply(cmd) == [
        ("order", "NOPE-X", 1, "a", "rejected", 0, 0, 0, Reason.UNKNOWN_SYMBOL)
    ]


@pytest.mark.parametrize(
    "kw",
    [
        {"type": "limit", "price": None, "quantity": 1},
        {"type": "limit", "price": 0, "quantity": 1},
        {"type": "limit", "price": 5, "quantity": 0},
        {"type": "limit", "price": 5, "quantity": -1},
        {"type": "limit", "price": 5, "quantity": 1, "stop_price": 4},
        {"type": "limit", "price": 5, "quantity": None, "quote_quantity": 10},
        {"type": "market", "quantity": 1, "price": 5},
        {"type": "market", "quantity": 1, "quote_quantity": 10},
        {"type": "market", "quantity": None, "quote_quantity": 0},
        {"type": "market"},
        {"type": "stop_loss", "quantity": 1},
        {"type": "stop_limit", "quantity": 1, "stop_price": 5},
        {"type": "take_profit", "quantity": 1, "stop_price": 0},
        {"type": "banana", "quantity": 1},
        {"type": "limit", "price": 5, "quantity": 1, "side": "hold"},
        {"type": "limit", "price": 5, "quantity": 1, "time_in_force": "GTD"},
        {"type": "limit", "price": 5, "quantity": 1, "stp": "none"},
        {"type": "limit", "price": 5, "quantity": 1, "post_only": True, "time_in_force": "IOC"},
        {"type": "market", "quantity": 1, "post_only": True},
    ],
)
def test_invalid_order(eng: MatchingEngine, kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"side": BUY, **kw}
    side = args.pop("side")
    cmd = NewOrder(1, 1, "a", S, side, **args)
    assert eng.apply(cmd) == [o(1, "a", "rejected", 0, 0, 0, Reason.INVALID_ORDER)]
    assert eng.book(S).depth(5) == ([], [])


def test_duplicate_order_id_and_client_order_id(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", BUY, 100, 1, client_order_id="x1"))  # 1
    assert eng.apply(NewOrder(1, 5, "b", S, SELL, price=200, quantity=1)) == [
        ("order", S, 1, "b", "rejected", 0, 0, 0, Reason.DUPLICATE_ORDER_ID)
    ]
    assert eng.apply(c.limit("a", BUY, 99, 1, client_order_id="x1"))[0][-1] == (
        Reason.DUPLICATE_CLIENT_ORDER_ID
    )
    assert eng.apply(c.limit("b", BUY, 99, 1, client_order_id="x1"))[0][4] == "new"  # other acct
    apply(eng, c.stop("a", BUY, STOP_LOSS, 150, 1, client_order_id="s1"))
    assert eng.apply(c.limit("a", BUY, 98, 1, client_order_id="s1"))[0][-1] == (
        Reason.DUPLICATE_CLIENT_ORDER_ID
    )  # waiting stops are open orders
    apply(eng, c.cancel("a", 1))
    assert eng.apply(c.limit("a", BUY, 97, 1, client_order_id="x1"))[0][4] == "new"  # reusable
    apply(eng, c.market("z", SELL, qty=3))  # closes everything on the bid
    assert eng.apply(NewOrder(1, 99, "b", S, SELL, price=200, quantity=1))[0][4] == "new"


# -- self-trade prevention ---------------------------------------------------------------------


def test_stp_cancel_maker_goes_on(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("m", SELL, 100, 1), c.limit("a", SELL, 100, 2), c.limit("m", SELL, 101, 2))
    ev = eng.apply(c.limit("a", BUY, 101, 4))
    assert ev == [
        o(4, "a", "new", 0, 4, 0),
        t(1, 100, 1, BUY, 1, 4, "m", "a", 40),
        o(1, "m", "filled", 1, 0, 100),
        o(2, "a", "cancelled", 0, 0, 0, Reason.SELF_TRADE_PREVENTION),
        lv(SELL, 100, 0),
        t(2, 101, 2, BUY, 3, 4, "m", "a", 40),
        o(3, "m", "filled", 2, 0, 202),
        lv(SELL, 101, 0),
        o(4, "a", "partially_filled", 3, 1, 302),
        lv(BUY, 101, 1),
        bbo(101, 1, None, 0),
    ]
    assert not any(e[8] == e[9] for e in of_kind(ev, "trade"))


def test_stp_cancel_taker_stops_after_fills(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("m", SELL, 100, 1), c.limit("a", SELL, 100, 2), c.limit("m", SELL, 101, 2))
    ev = eng.apply(c.limit("a", BUY, 101, 4, stp=CANCEL_TAKER))
    assert ev == [
        o(4, "a", "new", 0, 4, 0),
        t(1, 100, 1, BUY, 1, 4, "m", "a", 40),
        o(1, "m", "filled", 1, 0, 100),
        lv(SELL, 100, 2),
        o(4, "a", "cancelled", 1, 0, 100, Reason.SELF_TRADE_PREVENTION),
        bbo(None, 0, 100, 2),
    ]


def test_stp_cancel_both(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("a", SELL, 100, 2), c.limit("m", SELL, 100, 2))
    ev = eng.apply(c.market("a", BUY, qty=1, stp=CANCEL_BOTH))
    assert ev == [
        o(3, "a", "new", 0, 1, 0),
        o(1, "a", "cancelled", 0, 0, 0, Reason.SELF_TRADE_PREVENTION),
        lv(SELL, 100, 2),
        o(3, "a", "cancelled", 0, 0, 0, Reason.SELF_TRADE_PREVENTION),
        bbo(None, 0, 100, 2),
    ]


# -- fees --------------------------------------------------------------------------------------


def test_fees_round_charges_up_and_rebates_toward_zero() -> None:
    markets = load_markets()
    eng = funded(markets)
    # ETH-BTC: maker -0.0001 (rebate), taker 0.0005. notional 5001 * 21 = 105021 atoms
    apply(eng, NewOrder(1, 1, "a", "ETH-BTC", SELL, price=5001, quantity=21))
    ev = eng.apply(NewOrder(2, 2, "b", "ETH-BTC", BUY, price=5001, quantity=21))
    (trade,) = of_kind(ev, "trade")
    assert trade[10:12] == (-10, 53)  # -floor(10.5021), ceil(52.5105)
    # BTC-USDT: maker and taker 0.001, notional 3000001 * 7 = 21000007 -> ceil(21000.007)
    apply(eng, NewOrder(3, 3, "a", "BTC-USDT", SELL, price=3_000_001, quantity=7))
    ev = eng.apply(NewOrder(4, 4, "b", "BTC-USDT", BUY, "market", IOC, quantity=7))
    (trade,) = of_kind(ev, "trade")
    assert trade[10:12] == (21001, 21001)
    # exact: notional 10000 * 2 = 20000 -> ETH-BTC rebate exactly -2, taker exactly 10
    apply(eng, NewOrder(5, 5, "a", "ETH-BTC", BUY, price=10_000, quantity=2))
    ev = eng.apply(NewOrder(6, 6, "b", "ETH-BTC", SELL, price=10_000, quantity=2))
    assert of_kind(ev, "trade")[0][10:12] == (-2, 10)
    # tiny: notional 1 atom -> rebate 0 (toward zero), taker fee 1 (up)
    apply(eng, NewOrder(7, 7, "a", "ETH-BTC", BUY, price=1, quantity=1))
    ev = eng.apply(NewOrder(8, 8, "b", "ETH-BTC", SELL, "market", IOC, quantity=1))
    assert of_kind(ev, "trade")[0][10:12] == (0, 1)


def test_trade_ids_are_per_symbol(eng: MatchingEngine, c: Cmds) -> None:
    x = Cmds("XY-Z")
    x.next_id = 100
    _trade_at(eng, c, 100)
    ev = apply(eng, x.limit("y", SELL, 10, 6), x.limit("z", BUY, 10, 6))
    assert of_kind(ev, "trade")[0][2] == 1
    assert of_kind(_trade_at(eng, c, 100), "trade")[0][2] == 2


# -- snapshots ---------------------------------------------------------------------------------


def _scenario(c: Cmds) -> list[Any]:
    return [
        c.limit("a", BUY, 100, 5, client_order_id="k"),
        c.limit("b", BUY, 100, 3),
        c.limit("c", SELL, 103, 4, post_only=True),
        c.stop("d", SELL, STOP_LOSS, 95, 2),
        c.limit("e", SELL, 100, 1),  # trade at 100
        c.stop("d", BUY, STOP_LIMIT, 102, 2, price=103),
        c.amend("a", 1, qty=2),
    ]


def _rest(c: Cmds) -> list[Any]:
    return [
        c.limit("a", BUY, 99, 1, client_order_id="k"),  # duplicate coid survives restore
        c.market("x", BUY, qty=3),  # trades at 103: fires the stop-limit
        c.market("x", SELL, qty=9),  # down through 95: fires the stop-loss
        c.cancel("c", 3),
        c.cancel_all("d"),
    ]


def test_snapshot_restore_then_continue_equals_never_stopping(mk: dict[str, Market]) -> None:
    c1, c2 = Cmds(S), Cmds(S)
    straight = funded(mk)
    apply(straight, *_scenario(c1))
    expected = [straight.apply(cmd) for cmd in _rest(c1)]
    eng = funded(mk)
    apply(eng, *_scenario(c2))
    blob = eng.snapshot()
    restored = MatchingEngine.restore(mk, blob)
    assert restored.snapshot() == blob
    assert restored.book(S).depth(9) == eng.book(S).depth(9)
    assert restored.last_price(S) == 100
    assert [restored.apply(cmd) for cmd in _rest(c2)] == expected
    assert any(e[4] == "triggered" for ev in expected for e in ev if e[0] == "order")
    assert restored.snapshot() == straight.snapshot()


def test_snapshot_bytes_are_deterministic(mk: dict[str, Market]) -> None:
    blobs = set()
    for _ in range(3):
        eng = funded(mk)
        apply(eng, *_scenario(Cmds(S)))
        blobs.add(eng.snapshot())
    assert len(blobs) == 1
    assert MatchingEngine(mk).snapshot() == MatchingEngine(mk).snapshot()


def test_restore_rejects_garbage(mk: dict[str, Market]) -> None:
    blob = MatchingEngine(mk).snapshot()
    with pytest.raises(ValueError):
        MatchingEngine.restore(mk, b"nope" + blob)
    with pytest.raises(ValueError):
        MatchingEngine.restore(mk, blob[:6] + bytes([99]) + blob[7:])
    eng = funded(mk)
    assert eng.apply(NewOrder(1, 1, "a", "XY-Z", BUY, price=10, quantity=6))[0][4] == "new"
    with pytest.raises(ValueError):
        MatchingEngine.restore({"AB-C": mk["AB-C"]}, eng.snapshot())


def test_unknown_command_type_raises(eng: MatchingEngine) -> None:
    with pytest.raises(TypeError):
        eng.apply(object())  # type: ignore[arg-type]
    assert eng.apply(CancelOrder(1, 1, "a", 1)) == [("reject", 1, "a", Reason.UNKNOWN_ORDER)]


def test_check_finds_every_kind_of_corruption(engine: MatchingEngine, c: Cmds) -> None:
    """``check()`` is only worth calling after every command if it notices a broken book."""
    from engine.commands import STOP_LOSS

    for cmd in (
        c.limit("a", "buy", 99, 5),
        c.limit("a", "buy", 98, 5),
        c.limit("b", "sell", 101, 5),
        c.new("s", "sell", type=STOP_LOSS, quantity=1, stop_price=90),
    ):
        engine.apply(cmd)
    engine.check()
    corruptions: dict[str, Any] = {
        "a level's total": lambda e, b: setattr(b.bids[99], "total", 4),
        "a level's count": lambda e, b: setattr(b.bids[99], "count", 2),
        "the cached best bid": lambda e, b: setattr(b, "best_bid", 98),
        "a crossed book": lambda e, b: setattr(b, "best_ask", 99),
        "an unindexed order": lambda e, b: e.index.orders.pop(1),
        "a dead order on a level": lambda e, b: setattr(b.bids[98].orders[0], "remaining", 0),
        "the cached trigger": lambda e, b: setattr(e.stops[S], "fall_at", None),
        "an unreported top of book": lambda e, b: setattr(b, "last_bbo", (None, 0, None, 0)),
        "the arrival counter": lambda e, b: setattr(e, "seq", 0),
    }
    for what, corrupt in corruptions.items():
        copy = MatchingEngine.restore(engine.markets, engine.snapshot())
        copy.check()
        corrupt(copy, copy.book(S))
        with pytest.raises(AssertionError):
            copy.check()
            pytest.fail(f"check() missed {what}")
