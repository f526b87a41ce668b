"""Seeded order flow for tests and benchmarks: deposits first, then passive limits, cancels,
amends, takers.

Deterministic for a given seed and call sequence, so a failing test or a benchmark run can be
reproduced exactly. Produces wire commands (decimal strings) like the web layer journals.

Every new order needs funds (pre-trade risk): journal :meth:`OrderFlow.deposits` before the
first :meth:`OrderFlow.next`. They fund every account of the flow in every asset of its symbols
with :data:`FUNDING_VALUE` quote units' worth (at the starting mid for a base asset): over 10,000
times the most any account's open orders held at once in a 200,000-command flow of 50 accounts,
so no order of the flow is refused for funds (:func:`funding_report` measures it; the tests
keep the share at 0; ``bench worker`` reports it).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal
from typing import Any

from engine.commands import CANCELLED, REJECTED, Reason
from engine.markets import Asset, Market, assets_of

#: what each account of a flow gets, in whole units of each quote asset (100 million), and that
#: value of each base asset at the flow's starting mid
FUNDING_VALUE = 100_000_000


def deposit_wires(
    accounts: Iterable[str], amounts: dict[str, int], assets: dict[str, Asset], prefix: str
) -> list[dict[str, Any]]:
    """Deposit wire commands (no ``id``: the append script assigns it) crediting each account
    ``amounts[asset]`` units of each asset; reference ``<prefix>-<account>-<asset>`` (unique
    per partition, so journaling the same funding twice credits it once)."""
    return [
        {"op": "deposit", "account": account, "asset": asset,
         "amount": assets[asset].format(units), "deposit_id": f"{prefix}-{account}-{asset}"}
        for account in accounts
        for asset, units in sorted(amounts.items())
    ]  # fmt: skip


def funding_amounts(
    markets: dict[str, Market], symbols: Iterable[str], mid_ticks: int, value: int = FUNDING_VALUE
) -> dict[str, int]:
    """asset -> units per account: ``value`` whole units of each quote asset, and ``value`` quote
    units' worth at ``mid_ticks`` of each base asset (the larger if an asset is both)."""
    out: dict[str, int] = {}
    for symbol in symbols:
        m = markets[symbol]
        quote = value * 10**m.quote_decimals
        price = m.tick_size * mid_ticks  # quote per base
        worth = (Decimal(value) / price).scaleb(m.base_decimals)
        base = int(worth.to_integral_value(ROUND_CEILING))
        out[m.quote_asset] = max(out.get(m.quote_asset, 0), quote)
        out[m.base_asset] = max(out.get(m.base_asset, 0), base)
    return out


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
        self.seed = seed
        self.markets = markets
        self.symbols = symbols or sorted(markets)[:2]
        self.accounts = [str(i) for i in range(1, accounts + 1)]
        self.mid_ticks = mid_ticks
        self.mid = dict.fromkeys(self.symbols, mid_ticks)
        # ids we believe may still be open: (id, account, symbol)
        self.live: list[tuple[int, str, str]] = []
        self.max_open_tracked = max_open_tracked

    @property
    def assets(self) -> list[str]:
        """Every asset the flow's symbols trade, sorted."""
        pairs = [(self.markets[s].base_asset, self.markets[s].quote_asset) for s in self.symbols]
        return sorted({asset for pair in pairs for asset in pair})

    def funding(self) -> dict[str, int]:
        """asset -> units each account is funded with (see :func:`funding_amounts`)."""
        return funding_amounts(self.markets, self.symbols, self.mid_ticks)

    def deposits(self) -> list[dict[str, Any]]:
        """The deposit wire commands to journal (or apply) before the flow's first command: every
        account funded generously in every asset of the flow's symbols. They draw nothing from
        the flow's random generator, so the flow is the same with or without them. References
        ``flow<seed>-<account>-<asset>``."""
        return deposit_wires(self.accounts, self.funding(), assets_of(self.markets),
                             f"flow{self.seed}")  # fmt: skip

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


def funding_report(
    markets: dict[str, Market], commands: int, seed: int = 1, funded: bool = True, **kwargs: Any
) -> dict[str, Any]:
    """Run ``commands`` of a flow (its deposits first unless ``funded`` is False) through a
    fresh engine with the ledger on: how many new orders there were and how many of them the
    ledger refused (``rejected``) or cut short (``cancelled``) for ``insufficient_funds``."""
    from engine.matcher import MatchingEngine
    from engine.validation import command_from_wire

    flow = OrderFlow(markets, seed=seed, **kwargs)
    engine = MatchingEngine(markets)
    wires = flow.deposits() if funded else []
    deposits = len(wires)
    orders = rejected = cut = 0
    for n in range(1, deposits + commands + 1):
        wire = wires[n - 1] if n <= deposits else flow.next()
        cmd_id = n << 8
        if n > deposits:
            flow.record(wire, cmd_id)
        orders += wire["op"] == "new"
        for ev in engine.apply(command_from_wire({**wire, "id": cmd_id}, 1_700_000_000_000 + n,
                                                 markets)):  # fmt: skip
            if ev[0] == "order" and ev[8] == Reason.INSUFFICIENT_FUNDS:
                rejected += ev[4] == REJECTED
                cut += ev[4] == CANCELLED
    return {
        "deposits": deposits,
        "orders": orders,
        "insufficient_funds_rejected": rejected,
        "insufficient_funds_cancelled": cut,
        "insufficient_funds_share": round((rejected + cut) / max(1, orders), 6),
    }
