"""The matching engine of one partition: command dispatch, order types, stops and snapshots.

Pure by construction: no clock, no I/O, no randomness. Every timestamp and id comes from the
command, so applying the same commands to the same state yields the same events, byte for byte.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.book import OrderBook
from engine.commands import (
    BUY,
    CANCELLED,
    FILLED,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    NEW,
    ORDER_TYPES,
    PARTIALLY_FILLED,
    PRICED_TYPES,
    REJECTED,
    SIDES,
    STOP_LIMIT,
    STOP_LOSS,
    STOP_TYPES,
    STP_MODES,
    TAKE_PROFIT,
    TIME_IN_FORCES,
    TRIGGERED,
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    Deposit,
    NewOrder,
    Reason,
    Withdrawal,
)
from engine.events import BBO, ORDER, REJECT
from engine.ledger import Ledger
from engine.markets import Market
from engine.orders import Order, OrderIndex
from engine.stops import StopBook, by_seq

SIDE_SET = frozenset(SIDES)
TIF_SET = frozenset(TIME_IN_FORCES)
STP_SET = frozenset(STP_MODES)
ORDER_TYPE_SET = frozenset(ORDER_TYPES)

SNAPSHOT_MAGIC = b"FBSNAP"
#: 2: the ledger and each order's lock
SNAPSHOT_VERSION = 2


class MatchingEngine:
    """Applies commands to the books of one partition and returns the resulting events."""

    def __init__(self, markets: dict[str, Market], risk: bool = True) -> None:
        self.markets = markets
        self.index = OrderIndex()
        #: balances and pre-trade risk; None (``risk=False``) matches without funds (benchmarks)
        self.ledger: Ledger | None = Ledger(markets) if risk else None
        self.books: dict[str, OrderBook] = {
            s: OrderBook(m, self.index, self.ledger) for s, m in markets.items()
        }
        self.stops: dict[str, StopBook] = {s: StopBook() for s in markets}
        self.seq = 0  # arrival counter: the time in price-time priority, and stop trigger order
        self._handlers: dict[type, Callable[[Any, list], None]] = {
            NewOrder: self._new_order,
            CancelOrder: self._cancel,
            CancelAll: self._cancel_all,
            AmendOrder: self._amend,
            Deposit: self._transfer,
            Withdrawal: self._transfer,
        }

    # -- reading -------------------------------------------------------------------------------
    def book(self, symbol: str) -> OrderBook:
        return self.books[symbol]

    def last_price(self, symbol: str) -> int | None:
        return self.books[symbol].last_price

    def order(self, order_id: int) -> Order | None:
        return self.index.orders.get(order_id)

    def check(self) -> None:
        """Assert every invariant of the partition: each book's (:meth:`OrderBook.check`), each
        stop book's, the index's, and that the index holds exactly the resting orders and the
        waiting stops, with arrival numbers below the engine's counter."""
        self.index.check()
        indexed = set(self.index.orders)
        held: set[int] = set()
        for symbol, book in self.books.items():
            book.check()
            self.stops[symbol].check(symbol, self.index)
            resting = book.resting_ids()
            waiting = {o.id for o in self.stops[symbol].orders()}
            assert not resting & waiting and not held & (resting | waiting)
            held |= resting | waiting
            assert book.last_bbo == book.bbo(), f"{symbol}: unreported top of book"
        assert held == indexed, f"index and books disagree: {sorted(held ^ indexed)[:5]}"
        assert all(o.seq <= self.seq for o in self.index.orders.values())
        if self.ledger is not None:
            self.ledger.check(list(self.index.orders.values()))
        else:
            assert all(not o.locked for o in self.index.orders.values())

    # -- commands ------------------------------------------------------------------------------
    def apply(self, command: Command) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        handler = self._handlers.get(type(command))
        if handler is None:
            raise TypeError(f"not a command: {command!r}")
        handler(command, events)
        return events

    def _new_order(self, cmd: NewOrder, events: list) -> None:
        symbol = cmd.symbol
        book = self.books.get(symbol)
        reason = self._check_new(cmd, book)
        if reason is not None:
            events.append((ORDER, symbol, cmd.id, cmd.account, REJECTED, 0, 0, 0, reason))
            return
        assert book is not None
        self.seq += 1
        quantity = cmd.quantity
        order = Order(
            cmd.id,
            self.seq,
            cmd.account,
            symbol,
            cmd.side,
            cmd.type,
            cmd.time_in_force,
            cmd.post_only,
            cmd.price,
            cmd.stop_price,
            quantity,
            cmd.quote_quantity,
            quantity or 0,
            0,
            0,
            cmd.client_order_id,
            cmd.stp,
            cmd.ts,
            NEW,
        )
        ledger = self.ledger
        if ledger is not None and not ledger.lock_new(order, book.market):
            self.seq -= 1  # nothing happened: the arrival number is not used
            events.append(
                (ORDER, symbol, cmd.id, cmd.account, REJECTED, 0, 0, 0, Reason.INSUFFICIENT_FUNDS)
            )
            return
        if cmd.type in STOP_TYPES:
            self.stops[symbol].add(order)
            self.index.add(order)
            events.append(
                (ORDER, symbol, order.id, order.account, NEW, 0, order.remaining, 0, None)
            )
            return
        events.append((ORDER, symbol, order.id, order.account, NEW, 0, order.remaining, 0, None))
        before = book.last_bbo
        price = cmd.price
        if cmd.type == LIMIT and cmd.time_in_force == GTC and price is not None:
            # Fast path for the commonest command, a passive limit: no matching, no trades, so
            # no stop can fire; only the BBO may move.
            if cmd.side == BUY:
                passive = book.best_ask is None or price < book.best_ask
            else:
                passive = book.best_bid is None or price > book.best_bid
            if passive:
                book.rest(order, events)
                bid = book.best_bid
                ask = book.best_ask
                if price == bid or price == ask:
                    now = (
                        bid,
                        book.bids[bid].total if bid is not None else 0,
                        ask,
                        book.asks[ask].total if ask is not None else 0,
                    )
                    if now != before:
                        book.last_bbo = now
                        events.append((BBO, symbol, bid, now[1], ask, now[3]))
                return
        self._execute(book, order, cmd.ts, events)
        self._after(book, before, cmd.ts, events)

    def _check_new(self, cmd: NewOrder, book: OrderBook | None) -> str | None:
        """Engine-side rules; field syntax was checked by the schema before the journal."""
        if book is None:
            return Reason.UNKNOWN_SYMBOL
        if cmd.type == LIMIT:  # the common case first: four comparisons
            shape_ok = (
                cmd.price is not None
                and cmd.price > 0
                and cmd.quantity is not None
                and cmd.quantity > 0
                and cmd.stop_price is None
                and cmd.quote_quantity is None
            )
        else:
            shape_ok = not (
                (cmd.type in PRICED_TYPES) != (cmd.price is not None)
                or (cmd.type in STOP_TYPES) != (cmd.stop_price is not None)
                or (cmd.quote_quantity is not None and cmd.type != MARKET)
                or (cmd.quantity is None) == (cmd.quote_quantity is None)
                or (cmd.quantity is not None and cmd.quantity <= 0)
                or (cmd.quote_quantity is not None and cmd.quote_quantity <= 0)
                or (cmd.price is not None and cmd.price <= 0)
                or (cmd.stop_price is not None and cmd.stop_price <= 0)
                or cmd.type not in ORDER_TYPE_SET
            )
        if (
            not shape_ok
            or cmd.side not in SIDE_SET
            or cmd.time_in_force not in TIF_SET
            or cmd.stp not in STP_SET
            or (cmd.post_only and (cmd.type not in PRICED_TYPES or cmd.time_in_force != GTC))
        ):
            return Reason.INVALID_ORDER
        if cmd.id in self.index.orders:
            return Reason.DUPLICATE_ORDER_ID
        coid = cmd.client_order_id
        if coid is not None and (cmd.account, coid) in self.index.by_client_id:
            return Reason.DUPLICATE_CLIENT_ORDER_ID
        if cmd.type in STOP_TYPES:
            last = book.last_price
            if last is not None:
                stop = cmd.stop_price
                assert stop is not None
                rises = (cmd.type in (STOP_LOSS, STOP_LIMIT)) == (cmd.side == BUY)
                if (rises and last >= stop) or (not rises and last <= stop):
                    return Reason.WOULD_TRIGGER_IMMEDIATELY
        elif cmd.post_only:
            assert cmd.price is not None
            if book.would_cross(cmd.side, cmd.price):
                return Reason.POST_ONLY_WOULD_TAKE
        return None

    def _execute(self, book: OrderBook, order: Order, ts: int, events: list) -> None:
        """Run an accepted (or just triggered) order against the book; rest what may rest."""
        limit = order.price if order.type in PRICED_TYPES else None
        tif = order.time_in_force
        symbol = order.symbol
        if limit is not None and order.post_only and book.would_cross(order.side, limit):
            self._close(order, CANCELLED, Reason.POST_ONLY_WOULD_TAKE, events)
            return
        if limit is not None and tif == GTC and not order.filled:
            if not book.would_cross(order.side, limit):  # passive: skip the matching loop
                book.rest(order, events)
                return
        cap = None  # what an order holding a variable lock may spend
        ledger = self.ledger
        if ledger is not None:
            market = book.market
            if order.quote_quantity is not None:
                cap = order.locked // (market.atom_units if order.side == BUY else market.lot_units)
            elif limit is None and order.side == BUY:
                cap = order.locked // market.atom_units
        if tif == FOK and not book.fillable(
            order, limit, order.remaining, cap if order.side == BUY else None
        ):
            self._close(order, CANCELLED, Reason.FOK_NOT_FILLABLE, events)
            return
        stop_reason = book.match(order, limit, ts, events, cap)
        if stop_reason is not None:
            self._close(order, CANCELLED, stop_reason, events)
            return
        if order.quote_quantity is not None:
            # A budget order is done once it cannot buy another lot; if instead the book ran
            # dry with budget to spare, the rest is cancelled for lack of liquidity.
            dry = book.best_ask is None if order.side == BUY else book.best_bid is None
            spare = order.quote_quantity - order.cum_quote
            if order.filled and not (dry and spare >= (book.last_price or 1)):
                self._close(order, FILLED, None, events)
            else:
                self._close(order, CANCELLED, Reason.NO_LIQUIDITY, events)
            return
        if not order.remaining:
            self._close(order, FILLED, None, events)
            return
        if limit is None or tif != GTC:
            reason = Reason.NO_LIQUIDITY if limit is None else Reason.IOC_EXPIRED
            self._close(order, CANCELLED, reason, events)
            return
        if order.filled:
            order.status = PARTIALLY_FILLED
            events.append(
                (
                    ORDER,
                    symbol,
                    order.id,
                    order.account,
                    PARTIALLY_FILLED,
                    order.filled,
                    order.remaining,
                    order.cum_quote,
                    None,
                )
            )
        if ledger is not None:
            ledger.trim(order)  # a buy that filled below its limit gets the difference back
        book.rest(order, events)

    def _close(self, order: Order, status: str, reason: str | None, events: list) -> None:
        order.status = status
        order.remaining = 0
        if self.ledger is not None and order.locked:
            self.ledger.release(order)
        events.append(
            (
                ORDER,
                order.symbol,
                order.id,
                order.account,
                status,
                order.filled,
                0,
                order.cum_quote,
                reason,
            )
        )

    def _after(
        self,
        book: OrderBook,
        before: tuple[int | None, int, int | None, int],
        ts: int,
        events: list,
    ) -> None:
        """Fire stops the last price reached (cascading, by arrival), then report the BBO."""
        stops = self.stops[book.symbol]
        last = book.last_price
        if last is not None and stops.fires(last):
            pending: deque[Order] = deque(stops.pop_triggered(last))
            while pending:
                order = pending.popleft()
                order.status = TRIGGERED
                self.index.remove(order)
                events.append(
                    (
                        ORDER,
                        order.symbol,
                        order.id,
                        order.account,
                        TRIGGERED,
                        order.filled,
                        order.remaining,
                        order.cum_quote,
                        None,
                    )
                )
                if order.type in (STOP_LOSS, TAKE_PROFIT):
                    order.time_in_force = IOC
                    if self.ledger is not None and order.side == BUY:
                        self.ledger.lock_rest(order)  # a market buy may spend what is available
                self._execute(book, order, ts, events)
                last = book.last_price
                if last is not None and stops.fires(last):
                    pending.extend(stops.pop_triggered(last))
        self._report_bbo(book, before, events)

    def _cancel(self, cmd: CancelOrder, events: list) -> None:
        order = self.index.orders.get(cmd.order_id)
        if order is None or order.account != cmd.account:
            events.append((REJECT, cmd.id, cmd.account, Reason.UNKNOWN_ORDER))
            return
        self._cancel_order(order, events)

    def _cancel_order(self, order: Order, events: list, report_bbo: bool = True) -> None:
        book = self.books[order.symbol]
        before = book.last_bbo
        if order.type in STOP_TYPES and order.status == NEW:
            self.stops[order.symbol].remove(order)
            self.index.remove(order)
        else:
            book.unrest(order, events)
        self._close(order, CANCELLED, Reason.USER_CANCELLED, events)
        if report_bbo:
            self._report_bbo(book, before, events)

    def _cancel_all(self, cmd: CancelAll, events: list) -> None:
        mine = self.index.by_account.get(cmd.account)
        if not mine:
            return
        targets = [o for o in mine.values() if cmd.symbol is None or o.symbol == cmd.symbol]
        targets.sort(key=by_seq)
        touched: dict[str, tuple[int | None, int, int | None, int]] = {}
        for order in targets:
            book = self.books[order.symbol]
            touched.setdefault(book.symbol, book.last_bbo)
            self._cancel_order(order, events, report_bbo=False)
        for symbol, before in touched.items():  # one bbo per book, after all the cancels
            self._report_bbo(self.books[symbol], before, events)

    def _report_bbo(
        self, book: OrderBook, before: tuple[int | None, int, int | None, int], events: list
    ) -> None:
        now = book.bbo()
        if now != before:
            book.last_bbo = now
            events.append((BBO, book.symbol, *now))

    def _amend(self, cmd: AmendOrder, events: list) -> None:
        order = self.index.orders.get(cmd.order_id)
        if order is None or order.account != cmd.account:
            events.append((REJECT, cmd.id, cmd.account, Reason.UNKNOWN_ORDER))
            return
        if order.type in STOP_TYPES and order.status == NEW:  # still waiting for its trigger
            events.append((REJECT, cmd.id, cmd.account, Reason.NOT_AMENDABLE))
            return
        total = order.filled + order.remaining
        new_total = total if cmd.quantity is None else cmd.quantity
        new_price = order.price if cmd.price is None else cmd.price
        assert new_price is not None
        if (
            new_total <= order.filled
            or new_total <= 0
            or new_price <= 0
            or (new_total == total and new_price == order.price)
        ):
            events.append((REJECT, cmd.id, cmd.account, Reason.INVALID_AMEND))
            return
        book = self.books[order.symbol]
        market = book.market
        if new_price * (new_total - order.filled) < market.min_notional_atoms:
            events.append((REJECT, cmd.id, cmd.account, Reason.MIN_NOTIONAL))
            return
        if new_total - order.filled > market.max_lots:
            events.append((REJECT, cmd.id, cmd.account, Reason.INVALID_AMEND))
            return
        ledger = self.ledger
        before = book.last_bbo
        if new_price == order.price and new_total < total:
            # Shrinking in place keeps time priority (and needs less: the spare is released).
            book.reduce(order, total - new_total, events)
            order.quantity = new_total
            if ledger is not None:
                ledger.trim(order)
            events.append(
                (
                    ORDER,
                    order.symbol,
                    order.id,
                    order.account,
                    order.status,
                    order.filled,
                    order.remaining,
                    order.cum_quote,
                    "amended",
                )
            )
        else:
            if order.post_only and book.would_cross(order.side, new_price):
                events.append((REJECT, cmd.id, cmd.account, Reason.POST_ONLY_WOULD_TAKE))
                return
            delta = 0
            if ledger is not None:  # checked last, as for a new order
                found = ledger.relock(order, new_price, new_total - order.filled)
                if found is None:
                    events.append((REJECT, cmd.id, cmd.account, Reason.INSUFFICIENT_FUNDS))
                    return
                delta = found
            # A new price or more size goes to the back of the queue: a fresh Order object, since
            # the old one stays in its deque as a dead entry.
            book.unrest(order, events)
            self.seq += 1
            fresh = Order(
                order.id,
                self.seq,
                order.account,
                order.symbol,
                order.side,
                order.type,
                order.time_in_force,
                order.post_only,
                new_price,
                order.stop_price,
                new_total,
                order.quote_quantity,
                new_total - order.filled,
                order.filled,
                order.cum_quote,
                order.client_order_id,
                order.stp,
                cmd.ts,
                order.status,
                order.locked,
            )
            order.locked = 0  # the lock moves to the fresh order
            fresh.wallet = order.wallet
            if ledger is not None:
                ledger.adjust(fresh, delta)
            events.append(
                (
                    ORDER,
                    fresh.symbol,
                    fresh.id,
                    fresh.account,
                    fresh.status,
                    fresh.filled,
                    fresh.remaining,
                    fresh.cum_quote,
                    "amended",
                )
            )
            self._execute(book, fresh, cmd.ts, events)
        self._after(book, before, cmd.ts, events)

    def _transfer(self, cmd: Deposit | Withdrawal, events: list) -> None:
        if self.ledger is None:
            events.append((REJECT, cmd.id, cmd.account, Reason.INVALID_ORDER))
            return
        events.append(self.ledger.transfer(cmd))

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Versioned, deterministic, compressed image of every book, stop and counter."""
        books = {}
        for symbol in sorted(self.books):
            book = self.books[symbol]
            books[symbol] = {
                "last_price": book.last_price,
                "trade_seq": book.trade_seq,
                "last_bbo": list(book.last_bbo),
                "bids": [
                    [o.to_list() for o in level.live_orders()]
                    for level in reversed(book.bids.values())
                ],
                "asks": [
                    [o.to_list() for o in level.live_orders()] for level in book.asks.values()
                ],
                "stops": [o.to_list() for o in self.stops[symbol].orders()],
            }
        state: dict[str, Any] = {"version": SNAPSHOT_VERSION, "seq": self.seq, "books": books}
        if self.ledger is not None:
            state["ledger"] = self.ledger.to_dict()
        body = json.dumps(
            state,
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        return SNAPSHOT_MAGIC + bytes([SNAPSHOT_VERSION]) + zlib.compress(body, 6)

    @classmethod
    def restore(cls, markets: dict[str, Market], blob: bytes) -> MatchingEngine:
        if not blob.startswith(SNAPSHOT_MAGIC):
            raise ValueError("not a Fairbook snapshot")
        version = blob[len(SNAPSHOT_MAGIC)]
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {version} is not supported")
        data = json.loads(zlib.decompress(blob[len(SNAPSHOT_MAGIC) + 1 :]))
        engine = cls(markets, risk="ledger" in data)
        engine.seq = data["seq"]
        if engine.ledger is not None:
            engine.ledger.load(data["ledger"])
        events: list = []
        for symbol, state in data["books"].items():
            if symbol not in engine.books:
                raise ValueError(f"snapshot has symbol {symbol} that is not configured")
            book = engine.books[symbol]
            book.last_price = state["last_price"]
            book.trade_seq = state["trade_seq"]
            book.last_bbo = tuple(state["last_bbo"])  # type: ignore[assignment]
            for side in ("bids", "asks"):
                for level in state[side]:
                    for fields in level:
                        book.rest(Order.from_list(fields), events)
            for fields in state["stops"]:
                order = Order.from_list(fields)
                engine.stops[symbol].add(order)
                engine.index.add(order)
        if engine.ledger is not None:
            for order in engine.index.orders.values():
                engine.ledger.attach(order)
        return engine
