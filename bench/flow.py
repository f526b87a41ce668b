"""Seeded order flow for tests and benchmarks: passive limits, cancels, amends, takers.

Deterministic for a given seed and call sequence, so a failing test or a benchmark run can be
reproduced exactly. Produces wire commands (decimal strings) like the web layer journals.
"""

from __future__ import annotations

import random
from typing import Any

from engine.markets import Market


class OrderFlow:
    """A random walk of mid prices with a realistic-ish mix of commands."""

    def __init__(
        self,
        markets: dict[str, Market],
        seed: int = 1,
        accounts: int = 50,
        symbols: list[str] | None = None,
        mid_ticks: int = 1_000_000,
        max_open_tracked: int = 20_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.markets = markets
        self.symbols = symbols or sorted(markets)[:2]
        self.accounts = [str(i) for i in range(1, accounts + 1)]
        self.mid = dict.fromkeys(self.symbols, mid_ticks)
        # ids we believe may still be open: (id, account, symbol)
        self.live: list[tuple[int, str, str]] = []
        self.max_open_tracked = max_open_tracked

    def record(self, wire: dict[str, Any], cmd_id: int) -> None:
        """Tell the flow the id a ``new`` command got, so later cancels/amends can aim at it."""
        if wire.get("op") == "new" and wire.get("type") == "limit":
            self.live.append((cmd_id, wire["account"], wire["symbol"]))
            if len(self.live) > self.max_open_tracked:
                del self.live[: len(self.live) // 2]

    def _lots(self, market: Market) -> int:
        # at least the minimum notional at roughly mid price (x2 for the walk), up to ~20x it
        floor = -(-market.min_notional_atoms * 2 // self.mid[market.symbol])
        return max(market.min_lots, floor, 1) * self.rng.randint(1, 20)

    def next(self) -> dict[str, Any]:
        rng = self.rng
        symbol = rng.choice(self.symbols)
        market = self.markets[symbol]
        account = rng.choice(self.accounts)
        self.mid[symbol] = max(1000, self.mid[symbol] + rng.randint(-3, 3))
        mid = self.mid[symbol]
        roll = rng.random()
        if roll < 0.15 and self.live:
            oid, owner, _ = self.live.pop(rng.randrange(len(self.live)))
            return {"op": "cancel", "account": owner, "order_id": oid}
        if roll < 0.18 and self.live:
            oid, owner, sym = self.live[rng.randrange(len(self.live))]
            m = self.markets[sym]
            return {
                "op": "amend", "account": owner, "order_id": oid, "symbol": sym,
                "quantity": m.format_qty(self._lots(m) * 2), "price": None,
            }  # fmt: skip
        if roll < 0.185:
            return {"op": "cancel_all", "account": account, "symbol": symbol}
        side = "buy" if rng.random() < 0.5 else "sell"
        sign = 1 if side == "buy" else -1
        lots = self._lots(market)
        wire: dict[str, Any] = {
            "op": "new", "account": account, "symbol": symbol, "side": side, "type": "limit",
            "time_in_force": "GTC", "post_only": False, "price": None, "quantity": None,
            "quote_quantity": None, "stop_price": None, "client_order_id": None,
            "stp": "cancel_maker",
        }  # fmt: skip
        if roll < 0.75:  # passive limit, 1..40 ticks behind the mid
            price = mid - sign * rng.randint(1, 40)
        elif roll < 0.95:  # marketable limit, GTC or IOC
            price = mid + sign * rng.randint(0, 20)
            wire["time_in_force"] = "IOC" if rng.random() < 0.3 else "GTC"
        else:  # market order
            wire["type"] = "market"
            wire["time_in_force"] = "IOC"
            wire["quantity"] = market.format_qty(lots)
            return wire
        wire["price"] = market.format_price(price)
        wire["quantity"] = market.format_qty(lots)
        if rng.random() < 0.05:
            wire["client_order_id"] = f"c{rng.getrandbits(40):x}"
        return wire
