"""The calibration matcher of ``python -m bench baseline`` must really match price-time, and
``bench core`` must feed it, the engine with its ledger and the engine without it the same flow
(its ratios compare like with like)."""

from __future__ import annotations

import pytest

from bench.baseline import BareBook, bare_flow, run_matcher
from bench.core import (
    SYMBOL,
    bare_resting,
    engine_commands,
    engine_resting,
    generate_flow,
    new_engine,
    run_same_flow,
    same_flow_deposits,
)
from bench.flow import OrderFlow, funding_report
from engine.commands import CANCELLED, REJECTED, NewOrder, Reason
from engine.events import ORDER, TRADE
from engine.matcher import MatchingEngine
from protocol.config import load_markets
from redis_server import wait_until


def test_bare_book_matches_best_price_first_then_time() -> None:
    book = BareBook()
    book.limit(1, False, 101, 5)  # asks: 101 x5 (first), 100 x3, 101 x4 (second)
    book.limit(2, False, 100, 3)
    book.limit(3, False, 101, 4)
    book.limit(4, True, 101, 10)  # takes 100 x3, then 101 x5 from order 1, then 2 of order 3
    assert book.trades == 3
    assert 1 not in book.orders and 2 not in book.orders
    assert book.orders[3].qty == 2
    assert list(book.asks) == [101] and not book.bids  # fully filled taker rests nothing


def test_bare_book_never_trades_through_and_skips_cancelled() -> None:
    book = BareBook()
    book.limit(1, True, 99, 5)
    book.limit(2, True, 98, 5)
    book.cancel(1)
    book.limit(3, False, 99, 4)  # the cancelled bid at 99 must not fill; 98 is below the limit
    assert book.trades == 0
    assert book.orders[3].qty == 4 and book.asks.keys()[0] == 99
    book.limit(4, False, 98, 2)  # crosses only the live bid at 98
    assert book.trades == 1 and book.orders[2].qty == 3


def test_bare_flow_is_seeded_and_run_reports_a_rate() -> None:
    assert bare_flow(500, 3) == bare_flow(500, 3)
    kinds = {item[0] for item in bare_flow(500, 3)}
    assert kinds == {"limit", "cancel"}
    result = run_matcher(2_000, 1, 3)
    assert result["orders"] == 2_000 and result["orders_per_s"] > 0


# -- bench core compares like with like ---------------------------------------------------------


def _drive_both(count: int, seed: int, risk: bool = True,
                check: bool = False) -> tuple[BareBook, MatchingEngine, list[tuple]]:  # fmt: skip
    flow = bare_flow(count, seed)
    book = BareBook()
    for item in flow:
        if item[0] == "limit":
            book.limit(*item[1:])
        else:
            book.cancel(item[1])
    commands = engine_commands(flow)
    eng = new_engine(same_flow_deposits(commands, load_markets()[SYMBOL]), risk)
    events = []
    for cmd in commands:
        events += eng.apply(cmd)
        if check:
            eng.check()  # conservation too, with the ledger on
    return book, eng, events


@pytest.mark.parametrize("risk", [True, False], ids=["ledger_on", "ledger_off"])
def test_engine_and_bare_matcher_process_the_same_flow(risk: bool) -> None:
    book, eng, events = _drive_both(3_000, 5, risk, check=True)
    assert (eng.ledger is not None) == risk
    # every order is accepted (sizes clear the minimum notional; the deposits cover every
    # order; buyers never sell: no STP)
    assert not [ev for ev in events if ev[0] == ORDER and ev[4] == REJECTED]
    assert not [ev for ev in events if ev[0] == ORDER and ev[8] == Reason.SELF_TRADE_PREVENTION]
    trades = sum(1 for ev in events if ev[0] == TRADE)
    assert trades == book.trades == eng.book(SYMBOL).trade_seq > 100
    resting = bare_resting(book)
    assert resting == engine_resting(eng)
    assert resting["bids"] and resting["asks"]  # a real book, not two empty ones


def test_same_flow_deposits_are_what_the_ledger_needs() -> None:
    """Each account funded in the one asset it spends, once; the ledger really holds funds:
    without the deposits every order is refused, with them the open orders hold exactly what
    the accounts have locked."""
    commands = engine_commands(bare_flow(2_000, 5))
    deposits = same_flow_deposits(commands, load_markets()[SYMBOL])
    orders = [c for c in commands if type(c) is NewOrder]
    assert sorted((d.account, d.asset) for d in deposits) == sorted(
        {(c.account, "USDT" if c.side == "buy" else "BTC") for c in orders})
    assert min(d.id for d in deposits) > max(c.id for c in commands)  # no order id taken
    (refused,) = MatchingEngine(load_markets()).apply(orders[0])  # unfunded
    assert (refused[0], refused[4], refused[8]) == (ORDER, REJECTED, Reason.INSUFFICIENT_FUNDS)
    _, eng, _ = _drive_both(2_000, 5)
    ledger = eng.ledger
    assert ledger is not None
    eng.check()
    locked = sum(ledger.balance(d.account, d.asset)[1] for d in deposits)
    assert locked == sum(o.locked for o in eng.index.orders.values()) > 0


def test_mixed_flow_is_funded() -> None:
    """The mixed flow's accounts are funded before it: no order refused or cut short for funds,
    and the same trades with the ledger off."""
    deposits, commands, short = generate_flow(3_000, 11)
    assert short == 0 and len(deposits) == 400  # 200 accounts x (BTC, USDT)
    counts = {}
    for risk in (True, False):
        eng = new_engine(deposits, risk)
        events = [ev for cmd in commands for ev in eng.apply(cmd)]
        funds = [ev for ev in events if ev[0] == ORDER and ev[8] == Reason.INSUFFICIENT_FUNDS]
        assert not funds
        counts[risk] = sum(ev[0] == TRADE for ev in events)
        assert sum(ev[0] == ORDER and ev[4] == CANCELLED for ev in events) > 0
        if risk:
            eng.check()
    assert counts[True] == counts[False] > 100


def test_same_flow_runs_check_the_end_state_and_report_a_ratio() -> None:
    result = run_same_flow(2_000, 2, 9)  # ABC, CBA: both orders of each pair
    assert result["same_flow"]["identical_end_state"] is True
    assert result["same_flow"]["commands"] == 2_000 and result["same_flow"]["trades"] > 0
    assert result["same_flow"]["deposits"] > 0
    assert len(result["engine"]["runs"]) == len(result["bare_matcher"]["runs"]) == 2
    switch = result["risk_switch"]
    assert len(switch["ledger_on_runs"]) == len(switch["ledger_off_runs"]) == 2
    assert len(result["risk_ratios"]) == 2 and result["engine"]["ledger"] is True
    # figures, never a timed verdict
    assert result["ratio"] > 0 and result["risk_ratio"] > 0


# -- the seeded order flow of the worker benchmark and tests deposits first ----------------------


@pytest.mark.parametrize("seed,accounts", [(1, 50), (3, 15), (7, 5)])
def test_order_flow_deposits_fund_every_order(seed: int, accounts: int) -> None:
    """Its deposits come first and fund every account in every asset it trades: no order of
    the flow is refused or cut short for funds (even with few accounts holding many orders)."""
    markets = load_markets()
    flow = OrderFlow(markets, seed=seed, accounts=accounts)
    deposits = flow.deposits()
    assert len(deposits) == accounts * len(flow.assets) == accounts * 3  # BTC, DOGE, USDT
    assert len({d["deposit_id"] for d in deposits}) == len(deposits)  # references unique
    # the deposits draw nothing from the flow's generator: the same flow with or without them
    fresh = OrderFlow(markets, seed=seed, accounts=accounts)
    assert [fresh.next() for _ in range(50)] == [flow.next() for _ in range(50)]
    report = funding_report(markets, 6_000, seed=seed, accounts=accounts)
    assert report["orders"] > 4_000 and report["deposits"] == len(deposits)
    assert report["insufficient_funds_share"] == 0, report
    unfunded = funding_report(markets, 500, seed=seed, funded=False, accounts=accounts)
    assert unfunded["insufficient_funds_share"] == 1.0  # the ledger is on: nothing trades


def test_wait_until_retries_any_error_until_ready_and_stops_at_the_deadline() -> None:
    calls = iter([ConnectionRefusedError(), TimeoutError(), ValueError("half a reply"), 0, 7])

    def ready() -> int:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(ready, 60, "probe", interval=0) == 7
    with pytest.raises(RuntimeError, match="not ready"):
        wait_until(lambda: 1 / 0, 0, "never", interval=0)
    with pytest.raises(RuntimeError, match="exited"):
        wait_until(lambda: False, 60, "gone", alive=lambda: False)
