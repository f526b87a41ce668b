"""Route tests through Flask's test client on a real (private) Redis, with a fake worker."""

from __future__ import annotations

import json
import re

import pytest

from protocol.keys import Keys
from protocol.wire import trade_record
from redis_server import free_port
from web.accounts import create_account, hash_key
from web.app import create_app

K = Keys(0)
ORDER = {"symbol": "BTC-USDT", "side": "buy", "type": "limit", "price": "100.5", "quantity": "0.01"}


def err(resp) -> dict:
    assert resp.is_json, resp.data
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def order_object(order_id: int, account_status: str = "new", **over) -> dict:
    base = {
        "order_id": order_id, "client_order_id": None, "symbol": "BTC-USDT", "side": "buy",
        "type": "limit", "time_in_force": "GTC", "post_only": False, "status": account_status,
        "reject_reason": None, "price": "100.5", "stop_price": None, "quantity": "0.01",
        "quote_quantity": None, "filled_quantity": "0", "remaining_quantity": "0.01",
        "cum_quote": "0", "created_at": 1, "updated_at": 1, "fills": [],
        "locked": "1.00610000", "locked_asset": "USDT",  # 0.01 x 100.5 + 11 atoms per lot
    }  # fmt: skip
    base.update(over)
    return base


def seed_order(rdb, order_id: int, account: str, status: str = "new", symbol: str = "BTC-USDT",
               created_at: int = 1) -> None:
    """Write an order record the way the worker stores it (the REST object plus account)."""
    obj = order_object(order_id, status, symbol=symbol, created_at=created_at)
    rdb.set(K.order(order_id), json.dumps({"account": account, **obj}))
    target = K.open(account) if status in ("new", "partially_filled") else K.closed(account)
    rdb.zadd(target, {str(order_id): order_id})


# -- public ---------------------------------------------------------------------------------------


def test_symbols(client):
    resp = client.get("/api/v1/symbols")
    assert resp.status_code == 200
    rows = resp.get_json()
    btc = next(r for r in rows if r["symbol"] == "BTC-USDT")
    assert btc["tick_size"] == "0.01"
    assert set(btc) >= {"symbol", "base_asset", "quote_asset", "tick_size", "lot_size",
                        "min_quantity", "max_quantity", "min_notional", "maker_fee_rate",
                        "taker_fee_rate"}


def test_book_empty_and_seeded(client, rdb):
    resp = client.get("/api/v1/book/BTC-USDT")
    assert resp.status_code == 200
    assert resp.get_json() == {"symbol": "BTC-USDT", "sequence": 0, "bids": [], "asks": []}
    book = {"symbol": "BTC-USDT", "sequence": 7,
            "bids": [["100.5", "1"], ["100.4", "2"], ["100.3", "3"]],
            "asks": [["100.6", "0.5"]],
            "bbo": {"bid_price": "100.5", "bid_qty": "1", "ask_price": "100.6",
                    "ask_qty": "0.5"}, "bbo_sequence": 3, "last_trade_id": 0}
    rdb.set(K.book("BTC-USDT"), json.dumps(book))
    body = client.get("/api/v1/book/BTC-USDT?depth=2").get_json()
    assert body == {"symbol": "BTC-USDT", "sequence": 7,
                    "bids": [["100.5", "1"], ["100.4", "2"]], "asks": [["100.6", "0.5"]]}
    bbo = client.get("/api/v1/bbo/BTC-USDT").get_json()
    assert bbo["bid_price"] == "100.5" and bbo["ask_qty"] == "0.5" and bbo["sequence"] == 3


@pytest.mark.parametrize("depth", ["0", "501", "abc", "-1", "1.5", "", "²", "١٢", "9" * 30])
def test_book_bad_depth(client, depth):
    resp = client.get(f"/api/v1/book/BTC-USDT?depth={depth}")
    assert resp.status_code == 400
    assert err(resp)["code"] == "invalid_field"


def test_unknown_symbol_public_routes(client):
    for path in ("/api/v1/book/NOPE-USDT", "/api/v1/bbo/NOPE-USDT", "/api/v1/trades/NOPE"):
        resp = client.get(path)
        assert resp.status_code == 404
        assert err(resp)["code"] == "unknown_symbol"


def test_bbo_empty(client):
    body = client.get("/api/v1/bbo/ETH-USDT").get_json()
    assert body["bid_price"] is None and body["ask_price"] is None


def test_trades_newest_first_and_limit(client, rdb):
    for i in range(1, 6):  # whole trade records, as the worker writes them
        rdb.lpush(K.recent("BTC-USDT"), trade_record(i, "BTC-USDT", "100.00", "0.01000", "buy",
                                                     2 * i, 2 * i + 1, "0.0010000", "0.0010000",
                                                     "USDT", 1_700_000_000_000 + i))  # fmt: skip
    body = client.get("/api/v1/trades/BTC-USDT?limit=3").get_json()
    assert [t["trade_id"] for t in body] == [5, 4, 3]
    assert client.get("/api/v1/trades/BTC-USDT?limit=1001").status_code == 400
    assert len(client.get("/api/v1/trades/BTC-USDT").get_json()) == 5


def test_healthz(client, rdb):
    """The details an operator's key gets (anonymous: tests/web/test_keys_health.py)."""
    op = {"X-API-Key": create_account(rdb, "ops", operator=True)["api_key"]}
    resp = client.get("/healthz", headers=op)
    assert resp.status_code == 503  # no worker holds the lease
    body = resp.get_json()
    assert body["redis"] is True and body["partitions"][0]["lease"] is False
    ids = [rdb.xadd(K.stream, {"c": "{}"}) for _ in range(3)]
    rdb.set(K.lease, "token")
    rdb.set(K.applied, ids[0])
    body = client.get("/healthz", headers=op).get_json()
    assert body["status"] == "ok" and body["partitions"][0]["lag"] == 2
    rdb.set(K.applied, ids[-1])
    resp = client.get("/healthz", headers=op)
    assert resp.status_code == 200 and resp.get_json()["partitions"][0]["lag"] == 0
    # with the worker's applied_count the lag is O(1): entries-added - applied_count
    rdb.set(K.applied_count, 1)
    part = client.get("/healthz", headers=op).get_json()["partitions"][0]
    assert part["lag"] == 2 and part["stream_length"] == 3
    client.application.config["FAIRBOOK_HEALTH_MAX_LAG"] = 1
    assert client.get("/healthz", headers=op).status_code == 503
    client.application.config["FAIRBOOK_HEALTH_MAX_LAG"] = 10
    # the reply inbox: not started before the first order, then subscribed, and reported
    assert client.get("/healthz", headers=op).get_json()["replies"] == {"subscribed": None}
    inbox = client.application.extensions["fairbook"].journal(0).inbox
    assert inbox.wait_ready(5)
    body = client.get("/healthz", headers=op).get_json()
    assert body["status"] == "ok" and body["replies"]["subscribed"] is True
    assert body["replies"]["inbox"] == inbox.id and body["replies"]["replies"] == 0
    inbox.ready.clear()  # as while it reconnects
    resp = client.get("/healthz", headers=op)
    assert resp.status_code == 503 and resp.get_json()["replies"]["subscribed"] is False
    inbox.ready.set()


def test_unknown_route_and_method_are_json(client, alice):
    resp = client.get("/api/v1/nope")
    assert resp.status_code == 404 and err(resp)["code"] == "not_found"
    resp = client.put("/api/v1/orders", headers=alice["headers"])
    assert resp.status_code == 405 and err(resp)["code"] == "method_not_allowed"


def test_redis_down_is_503():
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                      "FAIRBOOK_REPLY_TIMEOUT": 0.1})
    client = app.test_client()
    resp = client.get("/api/v1/book/BTC-USDT")
    assert resp.status_code == 503 and err(resp)["code"] == "unavailable"
    resp = client.post("/api/v1/orders", json=ORDER, headers={"X-API-Key": "x"})
    assert resp.status_code == 503
    assert client.get("/healthz").status_code == 503


def test_unexpected_error_is_json_500(web_app):
    @web_app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    web_app.testing = False  # let the handler run instead of propagating
    web_app.config["PROPAGATE_EXCEPTIONS"] = False
    resp = web_app.test_client().get("/boom")
    assert resp.status_code == 500 and err(resp)["code"] == "internal_error"


# -- accounts and auth ----------------------------------------------------------------------------


def test_cli_create_account(web_app, rdb):
    result = web_app.test_cli_runner().invoke(args=["create-account", "carol"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"account_id", "api_key"}
    assert rdb.hget("fb:accounts", hash_key(out["api_key"])) == out["account_id"]
    assert out["api_key"] not in json.dumps(rdb.hgetall("fb:accounts"))
    assert rdb.hget(f"fb:account:{out['account_id']}", "name") == "carol"
    bad = web_app.test_cli_runner().invoke(args=["create-account", " "])
    assert bad.exit_code != 0


@pytest.mark.parametrize(
    "method,path",
    [("post", "/api/v1/orders"), ("get", "/api/v1/orders"), ("get", "/api/v1/orders/256"),
     ("delete", "/api/v1/orders/256"), ("delete", "/api/v1/orders"),
     ("patch", "/api/v1/orders/256")],
)
def test_private_routes_need_key(client, alice, method, path):
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "x" * 1000}):
        resp = getattr(client, method)(path, headers=headers, json=ORDER)
        assert resp.status_code == 401, (method, path, headers)
        assert err(resp)["code"] == "unauthorized"


# -- placing orders: input handling ---------------------------------------------------------------


def post_raw(client, headers, data, content_type="application/json"):
    return client.post("/api/v1/orders", data=data, headers={**headers,
                                                              "Content-Type": content_type})


@pytest.mark.parametrize(
    "data,code",
    [
        ("{", "malformed_json"),
        ("", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('"text"', "malformed_json"),
        ("null", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        ('{"symbol": "BTC-USDT", "symbol": "ETH-USDT"}', "malformed_json"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": NaN, "quantity": "1"}', "malformed_json"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": 100.5, "quantity": "0.01"}',
         "invalid_decimal"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": "100.5", "quantity": 1}',
         "invalid_decimal"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": "1e2", "quantity": "0.01"}',
         "invalid_decimal"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": "-1", "quantity": "0.01"}',
         "invalid_decimal"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": "100.5", "quantity": "0.01", "x": 1}',
         "unknown_field"),
        ('{"side": "buy", "price": "100.5", "quantity": "0.01"}', "missing_field"),
        ('{"symbol": "BTC-USDT", "price": "100.5", "quantity": "0.01"}', "missing_field"),
        ('{"symbol": "NOPE", "side": "buy", "price": "100.5", "quantity": "0.01"}',
         "unknown_symbol"),
        ('{"symbol": "BTC-USDT", "side": "up", "price": "100.5", "quantity": "0.01"}',
         "invalid_field"),
        ('{"symbol": "BTC-USDT", "side": "buy", "price": "100.555", "quantity": "0.01"}',
         "off_tick"),
        ('{"symbol": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.01",'
         ' "quote_quantity": "10"}', "invalid_field"),
        ('{"symbol": "BTC-USDT", "side": "buy", "post_only": "yes", "price": "100.5",'
         ' "quantity": "0.01"}', "invalid_field"),
    ],
)
def test_bad_order_bodies(client, alice, rdb, data, code):
    resp = post_raw(client, alice["headers"], data)
    assert resp.status_code == 400, resp.data
    error = err(resp)
    assert error["code"] == code, error
    assert rdb.xlen(K.stream) == 0  # nothing half-applied: nothing journaled


def test_float_price_message_is_clear(client, alice):
    body = dict(ORDER, price=100.5)
    error = err(client.post("/api/v1/orders", json=body, headers=alice["headers"]))
    assert "decimal string" in error["message"]


def test_wrong_content_type_is_415(client, alice, rdb):
    resp = post_raw(client, alice["headers"], json.dumps(ORDER), "text/plain")
    assert resp.status_code == 415 and err(resp)["code"] == "unsupported_media_type"
    resp = client.post("/api/v1/orders", data={"symbol": "BTC-USDT"}, headers=alice["headers"])
    assert resp.status_code == 415
    assert rdb.xlen(K.stream) == 0


def test_body_too_large_is_413(client, alice, rdb):
    big = json.dumps(dict(ORDER, client_order_id="x" * 70_000))
    resp = post_raw(client, alice["headers"], big)
    assert resp.status_code == 413 and err(resp)["code"] == "payload_too_large"
    assert rdb.xlen(K.stream) == 0


def test_order_without_worker_is_202_and_journaled(client, alice, rdb):
    resp = client.post("/api/v1/orders", json=dict(ORDER, client_order_id="c-1"),
                       headers=alice["headers"])
    assert resp.status_code == 202, resp.data
    body = resp.get_json()
    assert body["status"] == "accepted" and body["client_order_id"] == "c-1"
    assert body["order_id"] & 0xFF == 0
    assert resp.headers["Location"] == f"/api/v1/orders/{body['order_id']}"
    entries = rdb.xrange(K.stream)
    assert len(entries) == 1
    wire = json.loads(entries[0][1]["c"])
    # the reply token names this process's inbox (16 hex digits) and a per-process number
    inbox = client.application.extensions["fairbook"].inbox
    assert re.fullmatch(inbox.id + r"-[1-9][0-9]*", wire.pop("reply_to"))
    assert re.fullmatch(r"[0-9a-f]{16}", inbox.id)
    assert wire == {"id": body["order_id"], "op": "new", "symbol": "BTC-USDT", "side": "buy",
                    "type": "limit", "time_in_force": "GTC", "post_only": False,
                    "price": "100.50", "quantity": "0.01000", "quote_quantity": None,
                    "stop_price": None, "client_order_id": "c-1", "stp": "cancel_maker",
                    "account": alice["account_id"]}


def test_order_reply_201(client, alice, fake_worker):
    fake_worker(lambda w: {"ok": True, "order": order_object(w["id"])})
    resp = client.post("/api/v1/orders", json=ORDER, headers=alice["headers"])
    assert resp.status_code == 201, resp.data
    body = resp.get_json()
    assert body["status"] == "new" and body["order_id"] & 0xFF == 0


def test_order_engine_rejection_is_201_rejected(client, alice, fake_worker):
    fake_worker(lambda w: {"ok": True, "order": order_object(
        w["id"], "rejected", reject_reason="post_only_would_take")})
    resp = client.post("/api/v1/orders", json=dict(ORDER, post_only=True),
                       headers=alice["headers"])
    assert resp.status_code == 201
    assert resp.get_json()["reject_reason"] == "post_only_would_take"


def test_order_worker_error_is_400(client, alice, fake_worker):
    fake_worker(lambda w: {"ok": False, "error": {"code": "invalid_order", "message": "bad"}})
    resp = client.post("/api/v1/orders", json=ORDER, headers=alice["headers"])
    assert resp.status_code == 400 and err(resp) == {"code": "invalid_order", "message": "bad"}


# -- cancel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", ["abc", "-1", "1.5", "99999999999999999999", "257"])
def test_cancel_bad_or_foreign_partition_id_is_404(client, alice, rdb, oid):
    # 257 lives in partition 1, which no symbol uses here
    resp = client.delete(f"/api/v1/orders/{oid}", headers=alice["headers"])
    assert resp.status_code == 404 and err(resp)["code"] == "unknown_order"
    assert rdb.xlen(K.stream) == 0


def test_cancel_other_accounts_order_answers_as_a_missing_one(client, alice, bob, rdb,
                                                              fake_worker):  # fmt: skip
    """Issue 13: indistinguishable on every route. The web no longer answers a foreign order
    at once (a missing one must wait for the worker, as it may be in flight): both are
    journaled in the caller's name, and the engine, which judges ownership, rejects both."""
    seed_order(rdb, 512, bob["account_id"])
    seen: list[dict] = []

    def respond(wire):
        seen.append(wire)
        return {"ok": False, "error": {"code": "unknown_order", "message": "unknown order"}}

    fake_worker(respond)
    theirs = client.delete("/api/v1/orders/512", headers=alice["headers"])
    missing = client.delete("/api/v1/orders/768", headers=alice["headers"])
    assert theirs.status_code == missing.status_code == 404
    assert err(theirs) == err(missing) and err(theirs)["code"] == "unknown_order"
    assert [(w["op"], w["account"], w["order_id"]) for w in seen] == [
        ("cancel", alice["account_id"], 512), ("cancel", alice["account_id"], 768)]
    assert rdb.get(K.order(512)) is not None  # bob's order untouched


def test_cancel_replies(client, alice, rdb, fake_worker):
    seed_order(rdb, 512, alice["account_id"])

    def respond(wire):
        if wire["order_id"] == 512:
            return {"ok": True, "order": order_object(512, "cancelled")}
        return {"ok": False, "error": {"code": "unknown_order", "message": "no such order"}}

    worker = fake_worker(respond)
    resp = client.delete("/api/v1/orders/512", headers=alice["headers"])
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    resp = client.delete("/api/v1/orders/768", headers=alice["headers"])
    assert resp.status_code == 404 and err(resp)["code"] == "unknown_order"
    assert worker.seen[0]["op"] == "cancel" and worker.seen[0]["account"] == alice["account_id"]


def test_cancel_without_worker_is_202(client, alice):
    resp = client.delete("/api/v1/orders/512", headers=alice["headers"])
    assert resp.status_code == 202 and resp.get_json()["status"] == "accepted"


def test_cancel_all(client, alice, fake_worker, rdb):
    worker = fake_worker(lambda w: {"ok": True, "cancelled": [order_object(512, "cancelled")]})
    resp = client.delete("/api/v1/orders?symbol=BTC-USDT", headers=alice["headers"])
    assert resp.status_code == 200
    assert [o["order_id"] for o in resp.get_json()["cancelled"]] == [512]
    resp = client.delete("/api/v1/orders", headers=alice["headers"])
    assert resp.status_code == 200
    assert [(w["op"], w["symbol"]) for w in worker.seen] == [("cancel_all", "BTC-USDT"),
                                                              ("cancel_all", None)]
    resp = client.delete("/api/v1/orders?symbol=NOPE", headers=alice["headers"])
    assert resp.status_code == 400 and err(resp)["code"] == "unknown_symbol"


# -- amend ----------------------------------------------------------------------------------------


def test_amend(client, alice, bob, rdb, fake_worker):
    seed_order(rdb, 512, alice["account_id"])
    seed_order(rdb, 768, bob["account_id"])
    h = alice["headers"]

    def respond(wire):
        if wire["quantity"] == "0.00500":  # canonical form of "0.005"
            return {"ok": True, "order": order_object(512, quantity="0.005")}
        return {"ok": False, "error": {"code": "invalid_amend", "message": "nope"}}

    worker = fake_worker(respond)
    assert client.patch("/api/v1/orders/1024", json={"quantity": "0.005"},
                        headers=h).status_code == 404
    assert client.patch("/api/v1/orders/768", json={"quantity": "0.005"},
                        headers=h).status_code == 404
    for body, code in (({}, "missing_field"), ({"qty": "1"}, "unknown_field"),
                       ({"quantity": 0.005}, "invalid_decimal"),
                       ({"price": "100.555"}, "off_tick")):
        resp = client.patch("/api/v1/orders/512", json=body, headers=h)
        assert resp.status_code == 400 and err(resp)["code"] == code
    assert rdb.xlen(K.stream) == 0
    resp = client.patch("/api/v1/orders/512", json={"quantity": "0.005"}, headers=h)
    assert resp.status_code == 200 and resp.get_json()["quantity"] == "0.005"
    assert worker.seen[-1] == {"id": worker.seen[-1]["id"], "op": "amend",
                               "reply_to": worker.seen[-1]["reply_to"],
                               "account": alice["account_id"], "order_id": 512,
                               "symbol": "BTC-USDT", "quantity": "0.00500", "price": None}
    resp = client.patch("/api/v1/orders/512", json={"price": "101"}, headers=h)
    assert resp.status_code == 400 and err(resp)["code"] == "invalid_amend"


# -- reading orders -------------------------------------------------------------------------------


def test_get_order(client, alice, bob, rdb):
    seed_order(rdb, 512, alice["account_id"])
    resp = client.get("/api/v1/orders/512", headers=alice["headers"])
    assert resp.status_code == 200
    body = resp.get_json()
    assert body == order_object(512)
    resp = client.get("/api/v1/orders/512", headers=bob["headers"])
    assert resp.status_code == 404 and err(resp)["code"] == "unknown_order"
    assert client.get("/api/v1/orders/x", headers=alice["headers"]).status_code == 404


def test_list_orders(client, alice, bob, rdb):
    seed_order(rdb, 256, alice["account_id"], created_at=1)
    seed_order(rdb, 512, alice["account_id"], symbol="ETH-USDT", created_at=2)
    seed_order(rdb, 768, alice["account_id"], status="filled", created_at=3)
    seed_order(rdb, 1024, bob["account_id"])
    h = alice["headers"]
    ids = lambda q: [o["order_id"] for o in client.get(f"/api/v1/orders{q}", headers=h)  # noqa: E731
                     .get_json()]
    assert ids("") == [512, 256]
    assert ids("?status=open&symbol=BTC-USDT") == [256]
    assert ids("?status=closed") == [768]
    assert ids("?status=all") == [768, 512, 256]
    assert ids("?status=all&limit=1") == [768]
    assert client.get("/api/v1/orders?status=weird", headers=h).status_code == 400
    assert client.get("/api/v1/orders?limit=0", headers=h).status_code == 400
    assert client.get("/api/v1/orders?symbol=NOPE", headers=h).status_code == 400
    assert [o["order_id"] for o in client.get("/api/v1/orders", headers=bob["headers"])
            .get_json()] == [1024]
