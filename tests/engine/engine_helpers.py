"""Helpers shared by the pure-core tests: small markets, a command builder, a flow generator.

A *flow* is a list of abstract operations (tuples of small ints) turned into engine commands by
:class:`FlowBuilder`; the seeded :func:`random_ops` and the hypothesis strategy :func:`ops_strategy`
draw the same shapes, so the differential and the property tests exercise the same ground. A flow
starts with deposits (:func:`funding_ops`: mostly generous, some small or none, so that orders are
also rejected ``insufficient_funds``) and mixes in deposits and withdrawals (some too large, some
repeating an earlier reference).

Tests of matching itself run with the ledger on: :func:`fund` deposits plenty of every asset for
the accounts they use, before the test, and drops those transfer events.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

from engine.commands import (
    BUY,
    CANCEL_BOTH,
    CANCEL_MAKER,
    CANCEL_TAKER,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STOP_LIMIT,
    STOP_LOSS,
    TAKE_PROFIT,
    TAKE_PROFIT_LIMIT,
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    Deposit,
    NewOrder,
    Withdrawal,
)
from engine.markets import Market, assets_of
from engine.matcher import MatchingEngine
from protocol.config import load_markets

Event = tuple[Any, ...]


def make_market(
    symbol: str = "AB-C",
    tick: str = "1",
    lot: str = "1",
    min_qty: str | None = None,
    max_qty: str = "1000000",
    min_notional: str = "0",
    maker: str = "0",
    taker: str = "0",
) -> Market:
    base, _, quote = symbol.partition("-")
    return Market.from_dict(
        {
            "symbol": symbol,
            "base_asset": base,
            "quote_asset": quote or "Q",
            "tick_size": tick,
            "lot_size": lot,
            "min_quantity": min_qty or lot,
            "max_quantity": max_qty,
            "min_notional": min_notional,
            "maker_fee_rate": maker,
            "taker_fee_rate": taker,
        }
    )


def small_markets() -> dict[str, Market]:
    """Readable integer markets: AB-C has a maker rebate, XY-Z plain fees and a min notional."""
    return {
        "AB-C": make_market("AB-C", maker="-0.001", taker="0.002"),
        "XY-Z": make_market("XY-Z", min_notional="50", maker="0.001", taker="0.001"),
    }


# ---------------------------------------------------------------------------------------------
# Funding accounts for tests of matching
# ---------------------------------------------------------------------------------------------

#: every account a hand-written matching scenario uses
TEST_ACCOUNTS = tuple("abcdefghijklmnopqrstuvwxyz") + ("1", "2", "3", "4")
PLENTY = 10**24
#: deposit command ids of :func:`fund`, far above any id a scenario uses
FUND_IDS = 10**15


def fund(
    engine: MatchingEngine,
    accounts: Iterable[str] = TEST_ACCOUNTS,
    amount: int = PLENTY,
    assets: Iterable[str] | None = None,
) -> None:
    """Deposit ``amount`` units of every asset (or ``assets``) to each account, so matching
    scenarios run with the ledger on and never meet ``insufficient_funds``."""
    codes = list(assets_of(engine.markets)) if assets is None else list(assets)
    n = 0
    for account in accounts:
        for asset in codes:
            n += 1
            ref = f"fund:{account}:{asset}"
            (event,) = engine.apply(Deposit(FUND_IDS + n, 0, account, asset, amount, ref))
            assert event[0] == "transfer" and event[7] == "completed", event


def engine_accounts(engine: MatchingEngine) -> set[str]:
    """Every account the engine's ledger knows (``Ledger.list_accounts()``)."""
    ledger = engine.ledger
    assert ledger is not None
    return set(ledger.list_accounts())


def funded(markets: dict[str, Market], **kw: Any) -> MatchingEngine:
    """A new engine (ledger on) whose test accounts hold plenty of everything."""
    engine = MatchingEngine(markets)
    fund(engine, **kw)
    return engine


# ---------------------------------------------------------------------------------------------
# A terse command builder for hand-written scenarios
# ---------------------------------------------------------------------------------------------


class Cmds:
    """Builds commands with increasing ids (from 1) and ts = id * 10."""

    def __init__(self, symbol: str = "AB-C") -> None:
        self.symbol = symbol
        self.next_id = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def new(self, account: str, side: str, **kw: Any) -> NewOrder:
        i = self._id()
        kw.setdefault("symbol", self.symbol)
        return NewOrder(i, i * 10, account, side=side, **kw)

    def limit(
        self, account: str, side: str, price: int, qty: int, tif: str = GTC, **kw: Any
    ) -> NewOrder:
        return self.new(
            account, side, type=LIMIT, price=price, quantity=qty, time_in_force=tif, **kw
        )

    def market(
        self, account: str, side: str, qty: int | None = None, quote: int | None = None, **kw: Any
    ) -> NewOrder:
        return self.new(
            account, side, type=MARKET, time_in_force=IOC, quantity=qty, quote_quantity=quote, **kw
        )

    def stop(
        self,
        account: str,
        side: str,
        type_: str,
        stop: int,
        qty: int,
        price: int | None = None,
        tif: str | None = None,
        **kw: Any,
    ) -> NewOrder:
        if tif is None:
            tif = GTC if price is not None else IOC
        return self.new(
            account,
            side,
            type=type_,
            stop_price=stop,
            price=price,
            quantity=qty,
            time_in_force=tif,
            **kw,
        )

    def cancel(self, account: str, order_id: int) -> CancelOrder:
        i = self._id()
        return CancelOrder(i, i * 10, account, order_id)

    def cancel_all(self, account: str, symbol: str | None = None) -> CancelAll:
        i = self._id()
        return CancelAll(i, i * 10, account, symbol)

    def amend(
        self, account: str, order_id: int, qty: int | None = None, price: int | None = None
    ) -> AmendOrder:
        i = self._id()
        return AmendOrder(i, i * 10, account, order_id, qty, price)

    def deposit(self, account: str, asset: str, amount: int, ref: str | None = None) -> Deposit:
        i = self._id()
        return Deposit(i, i * 10, account, asset, amount, f"dep{i}" if ref is None else ref)

    def withdraw(self, account: str, asset: str, amount: int, ref: str | None = None) -> Withdrawal:
        i = self._id()
        return Withdrawal(i, i * 10, account, asset, amount, f"wd{i}" if ref is None else ref)


def kinds(events: list[Event]) -> list[str]:
    return [e[0] for e in events]


def of_kind(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e[0] == kind]


def order_events(events: list[Event], order_id: int) -> list[Event]:
    return [e for e in events if e[0] == "order" and e[2] == order_id]


def run_all(engine: Any, commands: list[Command]) -> list[list[Event]]:
    return [engine.apply(c) for c in commands]


# ---------------------------------------------------------------------------------------------
# Random flows
# ---------------------------------------------------------------------------------------------

ACCOUNTS = ("1", "2", "3", "4")
POOR = "4"
SIDE_LIST = (BUY, SELL)
STP_LIST = (CANCEL_MAKER, CANCEL_TAKER, CANCEL_BOTH)
TIF_LIST = (GTC, GTC, GTC, IOC, FOK)
# kind index -> order type; 2 is a quote-budget market order, 7 a malformed limit (no price)
KINDS = (LIMIT, MARKET, MARKET, STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT, LIMIT)


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    mid: int  # ticks
    spread: int  # prices are mid +- spread ticks
    max_lots: int


DIFF_SPECS = (
    SymbolSpec("BTC-USDT", 3_000_000, 8, 40),  # min notional 1 USDT = 10**7 atoms -> >= 4 lots
    SymbolSpec("ETH-BTC", 5_000, 6, 60),  # maker rebate; min notional 10**5 atoms -> >= 20 lots
)
SMALL_SPECS = (SymbolSpec("AB-C", 100, 5, 12), SymbolSpec("XY-Z", 20, 3, 10))


@dataclass
class Issued:
    id: int
    account: str
    symbol: str
    quantity: int


def markets_for(specs: tuple[SymbolSpec, ...]) -> dict[str, Market]:
    """The markets a spec list trades on: the small integer ones or the shipped defaults."""
    if all(s.symbol in ("AB-C", "XY-Z") for s in specs):
        return small_markets()
    return load_markets()


@dataclass
class FlowBuilder:
    """Turns abstract ops into commands; remembers issued order ids for cancels and amends,
    and transfer references so that some are repeated."""

    specs: tuple[SymbolSpec, ...]
    markets: dict[str, Market] | None = None
    next_id: int = 0
    issued: list[Issued] = field(default_factory=list)
    deposit_refs: list[str] = field(default_factory=list)
    withdrawal_refs: list[tuple[str, str]] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    #: per asset, the units one large order of the flow needs (its scale for amounts)
    scale: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.markets is None:
            self.markets = markets_for(self.specs)
        for spec in self.specs:
            m = self.markets[spec.symbol]
            top = spec.mid + spec.spread
            fee = math.ceil(top * Fraction(m.taker_fee_rate))
            need = {
                m.base_asset: spec.max_lots * m.lot_units,
                m.quote_asset: spec.max_lots * (top + fee) * m.atom_units,
            }
            for asset, units in need.items():
                if asset not in self.assets:
                    self.assets.append(asset)
                self.scale[asset] = max(self.scale.get(asset, 0), units)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _transfer(self, op: tuple[Any, ...], i: int, ts: int) -> Command:
        kind, acct, asset_i, size, frac, ref_i = op
        account = ACCOUNTS[acct % len(ACCOUNTS)]
        asset = self.assets[asset_i % len(self.assets)]
        unit = self.scale[asset]
        size %= 8
        if account == POOR and size < 4:
            size += 4  # the poor account never gets a generous deposit
        if kind == "deposit":
            if size < 4:  # generous: dozens of large orders
                amount = unit * (10 + frac % 40) + frac
            elif size < 6:  # small: part of one large order, not a whole number of atoms
                amount = unit * (frac % 100) // 100 + frac + 1
            elif size == 6:  # tiny
                amount = 1 + frac
            else:
                amount = unit // (1 + frac % 10) + 1
            if ref_i and self.deposit_refs:  # a retried reference: the first outcome stands
                ref = self.deposit_refs[-1 - (frac + ref_i) % len(self.deposit_refs)]
            else:
                ref = f"d{i}"
                self.deposit_refs.append(ref)
            return Deposit(i, ts, account, asset, amount, ref)
        if size < 2:  # far too large
            amount = unit * 1000 + frac
        elif size < 6:
            amount = unit * (frac % 100) // 200 + 1
        elif size == 6:
            amount = 1 + frac
        else:
            amount = unit * (1 + frac % 5)
        if ref_i and self.withdrawal_refs:
            owner, ref = self.withdrawal_refs[-1 - (frac + ref_i) % len(self.withdrawal_refs)]
            # mostly the same account (a retry); sometimes another one (its own reference)
            account = owner if ref_i % 4 else ACCOUNTS[(ACCOUNTS.index(owner) + 1) % 4]
        else:
            ref = f"w{i}"
        if (account, ref) not in self.withdrawal_refs:
            self.withdrawal_refs.append((account, ref))
        return Withdrawal(i, ts, account, asset, amount, ref)

    def _pick(self, pick: int) -> Issued | None:
        if not self.issued or pick < 0:
            return None
        return self.issued[-1 - pick % min(len(self.issued), 25)]  # mostly recent orders

    def build(self, op: tuple[Any, ...]) -> Command:
        kind = op[0]
        i = self._id()
        ts = 1_000 + i
        if kind in ("deposit", "withdraw"):
            return self._transfer(op, i, ts)
        if kind == "new":
            _, acct, sym_i, side_i, kind_i, tif_i, post_only, poff, qty, soff, stp_i, coid = op
            spec = self.specs[sym_i % len(self.specs)]
            side = SIDE_LIST[side_i % 2]
            type_ = KINDS[kind_i % len(KINDS)]
            qty = 1 + qty % spec.max_lots
            # three limits in four rest on their own side of the mid, one crosses it (sweeps)
            reach = (poff // 4) % spec.spread
            if poff % 4:
                away = 1 + reach
                price: int | None = spec.mid - away if side == BUY else spec.mid + away
            else:
                price = spec.mid + reach if side == BUY else spec.mid - reach
            price = max(1, price)
            stop: int | None = max(1, spec.mid + soff % (2 * spec.spread + 1) - spec.spread)
            tif = TIF_LIST[tif_i % len(TIF_LIST)]
            quantity: int | None = qty
            quote: int | None = None
            if kind_i % len(KINDS) == 2:
                quote = spec.mid * qty + poff * 7  # not a multiple of the price: leftovers
                quantity = None
            if type_ in (MARKET, STOP_LOSS, TAKE_PROFIT):
                tif = IOC
                price = None
                post_only = False
            if type_ in (LIMIT, MARKET):
                stop = None
            if post_only:
                tif = GTC
            if kind_i % len(KINDS) == 7:
                price = None  # malformed: a limit without a price -> invalid_order
            coid_text = None if coid == 0 else f"c{coid}"
            self.issued.append(Issued(i, ACCOUNTS[acct % len(ACCOUNTS)], spec.symbol, qty))
            return NewOrder(
                i,
                ts,
                ACCOUNTS[acct % len(ACCOUNTS)],
                spec.symbol,
                side,
                type_,
                tif,
                bool(post_only),
                price,
                quantity,
                quote,
                stop,
                coid_text,
                STP_LIST[stp_i % len(STP_LIST)],
            )
        if kind == "cancel":
            _, pick, other = op
            target = self._pick(pick)
            if target is None:
                return CancelOrder(i, ts, ACCOUNTS[other % 4], 10**9 + pick)  # unknown id
            account = (
                target.account if other % 4 else ACCOUNTS[(ACCOUNTS.index(target.account) + 1) % 4]
            )
            return CancelOrder(i, ts, account, target.id)
        if kind == "cancel_all":
            _, acct, sym_i = op
            symbol = None if sym_i < 0 else self.specs[sym_i % len(self.specs)].symbol
            return CancelAll(i, ts, ACCOUNTS[acct % 4], symbol)
        if kind == "amend":
            _, pick, other, qmode, poff = op
            target = self._pick(pick)
            if target is None:
                return AmendOrder(i, ts, "1", 10**9, 1, None)
            spec = next(s for s in self.specs if s.symbol == target.symbol)
            account = (
                target.account if other % 6 else ACCOUNTS[(ACCOUNTS.index(target.account) + 1) % 4]
            )
            qmode %= 5
            qty = None
            if qmode == 1:
                qty = max(1, target.quantity - 1 - poff % 3)  # shrink
            elif qmode == 2 and poff % 5 == 0:
                qty = target.quantity + 3 * spec.max_lots  # grow a lot: may need more funds
            elif qmode == 2:
                qty = target.quantity + 1 + poff % 4  # grow
            elif qmode == 3:
                qty = target.quantity  # maybe no change at all
            new_price = None
            if qmode in (0, 3, 4) or poff % 2:
                new_price = max(1, spec.mid + poff % (2 * spec.spread + 1) - spec.spread)
            if qty is None and new_price is None:
                qty = target.quantity
            return AmendOrder(i, ts, account, target.id, qty, new_price)
        raise ValueError(op)


#: deposit sizes of the initial funding (see FlowBuilder._transfer): mostly generous
FUNDING_SIZES = (0, 0, 0, 0, 0, 1, 2, 4, 5, 6, 7)


def funding_ops(rng: random.Random, n_assets: int = 4) -> list[tuple[Any, ...]]:
    """The deposits a flow starts with: accounts 1 and 2 generous in everything, 3 and 4 drawn
    (generous, small, tiny or nothing) per asset; 4 (:data:`POOR`) only ever gets small
    deposits, so its orders, amends and withdrawals keep meeting ``insufficient_funds``."""
    ops: list[tuple[Any, ...]] = []
    for acct in range(len(ACCOUNTS)):
        for asset_i in range(n_assets):
            size = 0 if acct < 2 else rng.choice(FUNDING_SIZES + (-1,))
            if size >= 0:
                ops.append(("deposit", acct, asset_i, size, rng.randrange(100), 0))
    return ops


def transfer_op(rng: random.Random) -> tuple[Any, ...]:
    return (
        rng.choice(("deposit", "withdraw")),
        rng.randrange(4),
        rng.randrange(4),
        rng.randrange(8),
        rng.randrange(100),
        0 if rng.random() < 0.75 else rng.randrange(1, 9),
    )


def random_ops(
    rng: random.Random, n: int, n_symbols: int = 2, funding: bool = True
) -> list[tuple[Any, ...]]:
    """``funding``: start with :func:`funding_ops` (the flow's accounts hold nothing before)."""
    ops: list[tuple[Any, ...]] = funding_ops(rng) if funding else []
    for _ in range(n):
        r = rng.random()
        if r >= 0.95:
            if funding:
                ops.append(transfer_op(rng))
                continue
            r = rng.random() * 0.95
        if r < 0.62:
            kind_i = rng.choices(range(len(KINDS)), weights=(50, 6, 5, 3, 3, 3, 3, 1))[0]
            ops.append(
                (
                    "new",
                    rng.randrange(4),
                    rng.randrange(n_symbols),
                    rng.randrange(2),
                    kind_i,
                    rng.randrange(5),
                    rng.random() < 0.12,
                    rng.randrange(100),
                    rng.randrange(100),
                    rng.randrange(100),
                    rng.randrange(3),
                    0 if rng.random() < 0.85 else rng.randrange(1, 9),
                )
            )
        elif r < 0.76:
            ops.append(("cancel", rng.randrange(-1, 25), rng.randrange(8)))
        elif r < 0.78:
            ops.append(("cancel_all", rng.randrange(4), rng.randrange(-1, n_symbols)))
        else:
            ops.append(
                (
                    "amend",
                    rng.randrange(-1, 40),
                    rng.randrange(12),
                    rng.randrange(5),
                    rng.randrange(100),
                )
            )
    return ops


def funding_strategy() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Hypothesis' :func:`funding_ops`: per account and asset a deposit size, or none."""
    sizes = st.sampled_from(FUNDING_SIZES + (-1,))
    cells = st.lists(st.tuples(sizes, st.integers(0, 99)), min_size=8, max_size=8)

    def to_ops(drawn: list[tuple[int, int]]) -> list[tuple[Any, ...]]:
        ops = [("deposit", a, k, 0, 10 + 7 * k, 0) for a in (0, 1) for k in range(4)]
        for k, (size, frac) in enumerate(drawn):
            if size >= 0:
                ops.append(("deposit", 2 + k // 4, k % 4, size, frac, 0))
        return ops

    return cells.map(to_ops)


def transfer_strategy() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.sampled_from(("deposit", "withdraw")),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 7),
        st.integers(0, 99),
        st.sampled_from((0, 0, 0, 1, 2, 5)),
    )


def ops_strategy(n_symbols: int = 2, transfers: bool = True) -> st.SearchStrategy[tuple[Any, ...]]:
    small = st.integers(0, 99)
    new = st.tuples(
        st.just("new"),
        st.integers(0, 3),
        st.integers(0, n_symbols - 1),
        st.integers(0, 1),
        st.sampled_from((0, 0, 0, 0, 1, 2, 3, 4, 5, 6)),
        st.integers(0, 4),
        st.booleans(),
        small,
        small,
        small,
        st.integers(0, 2),
        st.sampled_from((0, 0, 1, 2)),
    )
    cancel = st.tuples(st.just("cancel"), st.integers(-1, 15), st.integers(0, 7))
    cancel_all = st.tuples(st.just("cancel_all"), st.integers(0, 3), st.integers(-1, n_symbols - 1))
    amend = st.tuples(
        st.just("amend"), st.integers(-1, 15), st.integers(0, 11), st.integers(0, 4), small
    )
    if transfers:
        return st.one_of(new, new, new, cancel, cancel_all, amend, transfer_strategy())
    return st.one_of(new, new, new, cancel, cancel_all, amend)


def flow_strategy(
    n_symbols: int = 2, min_size: int = 10, max_size: int = 120
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """A funded flow: the initial deposits, then orders, cancels, amends and transfers."""
    ops = st.lists(ops_strategy(n_symbols), min_size=min_size, max_size=max_size)
    return st.tuples(funding_strategy(), ops).map(lambda t: t[0] + t[1])


def build_commands(
    specs: tuple[SymbolSpec, ...],
    ops: list[tuple[Any, ...]],
    markets: dict[str, Market] | None = None,
) -> list[Command]:
    builder = FlowBuilder(specs, markets)
    return [builder.build(op) for op in ops]


def full_depth(
    engine: MatchingEngine, symbol: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    return engine.book(symbol).depth(10**6)
