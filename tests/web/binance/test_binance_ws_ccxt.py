"""An unmodified ``ccxt.pro.binance`` (the pinned ccxt) trades and watches on a live stack.

Every REST URL points at the stack as in ``test_binance_ccxt``; the WebSocket URLs too:
``urls.api.ws.spot`` = ``ws://<stack>/ws`` (ccxt opens ``/ws/<n>`` per watch and SUBSCRIBEs)
and ``urls.api.ws["ws-api"].spot`` = ``ws://<stack>/ws-api/v3`` (order entry and, for spot, the
user data stream through ``userDataStream.subscribe.signature``, not a listen key: ccxt 4.5.90's
``authenticate`` does so for spot). What ccxt sends and reads is its ``ccxt/pro/binance.py``;
docs/DESIGN.md (Binance-compatible WebSocket) what we serve. ccxt is asyncio: each test runs one
event loop.

The order book is checked twice: ccxt itself raises ``ChecksumError`` when a ``depthUpdate``'s
``U`` is not the previous ``u`` + 1, and the test records every event it got (a subclass that
only listens) and checks the ``U``/``u`` chain and that the book ccxt built equals REST
``depth`` at the same ``lastUpdateId``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import ccxt
import ccxt.pro
import pytest

from bench.stack import Stack
from redis_server import wait_until
from web.binance.keys import ED25519, HMAC, create_api_key
from web.binance.vault import Vault, new_key_text
from web.journal import Journal

pytestmark = pytest.mark.e2e

SERVER_KEY = new_key_text()
SYMBOL = "BTC/USDT"
FUNDS = {"USDT": "100000", "BTC": "10"}
#: one wait for any event: the stack answers in milliseconds, a missing feature never
WAIT = 10.0
T = TypeVar("T")


class Recording(ccxt.pro.binance):
    """ccxt.pro.binance that also keeps every ``depthUpdate`` and every SUBSCRIBE answer it
    receives (and changes nothing): the test checks the chain, and waits for the answers
    rather than guessing when the server has subscribed."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.depth_events: list[dict[str, Any]] = []
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.parsed_tickers: dict[str | None, Any] = {}

    def parse_ws_ticker(self, message: dict[str, Any], market_type: Any) -> Any:
        """Keep the newest ticker of each event type (ccxt's ``tickers`` holds one for both)."""
        ticker = super().parse_ws_ticker(message, market_type)
        self.parsed_tickers[message.get("e")] = ticker
        return ticker

    def handle_order_book(self, client: Any, message: dict[str, Any]) -> None:
        self.depth_events.append(message)
        super().handle_order_book(client, message)

    def handle_subscription_status(self, client: Any, message: dict[str, Any]) -> Any:
        self.answers.append((client.url, message))
        return super().handle_subscription_status(client, message)

    async def subscribed(self, count: int) -> None:
        """Until ``count`` SUBSCRIBEs were answered (``{"result": null, "id": n}``)."""
        deadline = time.monotonic() + WAIT
        while len(self.answers) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.answers)} of {count} SUBSCRIBEs answered: "
                                     f"{self.answers}")  # fmt: skip
            await asyncio.sleep(0.01)
        assert all(answer.get("result", 0) is None for _, answer in self.answers), self.answers


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack"),
               env={"FAIRBOOK_SECRET_KEY": SERVER_KEY}) as s:  # fmt: skip
        yield s


def issue_key(stack: Stack, kind: str = HMAC, funds: dict[str, str] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    """A new account with a signed key, funded by deposits journaled directly."""
    client = stack.redis()
    try:
        account_id = stack.create_account("ccxtpro")["account_id"]
        vault = Vault(base64.urlsafe_b64decode(SERVER_KEY))
        issued = create_api_key(client, vault, account_id, stack.namespace.global_keys,
                                kind=kind)  # fmt: skip
        if funds:
            journal = Journal(client, stack.namespace.keys(0))
            for asset, amount in funds.items():
                journal.append({"op": "deposit", "account": account_id, "asset": asset,
                                "amount": amount, "deposit_id": f"t-{account_id}-{asset}"})
            balance = stack.namespace.keys(0).balances(account_id)
            wait_until(lambda: client.hlen(balance) >= len(funds), 20, "deposits applied")
    finally:
        client.close()
    return issued


def pro(stack: Stack, issued: dict[str, Any] | None = None) -> Recording:
    """ccxt.pro.binance as a user configures it for Fairbook: every URL on the stack."""
    config: dict[str, Any] = {
        "enableRateLimit": False,
        "newUpdates": False,  # a watch_* returns the whole cache, not only what is new
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                    "fetchMargins": False, "defaultType": "spot"},
    }  # fmt: skip
    if issued is not None:
        config["apiKey"] = issued["api_key"]
        config["secret"] = issued.get("secret") or issued["private_key"]
    ex = Recording(config)
    ws = f"ws://127.0.0.1:{stack.web_port}"
    api: dict[str, Any] = {name: f"{stack.url}/not-binance/{name}"
                           for name in ex.urls["api"] if name != "ws"}  # fmt: skip
    api["public"] = api["private"] = f"{stack.url}/api/v3"
    api["ws"] = {"spot": f"{ws}/ws", "ws-api": {"spot": f"{ws}/ws-api/v3"}}
    ex.urls["api"] = api
    for other in ("test", "demo", "apiBackup"):
        ex.urls.pop(other, None)
    return ex


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def within(awaitable: Awaitable[T], what: str, timeout: float = WAIT) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def until(watch: Callable[[], Awaitable[Any]], state: Callable[[], T | None],
                ok: Callable[[T], bool], what: str, timeout: float = WAIT) -> T:  # fmt: skip
    """Until ccxt's cached ``state`` (what its handlers built from the messages) satisfies
    ``ok``, keeping a ``watch_*`` call waiting for news (an event that arrived between two
    watch calls is in the cache, so none is missed); a watch's error (e.g. ccxt's
    ChecksumError on a depth gap) is raised. The failure shows the last state."""
    deadline = time.monotonic() + timeout
    while True:
        value = state()
        try:
            if value is not None and ok(value):
                return value
        except (IndexError, KeyError, TypeError):
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout} s; last: {value!r:.1500}")
        try:
            await asyncio.wait_for(watch(), min(left, 0.5))
        except TimeoutError:
            pass


async def closing(*exchanges: ccxt.pro.binance) -> None:
    for ex in exchanges:
        await ex.close()


async def cancel_all(ex: ccxt.pro.binance) -> None:
    for order in await ex.fetch_open_orders(SYMBOL):
        await ex.cancel_order(order["id"], SYMBOL)


def levels(side: list[list[float]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q, *_ in side]


async def same_book(watcher: Recording, rest_client: ccxt.pro.binance) -> Any:
    """REST depth now, and ccxt's streamed book once it reached that ``lastUpdateId``: the same
    sequence and the same levels (only this test changes the book meanwhile)."""
    rest = await rest_client.fetch_order_book(SYMBOL, 1000)
    synced = await until(lambda: watcher.watch_order_book(SYMBOL),
                         lambda: watcher.orderbooks.get(SYMBOL),
                         lambda b: b["nonce"] >= rest["nonce"],
                         f"order book at lastUpdateId {rest['nonce']}")  # fmt: skip
    assert synced["nonce"] == rest["nonce"]
    assert levels(synced["bids"]) == levels(rest["bids"])
    assert levels(synced["asks"]) == levels(rest["asks"])
    return rest


def test_watch_order_book_stays_in_sync_with_rest_depth(stack):
    """Orders flow (resting, partly taken, cancelled) from two accounts while ccxt keeps its
    book from the diff stream; at the end it equals REST depth at the same lastUpdateId and the
    U/u chain it received has no gap."""
    maker_key, taker_key = issue_key(stack, funds=FUNDS), issue_key(stack, funds=FUNDS)

    async def scenario() -> None:
        watcher, maker, taker = pro(stack), pro(stack, maker_key), pro(stack, taker_key)
        try:
            await asyncio.gather(watcher.load_markets(), maker.load_markets(),
                                 taker.load_markets())  # fmt: skip
            book = await within(watcher.watch_order_book(SYMBOL), "first order book")
            start_nonce = book["nonce"]
            assert isinstance(start_nonce, int)
            rng = random.Random(16)
            resting: list[str] = []
            for i in range(24):  # ~60 orders: under the default 100 / 10 s per account
                side = "buy" if i % 2 else "sell"
                price = 26000 + rng.randint(0, 20) * 10 if side == "buy" else \
                    34000 - rng.randint(0, 20) * 10  # fmt: skip
                order = await maker.create_order(SYMBOL, "limit", side, 0.001 * (1 + i % 3),
                                                 price)  # fmt: skip
                resting.append(order["id"])
                if i % 4 == 3:  # cancel an older one
                    await maker.cancel_order(resting.pop(0), SYMBOL)
                if i % 6 == 5:  # take a bit of the top on either side
                    await taker.create_order(SYMBOL, "market", "sell" if i % 12 == 5 else "buy",
                                             0.0015)  # fmt: skip
                # in sync on the way, not only at the end; and many events, not one per
                # 100 ms of the whole flow (each of these waits for the next)
                await same_book(watcher, maker)
            rest = await same_book(watcher, maker)
            assert rest["nonce"] > start_nonce
            events = [e for e in watcher.depth_events if e["u"] > start_nonce]
            assert len(events) >= 24 and events[0]["U"] <= start_nonce + 1 <= events[0]["u"]
            for before, after in zip(events, events[1:], strict=False):
                assert after["U"] == before["u"] + 1, (before, after)
            assert events[-1]["u"] == rest["nonce"]
            assert all(e["e"] == "depthUpdate" and e["s"] == "BTCUSDT" and "pu" not in e
                       and isinstance(e["E"], int) for e in events)  # fmt: skip
            await cancel_all(maker)
        finally:
            await closing(watcher, maker, taker)

    run(scenario)


def test_watch_trades_ohlcv_and_tickers(stack):
    """A trade shows up in watch_trades, the 1m candle of watch_ohlcv, and both tickers
    (``@miniTicker``, ccxt's default for watch_ticker, and ``@ticker`` with bid/ask)."""
    maker_key, taker_key = issue_key(stack, funds=FUNDS), issue_key(stack, funds=FUNDS)
    price = 30123.45

    async def scenario() -> None:
        watcher, maker, taker = pro(stack), pro(stack, maker_key), pro(stack, taker_key)
        watches: list[asyncio.Future[Any]] = []
        try:
            await asyncio.gather(watcher.load_markets(), maker.load_markets(),
                                 taker.load_markets())  # fmt: skip
            watches = [asyncio.ensure_future(w) for w in (
                watcher.watch_trades(SYMBOL), watcher.watch_ohlcv(SYMBOL, "1m"),
                watcher.watch_ticker(SYMBOL), watcher.watch_ticker(SYMBOL, {"name": "ticker"}))]
            await watcher.subscribed(4)
            assert sorted(url.rsplit("/", 1)[1] for url, _ in watcher.answers) == \
                ["0", "1", "2", "3"]  # ccxt's /ws/<n>: one connection per watch  # fmt: skip
            await maker.create_order(SYMBOL, "limit", "buy", 0.001, 25000)  # a bid for @ticker
            await maker.create_order(SYMBOL, "limit", "sell", 0.002, price)
            bought = await taker.create_order(SYMBOL, "market", "buy", 0.002)
            assert bought["status"] == "closed" and bought["average"] == price

            trades = await until(lambda: watcher.watch_trades(SYMBOL),
                                 lambda: watcher.trades.get(SYMBOL),
                                 lambda ts: ts[-1]["price"] == price, "trade event")
            trade = trades[-1]
            assert trade["symbol"] == SYMBOL and trade["amount"] == 0.002
            assert trade["side"] == "buy" and trade["cost"] == pytest.approx(60.2469)
            assert isinstance(trade["id"], str) and trade["info"]["e"] == "trade"
            assert abs(trade["timestamp"] - time.time() * 1000) < 10_000
            candles = await until(lambda: watcher.watch_ohlcv(SYMBOL, "1m"),
                                  lambda: watcher.ohlcvs.get(SYMBOL, {}).get("1m"),
                                  lambda cs: cs[-1][4] == price, "kline event")
            ts, _open, high, low, close, volume = candles[-1]
            assert ts % 60_000 == 0 and abs(ts - time.time() * 1000) < 120_000
            assert low <= close <= high and volume >= 0.002
            mini = await until(lambda: watcher.watch_ticker(SYMBOL),
                               lambda: watcher.parsed_tickers.get("24hrMiniTicker"),
                               lambda t: t["last"] == price, "24hrMiniTicker event")
            assert mini["symbol"] == SYMBOL and mini["info"]["e"] == "24hrMiniTicker"
            assert mini["baseVolume"] >= 0.002 and mini["high"] >= price
            ticker = await until(lambda: watcher.watch_ticker(SYMBOL, {"name": "ticker"}),
                                 lambda: watcher.parsed_tickers.get("24hrTicker"),
                                 lambda t: t["last"] == price and t["bid"] == 25000,
                                 "24hrTicker event with the bid")  # fmt: skip
            assert ticker["bidVolume"] == 0.001 and ticker["info"]["e"] == "24hrTicker"
            await cancel_all(maker)
        finally:
            for watch in watches:
                watch.cancel()
            await closing(watcher, maker, taker)

    run(scenario)


@pytest.mark.parametrize("taker_kind", [HMAC, ED25519])
def test_ws_order_entry_and_user_data(stack, taker_kind):
    """create_order_ws / cancel_order_ws over the WebSocket API, watched by watch_orders,
    watch_my_trades and watch_balance (the user data stream ccxt subscribes with
    ``userDataStream.subscribe.signature``); errors map to ccxt's exceptions as on REST."""
    maker_key = issue_key(stack, funds=FUNDS)
    taker_key = issue_key(stack, taker_kind, funds=FUNDS)
    broke_key = issue_key(stack)

    async def scenario() -> None:
        maker, taker, broke = pro(stack, maker_key), pro(stack, taker_key), pro(stack, broke_key)
        watches: list[asyncio.Future[Any]] = []
        try:
            await asyncio.gather(maker.load_markets(), taker.load_markets(),
                                 broke.load_markets())  # fmt: skip
            # what watch_orders / watch_balance / watch_my_trades do first, awaited here so
            # that no event can precede the subscription
            await within(maker.authenticate(), "userDataStream.subscribe.signature answer")
            watches = [asyncio.ensure_future(w) for w in (
                maker.watch_orders(SYMBOL), maker.watch_balance(), maker.watch_my_trades(SYMBOL))]
            placed = await within(maker.create_order_ws(SYMBOL, "limit", "buy", 0.01, 21000),
                                  "order.place answer")  # fmt: skip
            assert placed["status"] == "open" and placed["price"] == 21000
            assert placed["amount"] == 0.01 and placed["filled"] == 0 and placed["id"]
            assert placed["clientOrderId"].startswith("x-")
            seen = await within(watches[0], "executionReport NEW")
            assert [(o["id"], o["status"]) for o in seen] == [(placed["id"], "open")]
            assert seen[0]["clientOrderId"] == placed["clientOrderId"]
            assert seen[0]["side"] == "buy" and seen[0]["type"] == "limit"
            assert seen[0]["price"] == 21000 and seen[0]["amount"] == 0.01
            funds = await within(watches[1], "outboundAccountPosition")
            rest = await maker.fetch_balance()
            assert funds["USDT"]["used"] == rest["USDT"]["used"] >= 210
            assert funds["USDT"]["free"] == rest["USDT"]["free"]
            cancelled = await within(maker.cancel_order_ws(placed["id"], SYMBOL),
                                     "order.cancel answer")  # fmt: skip
            assert cancelled["id"] == placed["id"] and cancelled["status"] == "canceled"
            await until(lambda: maker.watch_orders(SYMBOL), lambda: maker.orders,
                        lambda os: (os[-1]["id"], os[-1]["status"]) == (placed["id"], "canceled"),
                        "executionReport CANCELED")  # fmt: skip
            with pytest.raises(ccxt.OrderNotFound):
                await within(maker.cancel_order_ws(placed["id"], SYMBOL), "order.cancel error")
            with pytest.raises(ccxt.InsufficientFunds):
                await within(broke.create_order_ws(SYMBOL, "limit", "buy", 0.01, 21000),
                             "order.place error")  # fmt: skip

            # a resting ask of the maker, taken in two parts by the taker's market orders
            ask = await within(maker.create_order_ws(SYMBOL, "limit", "sell", 0.01, 31000),
                               "order.place answer")  # fmt: skip
            bought = await within(taker.create_order_ws(SYMBOL, "market", "buy", 0.004),
                                  "order.place answer (taker)")  # fmt: skip
            assert bought["status"] == "closed" and bought["filled"] == 0.004
            assert bought["average"] == 31000 and bought["trades"]
            mine = await within(watches[2], "executionReport TRADE")
            fill = mine[-1]
            assert fill["order"] == ask["id"] and fill["price"] == 31000
            assert fill["amount"] == 0.004 and fill["side"] == "sell"
            assert fill["takerOrMaker"] == "maker" and fill["symbol"] == SYMBOL
            await within(taker.create_order_ws(SYMBOL, "market", "buy", 0.006), "second take")
            mine = await until(lambda: maker.watch_my_trades(SYMBOL), lambda: maker.myTrades,
                               lambda ts: len(ts) == 2,
                               "the second fill")  # fmt: skip
            assert [t["order"] for t in mine] == [ask["id"]] * 2
            assert [t["amount"] for t in mine] == [0.004, 0.006]
            seen = await until(lambda: maker.watch_orders(SYMBOL), lambda: maker.orders,
                               lambda os: (os[-1]["id"], os[-1]["status"]) == (ask["id"], "closed"),
                               "executionReport FILLED")  # fmt: skip
            assert seen[-1]["filled"] == 0.01 and seen[-1]["cost"] == 310
            assert [o["id"] for o in seen] == [placed["id"], ask["id"]]  # its own, nobody else's
            rest = await maker.fetch_balance()
            funds = await until(lambda: maker.watch_balance(), lambda: maker.balance.get("spot"),
                                lambda b: b["BTC"]["free"] == rest["BTC"]["free"],
                                "balance after the fills")  # fmt: skip
            assert funds["BTC"]["free"] == pytest.approx(10 - 0.01) and funds["BTC"]["used"] == 0
            assert funds["USDT"]["free"] == rest["USDT"]["free"]
            await cancel_all(maker)
        finally:
            for watch in watches:
                watch.cancel()
            await closing(maker, taker, broke)

    run(scenario)
