"""Binance's user data stream: the encoder of account events (unit tests on the worker's
message shapes) and the legacy ``/ws/<listenKey>`` stream against a live stack: its events,
keep-alive and expiry (``listenKeyExpired``, a 2 s TTL here), a closed or unknown listen key,
a revoked API key (1008), and two accounts' streams kept apart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import websocket
from wsapi_client import FakeSocket, key_factory, rest

import web.ws as ws_module
from bench.stack import Stack
from protocol.config import load_markets
from web.accounts import revoke_key
from web.binance import userdata
from web.binance.userdata import AccountEvents, ListenKeyStream
from web.binance.vault import new_key_text

SERVER_KEY = new_key_text()
TTL_S = 2


# -- the encoder --------------------------------------------------------------------------------


def _encoder(partitions: list[int] | None = None) -> AccountEvents:
    from engine.markets import assets_of

    markets = load_markets()
    return AccountEvents(markets, {s: s.replace("-", "") for s in markets}, assets_of(markets),
                         partitions or [0])  # fmt: skip


def _order(status: str, filled: str, cum: str, **extra: Any) -> dict[str, Any]:
    return {"event": "order", "order_id": 512, "client_order_id": "c1", "symbol": "BTC-USDT",
            "side": "buy", "type": "limit", "time_in_force": "IOC", "post_only": False,
            "stp": "cancel_maker", "status": status, "reject_reason": None, "price": "101.00",
            "stop_price": None, "quantity": "0.03000", "quote_quantity": None,
            "filled_quantity": filled, "remaining_quantity": "0", "cum_quote": cum,
            "locked": "0", "locked_asset": "USDT", "created_at": 1000, "updated_at": 1001,
            **extra}  # fmt: skip


def _fill(trade_id: int, price: str, qty: str) -> dict[str, Any]:
    return {"event": "fill", "order_id": 512, "client_order_id": "c1", "symbol": "BTC-USDT",
            "side": "buy", "trade_id": trade_id, "price": price, "quantity": qty,
            "fee": "0.0010000", "fee_asset": "USDT", "liquidity": "taker", "timestamp": 1001}


def test_a_takers_fills_report_the_state_after_each_fill_then_the_expiry():
    """An IOC taker: NEW, two fills of one batch (one order event after both), the remainder
    expired: NEW, TRADE (PARTIALLY_FILLED, z 0.01), TRADE (PARTIALLY_FILLED, z 0.02), EXPIRED;
    then one outboundAccountPosition with both changed assets."""
    enc = _encoder()
    body = {"account": "7", "events": [
        _order("new", "0.00000", "0.0000000"),
        _fill(1, "100.00", "0.01000"), _fill(2, "101.00", "0.01000"),
        _order("cancelled", "0.02000", "2.0100000", reject_reason="unfilled_ioc"),
        {"event": "balance", "partition": 0, "asset": "USDT", "available": "7.5", "locked": "0"},
        {"event": "balance", "partition": 0, "asset": "BTC", "available": "0.02000000",
         "locked": "0.00000000"},
    ]}  # fmt: skip
    reports = enc.events(body)
    kinds = [(r["e"], r.get("x"), r.get("X"), r.get("z"), r.get("Z")) for r in reports]
    assert kinds == [
        ("executionReport", "NEW", "NEW", "0.00000", "0.0000000"),
        ("executionReport", "TRADE", "PARTIALLY_FILLED", "0.01000", "1.0000000"),
        ("executionReport", "TRADE", "PARTIALLY_FILLED", "0.02000", "2.0100000"),
        ("executionReport", "EXPIRED", "EXPIRED", "0.02000", "2.0100000"),
        ("outboundAccountPosition", None, None, None, None),
    ]
    trade = reports[2]
    assert (trade["l"], trade["L"], trade["t"], trade["Y"], trade["n"], trade["N"]) == (
        "0.01000", "101.00", 2, "1.0100000", "0.0010000", "USDT")
    assert trade["s"] == "BTCUSDT" and trade["S"] == "BUY" and trade["f"] == "IOC"
    assert trade["m"] is False and trade["O"] == 1000 and trade["T"] == 1001
    assert reports[3]["w"] is False and "W" not in reports[3]
    assert reports[4]["B"] == [{"a": "USDT", "f": "7.50000000", "l": "0.00000000"},
                               {"a": "BTC", "f": "0.02000000", "l": "0.00000000"}]


def test_a_fill_to_filled_a_cancel_an_stp_expiry_and_rejections():
    enc = _encoder()
    filled = enc.events({"events": [_fill(3, "100.00", "0.03000"),
                                    _order("filled", "0.03000", "3.0000000")]})  # fmt: skip
    assert [(r["x"], r["X"], r["w"]) for r in filled] == [("TRADE", "FILLED", False)]
    cancelled = enc.events({"events": [_order("cancelled", "0.00000", "0.0000000",
                                              reject_reason="user_cancelled")]})  # fmt: skip
    assert [(r["x"], r["X"], r["C"]) for r in cancelled] == [("CANCELED", "CANCELED", "c1")]
    stp = enc.events({"events": [_order("cancelled", "0.00000", "0.0000000",
                                        reject_reason="self_trade_prevention")]})  # fmt: skip
    assert [(r["x"], r["X"]) for r in stp] == [("TRADE_PREVENTION", "EXPIRED_IN_MATCH")]
    rejected = enc.events({"events": [_order("rejected", "0.00000", "0.0000000",
                                             reject_reason="insufficient_funds")]})  # fmt: skip
    assert rejected == []  # a rejected order never was an order on Binance
    moved = enc.events({"events": [
        {"event": "transfer", "type": "withdrawal", "asset": "USDT", "amount": "5.00000000",
         "created_at": 5},
        {"event": "balance", "partition": 0, "asset": "USDT", "available": "2.5", "locked": "0"},
    ]})  # fmt: skip
    assert moved[0] == {"e": "balanceUpdate", "E": moved[0]["E"], "a": "USDT",
                        "d": "-5.00000000", "T": 5}  # fmt: skip
    assert moved[1]["e"] == "outboundAccountPosition"


def test_balances_are_summed_over_partitions():
    enc = _encoder([0, 1])
    enc.balances[(1, "USDT")] = (enc.balances.get((1, "USDT"), (0, 0))[0] + 10, 0)  # type: ignore
    out = enc.events({"events": [{"event": "balance", "partition": 0, "asset": "USDT",
                                  "available": "2.5", "locked": "1"}]})  # fmt: skip
    assert out[0]["B"] == [{"a": "USDT", "f": "12.50000000", "l": "1.00000000"}]


class _Socket:
    account = "3"
    closed = False

    def offer(self, frame: bytes) -> bool:
        return True

    def next_sequence(self, channel: str) -> int:
        return 1

    def slow_consumer(self) -> None:
        self.closed = True

    def revoked(self) -> None:
        self.closed = True


def test_recheck_keys_keeps_live_signed_keys_and_closes_dead_ones(redis_url, redis_client):
    """After a pub/sub reconnect the hub re-reads its sockets' keys: a signed key lives in
    ``api_key:<sha256>`` (not in ``accounts``), so it must not be taken for a revoked one."""
    from protocol.keys import Namespace
    from web.accounts import hash_key
    from web.hub import Hub

    ns = Namespace("fb")
    hub = Hub(lambda: redis.Redis.from_url(redis_url), {}, ns)
    signed, native, dead = hash_key("signed"), hash_key("native"), hash_key("dead")
    redis_client.hset(ns.global_keys.api_key(signed), mapping={"account": "3", "kind": "hmac"})
    redis_client.hset(ns.global_keys.accounts, native, "3")
    socks = {h: _Socket() for h in (signed, native, dead)}
    for h, sock in socks.items():
        hub.register_key(sock, h)
    hub.recheck_keys()
    assert [socks[h].closed for h in (signed, native, dead)] == [False, False, True]
    redis_client.delete(ns.global_keys.api_key(signed))
    hub.recheck_keys()
    assert socks[signed].closed and not socks[native].closed


class _Hub:
    """What a listen-key stream asks of the hub, recorded."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[str] = []

    def register_key(self, *_: Any) -> None:
        pass

    def remove(self, *_: Any) -> None:
        pass

    def listen_account(self, *_: Any) -> None:
        self.calls.append("listen")


def test_a_listen_key_stream_listens_before_it_reads_the_balances(bn_app, monkeypatch):
    """A balance event between the read and the listen would be lost: listen first."""
    st = bn_app.extensions["fairbook"]
    keys = st.namespace.global_keys
    listen_key, key_hash = "k" * 60, "ab" * 32
    st.redis.hset(keys.listen_key(listen_key), mapping={"account": "3", "key": key_hash})
    st.redis.hset(keys.api_key(key_hash), mapping={"account": "3", "kind": "hmac"})
    hub = _Hub()
    seed = AccountEvents.seed
    monkeypatch.setattr(AccountEvents, "seed",
                        lambda self, *a, **k: (hub.calls.append("seed"), seed(self, *a, **k)))
    with bn_app.test_request_context("/ws/" + listen_key):
        conn = ListenKeyStream(FakeSocket(), hub, 10, 1.0)
        assert userdata._open(conn, listen_key) == key_hash
    assert hub.calls == ["listen", "seed"] and conn.account == "3"


def test_a_listen_key_stream_ignores_client_messages_even_oversized_ones(bn_app):
    with bn_app.test_request_context("/ws/" + "k" * 60):
        conn = ListenKeyStream(FakeSocket(), _Hub(), 10, 1.0, max_message=10)
        for raw in ("x" * 100, "{}", "not json"):
            conn.handle(raw)
        assert not conn.queue and not conn.dying


def test_redis_down_when_a_listen_key_stream_starts_closes_1011(bn_app, monkeypatch):
    st = bn_app.extensions["fairbook"]
    monkeypatch.setattr(ws_module, "get_hub", lambda: _Hub())

    def down(*_: Any) -> Any:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(st.redis, "hgetall", down)
    ws = FakeSocket()
    with bn_app.test_request_context("/ws/" + "k" * 60):
        userdata.serve_listen_key(ws, "k" * 60)
    assert ws.closed == (1011, "retry")


def test_the_upgrade_routes_refuse_a_request_that_is_no_websocket_handshake(bn_client):
    for path in ("/ws-api/v3", "/ws/" + "a" * 60):
        plain = bn_client.get(path)
        assert plain.status_code == 400 and plain.get_json()["error"]["code"] == "bad_handshake"
        old = bn_client.get(path, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                           "Sec-WebSocket-Version": "8",
                                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert old.status_code == 426 and old.headers["Sec-WebSocket-Version"] == "13"


# -- the listen key stream ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = {"FAIRBOOK_SECRET_KEY": SERVER_KEY, "FAIRBOOK_BINANCE_LISTEN_KEY_TTL": str(TTL_S),
           "FAIRBOOK_BINANCE_WS_LISTEN_KEY_CHECK": "0.5"}  # fmt: skip
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def make_key(stack):
    return key_factory(stack, SERVER_KEY)


def listen_key(stack: Stack, issued: dict[str, Any], method: str = "POST", key: str = "") -> Any:
    url = f"{stack.url}/api/v3/userDataStream"
    params = {"listenKey": key} if key else None
    resp = requests.request(method, url, params=params,
                            headers={"X-MBX-APIKEY": issued["api_key"]}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def connect(stack: Stack, key: str) -> websocket.WebSocket:
    return websocket.create_connection(f"{stack.url.replace('http', 'ws', 1)}/ws/{key}",
                                       timeout=10)  # fmt: skip


def frames_until_close(ws: websocket.WebSocket, timeout: float) -> tuple[list[Any], int, str]:
    seen: list[Any] = []
    ws.settimeout(timeout)
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return seen, int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()
        if opcode == websocket.ABNF.OPCODE_TEXT:
            seen.append(json.loads(frame.data))


def next_event(ws: websocket.WebSocket, pred, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if pred(msg):
            return msg
    raise AssertionError("expected event did not arrive")


def order(price: str, side: str = "BUY", qty: str = "0.02000", **extra: Any) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
            "price": price, "quantity": qty, **extra}  # fmt: skip


@pytest.mark.e2e
def test_events_keep_alive_and_expiry_without_keep_alive(stack, make_key):
    issued = make_key()
    key = listen_key(stack, issued)["listenKey"]
    ws = connect(stack, key)
    try:
        placed = rest(stack, issued, "POST", "order", **order("100.00", newClientOrderId="lk"))
        new = next_event(ws, lambda m: m.get("e") == "executionReport")
        assert (new["x"], new["X"], new["i"], new["c"]) == ("NEW", "NEW", placed["orderId"], "lk")
        assert "subscriptionId" not in new  # the raw event on a listen-key stream
        position = next_event(ws, lambda m: m.get("e") == "outboundAccountPosition")
        assert {b["a"] for b in position["B"]} == {"USDT"}
        # kept alive past its TTL: still open
        for _ in range(3):
            time.sleep(TTL_S * 0.6)
            assert listen_key(stack, issued, "PUT", key) == {}
        ws.ping()
        # left alone: listenKeyExpired, then closed
        started = time.monotonic()
        seen, code, _reason = frames_until_close(ws, TTL_S + 5)
        assert time.monotonic() - started <= TTL_S + 2
        assert seen[-1]["e"] == "listenKeyExpired" and seen[-1]["listenKey"] == key
        assert code == 1000
    finally:
        ws.close()
    # a new POST gives a new key; the dead one is refused at once
    assert listen_key(stack, issued)["listenKey"] != key
    dead = connect(stack, key)
    try:
        assert frames_until_close(dead, 5)[1:] == (1008, "This listenKey does not exist.")
    finally:
        dead.close()


@pytest.mark.e2e
def test_a_closed_listen_key_ends_the_stream_without_an_event(stack, make_key):
    issued = make_key()
    key = listen_key(stack, issued)["listenKey"]
    ws = connect(stack, key)
    try:
        assert listen_key(stack, issued, "DELETE", key) == {}
        seen, code, _ = frames_until_close(ws, TTL_S + 5)
        assert code == 1000 and not [m for m in seen if m.get("e") == "listenKeyExpired"]
    finally:
        ws.close()


@pytest.mark.e2e
def test_a_revoked_api_key_closes_its_stream(stack, make_key):
    issued = make_key()
    key = listen_key(stack, issued)["listenKey"]
    ws = connect(stack, key)
    try:
        listen_key(stack, issued, "PUT", key)
        time.sleep(0.2)  # the stream has registered its key
        client = stack.redis()
        try:
            assert revoke_key(client, issued["api_key"], stack.namespace.global_keys)
        finally:
            client.close()
        assert frames_until_close(ws, 5)[1:] == (1008, "api key revoked")
    finally:
        ws.close()
    # the listen key outlives the API key in Redis, but its stream is refused
    again = connect(stack, key)
    try:
        assert frames_until_close(again, 5)[1:] == (1008, "api key revoked")
    finally:
        again.close()


@pytest.mark.e2e
def test_two_accounts_never_see_each_others_events(stack, make_key):
    alice, bob = make_key(), make_key()
    a_ws = connect(stack, listen_key(stack, alice)["listenKey"])
    b_ws = connect(stack, listen_key(stack, bob)["listenKey"])
    try:
        a_order = rest(stack, alice, "POST", "order", **order("150.00", "SELL"))
        b_order = rest(stack, bob, "POST", "order", **order("150.00", "BUY", "0.01000"))
        b_trade = next_event(b_ws, lambda m: m.get("x") == "TRADE")
        assert (b_trade["i"], b_trade["X"], b_trade["m"]) == (b_order["orderId"], "FILLED", False)
        a_trade = next_event(a_ws, lambda m: m.get("x") == "TRADE")
        assert (a_trade["i"], a_trade["X"], a_trade["m"]) == (
            a_order["orderId"], "PARTIALLY_FILLED", True)
        stack.deposit(alice["account_id"], "BTC", "1")
        assert next_event(a_ws, lambda m: m.get("e") == "balanceUpdate")["d"] == "1.00000000"
        b_ws.settimeout(1.0)
        seen = []
        try:
            while True:
                seen.append(json.loads(b_ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        assert all(m.get("i") != a_order["orderId"] for m in seen)
        assert all(m.get("e") != "balanceUpdate" for m in seen)
    finally:
        a_ws.close()
        b_ws.close()
