"""Binance's request weight of each ``/api/v3`` endpoint (its REST docs' "Weight:" of each).

Why Binance's weights and not a request count: clients written for Binance budget by its
published weights and its ``X-MBX-USED-WEIGHT-1M`` header, so a client tuned for Binance stays
under Fairbook's limit where it would stay under Binance's. The weight is read from the
parameters as sent, before the route checks them (a malformed value weighs what its default
does): the count rides in the round trip of the request's first Redis command
(``web.limits.count_request``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from flask import request

from web.binance.errors import PREFIX

Params = dict[str, str]


def _limit(params: Params, default: int) -> int:
    text = params.get("limit") or ""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else default


def depth(params: Params) -> int:
    """1-100 levels: 5, 101-500: 25, 501-1000: 50, 1001-5000: 250 (default 100)."""
    limit = _limit(params, 100)
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def _symbol_count(params: Params) -> int | None:
    """How many ``symbols=[...]`` names; None when neither ``symbol`` nor ``symbols`` is sent
    (0 for ``symbol``)."""
    if params.get("symbol"):
        return 0
    many = params.get("symbols")
    if not many:
        return None
    try:
        names = json.loads(many)
    except ValueError:
        return 1
    return len(names) if isinstance(names, list) else 1


def ticker_24hr(params: Params) -> int:
    """``symbol``: 2; ``symbols`` 1-20: 2, 21-100: 40, more: 80; neither (every symbol): 80."""
    n = _symbol_count(params)
    if n is None:
        return 80
    return 2 if n <= 20 else 40 if n <= 100 else 80


def ticker_price(params: Params) -> int:
    """``ticker/price`` and ``ticker/bookTicker``: ``symbol`` 2, else 4."""
    return 2 if params.get("symbol") else 4


def per_symbol(params: Params) -> int:
    """``ticker`` (rolling window) and ``ticker/tradingDay``: 4 per symbol, at most 200."""
    n = _symbol_count(params)
    return min(200, 4 * max(1, n or 1))


#: (method, path below /api/v3) -> weight, or a function of the parameters
WEIGHTS: dict[tuple[str, str], int | Callable[[Params], int]] = {
    ("GET", "ping"): 1,
    ("GET", "time"): 1,
    ("GET", "exchangeInfo"): 20,
    ("GET", "depth"): depth,
    ("GET", "trades"): 25,
    ("GET", "historicalTrades"): 25,
    ("GET", "aggTrades"): 4,
    ("GET", "klines"): 2,
    ("GET", "uiKlines"): 2,
    ("GET", "avgPrice"): 2,
    ("GET", "ticker/24hr"): ticker_24hr,
    ("GET", "ticker/price"): ticker_price,
    ("GET", "ticker/bookTicker"): ticker_price,
    ("GET", "ticker/tradingDay"): per_symbol,
    ("GET", "ticker"): per_symbol,
    ("POST", "order"): 1,
    ("POST", "order/test"): lambda p: 20 if p.get("computeCommissionRates") == "true" else 1,
    ("GET", "order"): 4,
    ("DELETE", "order"): 1,
    ("GET", "openOrders"): lambda p: 6 if p.get("symbol") else 80,
    ("DELETE", "openOrders"): 1,
    ("GET", "allOrders"): 20,
    ("GET", "myTrades"): lambda p: 5 if p.get("orderId") else 20,
    ("GET", "account"): 20,
    ("GET", "account/commission"): 20,
    ("GET", "rateLimit/order"): 40,
    ("POST", "userDataStream"): 2,
    ("PUT", "userDataStream"): 2,
    ("DELETE", "userDataStream"): 2,
}
#: a path Binance does not weigh (an unknown route: answered -1020)
DEFAULT_WEIGHT = 1


def _params() -> Params:
    """Query and form body as sent (the query wins a name in both, as in ``signing``); the
    first of a repeated name (the route refuses it with -1101 anyway)."""
    out: Params = {}
    if request.content_length and request.mimetype in ("application/x-www-form-urlencoded", ""):
        for name, value in parse_qsl(request.get_data(cache=True).decode("latin-1"),
                                     keep_blank_values=True):  # fmt: skip
            out.setdefault(name, value)
    query: Params = {}
    for name, value in parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True):
        query.setdefault(name, value)
    out.update(query)
    return out


def request_weight() -> int:
    """The current ``/api/v3`` request's weight."""
    path = request.path[len(PREFIX) + 1 :].rstrip("/")
    weight = WEIGHTS.get((request.method, path), DEFAULT_WEIGHT)
    if callable(weight):
        return weight(_params())
    return weight
