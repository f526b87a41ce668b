"""A deliberately naive reference matcher, written from docs/DESIGN.md ("Matching rules"), and a
naive ledger written from the money contract (issue 14: balances, pre-trade risk, settlement).

Nothing clever on purpose: every resting order of a symbol sits in one plain list, the book is
re-sorted by (price, time in the book) every time it is looked at, a cancelled order is removed
from the list at once, fees are computed with ``fractions.Fraction`` and nothing is cached. It
shares no code with ``engine/book.py``, ``engine/matcher.py`` or ``engine/ledger.py``; only the
schema constants, the ``Market`` rules and the command classes are imported, since they are the
contract.

Interpretations where DESIGN.md leaves room (they match the documented intent, see the tests):

* "arrival order" of orders (stop firing, cancel all) is the order of acceptance; an amend that
  re-enters the book counts as a new arrival. Time priority *inside a price level* is the time
  the order entered the book (a triggered stop-limit queues behind what rested before it fired).
* An amend's minimum-notional check is on the amended order's open part,
  ``new_price * (new_total - filled)``.
* "if it filled some" (resting remainder) refers to the order's cumulative fills.
* A triggered post-only stop-limit that would cross is cancelled ``post_only_would_take``.
* ``bbo`` is reported once per command and symbol, after everything else (``cancel_all`` over
  several symbols: in the order the symbols were first touched).

The ledger (``risk=True``), rule by rule from the contract; where it leaves room:

* The funds check of a new order comes after every other accept check (an order that is invalid
  or a duplicate is rejected for that, not for its funds); the one of an amend after every other
  amend check, post-only included.
* Orders that spend within what they hold (market buy by quantity, triggered stop-market buy,
  quote-budget buy and sell) check it per fill, against a maker of another account (a self-trade
  cancel is no fill): the fill shrinks to the most lots that fit; when none fits the taker stops,
  cancelled ``insufficient_funds``.
* Transfers: ``original_id``/``original_ts`` name the first command with the reference (the
  command itself the first time); a repeat reports the first's id and ts, account, asset,
  amount, status and reason. A rejected withdrawal's reference is used up like a completed one
  (its repeat answers "rejected").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from engine.commands import (
    BUY,
    CANCEL_BOTH,
    CANCEL_MAKER,
    CANCEL_TAKER,
    CANCELLED,
    COMPLETED,
    DEPOSIT,
    FILLED,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    NEW,
    ORDER_TYPES,
    PARTIALLY_FILLED,
    REJECTED,
    SELL,
    SIDES,
    STOP_LIMIT,
    STOP_LOSS,
    STP_MODES,
    TAKE_PROFIT,
    TAKE_PROFIT_LIMIT,
    TIME_IN_FORCES,
    TRIGGERED,
    WITHDRAWAL,
    AmendOrder,
    CancelAll,
    CancelOrder,
    Deposit,
    NewOrder,
    Reason,
    Withdrawal,
)
from engine.markets import Market

Event = tuple[Any, ...]
BBOTuple = tuple[int | None, int, int | None, int]

_PRICED = (LIMIT, STOP_LIMIT, TAKE_PROFIT_LIMIT)
_STOPS = (STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT)
#: the exchange's fee account (the contract's name; ``@`` is never in a client account id)
FEES = "@fees"


@dataclass
class RefOrder:
    id: int
    account: str
    symbol: str
    side: str
    type: str
    tif: str
    post_only: bool
    price: int | None
    stop_price: int | None
    quantity: int | None  # total lots (None for a quote-budget market order)
    quote: int | None
    coid: str | None
    stp: str
    arrival: int  # acceptance order (stops fire and cancel-all works in this order)
    book_time: int = 0  # when it entered the book (FIFO inside a level)
    filled: int = 0
    cum_quote: int = 0
    status: str = NEW
    waiting: bool = False  # an untriggered stop
    lock: int = 0  # units this order holds (quote asset for a buy, base for a sell)
    lock_asset: str = ""

    @property
    def remaining(self) -> int:
        if self.quantity is None:
            return 0
        return self.quantity - self.filled


# ---------------------------------------------------------------------------------------------
# The naive ledger
# ---------------------------------------------------------------------------------------------


@dataclass
class RefTransfer:
    """The first outcome of a transfer reference."""

    id: int
    ts: int
    type: str
    account: str
    asset: str
    amount: int
    reference: str
    status: str
    reason: str | None


class RefLedger:
    """Plain dicts: (account, asset) -> available, (account, asset) -> locked."""

    def __init__(self, markets: dict[str, Market]) -> None:
        self.markets = markets
        self.assets: list[str] = sorted(
            {m.base_asset for m in markets.values()} | {m.quote_asset for m in markets.values()}
        )
        self.available: dict[tuple[str, str], int] = {}
        self.locked: dict[tuple[str, str], int] = {}
        self.deposited: dict[str, int] = {a: 0 for a in self.assets}
        self.withdrawn: dict[str, int] = {a: 0 for a in self.assets}
        self.deposit_refs: dict[str, RefTransfer] = {}
        self.withdrawal_refs: dict[tuple[str, str], RefTransfer] = {}

    # -- reading -------------------------------------------------------------------------------
    def balance(self, account: str, asset: str) -> tuple[int, int]:
        return (self.available.get((account, asset), 0), self.locked.get((account, asset), 0))

    def accounts(self) -> list[str]:
        return sorted({a for a, _ in self.available} | {a for a, _ in self.locked})

    def supply(self, asset: str) -> int:
        return self.deposited[asset] - self.withdrawn[asset]

    def free(self, account: str, asset: str) -> int:
        return self.available.get((account, asset), 0)

    # -- moving units --------------------------------------------------------------------------
    def credit(self, account: str, asset: str, amount: int) -> None:
        key = (account, asset)
        self.available[key] = self.available.get(key, 0) + amount
        self.locked.setdefault(key, 0)

    def lock(self, o: RefOrder, amount: int) -> None:
        """Move ``amount`` from the account's available into the order's lock."""
        assert amount >= 0
        key = (o.account, o.lock_asset)
        assert self.available.get(key, 0) >= amount, ("locking more than available", o, amount)
        self.available[key] = self.available.get(key, 0) - amount
        self.locked[key] = self.locked.get(key, 0) + amount
        o.lock += amount

    def release(self, o: RefOrder, amount: int) -> None:
        """Move ``amount`` of the order's lock back to the account's available."""
        assert 0 <= amount <= o.lock, ("releasing more than held", o, amount)
        key = (o.account, o.lock_asset)
        self.locked[key] -= amount
        self.available[key] = self.available.get(key, 0) + amount
        o.lock -= amount

    def release_all(self, o: RefOrder) -> None:
        self.release(o, o.lock)

    def spend(self, o: RefOrder, amount: int) -> None:
        """Take ``amount`` out of the order's lock (it leaves the account)."""
        assert 0 <= amount <= o.lock, ("spending more than held", o, amount)
        self.locked[(o.account, o.lock_asset)] -= amount
        o.lock -= amount

    # -- transfers -----------------------------------------------------------------------------
    def transfer(self, c: Deposit | Withdrawal) -> Event:
        if isinstance(c, Deposit):
            kind, reference = DEPOSIT, c.deposit_id
            first = self.deposit_refs.get(reference)
        else:
            kind, reference = WITHDRAWAL, c.client_withdrawal_id
            first = self.withdrawal_refs.get((c.account, reference))
        if first is not None:  # a repeat: the first outcome, nothing changes
            return (
                "transfer",
                c.id,
                first.type,
                first.account,
                first.asset,
                first.amount,
                first.reference,
                first.status,
                first.reason,
                first.id,
                first.ts,
            )
        status, reason = COMPLETED, None
        if c.asset not in self.assets:
            status, reason = REJECTED, Reason.UNKNOWN_ASSET
        elif c.amount <= 0:
            status, reason = REJECTED, Reason.INVALID_AMOUNT
        elif kind == DEPOSIT:
            self.credit(c.account, c.asset, c.amount)
            self.deposited[c.asset] += c.amount
        elif self.free(c.account, c.asset) >= c.amount:
            self.credit(c.account, c.asset, -c.amount)
            self.withdrawn[c.asset] += c.amount
        else:
            status, reason = REJECTED, Reason.INSUFFICIENT_FUNDS
        outcome = RefTransfer(
            c.id, c.ts, kind, c.account, c.asset, c.amount, reference, status, reason
        )
        if kind == DEPOSIT:
            self.deposit_refs[reference] = outcome
        else:
            self.withdrawal_refs[(c.account, reference)] = outcome
        return (
            "transfer", c.id, kind, c.account, c.asset, c.amount, reference, status, reason,
            c.id, c.ts,
        )  # fmt: skip

    # -- the audit -----------------------------------------------------------------------------
    def check(self, open_orders: list[RefOrder]) -> None:
        for asset in self.assets:
            total = sum(
                self.available.get((a, asset), 0) + self.locked.get((a, asset), 0)
                for a in self.accounts()
            )
            assert total == self.supply(asset), (asset, total, self.supply(asset))
        for key in set(self.available) | set(self.locked):
            assert self.available.get(key, 0) >= 0, ("negative available", key)
            held = sum(o.lock for o in open_orders if (o.account, o.lock_asset) == key)
            assert self.locked.get(key, 0) == held, ("locked != open orders' locks", key)
        for o in open_orders:
            assert o.lock >= 0


class RefSymbol:
    def __init__(self, market: Market) -> None:
        self.market = market
        self.resting: list[RefOrder] = []
        self.stops: list[RefOrder] = []
        self.last_price: int | None = None
        self.trades = 0
        self.reported: BBOTuple = (None, 0, None, 0)
        self.maker_rate = Fraction(market.maker_fee_rate)
        self.taker_rate = Fraction(market.taker_fee_rate)

    # -- naive views ---------------------------------------------------------------------------
    def side_orders(self, side: str) -> list[RefOrder]:
        """Resting orders of one side, best first, then by time in the book."""
        mine = [o for o in self.resting if o.side == side]
        if side == BUY:
            return sorted(mine, key=lambda o: (-(o.price or 0), o.book_time))
        return sorted(mine, key=lambda o: (o.price or 0, o.book_time))

    def best(self, side: str) -> int | None:
        orders = self.side_orders(side)
        return orders[0].price if orders else None

    def total_at(self, side: str, price: int) -> int:
        return sum(o.remaining for o in self.resting if o.side == side and o.price == price)

    def levels(self, side: str) -> list[tuple[int, int]]:
        prices: list[int] = []
        for o in self.side_orders(side):
            assert o.price is not None
            if o.price not in prices:
                prices.append(o.price)
        return [(p, self.total_at(side, p)) for p in prices]

    def bbo(self) -> BBOTuple:
        bid, ask = self.best(BUY), self.best(SELL)
        return (
            bid,
            self.total_at(BUY, bid) if bid is not None else 0,
            ask,
            self.total_at(SELL, ask) if ask is not None else 0,
        )

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return self.levels(BUY)[:n], self.levels(SELL)[:n]

    def crosses(self, side: str, price: int) -> bool:
        if side == BUY:
            ask = self.best(SELL)
            return ask is not None and price >= ask
        bid = self.best(BUY)
        return bid is not None and price <= bid

    def maker_fee(self, notional: int) -> int:
        if self.maker_rate >= 0:
            return math.ceil(notional * self.maker_rate)
        return -math.floor(notional * -self.maker_rate)

    def taker_fee(self, notional: int) -> int:
        return math.ceil(notional * self.taker_rate)

    # -- the hold rules of the contract, in asset units ---------------------------------------
    def fee1(self, price: int) -> int:
        """The taker fee of ONE lot at ``price``, in atoms, rounded up."""
        return math.ceil(price * self.taker_rate)

    def buy_hold(self, price: int, lots: int) -> int:
        """A buy with a limit (or a waiting stop-market buy at its stop price)."""
        return lots * (price + self.fee1(price)) * self.market.atom_units

    def sell_hold(self, lots: int) -> int:
        return lots * self.market.lot_units

    def budget_hold(self, budget: int) -> int:
        """A quote-budget market buy of ``budget`` atoms: the budget plus its taker fee."""
        return (budget + math.ceil(budget * self.taker_rate)) * self.market.atom_units

    def buy_cost(self, price: int, lots: int) -> int:
        """What a taker buy pays for one fill: notional plus taker fee, in quote units."""
        notional = price * lots
        return (notional + self.taker_fee(notional)) * self.market.atom_units


def _opposite(side: str) -> str:
    return SELL if side == BUY else BUY


def _within(side: str, price: int, limit: int | None) -> bool:
    if limit is None:
        return True
    return price <= limit if side == BUY else price >= limit


def _rises(order_type: str, side: str) -> bool:
    """Buy stop-loss/stop-limit and sell take-profit(-limit) fire when last >= stop."""
    return (order_type in (STOP_LOSS, STOP_LIMIT)) == (side == BUY)


def _spends_within(o: RefOrder) -> bool:
    """Orders whose lock is not their remainder's hold: they spend per fill within it (a
    market buy by quantity or a triggered stop-market buy hold all the available quote, a
    quote-budget buy its budget plus fee, a quote-budget sell all the available base)."""
    if o.quote is not None:
        return True
    return o.side == BUY and o.type in (MARKET, STOP_LOSS, TAKE_PROFIT)


class ReferenceEngine:
    def __init__(self, markets: dict[str, Market], risk: bool = True) -> None:
        self.symbols = {s: RefSymbol(m) for s, m in markets.items()}
        self.open: dict[int, RefOrder] = {}  # resting orders and waiting stops
        self.arrivals = 0
        self.book_clock = 0
        self.ledger: RefLedger | None = RefLedger(markets) if risk else None

    # -- public --------------------------------------------------------------------------------
    def apply(self, cmd: Any) -> list[Event]:
        out: list[Event] = []
        if isinstance(cmd, NewOrder):
            self._new(cmd, out)
        elif isinstance(cmd, CancelOrder):
            self._cancel(cmd, out)
        elif isinstance(cmd, CancelAll):
            self._cancel_all(cmd, out)
        elif isinstance(cmd, AmendOrder):
            self._amend(cmd, out)
        elif isinstance(cmd, (Deposit, Withdrawal)) and self.ledger is not None:
            out.append(self.ledger.transfer(cmd))
        else:
            raise TypeError(cmd)
        return out

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        assert self.ledger is not None
        return self.ledger.balance(account, asset)

    def check(self) -> None:
        """The conservation audit of the naive ledger (with every order's lock)."""
        if self.ledger is not None:
            self.ledger.check(list(self.open.values()))

    def bbo(self, symbol: str) -> BBOTuple:
        return self.symbols[symbol].bbo()

    def depth(self, symbol: str, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return self.symbols[symbol].depth(n)

    def last_price(self, symbol: str) -> int | None:
        return self.symbols[symbol].last_price

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _order_event(o: RefOrder, status: str, reason: str | None = None) -> Event:
        remaining = o.remaining if status in (NEW, PARTIALLY_FILLED, TRIGGERED) else 0
        return (
            "order",
            o.symbol,
            o.id,
            o.account,
            status,
            o.filled,
            remaining,
            o.cum_quote,
            reason,
        )

    def _close(self, o: RefOrder, status: str, reason: str | None, out: list[Event]) -> None:
        o.status = status
        out.append(self._order_event(o, status, reason))
        if self.ledger is not None:
            self.ledger.release_all(o)  # a closed order holds nothing

    def _report_bbo(self, sym: RefSymbol, out: list[Event]) -> None:
        now = sym.bbo()
        if now != sym.reported:
            sym.reported = now
            out.append(("bbo", sym.market.symbol, *now))

    def _shape_ok(self, c: NewOrder) -> bool:
        if c.side not in SIDES or c.type not in ORDER_TYPES:
            return False
        if c.time_in_force not in TIME_IN_FORCES or c.stp not in STP_MODES:
            return False
        if (c.type in _PRICED) != (c.price is not None):
            return False
        if (c.type in _STOPS) != (c.stop_price is not None):
            return False
        if c.quote_quantity is not None and c.type != MARKET:
            return False
        if (c.quantity is None) == (c.quote_quantity is None):
            return False
        for value in (c.quantity, c.quote_quantity, c.price, c.stop_price):
            if value is not None and value <= 0:
                return False
        if c.post_only and (c.type not in _PRICED or c.time_in_force != GTC):
            return False
        return True

    # -- new orders ----------------------------------------------------------------------------
    def _new(self, c: NewOrder, out: list[Event]) -> None:
        def reject(reason: str) -> None:
            out.append(("order", c.symbol, c.id, c.account, REJECTED, 0, 0, 0, reason))

        sym = self.symbols.get(c.symbol)
        if sym is None:
            return reject(Reason.UNKNOWN_SYMBOL)
        if not self._shape_ok(c):
            return reject(Reason.INVALID_ORDER)
        if c.id in self.open:
            return reject(Reason.DUPLICATE_ORDER_ID)
        if c.client_order_id is not None and any(
            o.account == c.account and o.coid == c.client_order_id for o in self.open.values()
        ):
            return reject(Reason.DUPLICATE_CLIENT_ORDER_ID)
        if c.type in _STOPS:
            last = sym.last_price
            assert c.stop_price is not None
            if last is not None:
                if _rises(c.type, c.side) and last >= c.stop_price:
                    return reject(Reason.WOULD_TRIGGER_IMMEDIATELY)
                if not _rises(c.type, c.side) and last <= c.stop_price:
                    return reject(Reason.WOULD_TRIGGER_IMMEDIATELY)
        elif c.post_only:
            assert c.price is not None
            if sym.crosses(c.side, c.price):
                return reject(Reason.POST_ONLY_WOULD_TAKE)
        need = 0
        if self.ledger is not None:
            need = self._entry_hold(sym, c)
            if need is None:
                return reject(Reason.INSUFFICIENT_FUNDS)
        self.arrivals += 1
        o = RefOrder(
            id=c.id,
            account=c.account,
            symbol=c.symbol,
            side=c.side,
            type=c.type,
            tif=c.time_in_force,
            post_only=c.post_only,
            price=c.price,
            stop_price=c.stop_price,
            quantity=c.quantity,
            quote=c.quote_quantity,
            coid=c.client_order_id,
            stp=c.stp,
            arrival=self.arrivals,
        )
        if self.ledger is not None:
            m = sym.market
            o.lock_asset = m.quote_asset if c.side == BUY else m.base_asset
            self.ledger.lock(o, need)
        out.append(self._order_event(o, NEW))
        if c.type in _STOPS:
            o.waiting = True
            sym.stops.append(o)
            self.open[o.id] = o
            return
        self._run(sym, o, c.ts, out)
        self._fire_stops(sym, c.ts, out)
        self._report_bbo(sym, out)

    def _entry_hold(self, sym: RefSymbol, c: NewOrder) -> int | None:
        """What a new order locks at entry, or None if the account cannot cover it."""
        assert self.ledger is not None
        m = sym.market
        if c.side == SELL:
            free = self.ledger.free(c.account, m.base_asset)
            if c.quantity is not None:  # limit, market, stop sells by quantity
                need = sym.sell_hold(c.quantity)
            else:  # quote-budget market sell: all the available base
                need = free
                if free == 0:
                    return None
        else:
            free = self.ledger.free(c.account, m.quote_asset)
            if c.type in _PRICED:
                assert c.price is not None and c.quantity is not None
                need = sym.buy_hold(c.price, c.quantity)
            elif c.type in (STOP_LOSS, TAKE_PROFIT):  # waiting: held at the stop price
                assert c.stop_price is not None and c.quantity is not None
                need = sym.buy_hold(c.stop_price, c.quantity)
            elif c.quote_quantity is not None:
                need = sym.budget_hold(c.quote_quantity)
            else:  # market buy by quantity: all the available quote
                need = free
                if free == 0:
                    return None
        if free < need:
            return None
        return need

    def _fit(self, sym: RefSymbol, taker: RefOrder, price: int, lots: int) -> int:
        """The most of ``lots`` the taker's lock pays for at ``price`` (per fill)."""
        if taker.side == SELL:
            return min(lots, taker.lock // sym.market.lot_units)
        q = min(lots, taker.lock // (price * sym.market.atom_units))
        while q > 0 and sym.buy_cost(price, q) > taker.lock:
            q -= 1
        return q

    def _settle(
        self,
        sym: RefSymbol,
        maker: RefOrder,
        taker: RefOrder,
        price: int,
        qty: int,
        maker_fee: int,
        taker_fee: int,
    ) -> None:
        """One fill at the maker's price: base and quote change hands, fees go to @fees, a
        priced buy keeps exactly what its remainder needs (``filled`` is already updated)."""
        ledger = self.ledger
        assert ledger is not None
        m = sym.market
        notional = price * qty
        if taker.side == BUY:
            buyer, buyer_fee, seller, seller_fee = taker, taker_fee, maker, maker_fee
        else:
            buyer, buyer_fee, seller, seller_fee = maker, maker_fee, taker, taker_fee
        ledger.spend(buyer, (notional + buyer_fee) * m.atom_units)
        ledger.credit(buyer.account, m.base_asset, qty * m.lot_units)
        ledger.spend(seller, qty * m.lot_units)
        ledger.credit(seller.account, m.quote_asset, (notional - seller_fee) * m.atom_units)
        ledger.credit(FEES, m.quote_asset, (maker_fee + taker_fee) * m.atom_units)
        if buyer.type in _PRICED:
            assert buyer.price is not None
            keep = sym.buy_hold(buyer.price, buyer.remaining)
            assert buyer.lock >= keep, ("a priced buy holds less than its remainder", buyer)
            ledger.release(buyer, buyer.lock - keep)
        if seller.quote is None:
            assert seller.lock == sym.sell_hold(seller.remaining)

    def _fillable(self, sym: RefSymbol, o: RefOrder, limit: int | None) -> bool:
        got = 0
        for maker in sym.side_orders(_opposite(o.side)):
            assert maker.price is not None
            if not _within(o.side, maker.price, limit):
                break
            if maker.account == o.account:
                if o.stp == CANCEL_MAKER:
                    continue
                return False
            got += maker.remaining
            if got >= o.remaining:
                return True
        return False

    def _run(self, sym: RefSymbol, o: RefOrder, ts: int, out: list[Event]) -> None:
        """Execute an accepted, triggered or re-entered order; rest what may rest."""
        limit = o.price if o.type in _PRICED else None
        if limit is not None and o.post_only and sym.crosses(o.side, limit):
            return self._close(o, CANCELLED, Reason.POST_ONLY_WOULD_TAKE, out)
        if o.tif == FOK and not self._fillable(sym, o, limit):
            return self._close(o, CANCELLED, Reason.FOK_NOT_FILLABLE, out)
        stopped = self._match(sym, o, limit, ts, out)
        if stopped is not None:  # self-trade prevention or out of funds
            return self._close(o, CANCELLED, stopped, out)
        if o.quote is not None:
            ran_dry = sym.best(_opposite(o.side)) is None
            unspent = o.quote - o.cum_quote
            last = sym.last_price
            if o.filled and not (ran_dry and last is not None and unspent >= last):
                return self._close(o, FILLED, None, out)
            return self._close(o, CANCELLED, Reason.NO_LIQUIDITY, out)
        if o.remaining == 0:
            return self._close(o, FILLED, None, out)
        if limit is None:
            return self._close(o, CANCELLED, Reason.NO_LIQUIDITY, out)
        if o.tif != GTC:
            return self._close(o, CANCELLED, Reason.IOC_EXPIRED, out)
        if o.filled:
            o.status = PARTIALLY_FILLED
            out.append(self._order_event(o, PARTIALLY_FILLED))
        self.book_clock += 1
        o.book_time = self.book_clock
        o.waiting = False
        sym.resting.append(o)
        self.open[o.id] = o
        out.append(("level", o.symbol, o.side, o.price, sym.total_at(o.side, o.price)))

    def _match(
        self, sym: RefSymbol, taker: RefOrder, limit: int | None, ts: int, out: list[Event]
    ) -> str | None:
        """Take liquidity; returns the reason when the taker must stop (self-trade prevention,
        or out of funds), else None."""
        maker_side = _opposite(taker.side)
        while True:
            makers = sym.side_orders(maker_side)
            if not makers:
                return None
            price = makers[0].price
            assert price is not None
            if not _within(taker.side, price, limit):
                return None
            if taker.quote is not None:
                want = (taker.quote - taker.cum_quote) // price
            else:
                want = taker.remaining
            if want == 0:
                return None
            queue = [m for m in makers if m.price == price]
            touched = False
            stop: str | None = None
            for maker in queue:
                if want == 0:
                    break
                if maker.account == taker.account:
                    if taker.stp == CANCEL_TAKER:
                        stop = Reason.SELF_TRADE_PREVENTION
                        break
                    sym.resting.remove(maker)
                    del self.open[maker.id]
                    touched = True
                    self._close(maker, CANCELLED, Reason.SELF_TRADE_PREVENTION, out)
                    if taker.stp == CANCEL_BOTH:
                        stop = Reason.SELF_TRADE_PREVENTION
                        break
                    continue
                qty = min(want, maker.remaining)
                shrunk = False
                if self.ledger is not None:
                    fit = self._fit(sym, taker, price, qty)
                    if not _spends_within(taker):
                        assert fit == qty, ("a held order cannot pay its fill", taker)
                    if fit == 0:
                        stop = Reason.INSUFFICIENT_FUNDS
                        break
                    shrunk = fit < qty
                    qty = fit  # a fill that does not fit is shrunk to what fits
                notional = price * qty
                sym.trades += 1
                out.append(
                    (
                        "trade",
                        sym.market.symbol,
                        sym.trades,
                        price,
                        qty,
                        taker.side,
                        maker.id,
                        taker.id,
                        maker.account,
                        taker.account,
                        sym.maker_fee(notional),
                        sym.taker_fee(notional),
                        ts,
                    )
                )
                touched = True
                want -= qty
                maker.filled += qty
                maker.cum_quote += notional
                taker.filled += qty
                taker.cum_quote += notional
                sym.last_price = price
                if self.ledger is not None:
                    self._settle(
                        sym, maker, taker, price, qty, sym.maker_fee(notional),
                        sym.taker_fee(notional),
                    )  # fmt: skip
                if maker.remaining == 0:
                    sym.resting.remove(maker)
                    del self.open[maker.id]
                    self._close(maker, FILLED, None, out)
                else:
                    maker.status = PARTIALLY_FILLED
                    out.append(self._order_event(maker, PARTIALLY_FILLED))
                if shrunk:
                    # the same maker is next in line, at the same price: nothing fits any more
                    assert self._fit(sym, taker, price, 1) == 0
                    stop = Reason.INSUFFICIENT_FUNDS
                    break
            if touched:
                out.append(
                    ("level", sym.market.symbol, maker_side, price, sym.total_at(maker_side, price))
                )
            if stop is not None:
                return stop

    # -- stops ---------------------------------------------------------------------------------
    def _reached(self, sym: RefSymbol) -> list[RefOrder]:
        last = sym.last_price
        if last is None:
            return []
        hit = []
        for o in sym.stops:
            assert o.stop_price is not None
            if _rises(o.type, o.side) and last >= o.stop_price:
                hit.append(o)
            elif not _rises(o.type, o.side) and last <= o.stop_price:
                hit.append(o)
        hit.sort(key=lambda o: o.arrival)
        for o in hit:
            sym.stops.remove(o)
        return hit

    def _fire_stops(self, sym: RefSymbol, ts: int, out: list[Event]) -> None:
        queue = self._reached(sym)
        while queue:
            o = queue.pop(0)
            del self.open[o.id]
            o.waiting = False
            o.status = TRIGGERED
            out.append(self._order_event(o, TRIGGERED))
            if o.type in (STOP_LOSS, TAKE_PROFIT):
                o.tif = IOC
                if self.ledger is not None and o.side == BUY:
                    # now a market buy by quantity: it also holds all the available quote
                    self.ledger.lock(o, self.ledger.free(o.account, o.lock_asset))
            self._run(sym, o, ts, out)
            queue.extend(self._reached(sym))

    # -- cancel / amend ------------------------------------------------------------------------
    def _take_off(self, o: RefOrder, out: list[Event]) -> None:
        sym = self.symbols[o.symbol]
        del self.open[o.id]
        if o.waiting:
            sym.stops.remove(o)
        else:
            sym.resting.remove(o)
            out.append(("level", o.symbol, o.side, o.price, sym.total_at(o.side, o.price or 0)))

    def _cancel(self, c: CancelOrder, out: list[Event]) -> None:
        o = self.open.get(c.order_id)
        if o is None or o.account != c.account:
            out.append(("reject", c.id, c.account, Reason.UNKNOWN_ORDER))
            return
        self._take_off(o, out)
        self._close(o, CANCELLED, Reason.USER_CANCELLED, out)
        self._report_bbo(self.symbols[o.symbol], out)

    def _cancel_all(self, c: CancelAll, out: list[Event]) -> None:
        targets = [
            o
            for o in self.open.values()
            if o.account == c.account and (c.symbol is None or o.symbol == c.symbol)
        ]
        targets.sort(key=lambda o: o.arrival)
        touched: list[str] = []
        for o in targets:
            self._take_off(o, out)
            self._close(o, CANCELLED, Reason.USER_CANCELLED, out)
            if o.symbol not in touched:
                touched.append(o.symbol)
        for symbol in touched:
            self._report_bbo(self.symbols[symbol], out)

    def _amend(self, c: AmendOrder, out: list[Event]) -> None:
        def reject(reason: str) -> None:
            out.append(("reject", c.id, c.account, reason))

        o = self.open.get(c.order_id)
        if o is None or o.account != c.account:
            return reject(Reason.UNKNOWN_ORDER)
        if o.waiting:
            return reject(Reason.NOT_AMENDABLE)
        assert o.quantity is not None and o.price is not None
        new_total = o.quantity if c.quantity is None else c.quantity
        new_price = o.price if c.price is None else c.price
        if new_total <= o.filled or new_price <= 0:
            return reject(Reason.INVALID_AMEND)
        if new_total == o.quantity and new_price == o.price:
            return reject(Reason.INVALID_AMEND)
        sym = self.symbols[o.symbol]
        if new_price * (new_total - o.filled) < sym.market.min_notional_atoms:
            return reject(Reason.MIN_NOTIONAL)
        if new_total - o.filled > sym.market.max_lots:
            return reject(Reason.INVALID_AMEND)
        new_hold = 0
        if self.ledger is not None:  # the hold of the amended remainder
            left = new_total - o.filled
            new_hold = sym.buy_hold(new_price, left) if o.side == BUY else sym.sell_hold(left)
        if new_price == o.price and new_total < o.quantity:
            o.quantity = new_total
            if self.ledger is not None:
                assert new_hold <= o.lock
                self.ledger.release(o, o.lock - new_hold)
            out.append(("level", o.symbol, o.side, o.price, sym.total_at(o.side, o.price)))
            out.append(self._order_event(o, o.status, "amended"))
        else:
            if o.post_only and sym.crosses(o.side, new_price):
                return reject(Reason.POST_ONLY_WOULD_TAKE)
            if self.ledger is not None:
                if new_hold > o.lock:
                    if self.ledger.free(o.account, o.lock_asset) < new_hold - o.lock:
                        return reject(Reason.INSUFFICIENT_FUNDS)  # the order stays as it was
                    self.ledger.lock(o, new_hold - o.lock)
                else:
                    self.ledger.release(o, o.lock - new_hold)
            self._take_off(o, out)
            o.quantity = new_total
            o.price = new_price
            self.arrivals += 1
            o.arrival = self.arrivals
            out.append(self._order_event(o, o.status, "amended"))
            self._run(sym, o, c.ts, out)
        self._fire_stops(sym, c.ts, out)
        self._report_bbo(sym, out)
