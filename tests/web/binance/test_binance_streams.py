"""Binance's market streams end to end: real redis-server, ``python -m worker``, gunicorn (gevent).

What is checked, with raw websocket-client sockets: Binance's documented depth-sync procedure
(diff events buffered, REST ``/api/v3/depth`` snapshot, ``U``/``u`` continuity) rebuilds the REST
depth exactly while orders flow, for ``@depth`` and ``@depth@100ms``, raw and combined; partial
depth equals REST's top N; each stream's fields are Binance's and agree with the REST answers;
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY and Binance's error
replies (the socket stays usable); the caps (streams per socket, messages per second,
connection attempts per address); a slow consumer is closed 4008 while a fast one gets
everything; a listen-key path is not taken for market streams.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
import websocket

from bench.stack import Stack
from tests.web.funding import fund
from tests.web.live_socket import LiveSocket, wait_idle
from web.binance.streams import StreamConnection, StreamHub, parse_stream
from web.hub import ChannelError, Hub
from web.journal import Journal

SYMBOL = "BTC-USDT"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """One stack for the module (messages per second raised: the error tests send many)."""
    with Stack(log_dir=tmp_path_factory.mktemp("bn-streams"),
               env={"FAIRBOOK_WS_QUEUE": "600", "FAIRBOOK_WS_SNDBUF": "4096",
                    "FAIRBOOK_WS_CLOSE_TIMEOUT": "30",
                    "FAIRBOOK_BINANCE_WS_MESSAGES_PER_S": "100",
                    "FAIRBOOK_WS_MAX_MESSAGE": "4096"}) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def accounts(stack) -> list[str]:
    ids = [stack.create_account(f"bn-mm{i}")["account_id"] for i in range(4)]
    for account in ids:
        fund(stack, account)
    return ids


@pytest.fixture(scope="module")
def journal(stack) -> Journal:
    return Journal(stack.redis(), 0)


class Socket(LiveSocket):
    """A socket on a Binance stream path (``tests.web.live_socket``) with its requests."""

    def request(self, method: str, params: Any = None, msg_id: Any = 1) -> Any:
        msg: dict[str, Any] = {"method": method, "id": msg_id}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.until(lambda m: isinstance(m, dict) and m.get("id") == msg_id
                          and ("result" in m or "error" in m))  # fmt: skip


def order(account: str, side: str, price: str, qty: str, symbol: str = SYMBOL) -> dict[str, Any]:
    return {"op": "new", "account": account, "symbol": symbol, "side": side, "type": "limit",
            "time_in_force": "GTC", "post_only": False, "price": price, "quantity": qty,
            "quote_quantity": None, "stop_price": None, "client_order_id": None,
            "stp": "cancel_maker"}  # fmt: skip


def rest(stack: Stack, path: str, **params: Any) -> Any:
    r = requests.get(f"{stack.url}/api/v3/{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def flow(journal: Journal, accounts: list[str], rng: random.Random, rounds: int,
         pause: float = 0.01) -> None:  # fmt: skip
    """Resting, crossing and cancelled orders in small batches (a few hundred levels at most)."""
    placed: list[tuple[int, str]] = []
    for _ in range(rounds):
        wires = []
        for _ in range(15):
            side = rng.choice(("buy", "sell"))
            px = 100 + rng.randint(-40, 40) * 0.25
            wires.append(order(rng.choice(accounts), side, f"{px:.2f}",
                               rng.choice(("0.02", "0.03", "0.05"))))  # fmt: skip
        ids = journal.append_many(wires)
        placed += [(oid, w["account"]) for oid, w in zip(ids, wires, strict=True)]
        cancels = [{"op": "cancel", "account": acct, "order_id": oid}
                   for oid, acct in rng.sample(placed, min(4, len(placed)))]  # fmt: skip
        journal.append_many(cancels)
        time.sleep(pause)


class LocalBook:
    """Binance's "How to manage a local order book correctly", step by step."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.update_id: int | None = None
        self.buffer: list[dict[str, Any]] = []
        self.first_u: int | None = None
        self.applied = 0
        self.synced = False  # the first event after the snapshot was applied
        self.lock = threading.Lock()  # the reader thread and the test thread

    def on_event(self, event: dict[str, Any]) -> None:
        assert event["e"] == "depthUpdate" and event["s"] == "BTCUSDT"
        assert set(event) == {"e", "E", "s", "U", "u", "b", "a"}
        assert event["U"] <= event["u"]
        with self.lock:
            if self.update_id is None:  # 2. buffer; note the first event's U
                if self.first_u is None:
                    self.first_u = event["U"]
                self.buffer.append(event)
                return
            self.apply(event)

    def snapshot(self, snap: dict[str, Any]) -> bool:
        """Steps 4-6: False when the snapshot is older than the first event (fetch again)."""
        with self.lock:
            assert self.first_u is not None, "no event buffered yet"
            last = snap["lastUpdateId"]
            if last < self.first_u:
                return False
            self.bids, self.asks = dict(snap["bids"]), dict(snap["asks"])
            self.update_id = last
            events, self.buffer = self.buffer, []
            for event in events:
                self.apply(event)
            return True

    def apply(self, event: dict[str, Any]) -> None:
        assert self.update_id is not None
        if event["u"] <= self.update_id:  # 5. discard u <= lastUpdateId
            return
        if not self.synced:  # 5. the first one holds lastUpdateId + 1
            assert event["U"] <= self.update_id + 1 <= event["u"], "first event misses it"
            self.synced = True
        else:  # 6. each next U is the previous u + 1
            assert event["U"] == self.update_id + 1, "gap: U is not the previous u + 1"
        for side, book in (("b", self.bids), ("a", self.asks)):
            for price, qty in event[side]:
                if Decimal(qty) == 0:
                    book.pop(price, None)  # 9. removing an unknown level is normal
                else:
                    book[price] = qty
        self.update_id = event["u"]
        self.applied += 1

    def sorted(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda x: -Decimal(x[0]))
        asks = sorted(self.asks.items(), key=lambda x: Decimal(x[0]))
        return [list(x) for x in bids], [list(x) for x in asks]


# ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_depth_sync_procedure_reproduces_rest_depth_while_orders_flow(stack, accounts, journal):
    rng = random.Random(16)
    flow(journal, accounts, rng, 4)  # a book before anyone listens
    wait_idle(stack)
    raw_fast = Socket(stack, "/ws/btcusdt@depth@100ms")
    raw_slow = Socket(stack, "/ws/btcusdt@depth")
    combined = Socket(stack, "/stream?streams=btcusdt@depth@100ms/btcusdt@trade")
    partial = Socket(stack, "/ws/0")  # ccxt's way: a placeholder path, then SUBSCRIBE
    assert partial.request("SUBSCRIBE", ["btcusdt@depth10@100ms"], 5) == {"result": None, "id": 5}
    books = {"raw100": LocalBook(), "raw1000": LocalBook(), "combined": LocalBook()}
    trades: list[int] = []
    partials: list[dict[str, Any]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def read(sock: Socket, name: str) -> None:
        try:
            while not stop.is_set():
                try:
                    msg = sock.recv(0.3)
                except websocket.WebSocketTimeoutException:
                    continue
                if name == "combined":
                    assert set(msg) == {"stream", "data"}
                    if msg["stream"] == "btcusdt@trade":
                        trades.append(msg["data"]["t"])
                        continue
                    assert msg["stream"] == "btcusdt@depth@100ms"
                    msg = msg["data"]
                if name == "partial":
                    partials.append(msg)
                    continue
                books[name].on_event(msg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(s, n), daemon=True) for s, n in
               ((raw_fast, "raw100"), (raw_slow, "raw1000"), (combined, "combined"),
                (partial, "partial"))]  # fmt: skip
    for t in readers:
        t.start()
    mover = threading.Thread(target=flow, args=(journal, accounts, rng, 60, 0.05), daemon=True)
    mover.start()
    # 3. the snapshot, while orders flow (again while older than the first event)
    for book in books.values():
        deadline = time.monotonic() + 10
        while book.first_u is None and time.monotonic() < deadline:
            time.sleep(0.02)
        while not book.snapshot(rest(stack, "depth", symbol="BTCUSDT", limit=1000)):
            time.sleep(0.05)
    mover.join(60)
    wait_idle(stack)
    final = rest(stack, "depth", symbol="BTCUSDT", limit=1000)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not errors and not (
            all(b.update_id == final["lastUpdateId"] for b in books.values())
            and partials and partials[-1]["lastUpdateId"] == final["lastUpdateId"]):
        time.sleep(0.05)
    stop.set()
    for t in readers:
        t.join(5)
    assert not errors, errors[0]
    assert len(final["bids"]) + len(final["asks"]) < 500  # the whole book is in the snapshot
    for name, book in books.items():
        assert book.update_id == final["lastUpdateId"], name
        assert book.sorted() == (final["bids"], final["asks"]), name
        assert book.applied > 1, name
    assert partials[-1] == {"lastUpdateId": final["lastUpdateId"],
                            "bids": final["bids"][:10], "asks": final["asks"][:10]}
    newest = rest(stack, "trades", symbol="BTCUSDT", limit=1)
    assert trades and trades == list(range(trades[0], trades[0] + len(trades)))
    assert trades[-1] == newest[0]["id"]
    for s in (raw_fast, raw_slow, combined, partial):
        s.close()


TRADE = {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
AGG = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
BOOK = {"u", "s", "b", "B", "a", "A"}
KLINE = {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}
TICKER = {"e", "E", "s", "p", "P", "w", "x", "c", "Q", "b", "B", "a", "A", "o", "h", "l", "v",
          "q", "O", "C", "F", "L", "n"}  # fmt: skip
MINI = {"e", "E", "s", "c", "o", "h", "l", "v", "q"}


@pytest.mark.e2e
def test_each_stream_has_binance_fields_and_agrees_with_rest(stack, accounts, journal):
    names = ["ethusdt@trade", "ethusdt@aggTrade", "ethusdt@bookTicker", "ethusdt@kline_1m",
             "ethusdt@kline_1s", "ethusdt@ticker", "ethusdt@miniTicker", "ethusdt@depth5"]
    s = Socket(stack, "/stream?streams=" + "/".join(names))
    maker, taker = accounts[0], accounts[1]
    journal.append_many([order(maker, "sell", "2000", "0.1", "ETH-USDT"),
                         order(maker, "sell", "2000", "0.2", "ETH-USDT"),
                         order(maker, "sell", "2001", "0.5", "ETH-USDT"),
                         order(maker, "buy", "1990", "0.4", "ETH-USDT")])  # fmt: skip
    wait_idle(stack)
    journal.append(order(taker, "buy", "2000", "0.3", "ETH-USDT"))  # two fills, one aggregate
    wait_idle(stack)
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not all(
            any(m["k"]["n"] >= 2 for m in got[k]) for k in ("ethusdt@kline_1m",
                                                          "ethusdt@kline_1s")) or not all(
            got.values()) or len(got["ethusdt@trade"]) < 2:  # fmt: skip
        try:
            msg = s.recv(0.5)
        except websocket.WebSocketTimeoutException:
            continue
        got[msg["stream"]].append(msg["data"])

    trades = got["ethusdt@trade"][-2:]
    assert [set(t) for t in trades] == [TRADE, TRADE]
    ref = rest(stack, "trades", symbol="ETHUSDT", limit=2)
    assert [(t["t"], t["p"], t["q"], t["T"], t["m"]) for t in trades] == [
        (r["id"], r["price"], r["qty"], r["time"], r["isBuyerMaker"]) for r in ref]
    assert trades[0]["e"] == "trade" and trades[0]["s"] == "ETHUSDT" and trades[0]["M"] is True

    agg = got["ethusdt@aggTrade"][-1]
    assert set(agg) == AGG and agg["e"] == "aggTrade"
    ref_agg = rest(stack, "aggTrades", symbol="ETHUSDT", limit=1)[0]
    assert {k: agg[k] for k in "apqflTmM"} == ref_agg
    assert (agg["f"], agg["l"], agg["q"]) == (trades[0]["t"], trades[1]["t"], "0.3000")

    book = got["ethusdt@bookTicker"][-1]
    assert set(book) == BOOK
    ref_book = rest(stack, "ticker/bookTicker", symbol="ETHUSDT")
    assert (book["s"], book["b"], book["B"], book["a"], book["A"]) == (
        ref_book["symbol"], ref_book["bidPrice"], ref_book["bidQty"], ref_book["askPrice"],
        ref_book["askQty"])  # fmt: skip
    assert book["u"] == rest(stack, "depth", symbol="ETHUSDT")["lastUpdateId"]

    for interval in ("1m", "1s"):
        event = [m for m in got[f"ethusdt@kline_{interval}"] if m["k"]["n"] >= 2][-1]
        assert set(event) == {"e", "E", "s", "k"} and event["e"] == "kline"
        k = event["k"]
        assert set(k) == KLINE and k["i"] == interval and k["s"] == "ETHUSDT"
        row = rest(stack, "klines", symbol="ETHUSDT", interval=interval, limit=1)[0]
        assert [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"],
                k["Q"]] == row[:11]  # fmt: skip
        assert k["L"] == trades[1]["t"]

    ticker = got["ethusdt@ticker"][-1]
    assert set(ticker) == TICKER and ticker["e"] == "24hrTicker"
    ref_t = rest(stack, "ticker/24hr", symbol="ETHUSDT")
    pairs = {"p": "priceChange", "P": "priceChangePercent", "w": "weightedAvgPrice",
             "x": "prevClosePrice", "c": "lastPrice", "Q": "lastQty", "b": "bidPrice",
             "B": "bidQty", "a": "askPrice", "A": "askQty", "o": "openPrice", "h": "highPrice",
             "l": "lowPrice", "v": "volume", "q": "quoteVolume", "O": "openTime",
             "C": "closeTime", "F": "firstId", "L": "lastId", "n": "count"}  # fmt: skip
    assert {k: ticker[k] for k in pairs} == {k: ref_t[v] for k, v in pairs.items()}
    mini = got["ethusdt@miniTicker"][-1]
    assert set(mini) == MINI and mini["e"] == "24hrMiniTicker"
    assert {k: mini[k] for k in "cohlvq"} == {k: ticker[k] for k in "cohlvq"}

    depth = got["ethusdt@depth5"][-1]
    ref_d = rest(stack, "depth", symbol="ETHUSDT", limit=5)
    assert depth == ref_d
    s.close()


@pytest.mark.e2e
def test_requests_and_error_replies_keep_the_socket_usable(stack):
    s = Socket(stack, "/ws/btcusdt@bookTicker")
    assert s.request("LIST_SUBSCRIPTIONS", None, 1) == {"result": ["btcusdt@bookTicker"], "id": 1}
    assert s.request("SUBSCRIBE", ["solusdt@trade", "btcusdt@kline_1h"], "ab12") == {
        "result": None, "id": "ab12"}
    assert s.request("LIST_SUBSCRIPTIONS", [], 2)["result"] == [
        "btcusdt@bookTicker", "solusdt@trade", "btcusdt@kline_1h"]
    assert s.request("UNSUBSCRIBE", ["solusdt@trade"], 3) == {"result": None, "id": 3}
    assert s.request("LIST_SUBSCRIPTIONS", None, 4)["result"] == [
        "btcusdt@bookTicker", "btcusdt@kline_1h"]
    assert s.request("GET_PROPERTY", ["combined"], 5) == {"result": False, "id": 5}
    assert s.request("SET_PROPERTY", ["combined", True], 6) == {"result": None, "id": 6}
    assert s.request("GET_PROPERTY", ["combined"], 7) == {"result": True, "id": 7}

    def error(msg_id: Any) -> dict[str, Any]:
        reply = s.until(lambda m: "error" in m)
        assert set(reply) == {"error", "id"} and set(reply["error"]) == {"code", "msg"}
        assert reply["id"] == msg_id
        return reply["error"]

    s.send("{not json")
    assert error(None)["code"] == 3
    s.send(json.dumps([1, 2]))
    assert error(None)["code"] == 2
    s.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": -1.5})
    msg = error(None)["msg"]  # Binance takes negative ids: the text must not say "unsigned"
    assert "request ID" in msg and "unsigned" not in msg
    s.send({"params": ["btcusdt@trade"], "id": 8})
    assert error(8) == {"code": 2, "msg": "Invalid request: missing field `method`"}
    s.send({"method": "subscribe", "params": ["btcusdt@trade"], "id": 9})
    assert error(9)["msg"].startswith("Invalid request: unknown variant 'subscribe'")
    s.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 10, "x": 1})
    assert error(10) == {"code": 2, "msg": "Invalid request: too many parameters"}
    for bad in ("btcusdt@nothing", "BTCUSDT@trade", "xyzusdt@trade", "btcusdt@kline_7m",
                "btcusdt@depth7", 42):
        s.send({"method": "SUBSCRIBE", "params": ["ethbtc@trade", bad], "id": 11})
        assert error(11)["msg"].startswith("Invalid request: invalid stream")
    s.send({"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 12})
    assert error(12)["code"] == 2
    s.send({"method": "SET_PROPERTY", "params": ["speed", True], "id": 13})
    assert error(13) == {"code": 0, "msg": "Unknown property"}
    s.send({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 14})
    assert error(14) == {"code": 1, "msg": "Invalid value type: expected Boolean"}
    s.send({"method": "GET_PROPERTY", "params": [7], "id": 15})
    assert error(15) == {"code": 2, "msg": "Invalid request: property name must be a string"}
    s.send({"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 16})
    assert error(16)["msg"] == "Invalid request: too many parameters"
    s.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"] * 2, "id": 17,
                       }) + " " * 5000)  # over FAIRBOOK_WS_MAX_MESSAGE: refused unread
    assert error(None)["code"] == 2
    # nothing above subscribed anything; the socket still works, now combined
    assert s.request("LIST_SUBSCRIPTIONS", None, 18)["result"] == [
        "btcusdt@bookTicker", "btcusdt@kline_1h"]
    assert s.request("SUBSCRIBE", ["ethbtc@depth20"], 19) == {"result": None, "id": 19}
    snap = s.until(lambda m: m.get("stream") == "ethbtc@depth20")
    assert snap["data"] == rest(stack, "depth", symbol="ETHBTC", limit=20)
    s.close()


@pytest.mark.e2e
def test_a_listen_key_path_is_not_a_market_stream(stack):
    s = Socket(stack, "/ws/" + "Ab1" * 20)  # a listen key that does not exist
    code, _ = s.close_frame(10)  # user data (web.binance.userdata) refuses it, or is missing
    assert code >= 1000


@pytest.mark.e2e
def test_slow_consumer_is_closed_4008_and_others_get_everything(stack, accounts, journal):
    start = rest(stack, "trades", symbol="SOLUSDT", limit=1)
    first = start[0]["id"] + 1 if start else 1
    slow = Socket(stack, "/ws/solusdt@trade",
                  sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))  # fmt: skip
    fast = Socket(stack, "/stream?streams=solusdt@trade")
    assert fast.request("LIST_SUBSCRIPTIONS", None, 1)["result"] == ["solusdt@trade"]
    assert slow.request("LIST_SUBSCRIPTIONS", None, 1)["result"] == ["solusdt@trade"]
    total = 2000
    got: list[int] = []

    def read_fast() -> None:
        deadline = time.monotonic() + 60
        while len(got) < total and time.monotonic() < deadline:
            got.append(fast.recv(60)["data"]["t"])

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    maker, taker = accounts[2], accounts[3]
    for _ in range(total // 100):
        journal.append_many([order(maker, "sell", "20", "1", "SOL-USDT") for _ in range(100)]
                            + [order(taker, "buy", "20", "1", "SOL-USDT") for _ in range(100)])
        time.sleep(0.03)
    reader.join(70)
    assert got == list(range(first, first + total)), "the fast client missed or reordered trades"
    assert slow.close_frame(20) == (4008, "slow consumer")
    assert fast.request("LIST_SUBSCRIPTIONS", None, 2)["result"] == ["solusdt@trade"]
    fast.close()


@pytest.mark.e2e
def test_depth_streams_survive_a_redis_restart(stack, accounts):
    """Last on the module's stack (Redis restarts): the diff stream chains on, or shows the
    gap (the client then starts again, as Binance says); the partial book is re-read."""
    diff = Socket(stack, "/ws/btcusdt@depth@100ms")
    part = Socket(stack, "/ws/btcusdt@depth5@100ms")
    rng = random.Random(99)
    flow(Journal(stack.redis(), 0), accounts, rng, 3)
    wait_idle(stack)
    book = LocalBook()
    gaps = 0

    def follow(seconds: float) -> None:
        nonlocal gaps
        for event in diff.drain(seconds):
            if book.update_id is not None and book.synced and event["U"] != book.update_id + 1:
                gaps += 1  # start again: buffer from here, then a fresh snapshot
                book.__init__()
            book.on_event(event)
        if book.update_id is None and book.first_u is not None:
            assert book.snapshot(rest(stack, "depth", symbol="BTCUSDT", limit=1000))

    follow(0.5)
    stack.redis_server.stop()  # SHUTDOWN: the AOF keeps the book key
    stack.redis_server.start()
    stack.wait_worker()
    # the web's hub must be subscribed again (its two patterns) before the flow publishes:
    # what is published before that is lost to it, and no later event would show the gap
    client = stack.redis()
    deadline = time.monotonic() + 30
    while client.pubsub_numpat() < 2:
        assert time.monotonic() < deadline, "the web's hub never subscribed again"
        time.sleep(0.05)
    flow(Journal(client, 0), accounts, rng, 10)
    wait_idle(stack)
    final = rest(stack, "depth", symbol="BTCUSDT", limit=1000)
    deadline = time.monotonic() + 10
    while book.update_id != final["lastUpdateId"] and time.monotonic() < deadline:
        follow(0.3)
    assert book.update_id == final["lastUpdateId"] and gaps <= 1
    assert book.sorted() == (final["bids"], final["asks"])
    top = part.until(lambda m: m["lastUpdateId"] == final["lastUpdateId"])
    assert top == {"lastUpdateId": final["lastUpdateId"], "bids": final["bids"][:5],
                   "asks": final["asks"][:5]}  # fmt: skip
    diff.close()
    part.close()


@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> Iterator[Stack]:
    """A web without worker, with small caps (Binance's defaults are 1024 / 5 / 300)."""
    with Stack(worker=False, log_dir=tmp_path_factory.mktemp("bn-caps"),
               env={"FAIRBOOK_BINANCE_WS_MAX_STREAMS": "3",
                    "FAIRBOOK_BINANCE_WS_MESSAGES_PER_S": "5",
                    "FAIRBOOK_BINANCE_WS_CONNECTS_5M": "6"}) as s:  # fmt: skip
        yield s


@pytest.mark.e2e
def test_caps_streams_messages_and_connection_attempts(capped):
    s = Socket(capped, "/ws/btcusdt@trade/btcusdt@depth")
    s.send({"method": "SUBSCRIBE", "params": ["ethusdt@trade", "ethusdt@depth"], "id": 1})
    reply = s.until(lambda m: m.get("id") == 1)
    assert reply["error"]["code"] == 2 and "at most 3" in reply["error"]["msg"]
    time.sleep(1.0)  # a fresh second for the message cap
    assert s.request("SUBSCRIBE", ["ethusdt@trade"], 2) == {"result": None, "id": 2}
    assert s.request("LIST_SUBSCRIPTIONS", None, 3)["result"] == [
        "btcusdt@trade", "btcusdt@depth", "ethusdt@trade"]
    time.sleep(1.0)
    try:  # the sixth message of a second closes the socket, as Binance does (12: however
        for i in range(12):  # they straddle a second, one second gets six)
            s.send({"method": "LIST_SUBSCRIPTIONS", "id": 10 + i})
    except (BrokenPipeError, ConnectionResetError, websocket.WebSocketConnectionClosedException):
        pass
    code, reason = s.close_frame()
    assert code == 1008 and reason.startswith("too many messages")

    url = capped.url.replace("http", "ws", 1)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url + "/ws/" + "/".join(
            f"btcusdt@kline_{i}" for i in ("1s", "1m", "3m", "5m")), timeout=10)  # fmt: skip
    assert refused.value.status_code == 400
    # connection attempts: 6 per 5 minutes (the two above counted, the refused one too)
    statuses = []
    for _ in range(6):
        try:
            websocket.create_connection(url + "/ws/btcusdt@trade", timeout=10).close()
            statuses.append(101)
        except websocket.WebSocketBadStatusException as exc:
            statuses.append(exc.status_code)
            assert exc.resp_headers.get("retry-after", "").isdigit()
    assert statuses == [101, 101, 101, 101, 429, 429]


# -- the registry in-process: no sockets, messages fed as the hub would ------------------------


class FakeConn:
    """What the registry needs of a socket: offer (False once ``room`` frames are queued)."""

    def __init__(self, combined: bool = False, room: int = 1000) -> None:
        self.combined = combined
        self.room = room
        self.frames: list[Any] = []
        self.streams: dict[str, Any] = {}
        self.closed = False

    def offer(self, frame: bytes) -> bool:
        if len(self.frames) >= self.room:
            return False
        self.frames.append(json.loads(frame[frame.index(b"{"):]))
        return True

    def send_frame(self, frame: bytes) -> None:
        self.offer(frame)

    def slow_consumer(self) -> None:
        self.closed = True


@pytest.fixture
def registry(bn_app):
    st = bn_app.extensions["fairbook"]
    hub = Hub(lambda: st.redis, st.markets, st.namespace)
    hub.ready.set()
    return StreamHub(bn_app, hub, timer=False)


def _sub(registry: StreamHub, conn: FakeConn, *names: str) -> None:
    registry.subscribe(conn, [parse_stream(n, registry.natives) for n in names], None)


def _inc(prev: int, seq: int, bids=(), asks=()) -> dict[str, Any]:
    return {"symbol": SYMBOL, "trades": [], "bbo": None,
            "book": {"prev_sequence": prev, "sequence": seq, "bids": [list(b) for b in bids],
                     "asks": [list(a) for a in asks]}}  # fmt: skip


def test_stream_names_are_binances(registry):
    natives = registry.natives
    assert parse_stream("btcusdt@depth@1000ms", natives).name == "btcusdt@depth"
    assert parse_stream("btcusdt@depth20@100ms", natives).levels == 20
    assert parse_stream("ethbtc@kline_1M", natives).period == 2000
    assert parse_stream("ethbtc@kline_1s", natives).period == 1000
    for bad in ("btcusdt@depth15", "btcusdt@kline_2m", "BTCUSDT@trade", "btcusdt@trade@100ms",
                "btc-usdt@trade", "btcusdt", "", "x" * 100, None, ["btcusdt@trade"]):
        with pytest.raises(ChannelError):
            parse_stream(bad, natives)


def test_diff_events_merge_only_while_increments_chain(registry):
    conn = FakeConn()
    _sub(registry, conn, "btcusdt@depth")
    registry.on_market(SYMBOL, _inc(10, 12, bids=[("100.00", "1.00000")]))
    registry.on_market(SYMBOL, _inc(12, 13, bids=[("100.00", "0.50000"), ("99.00", "2.00000")]))
    registry.on_market(SYMBOL, _inc(15, 16, asks=[("101.00", "3.00000")]))  # 14, 15 were lost
    registry.on_market(SYMBOL, _inc(16, 18, asks=[("101.00", "0")]))
    with registry.app.app_context():
        registry._tick(time.monotonic() + 10)
    events = [(f["U"], f["u"], f["b"], f["a"]) for f in conn.frames]
    assert events == [(11, 13, [["100.00", "0.50000"], ["99.00", "2.00000"]], []),
                      (16, 18, [], [["101.00", "0"]])]  # fmt: skip
    assert all(f["e"] == "depthUpdate" and f["s"] == "BTCUSDT" for f in conn.frames)


def test_a_full_queue_closes_that_socket_alone(registry):
    slow, fast, combined = FakeConn(room=2), FakeConn(), FakeConn(combined=True)
    for conn in (slow, fast, combined):
        _sub(registry, conn, "btcusdt@trade", "btcusdt@bookTicker")
    trades = [{"trade_id": i, "price": "100.00", "quantity": "0.01000", "timestamp": 5,
               "aggressor_side": "buy", "taker_order_id": 9} for i in (1, 2, 3)]  # fmt: skip
    bbo = {"sequence": 4, "bid_price": None, "bid_qty": "0", "ask_price": "100.00",
           "ask_qty": "1.00000"}  # fmt: skip
    assert registry.on_market(SYMBOL, {"symbol": SYMBOL, "trades": trades, "bbo": bbo,
                                       "book": {"prev_sequence": 0, "sequence": 7,
                                                "bids": [], "asks": []}})  # fmt: skip
    assert slow.closed and not slow.streams and not fast.closed
    assert [f["t"] for f in fast.frames[:3]] == [1, 2, 3]
    assert fast.frames[3] == {"u": 7, "s": "BTCUSDT", "b": "0.00", "B": "0.00000",
                              "a": "100.00", "A": "1.00000"}  # fmt: skip
    assert [f["stream"] for f in combined.frames] == ["btcusdt@trade"] * 3 + ["btcusdt@bookTicker"]
    assert combined.frames[0]["data"] == fast.frames[0]
    registry.on_market(SYMBOL, {"symbol": SYMBOL, "trades": trades[:1]})
    assert len(slow.frames) == 2 and len(fast.frames) == 5  # the slow one is gone


class ListConn(FakeConn):
    def answer(self, msg_id: Any, result: Any = None) -> None:
        self.frames.append({"result": result, "id": msg_id})


def test_replies_and_combined_events_keep_the_clients_spelling(registry):
    """``@1000ms`` is the default speed; a client that wrote it sees its own name back."""
    given, short = ListConn(combined=True), ListConn(combined=True)
    _sub(registry, given, "btcusdt@depth@1000ms", "btcusdt@trade")
    _sub(registry, short, "btcusdt@depth")
    StreamConnection.m_list_subscriptions(given, [], 7)  # type: ignore[arg-type]
    assert given.frames.pop() == {"result": ["btcusdt@depth@1000ms", "btcusdt@trade"], "id": 7}
    registry.on_market(SYMBOL, _inc(10, 12, bids=[("100.00", "1.00000")]))
    with registry.app.app_context():
        registry._tick(time.monotonic() + 10)
    assert [f["stream"] for f in given.frames] == ["btcusdt@depth@1000ms"]
    assert [f["stream"] for f in short.frames] == ["btcusdt@depth"]
    assert given.frames[0]["data"] == short.frames[0]["data"]
