"""Unit tests of the money rules (issue 14, the money contract): deposits and withdrawals with
their references, every hold rule of pre-trade risk with exact numbers (fee rounding included),
settlement per fill with fees and rebates, releases at each fill and at every close, amends,
snapshots and the conservation audit.

Markets (8 decimals everywhere, so units are not atoms):

* ``BT-US``: tick 0.01, lot 0.001 -> a lot is 100 000 BT units, a quote atom 1 000 US units;
  maker -0.001 (a rebate), taker 0.003.
* ``ET-US``: tick 0.1, lot 0.01 -> a lot is 1 000 000 ET units, an atom 100 000 US units;
  maker 0.001, taker 0.002.

``fee1(P) = ceil(P * taker_rate)`` atoms; a priced buy holds ``remaining * (P + fee1(P)) * au``.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import Cmds, engine_accounts, fund, of_kind

from engine.commands import (
    BUY,
    CANCEL_BOTH,
    CANCEL_TAKER,
    FOK,
    IOC,
    MARKET,
    SELL,
    STOP_LIMIT,
    STOP_LOSS,
    TAKE_PROFIT,
    TAKE_PROFIT_LIMIT,
    Deposit,
    NewOrder,
    Reason,
    Withdrawal,
)
from engine.ledger import FEE_ACCOUNT
from engine.markets import Market, markets_from_list
from engine.matcher import MatchingEngine

S = "BT-US"
E = "ET-US"
LU = 100_000  # BT units per BT-US lot
AU = 1_000  # US units per BT-US quote atom
E_LU = 1_000_000
E_AU = 100_000
FUNDS = Reason.INSUFFICIENT_FUNDS


def _markets() -> dict[str, Market]:
    def market(symbol: str, tick: str, lot: str, maker: str, taker: str) -> dict[str, str]:
        base, quote = symbol.split("-")
        return {
            "symbol": symbol, "base_asset": base, "quote_asset": quote, "tick_size": tick,
            "lot_size": lot, "min_quantity": lot, "max_quantity": "1000", "min_notional": "0",
            "maker_fee_rate": maker, "taker_fee_rate": taker,
        }  # fmt: skip

    return markets_from_list(
        {
            "assets": [{"asset": a, "decimals": 8} for a in ("BT", "ET", "US")],
            "markets": [
                market(S, "0.01", "0.001", "-0.001", "0.003"),
                market(E, "0.1", "0.01", "0.001", "0.002"),
            ],
        }
    )


@pytest.fixture
def mk() -> dict[str, Market]:
    markets = _markets()
    assert (markets[S].lot_units, markets[S].atom_units) == (LU, AU)
    assert (markets[E].lot_units, markets[E].atom_units) == (E_LU, E_AU)
    return markets


@pytest.fixture
def eng(mk: dict[str, Market]) -> MatchingEngine:
    """An engine (ledger on) in which only the market makers "s", "m" and "x".."z" are funded;
    the accounts under test get exactly what each test deposits."""
    engine = MatchingEngine(mk)
    fund(engine, ["s", "m", "x", "y", "z"], amount=10**15)
    return engine


@pytest.fixture
def c() -> Cmds:
    return Cmds(S)


def bal(eng: MatchingEngine, account: str, asset: str) -> tuple[int, int]:
    assert eng.ledger is not None
    return eng.ledger.balance(account, asset)


def apply(eng: MatchingEngine, *cmds: Any) -> list[tuple[Any, ...]]:
    """Apply commands (checking every invariant after each), return the last one's events."""
    out: list[tuple[Any, ...]] = []
    for cmd in cmds:
        out = eng.apply(cmd)
        eng.check()
    return out


def locked_of(eng: MatchingEngine, order_id: int) -> int:
    order = eng.order(order_id)
    assert order is not None, f"order {order_id} is not open"
    return order.locked


def o(
    oid: int, acct: str, status: str, filled: int, rem: int, cum: int, reason: Any = None
) -> tuple[Any, ...]:
    return ("order", S, oid, acct, status, filled, rem, cum, reason)


def conserved(eng: MatchingEngine) -> None:
    """Per asset the balances of every account (fee account included) add up to the supply."""
    assert eng.ledger is not None
    for asset, supply in eng.ledger.supply.items():
        total = sum(sum(bal(eng, a, asset)) for a in engine_accounts(eng) | {FEE_ACCOUNT})
        assert total == supply, asset


# -- the API of the contract -------------------------------------------------------------------


def test_ledger_reading_api(mk: dict[str, Market]) -> None:
    eng = MatchingEngine(mk)
    assert eng.ledger is not None and FEE_ACCOUNT == "@fees"
    apply(eng, Deposit(1, 10, "a", "US", 5_000, "r1"), Deposit(2, 20, "b", "BT", 7, "r2"))
    assert eng.ledger.balance("a", "US") == (5_000, 0)
    assert eng.ledger.balance("a", "BT") == (0, 0)  # never held
    assert eng.ledger.balance("nobody", "US") == (0, 0)
    assert eng.ledger.balances("a") == {"US": (5_000, 0)}
    assert eng.ledger.supply["US"] == 5_000 and eng.ledger.supply["BT"] == 7
    assert eng.ledger.supply["ET"] == 0
    assert eng.ledger.list_accounts() == ["a", "b"]


def test_risk_off_matches_without_funds(mk: dict[str, Market], c: Cmds) -> None:
    eng = MatchingEngine(mk, risk=False)
    assert eng.ledger is None
    apply(eng, c.limit("a", SELL, 100, 2))
    ev = eng.apply(c.limit("b", BUY, 100, 2))
    assert of_kind(ev, "trade") and ev[-2] == o(2, "b", "filled", 2, 0, 200)


# -- deposits and withdrawals ------------------------------------------------------------------


def test_deposit_credits_available_and_supply(eng: MatchingEngine) -> None:
    assert eng.apply(Deposit(1, 10, "a", "US", 12_345, "dep-1")) == [
        ("transfer", 1, "deposit", "a", "US", 12_345, "dep-1", "completed", None, 1, 10)
    ]
    assert bal(eng, "a", "US") == (12_345, 0)
    apply(eng, Deposit(2, 20, "a", "US", 5, "dep-2"))
    assert bal(eng, "a", "US") == (12_350, 0)
    assert eng.ledger is not None and eng.ledger.supply["US"] == 10**15 * 5 + 12_350
    conserved(eng)


def test_repeated_deposit_reference_reports_the_first_outcome_and_changes_nothing(
    eng: MatchingEngine,
) -> None:
    apply(eng, Deposit(1, 10, "a", "US", 1_000, "ref"))
    assert eng.ledger is not None
    supply = dict(eng.ledger.supply)
    # same reference, another account, asset and amount: references are per partition
    assert eng.apply(Deposit(2, 20, "b", "BT", 99, "ref")) == [
        ("transfer", 2, "deposit", "a", "US", 1_000, "ref", "completed", None, 1, 10)
    ]
    assert eng.apply(Deposit(3, 30, "a", "US", 1_000, "ref")) == [
        ("transfer", 3, "deposit", "a", "US", 1_000, "ref", "completed", None, 1, 10)
    ]
    assert bal(eng, "a", "US") == (1_000, 0) and bal(eng, "b", "BT") == (0, 0)
    assert eng.ledger.supply == supply
    eng.check()


def test_deposit_of_an_unknown_asset_or_nothing_is_rejected(eng: MatchingEngine) -> None:
    assert eng.ledger is not None
    supply = dict(eng.ledger.supply)
    (e,) = eng.apply(Deposit(1, 10, "a", "XXX", 5, "r1"))
    assert e[7:9] == ("rejected", Reason.UNKNOWN_ASSET)
    (e,) = eng.apply(Deposit(2, 20, "a", "US", 0, "r2"))
    assert e[7:9] == ("rejected", Reason.INVALID_AMOUNT)
    assert eng.ledger.supply == supply and bal(eng, "a", "US") == (0, 0)
    eng.check()


def test_withdrawal_from_available_only(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 1_000_000))  # 1
    assert eng.apply(c.withdraw("a", "US", 400_000, "w1")) == [  # 2
        ("transfer", 2, "withdrawal", "a", "US", 400_000, "w1", "completed", None, 2, 20)
    ]
    assert bal(eng, "a", "US") == (600_000, 0)
    apply(eng, c.limit("a", BUY, 100, 5))  # 3: holds 5 * (100 + 1) * 1000 = 505 000
    assert bal(eng, "a", "US") == (95_000, 505_000)
    assert eng.apply(c.withdraw("a", "US", 95_001, "w2")) == [  # 4: locked units do not count
        ("transfer", 4, "withdrawal", "a", "US", 95_001, "w2", "rejected", FUNDS, 4, 40)
    ]
    assert bal(eng, "a", "US") == (95_000, 505_000)
    assert eng.apply(c.withdraw("a", "US", 95_000, "w3"))[0][7] == "completed"  # 5
    assert bal(eng, "a", "US") == (0, 505_000)
    assert eng.apply(c.withdraw("z", "ET", 1, "w1"))[0][7:9] == ("completed", None)
    assert eng.apply(c.withdraw("nobody", "US", 1, "w1"))[0][7:9] == ("rejected", FUNDS)
    assert eng.ledger is not None and eng.ledger.supply["US"] == 5 * 10**15 + 505_000
    conserved(eng)


def test_repeated_withdrawal_reference_reports_the_first_outcome(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.deposit("a", "US", 100))  # 1
    assert eng.apply(c.withdraw("a", "US", 500, "w"))[0][7] == "rejected"  # 2
    apply(eng, c.deposit("a", "US", 1_000))  # 3: now it would be covered
    # a retry is answered with the first outcome, still "rejected", and withdraws nothing
    assert eng.apply(c.withdraw("a", "US", 500, "w")) == [  # 4
        ("transfer", 4, "withdrawal", "a", "US", 500, "w", "rejected", FUNDS, 2, 20)
    ]
    assert bal(eng, "a", "US") == (1_100, 0)
    assert eng.apply(c.withdraw("a", "US", 300, "w2"))[0][7] == "completed"  # 5
    assert eng.apply(c.withdraw("a", "BT", 7, "w2")) == [  # 6: other asset/amount, same ref
        ("transfer", 6, "withdrawal", "a", "US", 300, "w2", "completed", None, 5, 50)
    ]
    assert bal(eng, "a", "US") == (800, 0)
    # references are per account: another account's "w2" is its own
    apply(eng, c.deposit("b", "US", 50))  # 7
    assert eng.apply(c.withdraw("b", "US", 50, "w2")) == [  # 8
        ("transfer", 8, "withdrawal", "b", "US", 50, "w2", "completed", None, 8, 80)
    ]
    assert bal(eng, "b", "US") == (0, 0)
    conserved(eng)


# -- hold rules at entry -----------------------------------------------------------------------


def test_limit_buy_lock_includes_the_rounded_up_fee_of_one_lot(
    eng: MatchingEngine, c: Cmds
) -> None:
    # fee1(1234) = ceil(1234 * 0.003) = ceil(3.702) = 4 atoms: 5 * 1238 * 1000 = 6 190 000
    apply(eng, c.deposit("a", "US", 6_190_000))  # 1
    ev = eng.apply(c.limit("a", BUY, 1234, 5))  # 2
    assert ev[0] == o(2, "a", "new", 0, 5, 0)
    assert locked_of(eng, 2) == 6_190_000
    assert bal(eng, "a", "US") == (0, 6_190_000)
    # fee1(1000) = 3.0 exactly: nothing to round, 2 * 1003 * 1000
    apply(eng, c.deposit("b", "US", 2_006_000))  # 3
    apply(eng, c.limit("b", BUY, 1000, 2))  # 4
    assert locked_of(eng, 4) == 2_006_000 and bal(eng, "b", "US") == (0, 2_006_000)


def test_order_not_covered_is_rejected_with_nothing_locked(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 6_189_999))  # 1: one unit short of 5 lots at 1234
    before = eng.book(S).depth(10)
    assert eng.apply(c.limit("a", BUY, 1234, 5)) == [o(2, "a", "rejected", 0, 0, 0, FUNDS)]
    assert eng.order(2) is None and eng.book(S).depth(10) == before
    assert bal(eng, "a", "US") == (6_189_999, 0)
    assert eng.apply(c.limit("a", BUY, 1234, 4))[0][4] == "new"  # 4 * 1238 * 1000 fits
    assert bal(eng, "a", "US") == (6_189_999 - 4_952_000, 4_952_000)
    # nothing at all: rejected, whatever the order
    assert eng.apply(c.limit("q", SELL, 1234, 1)) == [o(4, "q", "rejected", 0, 0, 0, FUNDS)]
    assert eng.apply(c.market("q", BUY, qty=1))[0] == o(5, "q", "rejected", 0, 0, 0, FUNDS)


def test_sell_locks_its_quantity_in_base(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "BT", 3 * LU))  # 1
    assert eng.apply(c.limit("a", SELL, 2000, 4))[0] == o(2, "a", "rejected", 0, 0, 0, FUNDS)
    apply(eng, c.limit("a", SELL, 2000, 2))  # 3
    assert locked_of(eng, 3) == 2 * LU and bal(eng, "a", "BT") == (LU, 2 * LU)
    apply(eng, c.market("a", SELL, qty=1))  # 4: no bids, cancelled, released
    assert bal(eng, "a", "BT") == (LU, 2 * LU)
    assert eng.apply(c.market("a", SELL, qty=2))[0][8] == FUNDS  # 5: only one lot available


def test_new_order_checks_come_before_funds(eng: MatchingEngine, c: Cmds) -> None:
    """An order that is wrong for another reason is rejected for that reason, even when its
    account could not pay for it either."""
    apply(eng, c.limit("s", SELL, 100, 1, client_order_id="k"))  # 1
    assert eng.apply(c.limit("q", BUY, 100, 1, post_only=True))[0][8] == (
        Reason.POST_ONLY_WOULD_TAKE
    )
    assert eng.apply(c.limit("q", BUY, None, 1))[0][8] == Reason.INVALID_ORDER  # type: ignore[arg-type]
    apply(eng, c.limit("y", SELL, 90, 1), c.limit("z", BUY, 90, 1))  # last price 90
    assert eng.apply(c.stop("q", SELL, STOP_LOSS, 95, 1))[0][8] == (
        Reason.WOULD_TRIGGER_IMMEDIATELY
    )
    assert eng.apply(c.limit("s", SELL, 150, 1, client_order_id="k"))[0][8] == (
        Reason.DUPLICATE_CLIENT_ORDER_ID
    )


# -- settlement --------------------------------------------------------------------------------


def test_taker_buy_below_its_limit_releases_the_difference(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 6_190_000), c.deposit("b", "BT", 3 * LU))  # 1, 2
    apply(eng, c.limit("b", SELL, 1200, 3))  # 3
    assert bal(eng, "b", "BT") == (0, 3 * LU)
    ev = eng.apply(c.limit("a", BUY, 1234, 5))  # 4
    # notional 3600 atoms; taker fee ceil(10.8) = 11; maker rebate -floor(3.6) = -3
    (trade,) = of_kind(ev, "trade")
    assert trade[3:5] == (1200, 3) and trade[10:12] == (-3, 11)
    # the buyer pays (3600 + 11) * 1000 and keeps 2 * 1238 * 1000 for its 2 lots left
    assert locked_of(eng, 4) == 2_476_000
    assert bal(eng, "a", "US") == (6_190_000 - 3_611_000 - 2_476_000, 2_476_000)
    assert bal(eng, "a", "US")[0] == 103_000
    assert bal(eng, "a", "BT") == (3 * LU, 0)
    # the seller gets 3600 + 3 (the rebate) atoms, the fee account 11 - 3
    assert bal(eng, "b", "BT") == (0, 0)
    assert bal(eng, "b", "US") == (3_603_000, 0)
    assert bal(eng, FEE_ACCOUNT, "US") == (8_000, 0)
    conserved(eng)


def test_limit_buy_lock_is_the_worst_split_of_fees(eng: MatchingEngine, c: Cmds) -> None:
    """fee1(100) = ceil(0.3) = 1: three one-lot fills each pay a rounded-up fee of 1 atom, so
    3 * (100 + 1) * 1000 is spent to the unit."""
    apply(eng, c.deposit("a", "US", 303_000))  # 1
    apply(eng, c.limit("s", SELL, 100, 1), c.limit("m", SELL, 100, 1), c.limit("x", SELL, 100, 1))
    ev = eng.apply(c.limit("a", BUY, 100, 3))  # 5
    assert [t[11] for t in of_kind(ev, "trade")] == [1, 1, 1]
    assert ev[-2] == o(5, "a", "filled", 3, 0, 300)
    assert bal(eng, "a", "US") == (0, 0) and bal(eng, "a", "BT") == (3 * LU, 0)
    # the same 3 lots in one fill pay ceil(0.9) = 1 atom of fee: 2 atoms come back
    apply(eng, c.deposit("b", "US", 303_000), c.limit("s", SELL, 100, 3))  # 6, 7
    apply(eng, c.limit("b", BUY, 100, 3))  # 8
    assert bal(eng, "b", "US") == (2_000, 0)
    conserved(eng)


def test_maker_buy_releases_its_fee_reserve_and_gets_the_rebate(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.deposit("a", "US", 4_012_000))  # 1
    apply(eng, c.limit("a", BUY, 1000, 4))  # 2: 4 * (1000 + 3) * 1000
    assert bal(eng, "a", "US") == (0, 4_012_000)
    ev = eng.apply(c.market("s", SELL, qty=3))  # 3
    (trade,) = of_kind(ev, "trade")
    assert trade[10:12] == (-3, 9)  # notional 3000: rebate -floor(3.0), taker fee ceil(9.0)
    # the maker pays 3000 - 3 atoms and keeps 1 * 1003 * 1000: 3 * 3 + 3 atoms come back
    assert locked_of(eng, 2) == 1_003_000
    assert bal(eng, "a", "US") == (12_000, 1_003_000)
    assert bal(eng, "a", "BT") == (3 * LU, 0)
    assert bal(eng, FEE_ACCOUNT, "US") == (6_000, 0)
    conserved(eng)


def test_maker_sell_gets_the_rebate(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "BT", 2 * LU))  # 1
    apply(eng, c.limit("a", SELL, 5001, 2))  # 2
    apply(eng, c.deposit("b", "US", 10**9))  # 3
    ev = eng.apply(c.limit("b", BUY, 5001, 2))  # 4: notional 10002
    (trade,) = of_kind(ev, "trade")
    assert trade[10:12] == (-10, 31)  # -floor(10.002), ceil(30.006)
    assert bal(eng, "a", "US") == (10_012_000, 0) and bal(eng, "a", "BT") == (0, 0)
    assert bal(eng, "b", "US") == (10**9 - 10_033_000, 0)
    assert bal(eng, FEE_ACCOUNT, "US") == (21_000, 0)
    conserved(eng)


def test_fee_account_collects_maker_and_taker_fees(eng: MatchingEngine) -> None:
    x = Cmds(E)
    apply(eng, x.deposit("a", "ET", 2 * E_LU), x.deposit("b", "US", 2 * 501 * E_AU))  # 1, 2
    apply(eng, x.limit("a", SELL, 500, 2))  # 3
    ev = eng.apply(x.limit("b", BUY, 500, 2))  # 4: fee1(500) = ceil(1.0) = 1
    (trade,) = of_kind(ev, "trade")
    assert trade[10:12] == (1, 2)  # maker ceil(1.0), taker ceil(2.0) on notional 1000
    assert bal(eng, "b", "US") == (0, 0) and bal(eng, "b", "ET") == (2 * E_LU, 0)
    assert bal(eng, "a", "US") == (999 * E_AU, 0)
    assert bal(eng, FEE_ACCOUNT, "US") == (3 * E_AU, 0)
    assert FEE_ACCOUNT in engine_accounts(eng)
    conserved(eng)


# -- market orders -----------------------------------------------------------------------------


def test_market_buy_by_quantity_stops_when_funds_run_out(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("s", SELL, 100, 1), c.limit("s", SELL, 110, 2))  # 1, 2
    apply(eng, c.limit("s", SELL, 120, 5))  # 3
    apply(eng, c.deposit("a", "US", 250_500))  # 4: not a whole number of atoms
    ev = eng.apply(c.market("a", BUY, qty=5))  # 5
    # 1 @ 100 costs (100 + 1) * 1000; 2 @ 110 would cost (220 + 1) * 1000 > 149 500 left, so
    # the fill shrinks to 1 lot, (110 + 1) * 1000; then nothing fits: the rest is cancelled
    assert ev == [
        o(5, "a", "new", 0, 5, 0),
        ("trade", S, 1, 100, 1, BUY, 1, 5, "s", "a", 0, 1, 50),
        o(1, "s", "filled", 1, 0, 100),
        ("level", S, SELL, 100, 0),
        ("trade", S, 2, 110, 1, BUY, 2, 5, "s", "a", 0, 1, 50),
        o(2, "s", "partially_filled", 1, 1, 110),
        ("level", S, SELL, 110, 1),
        o(5, "a", "cancelled", 2, 0, 210, FUNDS),
        ("bbo", S, None, 0, 110, 1),
    ]
    assert bal(eng, "a", "US") == (250_500 - 101_000 - 111_000, 0)
    assert bal(eng, "a", "BT") == (2 * LU, 0)
    conserved(eng)


def test_market_buy_by_quantity_entry(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 1_000_000))  # 1
    apply(eng, c.limit("a", BUY, 99, 10))  # 2: holds 10 * 100 * 1000, all of it
    assert bal(eng, "a", "US") == (0, 1_000_000)
    assert eng.apply(c.market("a", BUY, qty=1)) == [o(3, "a", "rejected", 0, 0, 0, FUNDS)]
    apply(eng, c.deposit("a", "US", 50))  # 4: less than any lot costs
    apply(eng, c.limit("s", SELL, 100, 1))  # 5
    assert eng.apply(c.market("a", BUY, qty=1)) == [  # 6: accepted, nothing fits
        o(6, "a", "new", 0, 1, 0),
        o(6, "a", "cancelled", 0, 0, 0, FUNDS),
    ]
    assert bal(eng, "a", "US") == (50, 1_000_000)
    apply(eng, c.cancel("s", 5), c.deposit("a", "US", 10**6))  # 7, 8
    assert eng.apply(c.market("a", BUY, qty=1))[-1] == o(
        9, "a", "cancelled", 0, 0, 0, "no_liquidity"
    )
    assert bal(eng, "a", "US") == (10**6 + 50, 1_000_000)  # all released


def test_quote_budget_buy_locks_budget_plus_fee(eng: MatchingEngine, c: Cmds) -> None:
    # budget 350 atoms: (350 + ceil(1.05)) * 1000 = 352 000
    apply(eng, c.deposit("a", "US", 351_999))  # 1
    assert eng.apply(c.market("a", BUY, quote=350)) == [o(2, "a", "rejected", 0, 0, 0, FUNDS)]
    apply(eng, c.deposit("a", "US", 1))  # 3
    apply(eng, c.limit("s", SELL, 100, 1), c.limit("s", SELL, 110, 5))  # 4, 5
    ev = eng.apply(c.market("a", BUY, quote=350))  # 6
    assert ev[-2] == o(6, "a", "filled", 3, 0, 320)
    # spent (100 + 1) + (220 + 1) atoms; the rest of the 352 atoms comes back
    assert bal(eng, "a", "US") == (30_000, 0)
    assert bal(eng, "a", "BT") == (3 * LU, 0)
    conserved(eng)


def test_quote_budget_buy_rounding_can_exhaust_the_lock(eng: MatchingEngine, c: Cmds) -> None:
    """Budget 1000 atoms holds (1000 + 3) * 1000; ten one-lot fills at 100 would pay ten fees
    of ceil(0.3) = 1: after nine (909 atoms) the tenth (101) no longer fits."""
    for _ in range(10):
        apply(eng, c.limit("s", SELL, 100, 1))  # 1..10
    apply(eng, c.deposit("a", "US", 1_003_000))  # 11
    ev = eng.apply(c.market("a", BUY, quote=1000))  # 12
    assert len(of_kind(ev, "trade")) == 9
    assert [e for e in ev if e[0] == "order" and e[2] == 12][-1] == (
        o(12, "a", "cancelled", 9, 0, 900, FUNDS)
    )
    assert bal(eng, "a", "US") == (94_000, 0) and bal(eng, "a", "BT") == (9 * LU, 0)
    conserved(eng)


def test_quote_budget_sell_sells_what_it_has(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.limit("m", BUY, 100, 5))  # 1
    assert eng.apply(c.market("a", SELL, quote=10_000)) == [o(2, "a", "rejected", 0, 0, 0, FUNDS)]
    apply(eng, c.deposit("a", "BT", 2 * LU + LU // 2))  # 3: two and a half lots
    ev = eng.apply(c.market("a", SELL, quote=10_000))  # 4: the budget wants 100 lots
    assert of_kind(ev, "trade")[0][3:5] == (100, 2)
    assert ev[-2] == o(4, "a", "cancelled", 2, 0, 200, FUNDS)
    assert bal(eng, "a", "BT") == (LU // 2, 0)  # the half lot comes back
    assert bal(eng, "a", "US") == ((200 - 1) * AU, 0)  # taker fee ceil(0.6)
    # half a lot left: accepted (it has some), but no lot can be sold
    assert eng.apply(c.market("a", SELL, quote=10_000)) == [
        o(5, "a", "new", 0, 0, 0),
        o(5, "a", "cancelled", 0, 0, 0, FUNDS),
    ]
    assert bal(eng, "a", "BT") == (LU // 2, 0)
    conserved(eng)


def test_fok_market_buy_is_all_or_nothing_with_funds(eng: MatchingEngine, c: Cmds) -> None:
    """A FOK market buy by quantity (the engine accepts one; the REST schema sends market
    orders as IOC) must not fill part of its quantity because funds ran out."""
    apply(eng, c.limit("s", SELL, 100, 5), c.deposit("a", "US", 250_000))  # 1, 2
    ev = eng.apply(NewOrder(3, 30, "a", S, BUY, MARKET, FOK, quantity=3))
    assert not of_kind(ev, "trade") or ev[-2][5] == 3, ev


# -- stops -------------------------------------------------------------------------------------


def test_stops_lock_at_placement(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**8), c.deposit("a", "BT", 10 * LU))  # 1, 2
    apply(eng, c.stop("a", BUY, STOP_LIMIT, 1300, 2, price=1234))  # 3
    assert locked_of(eng, 3) == 2 * 1238 * AU
    apply(eng, c.stop("a", BUY, STOP_LOSS, 1500, 2))  # 4: at the stop price, fee1 = ceil(4.5)
    assert locked_of(eng, 4) == 2 * 1505 * AU
    apply(eng, c.stop("a", BUY, TAKE_PROFIT, 900, 1))  # 5: fee1(900) = ceil(2.7) = 3
    assert locked_of(eng, 5) == 903 * AU
    apply(eng, c.stop("a", SELL, STOP_LOSS, 800, 3))  # 6
    apply(eng, c.stop("a", SELL, TAKE_PROFIT_LIMIT, 1600, 4, price=1590))  # 7
    assert (locked_of(eng, 6), locked_of(eng, 7)) == (3 * LU, 4 * LU)
    held = 2 * 1238 * AU + 2 * 1505 * AU + 903 * AU
    assert bal(eng, "a", "US") == (10**8 - held, held)
    assert bal(eng, "a", "BT") == (3 * LU, 7 * LU)
    assert eng.apply(c.stop("a", SELL, STOP_LOSS, 800, 4))[0] == o(
        8, "a", "rejected", 0, 0, 0, FUNDS
    )
    ev = eng.apply(c.cancel_all("a"))  # 9
    assert len([e for e in ev if e[0] == "order"]) == 5
    assert bal(eng, "a", "US") == (10**8, 0) and bal(eng, "a", "BT") == (10 * LU, 0)
    # a waiting stop-market buy not covered at its stop price is rejected
    apply(eng, c.deposit("b", "US", 2 * 1505 * AU - 1))  # 10
    assert eng.apply(c.stop("b", BUY, STOP_LOSS, 1500, 2)) == [
        o(11, "b", "rejected", 0, 0, 0, FUNDS)
    ]
    assert bal(eng, "b", "US") == (2 * 1505 * AU - 1, 0)


def test_triggered_stop_market_buy_spends_all_available(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 3_510_000))  # 1
    apply(eng, c.stop("a", BUY, STOP_LOSS, 1500, 2))  # 2: holds 2 * 1505 * 1000 = 3 010 000
    assert bal(eng, "a", "US") == (500_000, 3_010_000)
    apply(eng, c.limit("s", SELL, 1600, 2))  # 3
    apply(eng, c.limit("y", SELL, 1500, 1))  # 4
    ev = eng.apply(c.limit("z", BUY, 1500, 1))  # 5: last 1500 fires the stop
    # 2 @ 1600 cost (3200 + ceil(9.6)) * 1000 = 3 210 000: more than the stop held, less than
    # everything the account has
    assert [e for e in ev if e[0] == "order" and e[2] == 2] == [
        o(2, "a", "triggered", 0, 2, 0),
        o(2, "a", "filled", 2, 0, 3200),
    ]
    assert bal(eng, "a", "US") == (300_000, 0) and bal(eng, "a", "BT") == (2 * LU, 0)
    conserved(eng)


def test_triggered_stop_limit_keeps_its_hold_and_rests(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**7))  # 1
    apply(eng, c.limit("y", SELL, 1000, 1), c.limit("z", BUY, 1000, 1))  # 2, 3: last 1000
    apply(eng, c.stop("a", BUY, STOP_LIMIT, 1100, 3, price=1234))  # 4
    assert locked_of(eng, 4) == 3 * 1238 * AU
    apply(eng, c.limit("s", SELL, 1150, 1), c.limit("s", SELL, 1200, 1))  # 5, 6
    ev = eng.apply(c.limit("x", BUY, 1150, 1))  # 7: last 1150 fires it: 1 @ 1200, 2 rest
    assert [e for e in ev if e[0] == "order" and e[2] == 4][-1] == (
        o(4, "a", "partially_filled", 1, 2, 1200)
    )
    assert locked_of(eng, 4) == 2 * 1238 * AU
    spent = (1200 + 4) * AU  # taker fee ceil(3.6)
    assert bal(eng, "a", "US") == (10**7 - spent - 2 * 1238 * AU, 2 * 1238 * AU)
    conserved(eng)


def test_triggered_post_only_stop_limit_that_would_cross_releases(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.deposit("a", "US", 10**7))  # 1
    apply(eng, c.stop("a", BUY, STOP_LIMIT, 1300, 3, price=1400, post_only=True))  # 2
    assert bal(eng, "a", "US") == (10**7 - 3 * 1405 * AU, 3 * 1405 * AU)  # fee1 ceil(4.2)
    apply(eng, c.limit("s", SELL, 1350, 1), c.limit("z", BUY, 1300, 1))  # 3, 4
    ev = eng.apply(c.limit("y", SELL, 1300, 1))  # 5: last 1300 fires it; it would take
    assert [e for e in ev if e[0] == "order" and e[2] == 2][-1][8] == Reason.POST_ONLY_WOULD_TAKE
    assert bal(eng, "a", "US") == (10**7, 0)


# -- amend -------------------------------------------------------------------------------------


def test_amend_relocks_up_and_down(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10_000_000))  # 1
    apply(eng, c.limit("a", BUY, 1234, 5))  # 2: 6 190 000
    apply(eng, c.deposit("b", "US", 10**8), c.limit("b", BUY, 1234, 1))  # 3, 4: behind a
    assert eng.apply(c.amend("a", 2, qty=8))[1][8] == "amended"  # 5: 8 * 1238 * 1000
    assert locked_of(eng, 2) == 9_904_000 and bal(eng, "a", "US") == (96_000, 9_904_000)
    # 9 lots need 1 238 000 more than it holds: refused, the order stays as it was
    assert eng.apply(c.amend("a", 2, qty=9)) == [("reject", 6, "a", FUNDS)]
    assert locked_of(eng, 2) == 9_904_000 and bal(eng, "a", "US") == (96_000, 9_904_000)
    assert eng.book(S).depth(1) == ([(1234, 9)], [])
    apply(eng, c.amend("a", 2, price=1000))  # 7: 8 * 1003 * 1000
    assert locked_of(eng, 2) == 8_024_000 and bal(eng, "a", "US") == (1_976_000, 8_024_000)
    apply(eng, c.amend("a", 2, qty=3))  # 8: shrink in place, 3 * 1003 * 1000
    assert locked_of(eng, 2) == 3_009_000 and bal(eng, "a", "US") == (6_991_000, 3_009_000)
    conserved(eng)


def test_amend_of_a_partly_filled_order_holds_its_new_remainder(
    eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.deposit("a", "US", 10_000_000), c.limit("a", BUY, 1000, 5))  # 1, 2
    apply(eng, c.market("s", SELL, qty=2))  # 3: a has 2 filled, 3 left
    assert locked_of(eng, 2) == 3 * 1003 * AU
    apply(eng, c.amend("a", 2, qty=7, price=1100))  # 4: 5 left at 1100, fee1 = ceil(3.3) = 4
    assert locked_of(eng, 2) == 5 * 1104 * AU
    conserved(eng)


def test_amend_sell_needs_base(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "BT", 6 * LU), c.limit("a", SELL, 2000, 5))  # 1, 2
    assert eng.apply(c.amend("a", 2, qty=7)) == [("reject", 3, "a", FUNDS)]
    apply(eng, c.amend("a", 2, qty=6))  # 4
    assert locked_of(eng, 2) == 6 * LU and bal(eng, "a", "BT") == (0, 6 * LU)
    apply(eng, c.amend("a", 2, price=2100))  # 5: same size, same hold
    assert locked_of(eng, 2) == 6 * LU


def test_amend_that_trades_settles_at_the_maker_price(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**7), c.limit("a", BUY, 1000, 5))  # 1, 2
    apply(eng, c.limit("s", SELL, 1100, 2))  # 3
    apply(eng, c.amend("a", 2, price=1200))  # 4: takes 2 @ 1100, 3 left at 1200
    # paid (2200 + ceil(6.6)) atoms, holds 3 * (1200 + 4) atoms
    assert locked_of(eng, 2) == 3 * 1204 * AU
    assert bal(eng, "a", "US") == (10**7 - 2207 * AU - 3 * 1204 * AU, 3 * 1204 * AU)
    conserved(eng)


def test_amend_post_only_check_comes_before_funds(eng: MatchingEngine, c: Cmds) -> None:
    """As for a new order (post-only is checked before funds there), an amend that would
    take as post-only is refused for that, even when it could not be paid for either."""
    apply(eng, c.deposit("a", "US", 1_003_000))  # 1
    apply(eng, c.limit("a", BUY, 1000, 1, post_only=True))  # 2: holds all of it
    apply(eng, c.limit("s", SELL, 1100, 1))  # 3
    assert eng.apply(c.amend("a", 2, qty=3, price=1100)) == [
        ("reject", 4, "a", Reason.POST_ONLY_WOULD_TAKE)
    ]


# -- closes release everything -----------------------------------------------------------------


def test_cancel_releases(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**7), c.limit("a", BUY, 1234, 5))  # 1, 2
    apply(eng, c.market("s", SELL, qty=1))  # 3: one lot filled at 1234, as the maker
    assert locked_of(eng, 2) == 4 * 1238 * AU
    apply(eng, c.cancel("a", 2))  # 4
    assert bal(eng, "a", "US") == (10**7 - (1234 - 1) * AU, 0)  # rebate -floor(1.234)
    conserved(eng)


def test_ioc_and_fok_release(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**7), c.limit("s", SELL, 1200, 2))  # 1, 2
    ev = eng.apply(c.limit("a", BUY, 1234, 5, tif=IOC))  # 3
    assert ev[-2] == o(3, "a", "cancelled", 2, 0, 2400, Reason.IOC_EXPIRED)
    assert bal(eng, "a", "US") == (10**7 - (2400 + 8) * AU, 0)  # taker fee ceil(7.2)
    apply(eng, c.limit("s", SELL, 1200, 2))  # 4
    ev = eng.apply(c.limit("a", BUY, 1234, 5, tif=FOK))  # 5
    assert ev[-1] == o(5, "a", "cancelled", 0, 0, 0, Reason.FOK_NOT_FILLABLE)
    assert bal(eng, "a", "US") == (10**7 - 2408 * AU, 0)


def test_self_trade_prevention_releases(eng: MatchingEngine, c: Cmds) -> None:
    apply(eng, c.deposit("a", "US", 10**7), c.deposit("a", "BT", 10 * LU))  # 1, 2
    apply(eng, c.limit("a", SELL, 1200, 3))  # 3: cancelled as a maker below
    apply(eng, c.limit("a", BUY, 1200, 2))  # 4: cancel_maker: 3 is cancelled, 4 rests
    assert eng.order(3) is None and bal(eng, "a", "BT") == (10 * LU, 0)
    assert locked_of(eng, 4) == 2 * 1204 * AU
    apply(eng, c.limit("a", SELL, 1200, 1, stp=CANCEL_TAKER))  # 5: the taker is cancelled
    assert bal(eng, "a", "BT") == (10 * LU, 0)
    apply(eng, c.limit("a", SELL, 1200, 1, stp=CANCEL_BOTH))  # 6: both
    assert eng.order(4) is None
    assert bal(eng, "a", "BT") == (10 * LU, 0) and bal(eng, "a", "US") == (10**7, 0)
    conserved(eng)


def test_cancel_all_releases_everything(eng: MatchingEngine, c: Cmds) -> None:
    x = Cmds(E)
    x.next_id = 100
    apply(eng, c.deposit("a", "US", 10**9), c.deposit("a", "BT", 5 * LU))
    apply(eng, c.limit("a", BUY, 1000, 3), c.limit("a", SELL, 2000, 5))
    apply(eng, c.stop("a", BUY, STOP_LOSS, 3000, 1), x.limit("a", BUY, 500, 2))
    assert bal(eng, "a", "BT") == (0, 5 * LU) and bal(eng, "a", "US")[1] > 0
    apply(eng, c.cancel_all("a"))
    assert bal(eng, "a", "US") == (10**9, 0) and bal(eng, "a", "BT") == (5 * LU, 0)


# -- snapshots and the audit -------------------------------------------------------------------


def test_snapshot_carries_balances_locks_and_references(
    mk: dict[str, Market], eng: MatchingEngine, c: Cmds
) -> None:
    apply(eng, c.deposit("a", "US", 10**7, "D"), c.limit("a", BUY, 1234, 5))  # 1, 2
    apply(eng, c.withdraw("a", "US", 10**9, "W"), c.market("s", SELL, qty=2))  # 3, 4
    restored = MatchingEngine.restore(mk, eng.snapshot())
    restored.check()
    assert restored.ledger is not None and eng.ledger is not None
    for account in engine_accounts(eng) | {FEE_ACCOUNT}:
        assert restored.ledger.balances(account) == eng.ledger.balances(account)
    assert restored.ledger.supply == eng.ledger.supply
    assert locked_of(restored, 2) == locked_of(eng, 2)
    # the references survive: a retried deposit or withdrawal is still a repeat
    for engine in (eng, restored):
        assert engine.apply(c.deposit("a", "US", 10**7, "D"))[0][9] == 1
        assert engine.apply(Withdrawal(c.next_id, 0, "a", "US", 1, "W"))[0][7:10] == (
            "rejected", FUNDS, 3,
        )  # fmt: skip
    assert restored.snapshot() == eng.snapshot()
    # and both go on settling alike: a fill with fees for a's resting buy, the fee account's
    # balance included
    for engine in (eng, restored):
        apply(engine, Deposit(90, 900, "t", "BT", 5 * LU, "T"))
        apply(engine, NewOrder(91, 910, "t", S, SELL, MARKET, IOC, quantity=3))
    assert restored.ledger.balance(FEE_ACCOUNT, "US") == eng.ledger.balance(FEE_ACCOUNT, "US")
    for account in engine_accounts(eng) | {FEE_ACCOUNT}:
        assert restored.ledger.balances(account) == eng.ledger.balances(account)
    assert eng.order(2) is None and restored.order(2) is None  # filled: 2 + 3 lots
    assert restored.snapshot() == eng.snapshot()


def test_check_catches_a_tampered_ledger(mk: dict[str, Market], c: Cmds) -> None:
    eng = MatchingEngine(mk)
    fund(eng, ["s"], amount=10**12)
    apply(eng, c.deposit("a", "US", 10**7), c.limit("a", BUY, 1234, 5))
    apply(eng, c.market("s", SELL, qty=2))
    eng.check()
    blob = eng.snapshot()

    def tamper(what: str) -> MatchingEngine:
        copy = MatchingEngine.restore(mk, blob)
        copy.check()
        ledger = copy.ledger
        assert ledger is not None
        if what == "available":
            ledger.bal("a", "US").available += 1  # created from nothing
        elif what == "fee account":
            ledger.bal(FEE_ACCOUNT, "US").available -= 1
        elif what == "locked":
            ledger.bal("a", "US").locked += 1  # more locked than the orders hold
            ledger.bal("a", "US").available -= 1
        elif what == "order lock":
            order = copy.order(2)
            assert order is not None
            order.locked -= 1
        elif what == "negative":
            ledger.bal("a", "BT").available = -LU  # moved to another account: sum unchanged
            ledger.bal("b", "BT").available += 3 * LU
        elif what == "supply":
            ledger.supply["US"] += 1
        return copy

    for what in ("available", "fee account", "locked", "order lock", "negative", "supply"):
        broken = tamper(what)
        with pytest.raises(AssertionError):
            broken.check()
            pytest.fail(f"check() missed a tampered {what}")
