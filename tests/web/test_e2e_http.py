"""End to end over real HTTP: redis-server + ``python -m worker`` + ``gunicorn app:app``.

Every test opens fresh accounts, funded generously (orders need the money they may spend), and
cancels their orders afterwards, so the shared books start empty for the next test (the last
trade price carries over; stop tests set their own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from bench.stack import Stack
from redis_server import wait_until
from tests.web.funding import fund

pytestmark = pytest.mark.e2e

SYM = "BTC-USDT"
D = Decimal


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def operator(stack) -> dict[str, str]:
    """Headers of an operator account: /healthz details are for operators only."""
    return {"X-API-Key": stack.create_account("ops", operator=True)["api_key"]}


class Client:
    """One account's HTTP session (its account funded with every asset)."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        acct = stack.create_account(name)
        self.account_id = acct["account_id"]
        fund(stack, self.account_id)
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = acct["api_key"]

    def url(self, path: str) -> str:
        return self.stack.url + path

    def post(self, body: dict[str, Any]) -> requests.Response:
        return self.session.post(self.url("/api/v1/orders"), json=body, timeout=10)

    def order(self, **body: Any) -> dict[str, Any]:
        """Place an order and return the 201 order object."""
        body.setdefault("symbol", SYM)
        resp = self.post(body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url(path), timeout=10, **kw)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.url(path), timeout=10)

    def patch(self, order_id: int, body: dict[str, Any]) -> requests.Response:
        return self.session.patch(self.url(f"/api/v1/orders/{order_id}"), json=body, timeout=10)


@pytest.fixture
def accounts(stack) -> Iterator[Any]:
    made: list[Client] = []

    def make(name: str = "t") -> Client:
        client = Client(stack, name)
        made.append(client)
        return client

    yield make
    for client in made:
        assert client.delete("/api/v1/orders").status_code == 200


def err(resp: requests.Response, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def _ok(resp: requests.Response, status: int) -> requests.Response | None:
    """``resp`` if it has ``status`` (for :func:`wait_until`: anything else is "not yet")."""
    return resp if resp.status_code == status else None


def set_last_price(accounts, price: str, symbol: str = SYM) -> None:
    """Make one trade at ``price`` between two throwaway accounts (the book stays empty)."""
    a, b = accounts("lp-a"), accounts("lp-b")
    a.order(symbol=symbol, side="sell", price=price, quantity="0.001")
    assert b.order(symbol=symbol, side="buy", price=price, quantity="0.001")["status"] == "filled"


# -- public ---------------------------------------------------------------------------------------


def test_public_routes(stack, accounts, operator):
    assert {m["symbol"] for m in requests.get(stack.url + "/api/v1/symbols").json()} >= {SYM}
    assert requests.get(stack.url + "/healthz").json() == {"status": "ok"}
    health = requests.get(stack.url + "/healthz", headers=operator)
    assert health.status_code == 200, health.text
    assert all(p["lease"] and p["lag"] == 0 for p in health.json()["partitions"])
    maker, taker = accounts("maker"), accounts("taker")
    for i in range(3):
        maker.order(side="buy", price=f"{29000 - i}", quantity="0.01")
    replies = requests.get(stack.url + "/healthz", headers=operator).json()["replies"]
    assert replies["subscribed"] is True and replies["replies"] >= 3  # 201s came by the inbox
    for i in range(3):
        maker.order(side="sell", price=f"{31000 + i}", quantity="0.01")
    book = requests.get(stack.url + f"/api/v1/book/{SYM}?depth=2").json()
    assert book["bids"] == [["29000.00", "0.01000"], ["28999.00", "0.01000"]]
    assert book["asks"] == [["31000.00", "0.01000"], ["31001.00", "0.01000"]]
    assert book["sequence"] > 0
    bbo = requests.get(stack.url + f"/api/v1/bbo/{SYM}").json()
    assert (bbo["bid_price"], bbo["ask_price"]) == ("29000.00", "31000.00")
    taker.order(side="buy", type="market", quantity="0.015")
    trades = requests.get(stack.url + f"/api/v1/trades/{SYM}?limit=2").json()
    assert [(t["price"], t["quantity"]) for t in trades] == [("31001.00", "0.00500"),
                                                            ("31000.00", "0.01000")]
    assert trades[0]["trade_id"] == trades[1]["trade_id"] + 1
    assert trades[0]["aggressor_side"] == "buy" and trades[0]["fee_asset"] == "USDT"
    err(requests.get(stack.url + "/api/v1/book/NOPE-X"), 404, "unknown_symbol")
    err(requests.get(stack.url + f"/api/v1/book/{SYM}?depth=501"), 400, "invalid_field")
    err(requests.get(stack.url + f"/api/v1/trades/{SYM}?limit=1001"), 400, "invalid_field")


def test_cli_create_account_key_works_over_http(stack):
    env = dict(os.environ, REDIS_URL=stack.redis_url)
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "create-account", "erin"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    acct = json.loads(out.stdout)
    assert set(acct) == {"account_id", "api_key"}
    resp = requests.get(stack.url + "/api/v1/orders", headers={"X-API-Key": acct["api_key"]})
    assert resp.status_code == 200 and resp.json() == []


# -- order types ----------------------------------------------------------------------------------


def test_limit_gtc_match_with_fees(accounts):
    maker, taker = accounts("maker"), accounts("taker")
    ask = maker.order(side="sell", price="30000", quantity="0.01", client_order_id="m-1")
    assert ask["status"] == "new" and ask["remaining_quantity"] == "0.01000"
    assert ask["client_order_id"] == "m-1" and ask["fills"] == []
    bid = taker.order(side="buy", price="30000", quantity="0.004")
    assert bid["status"] == "filled"
    assert D(bid["filled_quantity"]) == D("0.004") and D(bid["remaining_quantity"]) == 0
    [fill] = bid["fills"]
    assert D(fill["price"]) == 30000 and D(fill["quantity"]) == D("0.004")
    assert D(fill["fee"]) == D("0.12") and fill["fee_asset"] == "USDT"  # 120 * 0.001
    assert fill["liquidity"] == "taker"
    assert D(bid["cum_quote"]) == D("120")
    maker_view = maker.get(f"/api/v1/orders/{ask['order_id']}").json()
    assert maker_view["status"] == "partially_filled"
    assert D(maker_view["remaining_quantity"]) == D("0.006")
    assert maker_view["fills"][0]["liquidity"] == "maker"
    assert D(maker_view["fills"][0]["fee"]) == D("0.12")


def test_maker_rebate_is_negative_fee(accounts):
    maker, taker = accounts("maker"), accounts("taker")
    ask = maker.order(symbol="ETH-BTC", side="sell", price="0.05", quantity="1")
    bid = taker.order(symbol="ETH-BTC", side="buy", price="0.05", quantity="1")
    assert bid["status"] == "filled"
    assert D(bid["fills"][0]["fee"]) == D("0.000025")  # 0.05 * 0.0005
    fills = maker.get(f"/api/v1/orders/{ask['order_id']}").json()["fills"]
    assert D(fills[0]["fee"]) == D("-0.000005")  # rebate 0.05 * 0.0001
    assert fills[0]["fee_asset"] == "BTC"


def test_ioc_and_fok(accounts):
    maker, taker = accounts("maker"), accounts("taker")
    maker.order(side="sell", price="30000", quantity="0.01")
    ioc = taker.order(side="buy", price="30000", quantity="0.02", time_in_force="IOC")
    assert ioc["status"] == "cancelled" and ioc["reject_reason"] == "ioc_expired"
    assert D(ioc["filled_quantity"]) == D("0.01")
    maker.order(side="sell", price="30000", quantity="0.01")
    fok = taker.order(side="buy", price="30000", quantity="0.02", time_in_force="FOK")
    assert fok["status"] == "cancelled" and D(fok["filled_quantity"]) == 0
    assert fok["reject_reason"] == "fok_not_fillable"
    fok = taker.order(side="buy", price="30000", quantity="0.01", time_in_force="FOK")
    assert fok["status"] == "filled"


def test_post_only(accounts):
    maker, other = accounts("maker"), accounts("other")
    maker.order(side="sell", price="30000", quantity="0.01")
    rejected = other.order(side="buy", price="30000", quantity="0.01", post_only=True)
    assert rejected["status"] == "rejected"
    assert rejected["reject_reason"] == "post_only_would_take"
    resting = other.order(side="buy", price="29999", quantity="0.01", post_only=True)
    assert resting["status"] == "new"


def test_market_by_quantity_and_quote(accounts):
    maker, taker = accounts("maker"), accounts("taker")
    empty = taker.order(side="buy", type="market", quantity="0.01")
    assert empty["status"] == "cancelled" and D(empty["filled_quantity"]) == 0
    assert empty["reject_reason"] == "no_liquidity"
    maker.order(side="sell", price="30000", quantity="0.01")
    maker.order(side="sell", price="30010", quantity="0.01")
    by_qty = taker.order(side="buy", type="market", quantity="0.015")
    assert by_qty["status"] == "filled"
    assert [D(f["price"]) for f in by_qty["fills"]] == [30000, 30010]
    by_quote = taker.order(side="buy", type="market", quote_quantity="150.05")
    assert by_quote["status"] == "filled"
    assert D(by_quote["filled_quantity"]) == D("0.005")  # 150.05 / 30010
    assert D(by_quote["cum_quote"]) == D("150.05")


# (type, side, stop offset from the 30000 last price): trigger direction per DESIGN.md
STOP_CASES = [
    ("stop_loss", "buy", 100),
    ("stop_limit", "buy", 100),
    ("take_profit", "buy", -100),
    ("take_profit_limit", "buy", -100),
    ("stop_loss", "sell", -100),
    ("stop_limit", "sell", -100),
    ("take_profit", "sell", 100),
    ("take_profit_limit", "sell", 100),
]


@pytest.mark.parametrize("type_,side,offset", STOP_CASES)
def test_stop_orders_trigger_on_trade(accounts, type_, side, offset):
    set_last_price(accounts, "30000")
    owner, liquidity, trigger = accounts("owner"), accounts("liq"), accounts("trig")
    stop_price = str(30000 + offset)
    body: dict[str, Any] = {"side": side, "type": type_, "stop_price": stop_price,
                            "quantity": "0.001"}
    if type_.endswith("limit"):
        body["price"] = stop_price
    stop = owner.order(**body)
    assert stop["status"] == "new", stop
    other = "sell" if side == "buy" else "buy"
    # liquidity on the side the triggered order takes, at the stop price
    liquidity.order(side=other, price=stop_price, quantity="0.003")
    # a trade at the stop price moves the last price there and fires the stop
    trade = trigger.order(side=side, price=stop_price, quantity="0.001")
    assert trade["status"] == "filled"
    final = owner.get(f"/api/v1/orders/{stop['order_id']}").json()
    assert final["status"] == "filled", final
    assert [D(f["price"]) for f in final["fills"]] == [D(stop_price)]


def test_stop_that_would_trigger_immediately_is_rejected(accounts):
    set_last_price(accounts, "30000")
    owner = accounts("owner")
    stop = owner.order(side="buy", type="stop_loss", stop_price="29000", quantity="0.001")
    assert stop["status"] == "rejected"
    assert stop["reject_reason"] == "would_trigger_immediately"


# -- cancel, cancel all, amend, reads -------------------------------------------------------------


def test_cancel(accounts):
    alice, bob = accounts("alice"), accounts("bob")
    order = alice.order(side="buy", price="29000", quantity="0.01")
    err(bob.delete(f"/api/v1/orders/{order['order_id']}"), 404, "unknown_order")
    resp = alice.delete(f"/api/v1/orders/{order['order_id']}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert resp.json()["reject_reason"] == "user_cancelled"
    err(alice.delete(f"/api/v1/orders/{order['order_id']}"), 404, "unknown_order")
    err(alice.delete("/api/v1/orders/abc"), 404, "unknown_order")
    err(alice.delete("/api/v1/orders/99999999999999"), 404, "unknown_order")


def test_cancel_all(accounts):
    alice = accounts("alice")
    ids = [alice.order(side="buy", price=p, quantity="0.01")["order_id"]
           for p in ("29000", "29001")]
    eth = alice.order(symbol="ETH-USDT", side="sell", price="5000", quantity="0.1")["order_id"]
    resp = alice.delete(f"/api/v1/orders?symbol={SYM}")
    assert resp.status_code == 200
    assert sorted(o["order_id"] for o in resp.json()["cancelled"]) == sorted(ids)
    open_ids = [o["order_id"] for o in alice.get("/api/v1/orders").json()]
    assert open_ids == [eth]
    resp = alice.delete("/api/v1/orders")
    assert [o["order_id"] for o in resp.json()["cancelled"]] == [eth]
    assert alice.get("/api/v1/orders").json() == []
    closed = alice.get("/api/v1/orders?status=closed").json()
    assert sorted(o["order_id"] for o in closed) == sorted([*ids, eth])
    err(alice.delete("/api/v1/orders?symbol=NOPE"), 400, "unknown_symbol")


def test_amend(accounts):
    alice, bob = accounts("alice"), accounts("bob")
    order = alice.order(side="buy", price="29000", quantity="0.01")
    oid = order["order_id"]
    resp = alice.patch(oid, {"quantity": "0.005"})
    assert resp.status_code == 200, resp.text
    assert D(resp.json()["quantity"]) == D("0.005")
    resp = alice.patch(oid, {"price": "29001.5"})
    assert resp.status_code == 200, resp.text
    assert D(resp.json()["price"]) == D("29001.5")
    book = alice.get(f"/api/v1/book/{SYM}").json()
    assert book["bids"][0] == ["29001.50", "0.00500"]
    err(alice.patch(oid, {"price": "29001.5"}), 400, "invalid_amend")
    err(bob.patch(oid, {"quantity": "0.001"}), 404, "unknown_order")
    err(alice.patch(oid, {"quantity": 0.001}), 400, "invalid_decimal")
    err(alice.patch(oid, {"size": "1"}), 400, "unknown_field")
    set_last_price(accounts, "30000")
    stop = alice.order(side="buy", type="stop_loss", stop_price="31000", quantity="0.001")
    err(alice.patch(stop["order_id"], {"quantity": "0.002"}), 400, "not_amendable")
    alice.delete(f"/api/v1/orders/{oid}")
    err(alice.patch(oid, {"quantity": "0.001"}), 404, "unknown_order")


def test_get_and_list_orders(accounts):
    alice, bob = accounts("alice"), accounts("bob")
    first = alice.order(side="buy", price="29000", quantity="0.01", client_order_id="a1")
    second = alice.order(symbol="ETH-USDT", side="buy", price="1000", quantity="0.1")
    got = alice.get(f"/api/v1/orders/{first['order_id']}").json()
    assert got["client_order_id"] == "a1" and got["status"] == "new"
    assert set(got) >= {"order_id", "symbol", "side", "type", "status", "price", "quantity",
                        "filled_quantity", "remaining_quantity", "fills", "created_at"}
    err(bob.get(f"/api/v1/orders/{first['order_id']}"), 404, "unknown_order")
    ids = [o["order_id"] for o in alice.get("/api/v1/orders").json()]
    assert set(ids) == {first["order_id"], second["order_id"]}
    only_eth = alice.get("/api/v1/orders?symbol=ETH-USDT").json()
    assert [o["order_id"] for o in only_eth] == [second["order_id"]]
    assert bob.get("/api/v1/orders").json() == []


# -- error paths over the wire --------------------------------------------------------------------


def test_error_paths(stack, accounts):
    alice = accounts("alice")
    url = stack.url + "/api/v1/orders"
    good = {"symbol": SYM, "side": "buy", "price": "29000", "quantity": "0.01"}
    h = dict(alice.session.headers)
    err(requests.post(url, json=good), 401, "unauthorized")
    err(requests.post(url, json=good, headers={"X-API-Key": "nope"}), 401, "unauthorized")
    err(alice.session.post(url, data="{bad", headers={"Content-Type": "application/json"}),
        400, "malformed_json")
    err(alice.session.post(url, data=json.dumps(good), headers={"Content-Type": "text/plain"}),
        415, "unsupported_media_type")
    err(alice.session.post(url, json=[good]), 400, "malformed_json")
    err(alice.post({**good, "leverage": "10"}), 400, "unknown_field")
    err(alice.post({k: v for k, v in good.items() if k != "quantity"}), 400, "missing_field")
    e = err(alice.post({**good, "price": 29000.5}), 400, "invalid_decimal")
    assert "decimal string" in e["message"]
    err(alice.post({**good, "quantity": "1e-2"}), 400, "invalid_decimal")
    err(alice.post({**good, "symbol": "NOPE-USDT"}), 400, "unknown_symbol")
    err(alice.post({**good, "price": "29000.001"}), 400, "off_tick")
    big = json.dumps({**good, "client_order_id": "x" * 100_000})
    err(requests.post(url, data=big, headers={**h, "Content-Type": "application/json"}),
        413, "payload_too_large")

    def chunked(size: int) -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b'{"symbol": "BTC-USDT", "client_order_id": "'
        for _ in range(size // 1000):
            yield b"x" * 1000
        yield b'"}'

    hj = {**h, "Content-Type": "application/json"}
    err(requests.post(url, data=chunked(100_000), headers=hj), 413, "payload_too_large")
    # a small chunked body is read whole and validated (here: it lacks "side")
    err(requests.post(url, data=chunked(1000), headers=hj), 400, "missing_field")
    err(requests.put(url, headers=h), 405, "method_not_allowed")
    err(requests.get(stack.url + "/nowhere"), 404, "not_found")
    assert alice.get("/api/v1/orders").json() == []  # nothing was placed by any of that


# -- the 202 path ---------------------------------------------------------------------------------


def test_accepted_while_worker_down_then_processed(stack, accounts, operator):
    alice = accounts("alice")
    stack.stop_worker()
    try:
        resp = alice.post({"symbol": SYM, "side": "buy", "price": "29000", "quantity": "0.01"})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["status"] == "accepted"
        oid = body["order_id"]
        err(alice.get(f"/api/v1/orders/{oid}"), 404, "unknown_order")  # not applied yet
        # lease released on clean stop, lag 1
        health = requests.get(stack.url + "/healthz", headers=operator)
        assert health.status_code == 503, health.text
        assert health.json()["partitions"][0]["lag"] >= 1
    finally:
        stack.start_worker()
    # any error (a read timing out on a busy machine) is retried until the deadline
    got = wait_until(lambda: _ok(alice.get(f"/api/v1/orders/{oid}"), 200), 20, "the order")
    assert got.json()["status"] == "new"
    health = requests.get(stack.url + "/healthz", headers=operator)
    assert health.status_code == 200 and health.json()["partitions"][0]["lag"] == 0


def test_cancelling_anothers_order_answers_as_a_missing_one_even_while_the_worker_is_down(
    stack, accounts
):
    alice, mallory = accounts("alice"), accounts("mallory")
    theirs = alice.order(side="buy", price="29000", quantity="0.01")["order_id"]
    missing = theirs + 256 * 100_000  # same partition, never placed
    answers = {}
    stack.stop_worker()
    try:
        for oid in (theirs, missing):
            resp = mallory.delete(f"/api/v1/orders/{oid}")
            body = resp.json()
            assert body.pop("order_id") == oid and body.pop("command_id")
            answers[oid] = (resp.status_code, body)
    finally:
        stack.start_worker()
    assert answers[theirs] == answers[missing] == (202, {"status": "accepted"})
    for oid in (theirs, missing):  # with the worker back: the same 404 body for both
        # (a tuple: a 4xx requests.Response is falsy, which wait_until would take as "not yet")
        (got,) = wait_until(lambda oid=oid: (r,) if (r := mallory.delete(
            f"/api/v1/orders/{oid}")).status_code == 404 else None, 20, "the worker's answer")
        answers[oid] = got.json()["error"]["code"]
    assert answers[theirs] == answers[missing] == "unknown_order"
    assert alice.get(f"/api/v1/orders/{theirs}").json()["status"] == "new"  # untouched


def test_redis_down_is_503_then_recovers(stack, accounts):
    alice = accounts("alice")
    before = alice.order(side="buy", price="29000", quantity="0.01")
    stack.redis_server.stop()  # clean SHUTDOWN: the AOF keeps everything
    try:
        resp = alice.post({"symbol": SYM, "side": "buy", "price": "29000", "quantity": "0.01"})
        err(resp, 503, "unavailable")
        assert resp.headers["Retry-After"] == "5"
        err(requests.get(stack.url + f"/api/v1/book/{SYM}"), 503, "unavailable")
        assert requests.get(stack.url + "/healthz").status_code == 503
    finally:
        stack.redis_server.start()
    stack.wait_worker()
    resp = wait_until(
        lambda: _ok(alice.post({"symbol": SYM, "side": "buy", "price": "28999",
                                "quantity": "0.01"}), 201),
        20, "an order after the restart", interval=0.2,
    )  # fmt: skip
    assert alice.get(f"/api/v1/orders/{before['order_id']}").json()["status"] == "new"
