"""Order state the worker keeps for open orders, and the REST / stored record forms of an order.

The engine knows integers only; clients see decimal strings. An :class:`OrderState` holds the
already formatted static fields of one order plus its integer progress, so turning it into the
REST order object or the stored order record is cheap and exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import orjson

from engine.schema import Market

TEXT_CACHE_MAX = 100_000  # entries per cache below; a full cache is cleared (values repeat)


class Memo(dict):  # type: ignore[type-arg]
    """``key -> text`` memo filled on first use: ``memo[n]`` is one dict subscript where
    ``Step.format(n)`` is a Python call (the renderers format several numbers per order)."""

    __slots__ = ("render",)

    def __init__(self, render: Callable[[Any], str]) -> None:
        super().__init__()
        self.render = render

    def __missing__(self, key: Any) -> str:
        text = self.render(key)
        if len(self) >= TEXT_CACHE_MAX:
            self.clear()
        self[key] = text
        return text


class MarketFormat:
    """The integer -> decimal string renderers (``engine.schema.Step``) of one market.

    ``price_t``/``qty_t``/``quote_t`` are memoized forms of ``price``/``qty``/``quote``.
    """

    __slots__ = (
        "price", "qty", "quote", "quote_asset", "price_t", "qty_t", "quote_t", "level_t",
    )  # fmt: skip

    def __init__(self, market: Market) -> None:
        self.price = market.tick.format
        self.qty = market.lot.format
        self.quote = market.quote.format
        self.quote_asset = market.quote_asset
        price, qty, quote = self.price, self.qty, self.quote
        self.price_t = Memo(price)
        self.qty_t = Memo(qty)
        self.quote_t = Memo(quote)
        # (ticks, lots) -> '["price","qty"]', a book level as the book/md JSON shows it
        self.level_t = Memo(lambda pq: f'["{price(pq[0])}","{qty(pq[1])}"]')


def bulk(text: str) -> str:
    """One RESP bulk string (lengths are character counts: see render.resp)."""
    return f"${len(text)}\r\n{text}\r\n"


def jstr(value: str | None) -> str:
    """JSON for a string we know needs no escaping (codes, decimals, validated ids) or None."""
    return "null" if value is None else '"' + value + '"'


#: The OrderState attributes a worker snapshot keeps, in ``OrderState.__init__`` order.
ORDER_STATE_SNAPSHOT_FIELDS: Final = (
    "id", "account", "symbol", "side", "type", "time_in_force", "post_only", "price",
    "stop_price", "quantity", "quote_quantity", "client_order_id", "created_at", "status",
    "reason", "filled", "remaining", "cum_quote", "updated_at", "fills",
)  # fmt: skip


class OrderState:
    """One order as the worker tracks it while it is open (and during the batch it closes in).

    JSON is built by string formatting, not ``json.dumps`` of dicts: every string in an order
    is a code, a decimal or a validated id, so no escaping is ever needed, and the worker renders
    order objects several times per command. ``fills`` are kept as ready JSON fragments.
    """

    __slots__ = (
        "id",
        "account",
        "symbol",
        "side",
        "type",
        "time_in_force",
        "post_only",
        "price",
        "stop_price",
        "quantity",
        "quote_quantity",
        "client_order_id",
        "created_at",
        "status",
        "reason",
        "filled",
        "remaining",
        "cum_quote",
        "updated_at",
        "fills",
        # derived / per batch, not snapshotted
        "head",
        "mid",
        "persisted",
        "new_fills",
        "last_snap",
        "fill_head",
        "fills_json",
    )

    def __init__(
        self,
        id: int,
        account: str,
        symbol: str,
        side: str,
        type: str,
        time_in_force: str,
        post_only: bool,
        price: str | None,
        stop_price: str | None,
        quantity: str | None,
        quote_quantity: str | None,
        client_order_id: str | None,
        created_at: int,
        status: str = "new",
        reason: str | None = None,
        filled: int = 0,
        remaining: int = 0,
        cum_quote: int = 0,
        updated_at: int = 0,
        fills: list[str] | None = None,
        persisted: bool = False,
    ) -> None:
        self.id = id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.type = type
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.price = price
        self.stop_price = stop_price
        self.quantity = quantity
        self.quote_quantity = quote_quantity
        self.client_order_id = client_order_id
        self.created_at = created_at
        self.status = status
        self.reason = reason
        self.filled = filled
        self.remaining = remaining
        self.cum_quote = cum_quote
        self.updated_at = updated_at or created_at
        self.fills: list[str] = fills if fills is not None else []
        self.persisted = persisted
        self.new_fills = False  # fills grew since fills_json was built
        self.fills_json: str | None = None  # "[...]" of fills, cached between fills
        self.last_snap: tuple[Any, ...] | None = None  # snap() as of its last order event
        self.fill_head: str | None = None  # cached opening of its fill events (processor)
        # the fields that never change, as the opening of the JSON object
        self.head = (
            f'"order_id":{id},"client_order_id":{jstr(client_order_id)},"symbol":"{symbol}",'
            f'"side":"{side}","type":"{type}","time_in_force":"{time_in_force}",'
            f'"post_only":{"true" if post_only else "false"},'
        )
        self.set_terms(price, quantity)

    def set_terms(self, price: str | None, quantity: str | None) -> None:
        """Price and quantity (the fields an amend changes) and their cached JSON."""
        self.price = price
        self.quantity = quantity
        self.mid = (
            f'"price":{jstr(price)},"stop_price":{jstr(self.stop_price)},'
            f'"quantity":{jstr(quantity)},"quote_quantity":{jstr(self.quote_quantity)},'
        )

    # -- snapshot form -------------------------------------------------------------------------
    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in ORDER_STATE_SNAPSHOT_FIELDS]

    @classmethod
    def from_list(cls, fields: list[Any]) -> OrderState:
        # Snapshots are taken between batches, when every open order's record is written.
        state = cls(*fields)
        state.persisted = True
        return state

    # -- public forms --------------------------------------------------------------------------
    def snap(self) -> tuple[Any, ...]:
        """The state as a render.Snap tuple (what replies and order events are rendered from)."""
        return (
            self.head, self.status, self.reason, self.mid, self.symbol, self.filled,
            self.remaining, self.cum_quote, self.created_at, self.updated_at,
        )  # fmt: skip

    def public_json(self, fmt: MarketFormat) -> str:
        """The complete REST order object as JSON text."""
        from worker.render import render_order  # render imports this module

        return render_order(fmt, self.snap(), self.fills)

    def public(self, fmt: MarketFormat) -> dict[str, Any]:
        """The REST order object as a dict (tests, tools)."""
        return json.loads(self.public_json(fmt))


def order_record(account: str, body: str, fills_json: str) -> str:
    """The ``fb:{pN}:order:<id>`` value: the REST order object plus its owner ``account``.

    One string, not a hash: the worker already has the order's JSON body (for the reply and
    the account event), so storing it costs Redis one SET instead of an HSET of 20 fields (the
    hash was half of Redis's CPU per command), and the web answers with one GET and a parse.
    """
    return f'{{"account":"{account}",{body},"fills":{fills_json}}}'


def parse_order_record(raw: bytes | str | None) -> tuple[str, dict[str, Any]] | None:
    """``fb:{pN}:order:<id>`` value -> (account, REST order object); None if absent or
    unreadable (a reader must never fail on a damaged key: it is treated as no such order)."""
    if not raw:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    account = obj.pop("account", None)
    if not isinstance(account, str):
        return None
    return account, obj
