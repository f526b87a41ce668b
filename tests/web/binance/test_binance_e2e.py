"""``/api/v3`` over real HTTP with raw signed requests: the CLI's keys, response types, the
journal entry of a Binance order, lookups by client order id, market data after trades."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from bench.stack import Stack
from engine.validation import validate_order_request
from protocol.config import load_markets
from redis_server import wait_until
from web.binance.vault import new_key_text
from web.journal import Journal

pytestmark = pytest.mark.e2e

SERVER_KEY = new_key_text()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(reply_timeout=2.0, log_dir=tmp_path_factory.mktemp("stack"),
               env={"FAIRBOOK_SECRET_KEY": SERVER_KEY}) as s:  # fmt: skip
        yield s


def cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, REDIS_URL=stack.redis_url, FAIRBOOK_SECRET_KEY=SERVER_KEY)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=check)  # fmt: skip


class Client:
    """Raw Binance requests with an HMAC key made by the CLI."""

    def __init__(self, stack: Stack, funds: dict[str, str] | None = None,
                 permissions: str = "read,trade") -> None:  # fmt: skip
        self.stack = stack
        self.account_id = stack.create_account("raw")["account_id"]
        out = cli(stack, "create-api-key", self.account_id, "--permissions", permissions)
        self.issued = json.loads(out.stdout)
        self.session = requests.Session()
        self.session.headers["X-MBX-APIKEY"] = self.issued["api_key"]
        if funds:
            client = stack.redis()
            try:
                journal = Journal(client, stack.namespace.keys(0))
                for asset, amount in funds.items():
                    journal.append({"op": "deposit", "account": self.account_id, "asset": asset,
                                    "amount": amount, "deposit_id": f"r-{self.account_id}-{asset}"})
                key = stack.namespace.keys(0).balances(self.account_id)
                wait_until(lambda: client.hlen(key) >= len(funds), 20, "deposits applied")
            finally:
                client.close()

    def signed(self, method: str, path: str, **params: Any) -> requests.Response:
        params["timestamp"] = int(time.time() * 1000)
        text = urlencode(params)
        sig = hmac.new(self.issued["secret"].encode(), text.encode(), hashlib.sha256).hexdigest()
        url = f"{self.stack.url}/api/v3/{path}?{text}&signature={sig}"
        return self.session.request(method, url, timeout=10)

    def ok(self, method: str, path: str, **params: Any) -> Any:
        resp = self.signed(method, path, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()


FUNDS = {"USDT": "100000", "BTC": "10"}


def public(stack: Stack, path: str, **params: Any) -> Any:
    resp = requests.get(f"{stack.url}/api/v3/{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def clients(stack) -> Iterator[Any]:
    made: list[Client] = []

    def make(**kw: Any) -> Client:
        client = Client(stack, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        if "trade" in client.issued["permissions"]:
            client.signed("DELETE", "openOrders", symbol="BTCUSDT")


def test_cli_keys_ed25519_list_and_revoke(stack):
    account = stack.create_account("cli")["account_id"]
    issued = json.loads(cli(stack, "create-api-key", account, "--ed25519").stdout)
    assert issued["kind"] == "ed25519" and "PRIVATE KEY" in issued["private_key"]
    assert "secret" not in issued
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private = load_pem_private_key(issued["private_key"].encode(), None)
    text = urlencode({"timestamp": int(time.time() * 1000)})
    sig = base64.b64encode(private.sign(text.encode())).decode()  # type: ignore[union-attr]
    headers = {"X-MBX-APIKEY": issued["api_key"]}
    url = f"{stack.url}/api/v3/account?{text}&" + urlencode({"signature": sig})
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    listed = json.loads(cli(stack, "list-api-keys", account).stdout)
    assert [k["kind"] for k in listed] == ["ed25519"] and "api_key" not in listed[0]
    bad = cli(stack, "create-api-key", account, "--permissions", "read,fly", check=False)
    assert bad.returncode != 0
    assert cli(stack, "create-api-key", "99999", check=False).returncode != 0
    assert json.loads(cli(stack, "revoke-key", issued["api_key"]).stdout)["revoked"] is True
    resp = requests.get(url, headers=headers, timeout=10)
    assert resp.status_code == 401 and resp.json()["code"] == -2015


def test_response_types_and_the_journal_entry(stack, clients):
    maker, taker = clients(funds=FUNDS), clients(funds=FUNDS)
    ack = maker.ok("POST", "order", symbol="BTCUSDT", side="SELL", type="LIMIT",
                   timeInForce="GTC", quantity="0.01", price="30000", newOrderRespType="ACK",
                   newClientOrderId="ask-1")  # fmt: skip
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert ack["clientOrderId"] == "ask-1"
    # what was journaled is what the native API journals for the same order
    rdb = stack.redis()
    try:
        entries = rdb.xrevrange(stack.namespace.keys(0).stream, count=20)
    finally:
        rdb.close()
    commands = [json.loads(fields["c"]) for _, fields in entries]
    wire = next(c for c in commands if c["id"] == ack["orderId"])
    native, _ = validate_order_request(
        {"symbol": "BTC-USDT", "side": "sell", "type": "limit", "time_in_force": "GTC",
         "quantity": "0.01", "price": "30000", "client_order_id": "ask-1"}, load_markets())
    wire.pop("reply_to", None)
    assert wire == {**native, "id": ack["orderId"], "account": maker.account_id}
    result = taker.ok("POST", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                      timeInForce="IOC", quantity="0.004", price="30000",
                      newOrderRespType="RESULT")  # fmt: skip
    assert result["status"] == "FILLED" and result["executedQty"] == "0.00400"
    assert result["cummulativeQuoteQty"] == "120.0000000" and "fills" not in result
    full = taker.ok("POST", "order", symbol="BTCUSDT", side="BUY", type="MARKET",
                    quoteOrderQty="60")  # fmt: skip
    assert full["status"] == "FILLED" and full["origQuoteOrderQty"]
    assert [(f["price"], f["qty"], f["commissionAsset"]) for f in full["fills"]] == [
        ("30000.00", "0.00200", "USDT")]
    expired = taker.ok("POST", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                       timeInForce="FOK", quantity="1", price="30000")  # fmt: skip
    assert expired["status"] == "EXPIRED" and expired["executedQty"] == "0.00000"
    # the maker's order by client id, then its cancel by client id
    mine = maker.ok("GET", "order", symbol="BTCUSDT", origClientOrderId="ask-1")
    assert mine["orderId"] == ack["orderId"] and mine["status"] == "PARTIALLY_FILLED"
    assert mine["executedQty"] == "0.00600" and mine["isWorking"] is True
    cancelled = maker.ok("DELETE", "order", symbol="BTCUSDT", origClientOrderId="ask-1")
    assert cancelled["status"] == "CANCELED" and cancelled["origClientOrderId"] == "ask-1"
    assert maker.ok("GET", "order", symbol="BTCUSDT", orderId=ack["orderId"])["status"] == \
        "CANCELED"  # fmt: skip
    # an order of another symbol, or another account's, is not found
    other = maker.signed("GET", "order", symbol="ETHUSDT", orderId=ack["orderId"])
    assert other.status_code == 400 and other.json() == {"code": -2013,
                                                         "msg": "Order does not exist."}
    theirs = taker.signed("DELETE", "order", symbol="BTCUSDT", orderId=ack["orderId"])
    assert theirs.json() == {"code": -2011, "msg": "Unknown order sent."}


def test_history_trades_and_market_data(stack, clients):
    maker, taker = clients(funds=FUNDS), clients(funds=FUNDS)
    a = maker.ok("POST", "order", symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                 quantity="0.01", price="35000")  # fmt: skip
    b = maker.ok("POST", "order", symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                 quantity="0.01", price="35000")  # fmt: skip
    c = maker.ok("POST", "order", symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                 quantity="0.01", price="35001")  # fmt: skip
    depth = public(stack, "depth", symbol="BTCUSDT", limit=5)
    native = requests.get(f"{stack.url}/api/v1/book/BTC-USDT", timeout=10).json()
    assert depth["lastUpdateId"] == native["sequence"] and depth["asks"][:2] == native["asks"][:2]
    taken = taker.ok("POST", "order", symbol="BTCUSDT", side="BUY", type="MARKET",
                     quantity="0.025")  # fmt: skip
    assert taken["status"] == "FILLED" and len(taken["fills"]) == 3
    trade_ids = [f["tradeId"] for f in taken["fills"]]
    aggs = public(stack, "aggTrades", symbol="BTCUSDT", fromId=trade_ids[0])
    assert [(x["p"], x["q"], x["f"], x["l"]) for x in aggs] == [
        ("35000.00", "0.02000", trade_ids[0], trade_ids[1]),
        ("35001.00", "0.00500", trade_ids[2], trade_ids[2])]
    assert all(x["m"] is False for x in aggs)
    recent = public(stack, "trades", symbol="BTCUSDT", limit=3)
    assert [t["id"] for t in recent] == trade_ids and recent[-1]["quoteQty"] == "175.0050000"
    old = maker.session.get(f"{stack.url}/api/v3/historicalTrades", timeout=10,
                            params={"symbol": "BTCUSDT", "fromId": trade_ids[1], "limit": 2})
    assert [t["id"] for t in old.json()] == trade_ids[1:], old.text
    keyless = requests.get(f"{stack.url}/api/v3/historicalTrades?symbol=BTCUSDT", timeout=10)
    assert keyless.status_code == 401 and keyless.json()["code"] == -2014
    assert public(stack, "ticker/price", symbol="BTCUSDT") == {"symbol": "BTCUSDT",
                                                               "price": "35001.00"}
    book = public(stack, "ticker/bookTicker", symbol="BTCUSDT")
    assert book["askPrice"] == "35001.00" and book["askQty"] == "0.00500"
    avg = public(stack, "avgPrice", symbol="BTCUSDT")
    assert avg["mins"] == 5 and 29000 <= float(avg["price"]) <= 35001
    mine = maker.ok("GET", "myTrades", symbol="BTCUSDT")
    assert [t["id"] for t in mine] == trade_ids
    assert all(t["isMaker"] and not t["isBuyer"] for t in mine)
    assert all(abs(t["time"] - time.time() * 1000) < 60_000 for t in mine)
    assert [t["orderId"] for t in maker.ok("GET", "myTrades", symbol="BTCUSDT",
                                           orderId=b["orderId"])] == [b["orderId"]]  # fmt: skip
    assert [t["id"] for t in maker.ok("GET", "myTrades", symbol="BTCUSDT",
                                      fromId=trade_ids[1], limit=1)] == [trade_ids[1]]  # fmt: skip
    orders = maker.ok("GET", "allOrders", symbol="BTCUSDT")
    assert [o["orderId"] for o in orders] == [a["orderId"], b["orderId"], c["orderId"]]
    assert [o["status"] for o in orders] == ["FILLED", "FILLED", "PARTIALLY_FILLED"]
    assert [o["orderId"] for o in maker.ok("GET", "allOrders", symbol="BTCUSDT", limit=1)] == [
        c["orderId"]]
    assert [o["orderId"] for o in maker.ok("GET", "openOrders")] == [c["orderId"]]
    account = maker.ok("GET", "account")
    btc = next(x for x in account["balances"] if x["asset"] == "BTC")
    assert btc == {"asset": "BTC", "free": "9.97000000", "locked": "0.00500000"}
    reader = clients(permissions="read")
    assert reader.signed("DELETE", "openOrders", symbol="BTCUSDT").json()["code"] == -2015
