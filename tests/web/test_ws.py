"""WebSocket API end to end: real redis-server, ``python -m worker``, gunicorn (gevent) web.

What is checked: book snapshot + updates reproduce the REST book exactly with gap-free
sequences; trades are contiguous; private fills reach only their owner; errors keep the socket
usable; a slow consumer is closed (4008) while a fast one gets everything; Redis restart resync.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import requests
import websocket

from bench.stack import Stack
from tests.web.funding import fund
from tests.web.live_socket import LiveSocket, wait_idle
from web.journal import Journal

pytestmark = pytest.mark.e2e

SYMBOL = "BTC-USDT"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack for the module; small socket buffers so a non-reading client backs up fast.

    The queue holds more frames than one worker batch can make trades (a batch is at most 1,000
    journal entries, so 500 trades of one symbol, fanned out at once): a client that reads as
    fast as it can must never be taken for a slow one because the worker fell behind and
    committed a large batch (with the ledger on, the worker is slower, so this happens)."""
    st = Stack(
        log_dir=tmp_path_factory.mktemp("ws-stack"),
        env={
            "FAIRBOOK_WS_QUEUE": "600",
            "FAIRBOOK_WS_SNDBUF": "4096",
            "FAIRBOOK_WS_CLOSE_TIMEOUT": "30",
            "FAIRBOOK_WS_PING_INTERVAL": "5",
        },
    )
    st.start()
    yield st
    st.stop()


class Client(LiveSocket):
    """A ``/ws`` socket with JSON helpers (``tests.web.live_socket``)."""


def post(stack: Stack, key: str, **body: Any) -> dict[str, Any]:
    r = requests.post(
        stack.url + "/api/v1/orders", json=body, headers={"X-API-Key": key}, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


def crossing_pairs(journal: Journal, maker: str, taker: str, n: int, symbol: str) -> None:
    """n resting sells then n crossing buys of the same size on an empty book: n trades."""
    sells = [_order(maker, "sell", "100", "0.02", symbol) for _ in range(n)]
    buys = [_order(taker, "buy", "100", "0.02", symbol) for _ in range(n)]
    journal.append_many(sells + buys)


def _order(account: str, side: str, price: str, qty: str, symbol: str = SYMBOL) -> dict[str, Any]:
    return {
        "op": "new",
        "account": account,
        "symbol": symbol,
        "side": side,
        "type": "limit",
        "time_in_force": "GTC",
        "post_only": False,
        "price": price,
        "quantity": qty,
        "quote_quantity": None,
        "stop_price": None,
        "client_order_id": None,
        "stp": "cancel_maker",
    }


def apply_levels(book: dict[str, str], levels: list[list[str]]) -> None:
    for price, qty in levels:
        if Decimal(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty


# ---------------------------------------------------------------------------------------------


def test_errors_keep_the_socket_usable(stack):
    c = Client(stack)
    c.send("this is not json")
    err = c.recv()
    assert err["type"] == "error" and err["code"] == "malformed_json"
    c.send({"op": "dance"})
    assert c.recv()["code"] == "unknown_op"
    c.send([1, 2])
    assert c.recv()["code"] == "invalid_message"
    c.send({"op": "subscribe", "channels": ["nonsense:BTC-USDT"]})
    assert c.recv()["code"] == "unknown_channel"
    c.send({"op": "subscribe", "channels": ["book:NOPE-USDT"]})
    assert c.recv()["code"] == "unknown_symbol"
    c.send({"op": "subscribe", "channels": ["book:BTC-USDT:0"]})
    assert c.recv()["code"] == "unknown_channel"
    c.send({"op": "subscribe", "channels": ["orders"]})
    assert c.recv()["code"] == "auth_required"
    c.send({"op": "auth", "api_key": "fb_wrong"})
    assert c.recv()["code"] == "unauthorized"
    c.send({"op": "ping", "id": 7})
    pong = c.recv()
    assert pong["type"] == "pong" and pong["id"] == 7
    c.send({"op": "subscribe", "channels": ["trades:BTC-USDT"], "id": "s1"})
    assert c.recv() == {"type": "subscribed", "channels": ["trades:BTC-USDT"], "id": "s1"}
    c.send({"op": "unsubscribe", "channels": ["trades:BTC-USDT"]})
    assert c.recv() == {"type": "unsubscribed", "channels": ["trades:BTC-USDT"]}
    c.close()


def test_book_snapshot_and_updates_reproduce_rest_book(stack):
    accounts = [stack.create_account(f"mm{i}")["account_id"] for i in range(4)]
    for account in accounts:
        fund(stack, account)
    journal = Journal(stack.redis(), 0)
    # some book before anyone subscribes, so the snapshot is not empty
    rng = random.Random(7)
    seed = []
    for i in range(40):
        side = "buy" if i % 2 else "sell"
        px = 100 - rng.randint(1, 15) if side == "buy" else 100 + rng.randint(1, 15)
        seed.append(_order(accounts[i % 4], side, str(px), "0.02"))
    journal.append_many(seed)
    wait_idle(stack)

    depths = {"book:BTC-USDT:10": 10, "book:BTC-USDT": 50}
    c = Client(stack)
    c.send({"op": "subscribe", "channels": [*depths, "bbo:BTC-USDT", "trades:BTC-USDT"]})
    assert c.recv()["type"] == "subscribed"
    books: dict[str, dict[str, dict[str, str]]] = {}
    seqs: dict[str, int] = {}
    bbo: dict[str, Any] = {}
    trades: list[int] = []

    def consume(msg: dict[str, Any]) -> None:
        ch = msg.get("channel")
        if ch in depths:
            if msg["type"] == "snapshot":
                books[ch] = {"bids": dict(msg["bids"]), "asks": dict(msg["asks"])}
            else:
                assert msg["type"] == "update"
                assert msg["prev_sequence"] == seqs[ch], "gap in book sequence"
                assert msg["sequence"] > msg["prev_sequence"]
                apply_levels(books[ch]["bids"], msg["bids"])
                apply_levels(books[ch]["asks"], msg["asks"])
            seqs[ch] = msg["sequence"]
        elif ch == "bbo:BTC-USDT":
            if bbo:
                assert msg["sequence"] > bbo["sequence"]
            bbo.update(msg)
        elif ch == "trades:BTC-USDT":
            if trades:
                assert msg["sequence"] == trades[-1] + 1, "gap in trade sequence"
            assert msg["sequence"] == msg["data"]["trade_id"]
            trades.append(msg["sequence"])

    for _ in range(3):
        consume(c.recv())
    assert set(books) == set(depths) and books["book:BTC-USDT:10"]["bids"]

    # a flow of resting, crossing and cancelled orders, in small batches
    placed: list[int] = []
    for _ in range(30):
        wires = []
        for _ in range(20):
            side = rng.choice(("buy", "sell"))
            px = 100 + rng.randint(-12, 12)
            qty = rng.choice(("0.02", "0.03", "0.05"))
            wires.append(_order(rng.choice(accounts), side, str(px), qty))
        placed.extend(journal.append_many(wires))
        cancels = [
            {"op": "cancel", "account": "?", "order_id": oid} for oid in rng.sample(placed, 3)
        ]
        for cancel in cancels:  # the owner must cancel: look it up
            record = journal.redis.get(f"fb:{{p0}}:order:{cancel['order_id']}")
            if record:  # not processed yet: skip this cancel
                cancel["account"] = json.loads(record)["account"]
                journal.append(cancel)
        time.sleep(0.02)
    wait_idle(stack)
    for msg in c.drain(1.0):
        consume(msg)

    for ch, depth in depths.items():
        rest = requests.get(f"{stack.url}/api/v1/book/{SYMBOL}?depth={depth}", timeout=5).json()
        assert seqs[ch] <= rest["sequence"]
        assert sorted(books[ch]["bids"].items(), key=lambda x: -Decimal(x[0])) == [
            tuple(x) for x in rest["bids"]
        ]
        assert sorted(books[ch]["asks"].items(), key=lambda x: Decimal(x[0])) == [
            tuple(x) for x in rest["asks"]
        ]
    rest_bbo = requests.get(f"{stack.url}/api/v1/bbo/{SYMBOL}", timeout=5).json()
    for name in ("bid_price", "bid_qty", "ask_price", "ask_qty", "sequence"):
        assert bbo[name] == rest_bbo[name], name
    rest_trades = requests.get(f"{stack.url}/api/v1/trades/{SYMBOL}?limit=1", timeout=5).json()
    assert trades and trades[-1] == rest_trades[0]["trade_id"]
    c.close()


def test_private_fills_reach_only_their_owner(stack):
    alice = stack.create_account("alice")
    bob = stack.create_account("bob")
    carol = stack.create_account("carol")  # not funded: nothing ever happens to her account
    for acct in (alice, bob):
        fund(stack, acct["account_id"])
    sockets = {}
    for name, acct in (("alice", alice), ("carol", carol)):
        s = Client(stack)
        s.send({"op": "auth", "api_key": acct["api_key"]})
        assert s.recv() == {"type": "authenticated", "account": acct["account_id"]}
        s.send({"op": "subscribe", "channels": ["orders"]})
        assert s.recv()["type"] == "subscribed"
        sockets[name] = s
    anon = Client(stack)
    anon.send({"op": "subscribe", "channels": ["orders"]})
    assert anon.recv()["code"] == "auth_required"

    order = post(stack, alice["api_key"], symbol="ETH-USDT", side="buy", type="limit",
                 price="90", quantity="0.1")  # fmt: skip
    taker = post(stack, bob["api_key"], symbol="ETH-USDT", side="sell", type="limit",
                 price="90", quantity="0.04", time_in_force="IOC")  # fmt: skip
    assert taker["status"] == "filled"

    a = sockets["alice"]
    new = a.until(lambda m: m.get("type") == "order" and m["data"]["status"] == "new")
    assert new["data"]["order_id"] == order["order_id"]
    fill = a.until(lambda m: m.get("type") == "fill")
    assert fill["channel"] == "orders" and fill["sequence"] > new["sequence"]
    assert fill["data"]["order_id"] == order["order_id"]
    assert fill["data"]["liquidity"] == "maker"
    assert fill["data"]["price"] == "90.00" and fill["data"]["quantity"] == "0.0400"
    assert fill["data"]["fee"] == "0.002880" and fill["data"]["fee_asset"] == "USDT"
    part = a.until(lambda m: m.get("type") == "order")
    assert part["data"]["status"] == "partially_filled"
    assert part["data"]["remaining_quantity"] == "0.0600"

    leaked = sockets["carol"].drain(1.0) + anon.drain(0.5)
    assert leaked == []
    for s in (*sockets.values(), anon):
        s.close()


def test_slow_consumer_is_closed_and_others_get_everything(stack):
    maker = stack.create_account("slow-maker")["account_id"]
    taker = stack.create_account("slow-taker")["account_id"]
    for account in (maker, taker):
        fund(stack, account)
    journal = Journal(stack.redis(), 0)
    start = requests.get(f"{stack.url}/api/v1/trades/SOL-USDT?limit=1", timeout=5).json()
    first = start[0]["trade_id"] + 1 if start else 1

    slow = Client(stack, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    fast = Client(stack)
    for c in (slow, fast):
        c.send({"op": "subscribe", "channels": ["trades:SOL-USDT"]})
    assert fast.recv()["type"] == "subscribed"
    # slow never reads from here on

    total = 3000
    got: list[int] = []

    def read_fast() -> None:  # a client that keeps up, in its own thread
        deadline = time.monotonic() + 60
        while len(got) < total and time.monotonic() < deadline:
            msg = fast.recv(60)
            assert "sequence" in msg, msg
            got.append(msg["sequence"])

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    for _ in range(total // 100):
        crossing_pairs(journal, maker, taker, 100, "SOL-USDT")
        time.sleep(0.03)
    reader.join(70)
    assert got == list(range(first, first + total)), "the fast client missed or reordered trades"

    # the slow one: buffered frames, then a 4008 close
    slow.ws.settimeout(10)
    code = None
    while True:
        opcode, frame = slow.ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
            reason = frame.data[2:].decode()
            break
    assert code == 4008 and reason == "slow consumer"
    fast.send({"op": "ping"})
    assert fast.until(lambda m: m.get("type") == "pong")
    fast.close()


def test_heartbeat_pings_arrive(stack):
    """The server pings (every 5 s here); websocket-client answers pongs, so we stay open."""
    c = Client(stack)
    c.ws.settimeout(12)
    opcode, _ = c.ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING
    c.send({"op": "ping"})
    assert c.until(lambda m: m.get("type") == "pong")
    c.close()


def test_resync_after_redis_restart(stack):
    """Last in the module: restarts the stack's Redis (the worker may need to reconnect)."""
    c = Client(stack)
    c.send({"op": "subscribe", "channels": ["book:BTC-USDT:5", "trades:BTC-USDT"]})
    assert c.recv()["type"] == "subscribed"
    snap = c.recv()
    assert snap["type"] == "snapshot"
    stack.redis_server.stop()  # SHUTDOWN: the AOF keeps the book key
    stack.redis_server.start()
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = c.recv(20)
        seen.append(msg)
        if msg.get("type") == "snapshot" and msg["channel"] == "book:BTC-USDT:5":
            break
    kinds = [(m.get("channel"), m.get("type")) for m in seen]
    assert ("book:BTC-USDT:5", "resync") in kinds
    assert ("trades:BTC-USDT", "resync") in kinds
    assert kinds[-1] == ("book:BTC-USDT:5", "snapshot")
    assert seen[-1]["bids"] == snap["bids"] and seen[-1]["asks"] == snap["asks"]
    c.send({"op": "ping"})
    assert c.until(lambda m: m.get("type") == "pong")
    c.close()


def test_a_failing_listener_is_closed_1011_alone_and_the_reader_goes_on():
    """Any exception of one raw listener (a bad decimal too) closes that socket 1011, not
    "slow consumer"; the message still reaches the others and nothing escapes ``dispatch``."""
    import decimal

    from protocol.keys import Namespace
    from web.hub import Hub
    from web.ws import INTERNAL_ERROR, Connection

    class _Listener(Connection):
        def __init__(self, error: BaseException | None) -> None:
            super().__init__(type("WS", (), {"sock": None})(), hub, 10, 1.0)
            self.error_, self.seen = error, 0

        def on_account(self, account: str, body: dict[str, Any]) -> bool:
            self.seen += 1
            if self.error_ is not None:
                raise self.error_
            return True

        def on_resync(self) -> bool:
            if self.error_ is not None:
                raise self.error_
            return True

    hub = Hub(lambda: None, {}, Namespace("fb"))
    bad = _Listener(decimal.InvalidOperation([decimal.InvalidOperation]))
    worse, good = _Listener(IndexError("a bug")), _Listener(None)
    for listener in (bad, worse, good):
        hub.listen_account(listener, "7")
    hub.dispatch({"channel": "fb:acct:7", "data": json.dumps({"account": "7", "events": []})})
    assert bad.closing == (INTERNAL_ERROR, "internal error") and worse.dying
    assert good.seen == 1 and not good.dying and hub.stats["poison"] == 0
    assert hub.stats["listener_errors"] == 2 and hub.account_listeners["7"] == {good}
    later = _Listener(ZeroDivisionError())
    hub.listen_account(later, "7")
    hub.resync_all()  # a failing on_resync is that socket's end too
    assert later.closing == (INTERNAL_ERROR, "internal error") and not good.dying
