"""Stop orders waiting for their trigger price, one :class:`StopBook` per symbol."""

from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict

from engine.commands import BUY, NEW, STOP_LIMIT, STOP_LOSS, STOP_TYPES
from engine.orders import Order, OrderIndex


class StopBook:
    """Untriggered stop orders of one symbol, keyed by trigger price.

    ``rising`` fire when the last price climbs to the stop (buy stop-loss, sell take-profit);
    ``falling`` fire when it drops to the stop (sell stop-loss, buy take-profit).
    """

    __slots__ = ("rising", "falling", "rise_at", "fall_at")

    def __init__(self) -> None:
        self.rising: SortedDict = SortedDict()
        self.falling: SortedDict = SortedDict()
        # Cached nearest triggers, so the common "nothing fires" check costs two comparisons.
        self.rise_at: int | None = None
        self.fall_at: int | None = None

    @staticmethod
    def fires_on_rise(order: Order) -> bool:
        stop_loss = order.type in (STOP_LOSS, STOP_LIMIT)
        return stop_loss == (order.side == BUY)

    def _refresh(self) -> None:
        self.rise_at = self.rising.peekitem(0)[0] if self.rising else None
        self.fall_at = self.falling.peekitem(-1)[0] if self.falling else None

    def add(self, order: Order) -> None:
        side = self.rising if self.fires_on_rise(order) else self.falling
        queue = side.get(order.stop_price)
        if queue is None:
            queue = side[order.stop_price] = deque()
        queue.append(order)
        self._refresh()

    def remove(self, order: Order) -> None:
        side = self.rising if self.fires_on_rise(order) else self.falling
        queue = side[order.stop_price]
        queue.remove(order)  # stops are few and rarely cancelled; O(level) is fine here
        if not queue:
            del side[order.stop_price]
            self._refresh()

    def fires(self, last: int) -> bool:
        rise_at, fall_at = self.rise_at, self.fall_at
        return (rise_at is not None and last >= rise_at) or (
            fall_at is not None and last <= fall_at
        )

    def pop_triggered(self, last: int) -> list[Order]:
        fired: list[Order] = []
        rising, falling = self.rising, self.falling
        while rising and rising.peekitem(0)[0] <= last:
            fired.extend(rising.popitem(0)[1])
        while falling and falling.peekitem(-1)[0] >= last:
            fired.extend(falling.popitem(-1)[1])
        self._refresh()
        fired.sort(key=by_seq)
        return fired

    def orders(self) -> list[Order]:
        every = [o for q in self.rising.values() for o in q]
        every += [o for q in self.falling.values() for o in q]
        every.sort(key=by_seq)
        return every

    def __len__(self) -> int:
        return sum(len(q) for q in self.rising.values()) + sum(
            len(q) for q in self.falling.values()
        )

    def check(self, symbol: str, index: OrderIndex) -> None:
        """Every waiting stop sits at its trigger price on the side it fires on, is indexed,
        and the cached nearest triggers are right."""
        for rising, side in ((True, self.rising), (False, self.falling)):
            for price, queue in side.items():
                assert queue, f"empty stop queue at {price}"
                for order in queue:
                    assert order.symbol == symbol and order.stop_price == price
                    assert order.type in STOP_TYPES and order.status == NEW
                    assert self.fires_on_rise(order) == rising
                    assert index.orders.get(order.id) is order, f"stop {order.id} unindexed"
        assert self.rise_at == (self.rising.keys()[0] if self.rising else None)
        assert self.fall_at == (self.falling.keys()[-1] if self.falling else None)


def by_seq(order: Order) -> int:
    """Arrival order: the time in price-time priority."""
    return order.seq
