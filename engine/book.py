"""One symbol's order book and its matching loop, in integer ticks and lots.

Layout follows the classic price-time design: a ``SortedDict`` of price -> :class:`PriceLevel`
per side (new level O(log n)), a ``deque`` of orders per level (FIFO), the best price cached on the
book (O(1)), and cancellation by *lazy deletion*: a cancelled order is zeroed in place and skipped
when it reaches the head of its queue, so cancel-by-id is O(1) instead of ``deque.remove``'s O(n).
"""

from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict

from engine.commands import (
    BUY,
    CANCEL_BOTH,
    CANCEL_MAKER,
    CANCEL_TAKER,
    CANCELLED,
    FILLED,
    OPEN_STATUSES,
    PARTIALLY_FILLED,
    SELL,
    Reason,
)
from engine.events import LEVEL, ORDER, TRADE
from engine.ledger import Balance, Ledger
from engine.markets import Market
from engine.orders import Order, OrderIndex


class PriceLevel:
    """The FIFO queue at one price; ``total`` and ``count`` cover live orders only."""

    __slots__ = ("price", "orders", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: deque[Order] = deque()
        self.total = 0
        self.count = 0

    def live_orders(self) -> list[Order]:
        return [o for o in self.orders if o.remaining]


class OrderBook:
    """Bids and asks of one market plus its last trade price and trade counter."""

    __slots__ = (
        "market",
        "symbol",
        "bids",
        "asks",
        "best_bid",
        "best_ask",
        "last_price",
        "trade_seq",
        "index",
        "_maker_num",
        "_maker_den",
        "_taker_num",
        "_taker_den",
        "last_bbo",
        "ledger",
    )

    def __init__(self, market: Market, index: OrderIndex, ledger: Ledger | None = None) -> None:
        self.market = market
        self.symbol = market.symbol
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.best_bid: int | None = None
        self.best_ask: int | None = None
        self.last_price: int | None = None
        self.trade_seq = 0
        self.index = index
        self._maker_num = market.maker_rate.num
        self._maker_den = market.maker_rate.den
        self._taker_num = market.taker_rate.num
        self._taker_den = market.taker_rate.den
        self.last_bbo: tuple[int | None, int, int | None, int] = (None, 0, None, 0)
        #: settles every fill when risk is on (None: matching only)
        self.ledger = ledger

    # -- reading -------------------------------------------------------------------------------
    def bbo(self) -> tuple[int | None, int, int | None, int]:
        bid, ask = self.best_bid, self.best_ask
        return (
            bid,
            self.bids[bid].total if bid is not None else 0,
            ask,
            self.asks[ask].total if ask is not None else 0,
        )

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``n`` levels per side, best first, as (ticks, lots)."""
        bids = [(p, self.bids[p].total) for p in self.bids.islice(-n, reverse=True)] if n else []
        asks = [(p, self.asks[p].total) for p in self.asks.islice(0, n)] if n else []
        return bids, asks

    def would_cross(self, side: str, price: int) -> bool:
        if side == BUY:
            return self.best_ask is not None and price >= self.best_ask
        return self.best_bid is not None and price <= self.best_bid

    def fillable(
        self, taker: Order, limit: int | None, want: int, cap: int | None = None
    ) -> bool:
        """FOK pre-check: can ``want`` lots fill now, honouring the limit and STP, untouched?
        ``cap`` (a buy holding a variable lock) bounds notional + taker fee, fill by fill as
        :meth:`match` would charge it."""
        tnum, tden = self._taker_num, self._taker_den
        stop_at_self = taker.stp != CANCEL_MAKER
        account = taker.account
        if taker.side == BUY:
            levels = self.asks
            prices = levels.irange(maximum=limit) if limit is not None else levels.irange()
        else:
            levels = self.bids
            prices = (
                levels.irange(minimum=limit, reverse=True)
                if limit is not None
                else levels.irange(reverse=True)
            )
        got = 0
        for price in prices:
            for maker in levels[price].orders:
                if not maker.remaining:
                    continue
                if maker.account == account:
                    if stop_at_self:
                        return False
                    continue
                if cap is not None:
                    qty = min(maker.remaining, want - got)
                    left: int = cap - (price * qty - ((-price * qty * tnum) // tden))
                    if left < 0:
                        return False
                    cap = left
                got += maker.remaining
                if got >= want:
                    return True
        return False

    # -- resting -------------------------------------------------------------------------------
    def rest(self, order: Order, events: list) -> None:
        """Queue a limit order at the back of its level (O(1) if the level exists)."""
        price = order.price
        assert price is not None
        if order.side == BUY:
            levels = self.bids
            level = levels.get(price)
            if level is None:
                level = levels[price] = PriceLevel(price)
                if self.best_bid is None or price > self.best_bid:
                    self.best_bid = price
        else:
            levels = self.asks
            level = levels.get(price)
            if level is None:
                level = levels[price] = PriceLevel(price)
                if self.best_ask is None or price < self.best_ask:
                    self.best_ask = price
        level.orders.append(order)
        level.total += order.remaining
        level.count += 1
        # OrderIndex.add, inlined: this is the hottest path of a passive order.
        index = self.index
        index.orders[order.id] = order
        mine = index.by_account.get(order.account)
        if mine is None:
            mine = index.by_account[order.account] = {}
        mine[order.id] = order
        if order.client_order_id is not None:
            index.by_client_id[(order.account, order.client_order_id)] = order
        events.append((LEVEL, self.symbol, order.side, price, level.total))

    def unrest(self, order: Order, events: list) -> None:
        """Take a resting order off its level (lazy: it stays queued with remaining 0)."""
        levels = self.bids if order.side == BUY else self.asks
        price = order.price
        assert price is not None  # only limit prices rest
        level = levels[price]
        level.total -= order.remaining
        level.count -= 1
        order.remaining = 0
        events.append((LEVEL, self.symbol, order.side, price, level.total))
        if not level.count:
            self._drop_level(levels, order.side, price)
        self.index.remove(order)

    def reduce(self, order: Order, by: int, events: list) -> None:
        """Shrink a resting order in place: it keeps its queue position."""
        level = (self.bids if order.side == BUY else self.asks)[order.price]
        order.remaining -= by
        level.total -= by
        events.append((LEVEL, self.symbol, order.side, order.price, level.total))

    # -- invariants ----------------------------------------------------------------------------
    def check(self) -> None:
        """Assert the book's invariants (tests call it after every command, as
        sortedcontainers' ``_check`` does): levels sorted and non-empty, each level's total and
        count equal to its live orders, live orders indexed, cached best prices right, and the
        book not crossed at rest."""
        for levels, side in ((self.bids, BUY), (self.asks, SELL)):
            keys = list(levels.keys())
            assert keys == sorted(set(keys)), "levels out of order"
            for price, level in levels.items():
                assert level.price == price
                live = level.live_orders()
                assert live, f"empty {side} level {price}"
                assert level.count == len(live), f"{side} {price}: count {level.count}"
                assert level.total == sum(o.remaining for o in live), f"{side} {price}: total"
                for order in live:
                    assert (order.side, order.price, order.symbol) == (side, price, self.symbol)
                    assert order.status in OPEN_STATUSES and order.remaining > 0
                    assert self.index.orders.get(order.id) is order, f"order {order.id} unindexed"
        assert self.best_bid == (self.bids.keys()[-1] if self.bids else None), "best bid"
        assert self.best_ask == (self.asks.keys()[0] if self.asks else None), "best ask"
        if self.best_bid is not None and self.best_ask is not None:
            assert self.best_bid < self.best_ask, "crossed book at rest"

    def resting_ids(self) -> set[int]:
        """Ids of the live orders on the book."""
        return {o.id for side in (self.bids, self.asks) for lv in side.values()
                for o in lv.live_orders()}  # fmt: skip

    def _drop_level(self, levels: SortedDict, side: str, price: int) -> None:
        del levels[price]
        if side == BUY:
            if price == self.best_bid:
                self.best_bid = levels.peekitem(-1)[0] if levels else None
        elif price == self.best_ask:
            self.best_ask = levels.peekitem(0)[0] if levels else None

    # -- matching ------------------------------------------------------------------------------
    def match(
        self, taker: Order, limit: int | None, ts: int, events: list, cap: int | None = None
    ) -> str | None:
        """Take liquidity for ``taker`` best price first, FIFO within a level, at maker prices.

        ``limit`` None means a market order. A quote-budget order (``taker.quote_quantity``)
        spends ``taker.quote_quantity - taker.cum_quote`` atoms. ``cap`` bounds what a taker
        holding a variable lock may spend: atoms of notional + taker fee for a buy, lots for a
        sell; a fill that does not fit is shrunk to what fits. Returns a reason when the taker
        must stop (self-trade prevention, funds exhausted), else None.
        """
        # Settlement (engine.ledger's rules, inlined: this loop is the hot path): each side
        # pays from its order's lock; the taker's received balance and the fee account's are
        # fetched once per match, the maker's per fill.
        ledger = self.ledger
        if ledger is not None:
            market = self.market
            au = market.atom_units
            lu = market.lot_units
            quote = market.quote_asset
            accounts = ledger.accounts
            if taker.side == BUY:
                maker_gets, taker_asset = quote, market.base_asset
            else:
                maker_gets, taker_asset = market.base_asset, quote
            held = taker.wallet
            assert held is not None
            taker_wallet: Balance = held
            taker_gets = ledger.bal(taker.account, taker_asset)
            fee_wallet = ledger.fee_balance(quote)
        symbol = self.symbol
        index = self.index
        open_orders, by_account, by_client_id = index.orders, index.by_account, index.by_client_id
        buy = taker.side == BUY
        if buy:
            levels = self.asks
            maker_side = SELL
        else:
            levels = self.bids
            maker_side = BUY
        taker_account = taker.account
        taker_id = taker.id
        taker_side = taker.side
        stp = taker.stp
        by_quote = taker.quote_quantity is not None
        budget = taker.quote_quantity - taker.cum_quote if by_quote else 0  # type: ignore[operator]
        mnum, mden, tnum, tden = self._maker_num, self._maker_den, self._taker_num, self._taker_den
        rebate = mnum < 0
        trade_seq = self.trade_seq
        last_price = self.last_price
        stop_reason: str | None = None
        append = events.append
        self_trade = Reason.SELF_TRADE_PREVENTION

        while True:
            if buy:
                price = self.best_ask
                if price is None or (limit is not None and price > limit):
                    break
            else:
                price = self.best_bid
                if price is None or (limit is not None and price < limit):
                    break
            level = levels[price]
            queue = level.orders
            if by_quote:
                want = budget // price
                if not want:
                    break
            else:
                want = taker.remaining
            # Work on locals inside the level; write them back once when leaving it.
            total = level.total
            count = level.count
            took = 0
            took_quote = 0
            while want and queue:
                maker = queue[0]
                mrem = maker.remaining
                if not mrem:
                    queue.popleft()
                    continue
                maker_account = maker.account
                maker_id = maker.id
                if maker_account == taker_account:
                    if stp == CANCEL_TAKER:
                        stop_reason = self_trade
                        break
                    queue.popleft()
                    total -= mrem
                    count -= 1
                    maker.remaining = 0
                    maker.status = CANCELLED
                    index.remove(maker)
                    if ledger is not None:
                        ledger.release(maker)
                    append(
                        (
                            ORDER,
                            symbol,
                            maker_id,
                            maker_account,
                            CANCELLED,
                            maker.filled,
                            0,
                            maker.cum_quote,
                            self_trade,
                        )
                    )
                    if stp == CANCEL_BOTH:
                        stop_reason = self_trade
                        break
                    continue
                qty = mrem if mrem < want else want
                if cap is not None:
                    if buy:
                        if price * qty - ((-price * qty * tnum) // tden) > cap:
                            qty = _affordable(price, cap, tnum, tden)
                    elif qty > cap:
                        qty = cap
                    if not qty:
                        stop_reason = Reason.INSUFFICIENT_FUNDS
                        break
                notional = price * qty
                trade_seq += 1
                if rebate:
                    maker_fee = -((notional * -mnum) // mden)
                else:
                    maker_fee = -((-notional * mnum) // mden)
                taker_fee = -((-notional * tnum) // tden)
                if cap is not None:
                    cap -= notional + taker_fee if buy else qty
                append(
                    (
                        TRADE,
                        symbol,
                        trade_seq,
                        price,
                        qty,
                        taker_side,
                        maker_id,
                        taker_id,
                        maker_account,
                        taker_account,
                        maker_fee,
                        taker_fee,
                        ts,
                    )
                )
                if ledger is not None:
                    base_units = qty * lu
                    maker_wallet = maker.wallet
                    assert maker_wallet is not None
                    gets = accounts[maker_account].get(maker_gets)
                    if gets is None:
                        gets = ledger.bal(maker_account, maker_gets)
                    if buy:
                        cost = (notional + taker_fee) * au
                        taker.locked -= cost
                        taker_wallet.locked -= cost
                        taker_gets.available += base_units
                        maker.locked -= base_units
                        maker_wallet.locked -= base_units
                        gets.available += (notional - maker_fee) * au
                    else:
                        cost = (notional + maker_fee) * au
                        maker.locked -= cost
                        maker_wallet.locked -= cost
                        gets.available += base_units
                        taker.locked -= base_units
                        taker_wallet.locked -= base_units
                        taker_gets.available += (notional - taker_fee) * au
                    fee_wallet.available += (maker_fee + taker_fee) * au
                want -= qty
                total -= qty
                took += qty
                took_quote += notional
                filled = maker.filled = maker.filled + qty
                cum_quote = maker.cum_quote = maker.cum_quote + notional
                if qty == mrem:
                    maker.remaining = 0
                    maker.status = FILLED
                    if ledger is not None and maker.locked:
                        ledger.release(maker)
                    queue.popleft()
                    count -= 1
                    # OrderIndex.remove, inlined: once per filled maker.
                    del open_orders[maker_id]
                    mine = by_account[maker_account]
                    del mine[maker_id]
                    if not mine:
                        del by_account[maker_account]
                    if maker.client_order_id is not None:
                        del by_client_id[(maker_account, maker.client_order_id)]
                    append(
                        (ORDER, symbol, maker_id, maker_account, FILLED, filled, 0, cum_quote, None)
                    )
                else:
                    mrem -= qty
                    maker.remaining = mrem
                    maker.status = PARTIALLY_FILLED
                    if ledger is not None and not buy:  # a buy maker keeps what its rest needs
                        ledger.trim(maker)
                    append(
                        (
                            ORDER,
                            symbol,
                            maker_id,
                            maker_account,
                            PARTIALLY_FILLED,
                            filled,
                            mrem,
                            cum_quote,
                            None,
                        )
                    )
            if took:
                taker.filled += took
                taker.cum_quote += took_quote
                if by_quote:
                    budget -= took_quote
                else:
                    taker.remaining -= took
                last_price = price
            if total != level.total:
                level.total = total
                level.count = count
                append((LEVEL, symbol, maker_side, price, total))
            if not count:
                self._drop_level(levels, maker_side, price)
            if stop_reason is not None:
                break
            if want or (by_quote and not count):
                continue  # the level ran dry: go on to the next price (a budget re-checks there)
            break  # the taker is satisfied, or its budget cannot buy a lot at this price
        self.trade_seq = trade_seq
        self.last_price = last_price
        return stop_reason


def _affordable(price: int, cap: int, tnum: int, tden: int) -> int:
    """The most lots at ``price`` whose notional plus taker fee (rounded up) fit in ``cap``."""
    lots = cap * tden // (price * (tden + tnum))
    while price * (lots + 1) - ((-price * (lots + 1) * tnum) // tden) <= cap:
        lots += 1
    while lots and price * lots - ((-price * lots * tnum) // tden) > cap:
        lots -= 1
    return lots
