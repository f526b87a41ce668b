"""The calibration matcher of ``python -m bench baseline`` must really match price-time, and
``bench core`` must feed it and the engine the same flow (its ratio compares like with like)."""

from __future__ import annotations

import pytest

from bench.baseline import BareBook, bare_flow, run_matcher
from bench.core import SYMBOL, bare_resting, engine_commands, engine_resting, run_same_flow
from engine.commands import REJECTED, Reason
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


def _drive_both(count: int, seed: int) -> tuple[BareBook, MatchingEngine, list[tuple]]:
    flow = bare_flow(count, seed)
    book = BareBook()
    for item in flow:
        if item[0] == "limit":
            book.limit(*item[1:])
        else:
            book.cancel(item[1])
    eng = MatchingEngine(load_markets())
    events = [ev for cmd in engine_commands(flow) for ev in eng.apply(cmd)]
    return book, eng, events


def test_engine_and_bare_matcher_process_the_same_flow() -> None:
    book, eng, events = _drive_both(3_000, 5)
    # every order is accepted (sizes clear the minimum notional; buyers never sell: no STP)
    assert not [ev for ev in events if ev[0] == ORDER and ev[4] == REJECTED]
    assert not [ev for ev in events if ev[0] == ORDER and ev[8] == Reason.SELF_TRADE_PREVENTION]
    trades = sum(1 for ev in events if ev[0] == TRADE)
    assert trades == book.trades == eng.book(SYMBOL).trade_seq > 100
    resting = bare_resting(book)
    assert resting == engine_resting(eng)
    assert resting["bids"] and resting["asks"]  # a real book, not two empty ones


def test_same_flow_runs_check_the_end_state_and_report_a_ratio() -> None:
    result = run_same_flow(2_000, 2, 9)  # ABBA: both orders of the pair
    assert result["same_flow"]["identical_end_state"] is True
    assert result["same_flow"]["commands"] == 2_000 and result["same_flow"]["trades"] > 0
    assert len(result["engine"]["runs"]) == len(result["bare_matcher"]["runs"]) == 2
    assert result["ratio"] > 0  # a figure, never a timed verdict


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
