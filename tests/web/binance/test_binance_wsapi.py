"""Binance's WebSocket API (``/ws-api/v3``) against a live stack with raw WebSocket frames:
the envelope, every method against its REST twin, pipelining and reply order, signatures,
timestamps, keys (revoked ones close the session), user data subscriptions kept apart per
account, and the ORDERS rate limit with Binance's 429 shape."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from wsapi_client import FakeSocket, WsApi, key_factory, rest, sign

import web.ws as ws_module
from bench.stack import Stack
from web.accounts import create_account, revoke_key
from web.binance import trading
from web.binance.keys import ED25519, create_api_key, vault_of
from web.binance.userdata import AccountEvents
from web.binance.vault import new_key_text
from web.binance.wsapi import PATH, ApiConnection, serve

pytestmark = pytest.mark.e2e

SERVER_KEY = new_key_text()
ORDERS_10S = 60  # the module's ORDERS limit per account (the rate-limit test reaches it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = {"FAIRBOOK_SECRET_KEY": SERVER_KEY, "FAIRBOOK_BINANCE_ORDERS_10S": str(ORDERS_10S)}
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def make_key(stack):
    return key_factory(stack, SERVER_KEY)


@pytest.fixture
def sockets(stack) -> Iterator:
    opened: list[WsApi] = []

    def open_(issued=None, query: str = "") -> WsApi:
        sock = WsApi(stack, issued, query)
        opened.append(sock)
        return sock

    yield open_
    for sock in opened:
        try:
            sock.close()
        except Exception:  # noqa: BLE001 - already closed by the server
            pass


def limit_order(price: str = "100.00", qty: str = "0.02000", side: str = "BUY", **extra) -> dict:
    return {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
            "price": price, "quantity": qty, **extra}  # fmt: skip


def test_envelope_ping_time_and_malformed_requests(sockets):
    ws = sockets()
    pong = ws.call("ping")
    assert pong["status"] == 200 and pong["result"] == {}
    assert pong["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
    assert pong["rateLimits"][0]["count"] >= 3  # the connection's 2 and this request's 1
    before = int(time.time() * 1000)
    got = ws.reply(ws.send("v3/time", msg_id="a-string-id"))
    assert got["id"] == "a-string-id" and got["result"]["serverTime"] >= before
    quiet = ws.call("time", {"returnRateLimits": False})
    assert "rateLimits" not in quiet and quiet["status"] == 200
    unknown = ws.call("order.teleport")
    assert unknown["status"] == 400 and unknown["error"]["code"] == -1020
    ws.ws.send("{not json")
    bad = ws.recv()
    assert bad == {"id": None, "status": 400,
                   "error": {"code": -1135, "msg": "Invalid JSON Request"}}  # fmt: skip
    ws.ws.send(json.dumps({"id": {"x": 1}, "method": "ping"}))
    assert ws.recv()["error"]["code"] == -1130
    ws.ws.send(json.dumps({"id": 5, "method": "ping", "params": [1]}))
    assert ws.recv()["error"]["code"] == -1130
    ws.ws.send("x" * 70000)  # past FAIRBOOK_WS_MAX_MESSAGE: an error, the socket lives on
    assert ws.recv()["error"]["code"] == -1135
    assert ws.call("ping")["status"] == 200
    # a connection that hides rate limits by default shows them when asked
    hidden = sockets(query="?returnRateLimits=false")
    assert "rateLimits" not in hidden.call("ping")
    assert "rateLimits" in hidden.call("ping", {"returnRateLimits": True})


def test_every_trading_method_matches_rest(stack, make_key, sockets):
    issued = make_key()
    ws = sockets(issued)
    placed = ws.call("order.place", limit_order(newClientOrderId="ws-1"), signed=True)
    assert placed["status"] == 200, placed
    result = placed["result"]
    assert result["status"] == "NEW" and result["clientOrderId"] == "ws-1"
    assert result["fills"] == [] and result["origQty"] == "0.02000"
    counts = {(r["rateLimitType"], r["interval"]): r["count"] for r in placed["rateLimits"]}
    assert counts[("ORDERS", "SECOND")] == 1 and counts[("ORDERS", "DAY")] == 1
    oid = result["orderId"]
    status = ws.call("order.status", {"symbol": "BTCUSDT", "orderId": oid}, signed=True)
    assert status["result"] == rest(stack, issued, "GET", "order", symbol="BTCUSDT", orderId=oid)
    by_client = ws.call("order.status", {"symbol": "BTCUSDT", "origClientOrderId": "ws-1"},
                        signed=True)  # fmt: skip
    assert by_client["result"]["orderId"] == oid
    opened = ws.call("openOrders.status", {"symbol": "BTCUSDT"}, signed=True)
    assert opened["result"] == rest(stack, issued, "GET", "openOrders", symbol="BTCUSDT")
    assert opened["rateLimits"][0]["count"] > 0
    account = ws.call("account.status", {"omitZeroBalances": True}, signed=True)["result"]
    expected = rest(stack, issued, "GET", "account", omitZeroBalances="true")
    assert account["balances"] == expected["balances"] and account["canTrade"] is True
    tested = ws.call("order.test", limit_order(), signed=True)
    assert tested["status"] == 200 and tested["result"] == {}
    rates = ws.call("order.test", limit_order(computeCommissionRates=True), signed=True)
    assert rates["result"]["standardCommissionForOrder"]["maker"] == "0.00100000"
    cancelled = ws.call("order.cancel", {"symbol": "BTCUSDT", "orderId": str(oid)}, signed=True)
    assert cancelled["result"]["status"] == "CANCELED"
    assert cancelled["result"]["origClientOrderId"] == "ws-1"
    again = ws.call("order.cancel", {"symbol": "BTCUSDT", "orderId": oid}, signed=True)
    assert again["status"] == 400
    assert again["error"] == {"code": -2011, "msg": "Unknown order sent."}
    missing = ws.call("order.status", {"symbol": "BTCUSDT", "orderId": 999999999}, signed=True)
    assert missing["error"]["code"] == -2013
    for price in ("90.00", "91.00"):
        assert ws.call("order.place", limit_order(price, newOrderRespType="ACK"),
                       signed=True)["status"] == 200  # fmt: skip
    every = ws.call("openOrders.cancelAll", {"symbol": "BTCUSDT"}, signed=True)
    assert sorted(o["price"] for o in every["result"]) == ["90.00", "91.00"], every
    assert {o["status"] for o in every["result"]} == {"CANCELED"}
    none = ws.call("openOrders.cancelAll", {"symbol": "BTCUSDT"}, signed=True)
    assert none["error"]["code"] == -2011
    # the engine's refusals and the validator's, as REST words them
    poor = ws.call("order.place", limit_order("99999.00", "500.00000"), signed=True)
    assert poor["error"] == {"code": -2010,
                             "msg": "Account has insufficient balance for requested action."}
    off_tick = ws.call("order.place", limit_order("100.001"), signed=True)
    assert off_tick["error"] == {"code": -1013, "msg": "Filter failure: PRICE_FILTER"}
    unknown = ws.call("order.place", limit_order(symbol="NOPE"), signed=True)
    assert unknown["error"]["code"] == -1121


def test_pipelined_requests_answer_in_the_order_the_worker_decided(stack, make_key, sockets):
    """Fifty orders and reads in flight on one socket: each answers with its own id; the
    journaled ones in journal order (order ids rising), the reads at once."""
    issued = make_key()
    ws = sockets(issued)
    ids = []
    for i in range(40):
        ids.append(ws.send("order.place", limit_order(f"{50 + i}.00", newOrderRespType="RESULT",
                                                      newClientOrderId=f"p{i}"),
                           signed=True))  # fmt: skip
        if i % 10 == 9:
            ids.append(ws.send("time"))
    replies = [ws.recv() for _ in ids]
    assert sorted(r["id"] for r in replies) == sorted(ids)
    orders = [r for r in replies if "orderId" in (r.get("result") or {})]
    assert [r["id"] for r in orders] == [i for i in ids if i not in {r["id"] for r in replies
                                                                     if "serverTime" in
                                                                     r["result"]}]  # fmt: skip
    order_ids = [r["result"]["orderId"] for r in orders]
    assert order_ids == sorted(order_ids) and len(set(order_ids)) == 40
    assert [r["result"]["clientOrderId"] for r in orders] == [f"p{i}" for i in range(40)]
    # a cancel behind its order in one pipeline: journal order decides it after the order
    a = ws.send("order.place", limit_order("60.00", newClientOrderId="behind"), signed=True)
    b = ws.send("openOrders.cancelAll", {"symbol": "BTCUSDT"}, signed=True)
    first, second = ws.recv(), ws.recv()
    assert (first["id"], second["id"]) == (a, b)
    assert "behind" in {o["origClientOrderId"] for o in second["result"]}
    assert len(second["result"]) == 41


def test_a_pipelined_batch_answers_each_request_as_alone(stack, make_key, sockets):
    """Frames that arrive together are counted and journaled together: a bad signature, a
    stale timestamp and a refused order among good ones cost only themselves, and a request
    of another method keeps its place in journal order."""
    issued = make_key()
    ws = sockets(issued)
    assert ws.call("order.test", limit_order(), signed=True)["status"] == 200  # key now known
    frames = []
    good = [ws.signed(limit_order(f"{70 + i}.00", newClientOrderId=f"b{i}")) for i in range(3)]
    forged = ws.signed(limit_order("80.00"))
    forged["signature"] = "0" * 64
    stale = ws.signed(limit_order("81.00"), ts=int(time.time() * 1000) - 60000)
    tiny = ws.signed(limit_order("0.01"))  # below the minimum notional
    sequence = [("order.place", good[0]), ("order.place", forged), ("order.place", good[1]),
                ("order.place", stale), ("order.place", tiny), ("order.place", good[2]),
                ("openOrders.cancelAll", ws.signed({"symbol": "BTCUSDT"}))]  # fmt: skip
    for n, (method, params) in enumerate(sequence):
        frames.append(json.dumps({"id": n, "method": method, "params": params}))
    for frame in frames:
        ws.ws.send(frame)
    replies = {r["id"]: r for r in (ws.recv() for _ in sequence)}
    assert [replies[i]["status"] for i in range(7)] == [200, 400, 200, 400, 400, 200, 200]
    assert replies[1]["error"]["code"] == -1022 and replies[3]["error"]["code"] == -1021
    assert replies[4]["error"] == {"code": -1013, "msg": "Filter failure: NOTIONAL"}
    ids = [replies[i]["result"]["orderId"] for i in (0, 2, 5)]
    assert ids == sorted(ids)
    assert sorted(o["orderId"] for o in replies[6]["result"]) == ids


def test_cancels_in_a_pipelined_batch_answer_as_alone(stack, make_key, sockets):
    """``order.cancel`` requests among orders are a run's too: each answered as alone (its own
    id, -2011 for an order that is not open, no ORDERS in its rateLimits), in journal order."""
    issued = make_key()
    ws = sockets(issued)
    resting = [ws.call("order.place", limit_order(f"{60 + i}.00"), signed=True)["result"]
               for i in range(2)]  # fmt: skip
    alone = ws.call("order.cancel", {"symbol": "BTCUSDT", "orderId": resting[0]["orderId"]},
                    signed=True)  # fmt: skip
    assert alone["status"] == 200
    sequence = [("order.place", limit_order("65.00")),
                ("order.cancel", {"symbol": "BTCUSDT", "orderId": resting[1]["orderId"]}),
                ("order.cancel", {"symbol": "BTCUSDT", "orderId": resting[0]["orderId"]}),
                ("order.place", limit_order("66.00"))]  # fmt: skip
    for n, (method, params) in enumerate(sequence):
        ws.ws.send(json.dumps({"id": n, "method": method, "params": ws.signed(params)}))
    replies = [ws.recv() for _ in sequence]
    assert [(r["id"], r["status"]) for r in replies] == [(0, 200), (1, 200), (2, 400), (3, 200)]
    assert replies[1]["result"]["orderId"] == resting[1]["orderId"]
    assert replies[1]["result"]["status"] == "CANCELED"
    assert replies[2]["error"]["code"] == -2011
    kinds = [[x["rateLimitType"] for x in r["rateLimits"]] for r in replies]
    assert kinds[1] == kinds[2] == [x["rateLimitType"] for x in alone["rateLimits"]]
    assert "ORDERS" not in kinds[1] and "ORDERS" in kinds[0]
    assert replies[0]["result"]["orderId"] < replies[3]["result"]["orderId"]


def test_bad_signatures_stale_timestamps_and_keys(stack, make_key, sockets):
    issued = make_key()
    ws = sockets(issued)
    body = ws.signed(limit_order())
    body["price"] = "101.00"  # signed for 100.00
    assert ws.call("order.place", body)["error"] == {
        "code": -1022, "msg": "Signature for this request is not valid."}
    stale = ws.signed(limit_order(), ts=int(time.time() * 1000) - 6000)
    got = ws.call("order.place", stale)
    assert got["error"]["code"] == -1021 and "recvWindow" in got["error"]["msg"]
    ahead = ws.signed(limit_order(), ts=int(time.time() * 1000) + 5000)
    assert ws.call("order.place", ahead)["error"]["code"] == -1021
    windowed = ws.signed(limit_order(recvWindow=10000), ts=int(time.time() * 1000) - 6000)
    assert ws.call("order.place", windowed)["status"] == 200
    unsigned = dict(limit_order(), apiKey=issued["api_key"], timestamp=int(time.time() * 1000))
    assert ws.call("order.place", unsigned)["error"]["code"] == -1102
    no_key = ws.call("order.place", {**limit_order(), "timestamp": int(time.time() * 1000)})
    assert no_key["status"] == 401 and no_key["error"]["code"] == -2014
    stranger = ws.signed(limit_order(), issued={**issued, "api_key": "Z" * 64})
    assert ws.call("order.place", stranger)["error"] == {
        "code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
    reader = make_key(permissions=("read",), account_id=issued["account_id"])
    read_only = ws.signed(limit_order(), issued=reader)
    assert ws.call("order.place", read_only)["error"]["code"] == -2015
    assert ws.call("openOrders.status", ws.signed({}, issued=reader))["status"] == 200
    # an Ed25519 key signs with base64, and the uppercase hex of an HMAC is as good
    ed = make_key(kind=ED25519, account_id=issued["account_id"])
    assert ws.call("order.test", ws.signed(limit_order(), issued=ed))["status"] == 200
    upper = ws.signed(limit_order())
    upper["signature"] = upper["signature"].upper()
    assert ws.call("order.test", upper)["status"] == 200
    # a JSON number keeps its text: the signature is over what was sent
    number = ws.signed({**limit_order(), "quantity": 0.0200})  # Python sends 0.02
    assert ws.call("order.test", number)["status"] == 200


def test_session_logon_and_revoked_keys_close_the_session(stack, make_key, sockets):
    issued = make_key(kind=ED25519)
    ws = sockets(issued)
    logon = ws.call("session.logon", {}, signed=True)
    assert logon["result"]["apiKey"] == issued["api_key"]
    # with a session: no apiKey, no signature (the timestamp still)
    placed = ws.call("order.place", {**limit_order(), "timestamp": int(time.time() * 1000)})
    assert placed["status"] == 200, placed
    assert ws.call("session.status")["result"]["apiKey"] == issued["api_key"]
    assert ws.call("session.logout")["result"]["apiKey"] is None
    after = ws.call("order.place", {**limit_order(), "timestamp": int(time.time() * 1000)})
    assert after["error"]["code"] == -2014
    # another socket uses the key ad hoc; revoking it closes both (1008)
    other = sockets(issued)
    assert other.call("order.test", limit_order(), signed=True)["status"] == 200
    client = stack.redis()
    try:
        assert revoke_key(client, issued["api_key"], stack.namespace.global_keys)
    finally:
        client.close()
    assert ws.close_frame() == (1008, "api key revoked")
    assert other.close_frame() == (1008, "api key revoked")
    fresh = sockets(issued)
    assert fresh.call("order.test", limit_order(), signed=True)["error"]["code"] == -2015


def test_user_data_subscriptions_keep_accounts_apart(stack, make_key, sockets):
    """Two accounts trade with each other: each subscription gets its own executionReports
    (NEW, then TRADE with the state after the fill), outboundAccountPosition equal to REST's
    balances, a deposit's balanceUpdate; never the other account's."""
    maker, taker = make_key(), make_key()
    m_ws, t_ws = sockets(maker), sockets(taker)
    m_sub = m_ws.call("userDataStream.subscribe.signature", {}, signed=True)
    assert m_sub["result"] == {"subscriptionId": 0}
    assert t_ws.call("userDataStream.subscribe.signature", {}, signed=True)["status"] == 200
    dup = m_ws.call("userDataStream.subscribe.signature", {}, signed=True)
    assert dup["status"] == 400
    rest_order = rest(stack, maker, "POST", "order", **limit_order("200.00", "0.02000", "SELL",
                                                                   newClientOrderId="mk"))
    new = m_ws.event(lambda e: e["e"] == "executionReport" and e["x"] == "NEW")
    assert new["subscriptionId"] == 0
    assert new["event"]["i"] == rest_order["orderId"] and new["event"]["c"] == "mk"
    took = t_ws.call("order.place", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                     "quantity": "0.01500", "newClientOrderId": "tk"},
                     signed=True)["result"]  # fmt: skip
    assert took["status"] == "FILLED" and len(took["fills"]) == 1
    trade = m_ws.event(lambda e: e["e"] == "executionReport" and e["x"] == "TRADE")["event"]
    assert (trade["X"], trade["l"], trade["z"], trade["L"]) == (
        "PARTIALLY_FILLED", "0.01500", "0.01500", "200.00")
    assert trade["m"] is True and trade["t"] == took["fills"][0]["tradeId"]
    assert trade["Z"] == trade["Y"] == "3.0000000"
    m_ws.events.clear()  # older than the trade
    t_trade = t_ws.event(lambda e: e["e"] == "executionReport" and e["x"] == "TRADE")["event"]
    assert (t_trade["X"], t_trade["z"], t_trade["m"], t_trade["c"]) == (
        "FILLED", "0.01500", False, "tk")
    position = m_ws.event(lambda e: e["e"] == "outboundAccountPosition")["event"]
    balances = {b["asset"]: b for b in rest(stack, maker, "GET", "account")["balances"]}
    for row in position["B"]:
        assert (row["f"], row["l"]) == (balances[row["a"]]["free"], balances[row["a"]]["locked"])
    stack.deposit(maker["account_id"], "USDT", "12.5")
    update = m_ws.event(lambda e: e["e"] == "balanceUpdate")["event"]
    assert update["a"] == "USDT" and update["d"] == "12.50000000"
    # the taker's socket saw only the taker's own events
    seen = t_ws.events + t_ws.drain(0.5)
    assert seen and all(msg["subscriptionId"] == 0 for msg in seen)
    for msg in seen:
        event = msg["event"]
        assert event.get("i") != rest_order["orderId"] and event.get("c") != "mk"
        assert event["e"] != "balanceUpdate"
    unsub = m_ws.call("userDataStream.unsubscribe")
    assert unsub["result"] == {}
    assert any(m["event"]["e"] == "eventStreamTerminated" for m in m_ws.events)


def test_orders_rate_limit_answers_binances_429(stack, make_key, sockets):
    issued = make_key()
    ws = sockets(issued)
    ids = [ws.send("order.place", limit_order("50.00", newOrderRespType="ACK"), signed=True)
           for _ in range(ORDERS_10S + 3)]  # fmt: skip
    replies = {r["id"]: r for r in (ws.recv() for _ in ids)}
    refused = [replies[i] for i in ids if replies[i]["status"] != 200]
    assert len(refused) >= 3
    first = refused[0]
    assert first["status"] == 429 and first["error"]["code"] == -1015
    assert first["error"]["msg"] == f"Too many new orders; current limit is {ORDERS_10S} " \
                                    "orders per 10 SECOND."
    assert first["error"]["data"]["retryAfter"] > first["error"]["data"]["serverTime"]
    orders = {(r["rateLimitType"], r["interval"]): r for r in first["rateLimits"]}
    assert orders[("ORDERS", "SECOND")]["count"] > ORDERS_10S
    ws.call("openOrders.cancelAll", {"symbol": "BTCUSDT"}, signed=True)


# -- in-process: one ApiConnection in a request context, Redis without a worker ----------------


class _Hub:
    """What an ApiConnection asks of the hub, recorded."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[str] = []

    def register_key(self, *_: Any) -> None:
        pass

    def forget_key(self, *_: Any) -> None:
        pass

    def remove(self, *_: Any) -> None:
        pass

    def listen_account(self, *_: Any) -> None:
        self.calls.append("listen")

    def unlisten_account(self, *_: Any) -> None:
        self.calls.append("unlisten")


class _WS:
    sock = None


def _frames(conn: Any) -> list[dict[str, Any]]:
    """The JSON of the frames queued on ``conn`` (its writer is not running), emptied."""
    out = []
    while conn.queue:
        data = conn.queue.popleft()
        n = data[1] & 0x7F
        start = 2 if n < 126 else 4 if n == 126 else 10
        out.append(json.loads(data[start:]))
    return out


@pytest.fixture
def local(bn_app):
    """(app state, issued key of a new account, make_connection) in a ws-api request context."""
    st = bn_app.extensions["fairbook"]
    account = create_account(st.redis, "ws")["account_id"]
    with bn_app.app_context():
        issued = create_api_key(st.redis, vault_of(bn_app), account, st.namespace.global_keys,
                                kind=ED25519, permissions=("read", "trade"))  # fmt: skip
    issued["account_id"] = account
    with bn_app.test_request_context(PATH):
        yield st, issued, lambda: ApiConnection(_WS(), _Hub(), 1000, 1.0, 65536)


def _signed(issued: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    p = {**params, "apiKey": issued["api_key"], "timestamp": int(time.time() * 1000)}
    p["signature"] = sign(issued, "&".join(f"{k}={v}" for k, v in sorted(p.items())))
    return p


def _req(msg_id: Any, method: str, params: dict[str, Any] | None = None) -> str:
    return json.dumps({"id": msg_id, "method": method, "params": params or {}})


def _place(issued: dict[str, Any], msg_id: int) -> str:
    return _req(msg_id, "order.place", _signed(issued, limit_order()))


def test_a_revoked_socket_journals_nothing_more(local, monkeypatch):
    """A revocation (the hub calls ``revoked``) stops the socket's requests at once: a key it
    has read already, in a later frame, a batch, or during a batch's counting round trip."""
    st, issued, make = local
    stream = st.journal(0).keys.stream
    conn = make()
    n0 = st.redis.xlen(stream)
    conn.handle_many([_place(issued, 1)])
    assert st.redis.xlen(stream) == n0 + 1
    conn.revoked()
    conn.handle_many([_place(issued, 2)])
    conn.handle_many([_place(issued, 3), _place(issued, 4), _place(issued, 5)])
    assert st.redis.xlen(stream) == n0 + 1
    # revoked while a batch is being counted: nothing of it is appended
    first, conn = conn, make()
    conn.handle_many([_place(issued, 6)])  # the key is read
    count_all = conn._count_all

    def revoked_meanwhile(plans: Any) -> Any:
        conn.revoked()
        return count_all(plans)

    monkeypatch.setattr(conn, "_count_all", revoked_meanwhile)
    n1 = st.redis.xlen(stream)
    conn.handle_many([_place(issued, 7), _place(issued, 8)])
    assert st.redis.xlen(stream) == n1
    assert set(st.inbox.waiting) == {token for c in (first, conn) for _, token, _ in c.pending}


def test_a_second_logon_without_api_key_keeps_the_sessions_key(local):
    st, issued, make = local
    conn = make()
    conn.handle_many([_req(1, "session.logon", _signed(issued, {}))])
    conn.handle_many([_req(2, "session.logon", {"timestamp": int(time.time() * 1000)})])
    first, second = _frames(conn)
    assert first["status"] == 200 and first["result"]["apiKey"] == issued["api_key"]
    assert second["id"] == 2 and second["status"] == 200
    assert second["result"]["apiKey"] == issued["api_key"]


def test_a_bug_answers_500_with_the_requests_own_id(local, monkeypatch):
    """An unexpected exception costs its request a 500 with its id (alone or in a run of
    orders), never an id-less answer; the frames after it are handled."""
    st, issued, make = local
    conn = make()
    monkeypatch.setattr(trading, "test_order", lambda params: 1 / 0)
    conn.handle_many([_req("t", "order.test", _signed(issued, limit_order()))])
    assert [(f["id"], f["status"]) for f in _frames(conn)] == [("t", 500)]
    conn.handle_many([_place(issued, 1)])  # the key is read: the next orders are a run
    _frames(conn)
    monkeypatch.setattr(trading, "place", lambda account, params: [][0])
    conn.handle_many([_place(issued, 2), _place(issued, 3), _req(4, "ping")])
    assert [(f["id"], f["status"]) for f in _frames(conn)] == [(2, 500), (3, 500), (4, 200)]


def test_a_run_of_orders_and_cancels_is_counted_in_one_round_trip(local, monkeypatch):
    """Cancels do not break a run: one counting round trip for the lot, each answered with its
    own id (here -2011: the order is not open)."""
    st, issued, make = local
    conn = make()
    conn.handle_many([_place(issued, 1)])  # the key is read
    _frames(conn)
    rounds = []
    count_all = conn._count_all

    def counted(plans: Any) -> Any:
        rounds.append(len(plans))
        return count_all(plans)

    monkeypatch.setattr(conn, "_count_all", counted)
    monkeypatch.setattr(conn, "count", lambda *a, **k: pytest.fail("counted alone"))
    cancel = _req(3, "order.cancel", _signed(issued, {"symbol": "BTCUSDT", "orderId": 99999}))
    conn.handle_many([_place(issued, 2), cancel, _place(issued, 4)])
    assert rounds == [3]
    [refused] = _frames(conn)  # the orders wait for the worker's replies
    assert refused["id"] == 3 and refused["error"]["code"] == -2011
    assert len(conn.pending) == 3  # order 1 and the run's two orders wait for replies


def test_a_failing_order_of_a_run_leaves_no_reply_callback_behind(local, monkeypatch):
    st, issued, make = local
    conn = make()
    conn.handle_many([_place(issued, 1)])
    place = trading.place
    calls = []

    def second_fails(account: str, params: dict[str, str]) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return place(account, params)

    monkeypatch.setattr(trading, "place", second_fails)
    conn.handle_many([_place(issued, 2), _place(issued, 3)])
    assert len(conn.pending) == 2  # orders 1 and 2 wait for their replies, nothing else does
    assert set(st.inbox.waiting) == {token for _, token, _ in conn.pending}


def test_unsubscribe_of_an_unknown_subscription_is_refused(local):
    st, issued, make = local
    conn = make()
    conn.handle_many([_req(1, "userDataStream.subscribe.signature", _signed(issued, {}))])
    for msg_id, sid in ((2, "7"), (3, "\u0660"), (4, "x")):
        conn.handle_many([_req(msg_id, "userDataStream.unsubscribe", {"subscriptionId": sid})])
    conn.handle_many([_req(5, "userDataStream.unsubscribe", {"subscriptionId": 0})])
    frames = _frames(conn)
    assert frames[0]["result"] == {"subscriptionId": 0}
    assert [(f["id"], f["status"], f["error"]["code"]) for f in frames[1:4]] == [
        (2, 400, -1130), (3, 400, -1130), (4, 400, -1130)]  # fmt: skip
    assert frames[4]["event"]["e"] == "eventStreamTerminated" and frames[5]["status"] == 200


def test_the_subscription_listens_before_it_reads_the_balances(local, monkeypatch):
    """A balance event between the read and the listen would be lost: listen first."""
    st, issued, make = local
    conn = make()
    seed = AccountEvents.seed
    monkeypatch.setattr(AccountEvents, "seed",
                        lambda self, *a, **k: (conn.hub.calls.append("seed"), seed(self, *a, **k)))
    conn.handle_many([_req(1, "userDataStream.subscribe.signature", _signed(issued, {}))])
    assert _frames(conn)[0]["status"] == 200
    assert conn.hub.calls == ["listen", "seed"]


def test_every_frame_weighs_one_even_when_it_is_no_request(local):
    st, issued, make = local
    conn = make()

    def weight() -> int:
        conn.handle_many([_req("w", "ping")])
        return next(x["count"] for x in _frames(conn)[-1]["rateLimits"]
                    if x["rateLimitType"] == "REQUEST_WEIGHT")  # fmt: skip

    before = weight()
    conn.handle_many(["{not json", "[1]", _req(-1.5, "ping"), _req(1, "no.such"),
                      _req(2, "ping", {"a": [1]}), "x" * 70000])  # fmt: skip
    assert [f["status"] for f in _frames(conn)] == [400] * 6
    assert weight() == before + 6 + 1


def test_redis_down_at_the_opening_closes_1011(local, monkeypatch):
    st, issued, make = local
    ws = FakeSocket()
    monkeypatch.setattr(ws_module, "get_hub", lambda: _Hub())

    def down(self: Any) -> bool:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(ApiConnection, "opened", down)
    serve(ws)
    assert ws.closed == (1011, "retry")
