"""An unmodified ``ccxt.binance`` trades on a live stack (redis-server + worker + gunicorn).

Every URL of ccxt's binance class points at the stack; ``/api/v3`` is ours and the rest is a
path of the stack that answers 404, so nothing can reach Binance itself. The options keep
ccxt off Binance's other services: ``fetchMarkets`` spot only, ``fetchCurrencies`` and
``fetchMargins`` off (ccxt's defaults send a signed ``sapi`` request at ``load_markets``).
Accounts are funded by deposits journaled directly (the operator's CLI lives in main).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import ccxt
import pytest

from bench.stack import Stack
from redis_server import wait_until
from web.binance.keys import ED25519, HMAC, create_api_key
from web.binance.vault import Vault, new_key_text
from web.journal import Journal

pytestmark = pytest.mark.e2e

SERVER_KEY = new_key_text()
SYMBOL = "BTC/USDT"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack"),
               env={"FAIRBOOK_SECRET_KEY": SERVER_KEY}) as s:  # fmt: skip
        yield s


def exchange(stack: Stack, issued: dict[str, Any] | None, seen: list[str]) -> ccxt.binance:
    """ccxt.binance as a user configures it for Fairbook: every URL on the stack."""
    config: dict[str, Any] = {
        "enableRateLimit": False,
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                    "fetchMargins": False, "defaultType": "spot"},
    }  # fmt: skip
    if issued is not None:
        config["apiKey"] = issued["api_key"]
        config["secret"] = issued.get("secret") or issued["private_key"]
    ex = ccxt.binance(config)
    api = {name: f"{stack.url}/not-binance/{name}" for name in ex.urls["api"]}
    api["public"] = api["private"] = f"{stack.url}/api/v3"
    ex.urls["api"] = api
    for other in ("test", "demo", "apiBackup"):
        ex.urls.pop(other, None)
    ex.session.hooks["response"].append(lambda r, *a, **k: seen.append(r.url))
    return ex


class Trader:
    """An account with a signed key, funded, and its ccxt client."""

    def __init__(self, stack: Stack, seen: list[str], kind: str = HMAC,
                 funds: dict[str, str] | None = None) -> None:  # fmt: skip
        client = stack.redis()
        keys = stack.namespace.global_keys
        try:
            self.account_id = stack.create_account("ccxt")["account_id"]
            vault = Vault(base64.urlsafe_b64decode(SERVER_KEY))
            self.issued = create_api_key(client, vault, self.account_id, keys, kind=kind)
            if funds:
                journal = Journal(client, stack.namespace.keys(0))
                for asset, amount in funds.items():
                    journal.append({"op": "deposit", "account": self.account_id, "asset": asset,
                                    "amount": amount,
                                    "deposit_id": f"t-{self.account_id}-{asset}"})  # fmt: skip
                balance = stack.namespace.keys(0).balances(self.account_id)
                wait_until(lambda: client.hlen(balance) >= len(funds), 20, "deposits applied")
        finally:
            client.close()
        self.ex = exchange(stack, self.issued, seen)


@pytest.fixture
def seen() -> Iterator[list[str]]:
    urls: list[str] = []
    yield urls
    assert urls and all("/api/v3/" in u for u in urls), urls


@pytest.fixture
def traders(stack, seen) -> Iterator[Any]:
    made: list[Trader] = []

    def make(**kw: Any) -> Trader:
        trader = Trader(stack, seen, **kw)
        made.append(trader)
        return trader

    yield make
    for trader in made:
        for order in trader.ex.fetch_open_orders(SYMBOL):
            trader.ex.cancel_order(order["id"], SYMBOL)


FUNDS = {"USDT": "100000", "BTC": "10"}


def test_markets_time_book_and_balance(stack, traders):
    alice = traders(funds=FUNDS)
    ex = alice.ex
    markets = ex.load_markets()
    market = markets[SYMBOL]
    assert market["id"] == "BTCUSDT" and market["spot"] and market["active"]
    assert market["precision"]["price"] == 0.01 and market["precision"]["amount"] == 0.00001
    assert market["limits"]["amount"]["min"] == 0.00001 and market["limits"]["cost"]["min"] == 1
    assert abs(ex.fetch_time() - time.time() * 1000) < 5000
    balance = ex.fetch_balance()
    assert balance["USDT"]["free"] == 100000 and balance["BTC"]["total"] == 10
    book = ex.fetch_order_book(SYMBOL)
    assert "bids" in book and "asks" in book and isinstance(book["nonce"], int)


@pytest.mark.parametrize("kind", [HMAC, ED25519])
def test_limit_market_and_cost_orders_trade(stack, traders, kind):
    maker, taker = traders(funds=FUNDS), traders(funds=FUNDS, kind=kind)
    bid = maker.ex.create_order(SYMBOL, "limit", "buy", 0.01, 29000)
    assert bid["status"] == "open" and bid["price"] == 29000 and bid["amount"] == 0.01
    assert bid["clientOrderId"]
    fetched = maker.ex.fetch_order(bid["id"], SYMBOL)
    assert fetched["status"] == "open" and fetched["remaining"] == 0.01
    by_client_id = maker.ex.fetch_order(None, SYMBOL, {"origClientOrderId": bid["clientOrderId"]})
    assert by_client_id["id"] == bid["id"]
    assert [o["id"] for o in maker.ex.fetch_open_orders(SYMBOL)] == [bid["id"]]
    book = taker.ex.fetch_order_book(SYMBOL)
    assert [29000, 0.01] in book["bids"]
    # market sell by amount takes the bid
    sold = taker.ex.create_order(SYMBOL, "market", "sell", 0.004)
    assert sold["status"] == "closed" and sold["filled"] == 0.004 and sold["average"] == 29000
    assert sold["trades"] and sold["fee"]["currency"] == "USDT"
    assert maker.ex.fetch_order(bid["id"], SYMBOL)["filled"] == 0.004
    trades = taker.ex.fetch_trades(SYMBOL)
    assert trades[-1]["price"] == 29000 and trades[-1]["side"] == "sell"
    mine = maker.ex.fetch_my_trades(SYMBOL)
    assert mine[-1]["order"] == bid["id"] and mine[-1]["side"] == "buy"
    assert mine[-1]["takerOrMaker"] == "maker" and mine[-1]["amount"] == 0.004
    # market buy by cost (quoteOrderQty) against an ask
    ask = maker.ex.create_order(SYMBOL, "limit", "sell", 0.01, 31000)
    bought = taker.ex.create_market_buy_order_with_cost(SYMBOL, 62)
    assert bought["status"] == "closed" and bought["filled"] == 0.002 and bought["cost"] == 62
    assert maker.ex.fetch_order(ask["id"], SYMBOL)["filled"] == 0.002
    balance = taker.ex.fetch_balance()
    assert balance["BTC"]["total"] == pytest.approx(10 - 0.004 + 0.002)


def test_post_only_cancel_and_history(stack, traders):
    maker, other = traders(funds=FUNDS), traders(funds=FUNDS)
    ask = other.ex.create_order(SYMBOL, "limit", "sell", 0.01, 40000)
    with pytest.raises(ccxt.OrderImmediatelyFillable):  # LIMIT_MAKER that would take
        maker.ex.create_order(SYMBOL, "limit", "buy", 0.01, 40000, {"postOnly": True})
    resting = maker.ex.create_order(SYMBOL, "limit", "buy", 0.01, 20000, {"postOnly": True})
    assert resting["status"] == "open" and resting["postOnly"] is True
    second = maker.ex.create_order(SYMBOL, "limit", "buy", 0.01, 20001)
    cancelled = maker.ex.cancel_order(resting["id"], SYMBOL)
    assert cancelled["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        maker.ex.cancel_order(resting["id"], SYMBOL)
    locked = maker.ex.fetch_balance()["USDT"]["used"]
    assert locked > 0  # the second bid holds quote
    all_cancelled = maker.ex.cancel_all_orders(SYMBOL)
    assert [o["id"] for o in all_cancelled] == [second["id"]]
    assert maker.ex.fetch_balance()["USDT"]["used"] == 0
    with pytest.raises(ccxt.OrderNotFound):
        maker.ex.cancel_all_orders(SYMBOL)  # nothing open: -2011 as on Binance
    history = maker.ex.fetch_orders(SYMBOL)
    assert {o["id"]: o["status"] for o in history} == {resting["id"]: "canceled",
                                                       second["id"]: "canceled"}  # fmt: skip
    other.ex.cancel_order(ask["id"], SYMBOL)


def test_error_mapping(stack, traders, seen):
    funded, broke = traders(funds=FUNDS), traders()
    with pytest.raises(ccxt.InsufficientFunds):
        broke.ex.create_order(SYMBOL, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt.OrderNotFound):
        funded.ex.fetch_order("999999999", SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        funded.ex.cancel_order("999999999", SYMBOL)
    with pytest.raises(ccxt.InvalidOrder):  # above LOT_SIZE's maxQty, refused by the server
        funded.ex.create_order(SYMBOL, "limit", "sell", 2000, 29000)
    with pytest.raises(ccxt.BadSymbol):
        funded.ex.publicGetDepth({"symbol": "NOPEUSDT"})
    wrong = exchange(stack, {**funded.issued, "secret": "x" * 64}, seen)
    with pytest.raises(ccxt.AuthenticationError):
        wrong.fetch_balance()
    unknown = exchange(stack, {**funded.issued, "api_key": "y" * 64}, seen)
    with pytest.raises(ccxt.AuthenticationError):
        unknown.fetch_balance()
    stale = exchange(stack, funded.issued, seen)
    stale.options["timeDifference"] = 120_000  # ccxt's nonce() = now - timeDifference
    with pytest.raises(ccxt.InvalidNonce):
        stale.fetch_balance()


def test_stop_loss_limit_and_take_profit_limit(stack, traders):
    maker, taker = traders(funds=FUNDS), traders(funds=FUNDS)
    maker.ex.create_order(SYMBOL, "limit", "sell", 0.001, 30000)
    taker.ex.create_order(SYMBOL, "market", "buy", 0.001)  # the last price is 30000 now
    stop = maker.ex.create_order(SYMBOL, "limit", "sell", 0.01, 24900, {"stopLossPrice": 25000})
    profit = maker.ex.create_order(SYMBOL, "limit", "sell", 0.01, 50000,
                                   {"takeProfitPrice": 50000})  # fmt: skip
    waiting = {o["id"]: o for o in maker.ex.fetch_open_orders(SYMBOL)}
    assert waiting[stop["id"]]["info"]["type"] == "STOP_LOSS_LIMIT"
    assert waiting[stop["id"]]["triggerPrice"] == 25000 and waiting[stop["id"]]["price"] == 24900
    assert waiting[profit["id"]]["info"]["type"] == "TAKE_PROFIT_LIMIT"
    assert waiting[profit["id"]]["info"]["isWorking"] is False
    with pytest.raises(ccxt.OrderImmediatelyFillable):  # the trigger already holds
        maker.ex.create_order(SYMBOL, "limit", "sell", 0.01, 31000, {"stopLossPrice": 31000})


def test_bids_asks_and_tickers(stack, traders):
    maker = traders(funds=FUNDS)
    maker.ex.create_order(SYMBOL, "limit", "buy", 0.01, 21000)
    quotes = maker.ex.fetch_bids_asks()
    assert quotes[SYMBOL]["bid"] == 21000 and "ETH/USDT" in quotes
    one = maker.ex.fetch_bids_asks([SYMBOL])
    assert one[SYMBOL]["bidVolume"] == 0.01


def test_rate_limits_raise_ccxts_rate_limit_errors(tmp_path):
    """A stack of its own with tiny limits: ccxt's binance raises ``DDoSProtection`` (its
    rate-limit family, RateLimitExceeded's parent) on a 429 -1015 (orders), a 429 -1003
    (weight) and the 418 ban that follows more requests."""
    env = {"FAIRBOOK_SECRET_KEY": SERVER_KEY, "FAIRBOOK_BINANCE_WEIGHT_1M": "60",
           "FAIRBOOK_BINANCE_ORDERS_10S": "2", "FAIRBOOK_BINANCE_BAN_AFTER": "2"}  # fmt: skip
    with Stack(reply_timeout=2.0, log_dir=tmp_path, env=env) as stack:
        seen: list[str] = []
        ex = Trader(stack, seen, funds=FUNDS).ex
        ex.load_markets()  # exchangeInfo: 20
        assert ex.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "20"
        limits = ex.publicGetExchangeInfo()["rateLimits"]  # 40
        assert {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                "limit": 2} in limits  # fmt: skip
        for _ in range(2):
            ex.create_order(SYMBOL, "limit", "buy", 0.01, 20000)
        assert ex.last_response_headers["X-MBX-ORDER-COUNT-10S"] == "2"
        with pytest.raises(ccxt.DDoSProtection) as orders:
            ex.create_order(SYMBOL, "limit", "buy", 0.01, 20000)
        assert " 429 " in str(orders.value) and "-1015" in str(orders.value)
        with pytest.raises(ccxt.DDoSProtection) as weight:
            for _ in range(60):
                ex.fetch_time()
        assert " 429 " in str(weight.value) and "Too much request weight used" in str(weight.value)
        with pytest.raises(ccxt.DDoSProtection):
            ex.fetch_time()  # the second refusal (FAIRBOOK_BINANCE_BAN_AFTER = 2)
        with pytest.raises(ccxt.DDoSProtection) as banned:
            ex.fetch_time()
        assert " 418 " in str(banned.value) and "IP banned until" in str(banned.value)
        assert seen and all("/api/v3/" in u for u in seen), seen


def test_ohlcv_and_24h_tickers(stack, traders):
    """fetch_ohlcv / fetch_ticker / fetch_tickers read the candles the worker derives from the
    trades (journal time) and agree with the trades ccxt itself fetches."""
    maker, taker = traders(funds=FUNDS), traders(funds=FUNDS)
    maker.ex.create_order(SYMBOL, "limit", "sell", 0.001, 30100)
    maker.ex.create_order(SYMBOL, "limit", "sell", 0.002, 30200)
    taker.ex.create_order(SYMBOL, "market", "buy", 0.003)  # two trades: 30100, then 30200
    trades = taker.ex.fetch_trades(SYMBOL, limit=1000)
    last = trades[-1]
    assert last["price"] == 30200
    candles = taker.ex.fetch_ohlcv(SYMBOL, "1m", limit=5)
    ts, o, h, low, c, v = candles[-1]
    minute = last["timestamp"] - last["timestamp"] % 60_000
    assert ts == minute and c == 30200 and h >= 30200 and low <= 30100 < h
    same_minute = [t for t in trades if t["timestamp"] >= minute]
    assert o == same_minute[0]["price"]
    assert v == pytest.approx(sum(t["amount"] for t in same_minute))
    for timeframe in ("1s", "5m", "1h", "4h", "1d", "1w", "1M"):
        rows = taker.ex.fetch_ohlcv(SYMBOL, timeframe)
        assert rows and rows[-1][4] == 30200, timeframe
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    since = taker.ex.fetch_ohlcv(SYMBOL, "1m", since=minute, limit=1)
    assert [r[0] for r in since] == [minute]
    ticker = taker.ex.fetch_ticker(SYMBOL)
    assert ticker["last"] == ticker["close"] == 30200 and ticker["timestamp"] == last["timestamp"]
    assert ticker["high"] >= 30200 and ticker["baseVolume"] == pytest.approx(
        sum(t["amount"] for t in trades if t["timestamp"] > last["timestamp"] - 86_400_000))
    assert ticker["open"] == trades[0]["price"] or len(trades) == 1000
    tickers = taker.ex.fetch_tickers()
    assert tickers[SYMBOL]["last"] == 30200 and "ETH/USDT" in tickers
    assert tickers["ETH/USDT"]["last"] in (0, None)  # no trade there
    some = taker.ex.fetch_tickers([SYMBOL, "ETH/USDT"])
    assert set(some) == {SYMBOL, "ETH/USDT"}
