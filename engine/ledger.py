"""Every account's funds in one partition, what open orders hold, and the rules that move them.

Balances are integers in asset units (``10**-decimals``). Each (account, asset) has an
``available`` part, free to trade or withdraw, and a ``locked`` part, held by open orders; an
order's own share is ``Order.locked`` (quote units for a buy, base units for a sell), so the
books and the ledger can be checked against each other (:meth:`Ledger.check`).

Pre-trade risk, the rule an order's lock follows (``fee1(P)``: the taker fee of ONE lot at
price P, rounded up to the atom; a fill of q lots at p <= P costs at most ``q * fee1(P)`` in fee,
the worst case being q fills of one lot, so this is the largest fee any split can charge):

* a sell by quantity holds ``remaining * lot_units`` base;
* a buy with a price P (limit, stop-limit, take-profit-limit) holds
  ``remaining * (P + fee1(P)) * atom_units`` quote; a waiting stop-market buy the same at its
  stop price;
* a quote-budget market buy holds ``(budget + ceil(budget * taker_rate)) * atom_units``;
* a market buy by quantity (and a stop-market buy once triggered) and a quote-budget market sell
  hold all the account's available balance for the instant they match, spend within it (a fill
  that does not fit is shrunk, then the order stops ``insufficient_funds``), and release the rest.

After each fill an open priced buy keeps exactly what its remainder needs and releases the rest
(the price difference below its limit, the fee reserve it did not use as a maker); a closed
order releases everything.
"""

from __future__ import annotations

from typing import Any, Final

from engine.commands import (
    BUY,
    COMPLETED,
    DEPOSIT,
    NEW,
    PRICED_TYPES,
    REJECTED,
    STOP_TYPES,
    WITHDRAWAL,
    Deposit,
    Reason,
    Withdrawal,
)
from engine.events import TRANSFER
from engine.markets import Asset, Market, assets_of
from engine.orders import Order

#: The exchange's own account: receives fees, pays rebates. ``@`` is not allowed in account ids,
#: so no client command can name it.
FEE_ACCOUNT: Final = "@fees"


class Balance:
    """One account's units of one asset."""

    __slots__ = ("available", "locked")

    def __init__(self, available: int = 0, locked: int = 0) -> None:
        self.available = available
        self.locked = locked

    def __repr__(self) -> str:
        return f"Balance(available={self.available}, locked={self.locked})"


class TransferOutcome:
    """The first outcome of a deposit or withdrawal reference (answered again to a repeat)."""

    __slots__ = ("id", "ts", "type", "account", "asset", "amount", "reference", "status", "reason")

    def __init__(
        self,
        id: int,
        ts: int,
        type: str,
        account: str,
        asset: str,
        amount: int,
        reference: str,
        status: str,
        reason: str | None,
    ) -> None:
        self.id = id
        self.ts = ts
        self.type = type
        self.account = account
        self.asset = asset
        self.amount = amount
        self.reference = reference
        self.status = status
        self.reason = reason

    def to_list(self) -> list[Any]:
        return [self.id, self.ts, self.type, self.account, self.asset, self.amount,
                self.reference, self.status, self.reason]  # fmt: skip

    def event(self, command_id: int) -> tuple[Any, ...]:
        return (TRANSFER, command_id, self.type, self.account, self.asset, self.amount,
                self.reference, self.status, self.reason, self.id, self.ts)  # fmt: skip


def fee1(market: Market, price: int) -> int:
    """The taker fee, in atoms, of one lot at ``price`` (rounded up)."""
    rate = market.taker_rate
    return -((-price * rate.num) // rate.den)


def per_lot(market: Market, price: int) -> int:
    """Quote units a priced buy holds per remaining lot."""
    rate = market.taker_rate
    return (price - ((-price * rate.num) // rate.den)) * market.atom_units


class Ledger:
    """Balances of one partition, the references already used, and the supply of each asset.

    ``supply[asset]`` is deposits minus withdrawals: conservation says it equals the sum of
    every account's ``available + locked`` (the fee account included).
    """

    def __init__(self, markets: dict[str, Market], assets: dict[str, Asset] | None = None) -> None:
        self.markets = markets
        self.assets = assets if assets is not None else assets_of(markets)
        self.accounts: dict[str, dict[str, Balance]] = {}
        self.supply: dict[str, int] = dict.fromkeys(self.assets, 0)
        self.transfers: dict[tuple[str, str, str], TransferOutcome] = {}
        #: the fee account's balances by asset (a shortcut for every fill)
        self.fee_balances: dict[str, Balance] = {}

    # -- reading -------------------------------------------------------------------------------
    def bal(self, account: str, asset: str) -> Balance:
        """The account's balance of the asset, created empty on first use."""
        mine = self.accounts.get(account)
        if mine is None:
            mine = self.accounts[account] = {}
        found = mine.get(asset)
        if found is None:
            found = mine[asset] = Balance()
        return found

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        found = self.accounts.get(account, {}).get(asset)
        return (0, 0) if found is None else (found.available, found.locked)

    def balances(self, account: str) -> dict[str, tuple[int, int]]:
        """Every asset the account ever held: ``{asset: (available, locked)}``."""
        return {
            a: (b.available, b.locked) for a, b in sorted(self.accounts.get(account, {}).items())
        }

    def list_accounts(self) -> list[str]:
        return sorted(self.accounts)

    # -- transfers -----------------------------------------------------------------------------
    def transfer(self, cmd: Deposit | Withdrawal) -> tuple[Any, ...]:
        """Apply a deposit or withdrawal once per reference; the TRANSFER event either way."""
        if type(cmd) is Deposit:
            kind, ref, key = DEPOSIT, cmd.deposit_id, (DEPOSIT, "", cmd.deposit_id)
        else:
            assert type(cmd) is Withdrawal
            ref = cmd.client_withdrawal_id
            kind, key = WITHDRAWAL, (WITHDRAWAL, cmd.account, ref)
        first = self.transfers.get(key)
        if first is not None:
            return first.event(cmd.id)
        status, reason = COMPLETED, None
        if cmd.asset not in self.assets:
            status, reason = REJECTED, Reason.UNKNOWN_ASSET
        elif cmd.amount <= 0:
            status, reason = REJECTED, Reason.INVALID_AMOUNT
        elif kind == DEPOSIT:
            self.bal(cmd.account, cmd.asset).available += cmd.amount
            self.supply[cmd.asset] += cmd.amount
        else:
            found = self.bal(cmd.account, cmd.asset)
            if found.available < cmd.amount:
                status, reason = REJECTED, Reason.INSUFFICIENT_FUNDS
            else:
                found.available -= cmd.amount
                self.supply[cmd.asset] -= cmd.amount
        outcome = TransferOutcome(
            cmd.id, cmd.ts, kind, cmd.account, cmd.asset, cmd.amount, ref, status, reason
        )
        self.transfers[key] = outcome
        return outcome.event(cmd.id)

    # -- holds ---------------------------------------------------------------------------------
    def hold(self, order: Order) -> int | None:
        """What ``order`` must hold for its remainder; None for the orders that hold all the
        available balance while they match (market buy by quantity, triggered stop-market buy,
        quote-budget market orders)."""
        market = self.markets[order.symbol]
        if order.quote_quantity is not None:
            return None
        if order.side != BUY:
            return order.remaining * market.lot_units
        price = order.price
        if order.type not in PRICED_TYPES:
            if order.type in STOP_TYPES and order.status == NEW:
                price = order.stop_price  # a stop-market buy waiting for its trigger
            else:
                return None
        assert price is not None
        return order.remaining * per_lot(market, price)

    def lock_new(self, order: Order, market: Market) -> bool:
        """Take an accepted order's entry lock; False (nothing taken) if it cannot be covered."""
        mine = self.accounts.get(order.account)
        if mine is None:
            return False  # holds nothing at all
        buy = order.side == BUY
        found = mine.get(market.quote_asset if buy else market.base_asset)
        if found is None:
            return False
        # the rules of :meth:`hold`, unrolled for the entry
        budget = order.quote_quantity
        if budget is None and not buy:
            need = order.remaining * market.lot_units
        elif budget is None and (order.price is not None or order.stop_price is not None):
            price = order.price if order.price is not None else order.stop_price
            assert price is not None
            rate = market.taker_rate
            need = order.remaining * (price - ((-price * rate.num) // rate.den)) * market.atom_units
        elif budget is not None and buy:
            rate = market.taker_rate
            need = (budget - ((-budget * rate.num) // rate.den)) * market.atom_units
        else:  # market buy by quantity, quote-budget sell: all that is available
            need = found.available
            if need <= 0:
                return False
        if found.available < need:
            return False
        found.available -= need
        found.locked += need
        order.locked = need
        order.wallet = found
        return True

    def attach(self, order: Order) -> None:
        """Point a restored order at the balance its lock belongs to."""
        market = self.markets[order.symbol]
        order.wallet = self.bal(
            order.account, market.quote_asset if order.side == BUY else market.base_asset
        )

    def lock_rest(self, order: Order) -> None:
        """A triggered stop-market buy: add all the available quote to what it held."""
        found = order.wallet
        assert found is not None
        extra = found.available
        found.available = 0
        found.locked += extra
        order.locked += extra

    def relock(self, order: Order, price: int, remaining: int) -> int | None:
        """The change of lock an amend to ``price``/``remaining`` needs, None if the account
        cannot cover an increase (nothing changes here: :meth:`adjust` applies it)."""
        market = self.markets[order.symbol]
        if order.side == BUY:
            need = remaining * per_lot(market, price)
        else:
            need = remaining * market.lot_units
        found = order.wallet
        assert found is not None
        delta = need - order.locked
        if delta > found.available:
            return None
        return delta

    def adjust(self, order: Order, delta: int) -> None:
        """Move ``delta`` units from available to the order's lock (negative: back)."""
        found = order.wallet
        assert found is not None
        found.available -= delta
        found.locked += delta
        order.locked += delta

    def trim(self, order: Order) -> None:
        """Release what an open order holds beyond its remainder's need (all if it has none)."""
        need = self.hold(order)
        if need is None:
            need = 0
        spare = order.locked - need
        if spare:
            self.adjust(order, -spare)

    def release(self, order: Order) -> None:
        """A closing order gives back everything it still holds."""
        held = order.locked
        if held:
            found = order.wallet
            assert found is not None
            found.available += held
            found.locked -= held
            order.locked = 0

    # -- settlement ----------------------------------------------------------------------------
    # Per fill at the maker's price p, q lots, notional n = p * q atoms: the buyer's lock pays
    # (n + its fee) * atom_units (a rebate is a negative fee) and it receives q * lot_units base;
    # the seller's lock pays the base and it receives (n - its fee) * atom_units quote; both fees
    # go to the fee account. OrderBook.match does this inline (its loop is the hot path).
    def fee_balance(self, asset: str) -> Balance:
        """The fee account's balance of ``asset`` (kept at hand for every fill)."""
        found = self.fee_balances.get(asset)
        if found is None:
            found = self.fee_balances[asset] = self.bal(FEE_ACCOUNT, asset)
        return found

    # -- invariants ----------------------------------------------------------------------------
    def check(self, open_orders: list[Order]) -> None:
        """Conservation: per asset the sum of every balance equals the supply; each account's
        locked part equals what its open orders hold; nothing negative but the fee account's
        available (rebates may exceed fees)."""
        totals = dict.fromkeys(self.assets, 0)
        held: dict[tuple[str, str], int] = {}
        for order in open_orders:
            assert order.locked >= 0, f"order {order.id} holds {order.locked}"
            market = self.markets[order.symbol]
            asset = market.quote_asset if order.side == BUY else market.base_asset
            key = (order.account, asset)
            held[key] = held.get(key, 0) + order.locked
            assert order.wallet is self.accounts.get(order.account, {}).get(asset), (
                f"order {order.id} locks from the wrong balance"
            )
            need = self.hold(order)
            if need is not None:
                assert order.locked == need, f"order {order.id} holds {order.locked}, needs {need}"
        for account, mine in self.accounts.items():
            for asset, found in mine.items():
                assert asset in totals, f"{account} holds unknown asset {asset}"
                totals[asset] += found.available + found.locked
                assert found.locked == held.pop((account, asset), 0), (
                    f"{account} {asset}: locked {found.locked} != its orders'"
                )
                assert found.locked >= 0, f"{account} {asset}: negative locked"
                if account != FEE_ACCOUNT:
                    assert found.available >= 0, f"{account} {asset}: negative available"
        assert not {k: v for k, v in held.items() if v}, f"orders hold for no balance: {held}"
        for asset, total in totals.items():
            assert total == self.supply[asset], (
                f"{asset}: balances sum to {total}, supply is {self.supply[asset]}"
            )

    # -- snapshots -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "accounts": {
                account: {asset: [b.available, b.locked] for asset, b in sorted(mine.items())}
                for account, mine in sorted(self.accounts.items())
            },
            "supply": dict(sorted(self.supply.items())),
            "transfers": [t.to_list() for t in self.transfers.values()],
        }

    def load(self, data: dict[str, Any]) -> None:
        for account, mine in data["accounts"].items():
            self.accounts[account] = {a: Balance(v[0], v[1]) for a, v in mine.items()}
        self.supply.update(data["supply"])
        self.fee_balances = {}
        for fields in data["transfers"]:
            t = TransferOutcome(*fields)
            account = t.account if t.type == WITHDRAWAL else ""
            self.transfers[(t.type, account, t.reference)] = t
