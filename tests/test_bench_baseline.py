"""The calibration matcher of ``python -m bench baseline`` must really match price-time."""

from __future__ import annotations

from bench.baseline import BareBook, bare_flow, run_matcher


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
