"""Money over HTTP: balances, deposits (operators), withdrawals, the ledger, pre-trade risk.

End to end (``bench.stack.Stack``: redis-server, ``python -m worker`` with two partitions,
gunicorn): every route and error path of the money API, the numbers exact to the unit (every
asset has 8 decimals in protocol/symbols.json), another account's money never visible, the
operators' ``deposit`` CLI, the ``balance`` events of the ``orders`` WebSocket channel. In
process (Flask test client, a fake worker): what the routes journal and how replies map.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.stack import ROOT, Stack
from redis_server import wait_until
from tests.web.funding import fund
from tests.web.live_socket import LiveSocket
from web.accounts import create_account

SYM = "BTC-USDT"  # partition 0 (ETH-USDT is in partition 1)
FLASK = str(Path(sys.executable).with_name("flask"))
Z = "0.00000000"


def ref(prefix: str = "r") -> str:
    """A transfer reference no other test of the module uses."""
    return f"{prefix}-{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(reply_timeout=2.0, partitions="ETH-USDT=1",
               log_dir=tmp_path_factory.mktemp("money")) as s:  # fmt: skip
        yield s


class Client:
    """One account's HTTP session."""

    def __init__(self, stack: Stack, name: str, operator: bool = False) -> None:
        self.stack = stack
        acct = stack.create_account(name, operator=operator)
        self.account_id = acct["account_id"]
        self.api_key = acct["api_key"]
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = acct["api_key"]

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.stack.url + path, params=params, timeout=10)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.stack.url + path, json=body, timeout=10)

    def ok(self, path: str, **params: Any) -> Any:
        resp = self.get(path, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def balances(self, partition: int | None = None) -> dict[str, tuple[str, str]]:
        params = {} if partition is None else {"partition": partition}
        rows = self.ok("/api/v1/balances", **params)
        return {b["asset"]: (b["available"], b["locked"]) for b in rows}

    def order(self, **body: Any) -> dict[str, Any]:
        body.setdefault("symbol", SYM)
        resp = self.post("/api/v1/orders", body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def withdraw(self, asset: str, amount: str, wid: str, status: int = 201, **extra: Any):
        resp = self.post("/api/v1/withdrawals", {"asset": asset, "amount": amount,
                                                 "client_withdrawal_id": wid, **extra})
        assert resp.status_code == status, resp.text
        return resp.json()

    def deposit(self, account: str, asset: str, amount: str, deposit_id: str, status: int = 201,
                **extra: Any) -> dict[str, Any]:  # fmt: skip
        body = {"account_id": account, "asset": asset, "amount": amount, "deposit_id": deposit_id,
                **extra}  # fmt: skip
        resp = self.post("/api/v1/admin/deposits", body)
        assert resp.status_code == status, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def ops(stack) -> Client:
    return Client(stack, "ops", operator=True)


@pytest.fixture
def accounts(stack) -> Iterator[Any]:
    made: list[Client] = []

    def make(name: str = "t", funds: dict[str, str] | None = None) -> Client:
        client = Client(stack, name)
        if funds:
            fund(stack, client.account_id, funds, partitions=[0])
        made.append(client)
        return client

    yield make
    for client in made:
        assert client.session.delete(stack.url + "/api/v1/orders", timeout=10).status_code == 200


def err(resp: requests.Response, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def stream_lengths(stack: Stack) -> list[int]:
    client = stack.redis()
    try:
        return [client.xlen(stack.namespace.keys(p).stream) for p in stack.partition_ids()]
    finally:
        client.close()


def transfer(body: dict[str, Any], **expected: Any) -> dict[str, Any]:
    """``body`` is a transfer object with these fields (id and created_at any positive)."""
    assert isinstance(body.pop("id"), int) and isinstance(body.pop("created_at"), int), body
    assert body == expected, body
    return body


# -- deposits and balances ----------------------------------------------------------------------


def test_operator_deposit_credits_once_per_reference_and_partition(stack, ops, accounts):
    alice, bob = accounts("alice"), accounts("bob")
    assert alice.ok("/api/v1/balances") == []  # nothing before the first deposit
    d1 = ref("d")
    first = ops.deposit(alice.account_id, "USDT", "1000.5", d1)
    transfer(dict(first), type="deposit", deposit_id=d1, account_id=alice.account_id,
             asset="USDT", amount="1000.50000000", status="completed", reason=None, partition=0)
    assert alice.ok("/api/v1/balances") == [
        {"asset": "USDT", "available": "1000.50000000", "locked": Z}]
    assert ops.ok(f"/api/v1/admin/accounts/{alice.account_id}/balances") == alice.ok(
        "/api/v1/balances")
    # a retried deposit (same reference), whatever it says now, is answered with the first
    assert ops.deposit(alice.account_id, "USDT", "5", d1) == first
    assert ops.deposit(bob.account_id, "BTC", "1", d1) == first  # unique per partition
    assert alice.balances() == {"USDT": ("1000.50000000", Z)}
    assert bob.ok("/api/v1/balances") == []
    # the same reference in another partition is another deposit, into that partition's ledger
    other = ops.deposit(alice.account_id, "ETH", "2", d1, partition=1)
    assert other["partition"] == 1 and other["status"] == "completed"
    assert other["id"] != first["id"] and other["id"] & 0xFF == 1  # the partition's command id
    assert alice.balances(partition=1) == {"ETH": ("2.00000000", Z)}
    assert alice.balances(partition=0) == {"USDT": ("1000.50000000", Z)}
    assert ops.ok(f"/api/v1/admin/accounts/{alice.account_id}/balances", partition=1) == [
        {"asset": "ETH", "available": "2.00000000", "locked": Z}]
    [entry] = alice.ok("/api/v1/ledger")
    assert entry == {"id": entry["id"], "asset": "USDT", "amount": "1000.50000000",
                     "reason": "deposit", "balance": "1000.50000000", "symbol": None,
                     "order_id": None, "trade_id": None, "reference": d1,
                     "timestamp": first["created_at"]}  # fmt: skip
    assert entry["id"].startswith(f"{first['id']}-")
    [eth] = alice.ok("/api/v1/ledger", partition=1)
    assert (eth["asset"], eth["amount"], eth["reference"]) == ("ETH", "2.00000000", d1)


def test_only_operators_deposit_or_read_other_accounts(stack, ops, accounts):
    alice = accounts("alice")
    before = stream_lengths(stack)
    good = {"account_id": alice.account_id, "asset": "USDT", "amount": "1", "deposit_id": ref()}
    err(alice.post("/api/v1/admin/deposits", good), 403, "forbidden")
    err(alice.post("/api/v1/admin/deposits", {"junk": True}), 403, "forbidden")  # body unread
    err(alice.get(f"/api/v1/admin/accounts/{alice.account_id}/balances"), 403, "forbidden")
    err(alice.get(f"/api/v1/admin/accounts/{ops.account_id}/balances"), 403, "forbidden")
    url = stack.url + "/api/v1/admin/deposits"
    err(requests.post(url, json=good, timeout=10), 401, "unauthorized")
    err(requests.post(url, json=good, headers={"X-API-Key": "fb_nope"}, timeout=10), 401,
        "unauthorized")  # fmt: skip
    # an operator's mistakes: no such account (a typo must not credit a stranger)
    err(ops.post("/api/v1/admin/deposits", {**good, "account_id": "99999999"}), 400,
        "unknown_account")  # fmt: skip
    err(ops.get("/api/v1/admin/accounts/99999999/balances"), 404, "unknown_account")
    err(ops.get("/api/v1/admin/accounts/no%20such/balances"), 404, "unknown_account")
    err(ops.get(f"/api/v1/admin/accounts/{alice.account_id}/balances", partition=9), 400,
        "invalid_field")  # fmt: skip
    assert stream_lengths(stack) == before  # nothing journaled by any of that
    assert alice.ok("/api/v1/balances") == []


# -- pre-trade risk -----------------------------------------------------------------------------


def test_an_order_that_cannot_be_covered_is_rejected_and_one_that_can_locks_exactly(
    stack, ops, accounts
):
    carol = accounts("carol")
    body = {"side": "buy", "price": "30000", "quantity": "0.01"}
    rejected = carol.order(**body)
    assert (rejected["status"], rejected["reject_reason"]) == ("rejected", "insufficient_funds")
    assert Decimal(rejected["locked"]) == 0 and rejected["locked_asset"] == "USDT"
    sell = carol.order(side="sell", price="30000", quantity="0.01")
    assert (sell["status"], sell["reject_reason"]) == ("rejected", "insufficient_funds")
    assert sell["locked_asset"] == "BTC"
    # the hold: 0.01 x 30000 + the taker fee of each of its 1000 lots alone (0.0003, rounded up)
    ops.deposit(carol.account_id, "USDT", "300.29999999", ref())
    again = carol.order(**body)
    assert (again["status"], again["reject_reason"]) == ("rejected", "insufficient_funds")
    assert carol.balances() == {"USDT": ("300.29999999", Z)}  # a rejection locks nothing
    ops.deposit(carol.account_id, "USDT", "0.00000001", ref())
    placed = carol.order(**body)
    assert placed["status"] == "new"
    assert (placed["locked"], placed["locked_asset"]) == ("300.30000000", "USDT")
    assert carol.balances() == {"USDT": (Z, "300.30000000")}
    assert carol.ok(f"/api/v1/orders/{placed['order_id']}")["locked"] == "300.30000000"
    [listed] = carol.ok("/api/v1/orders")
    assert listed["locked"] == "300.30000000"
    # locked money cannot be withdrawn
    out = carol.withdraw("USDT", "0.00000001", ref("w"))
    assert (out["status"], out["reason"]) == ("rejected", "insufficient_funds")
    # an amend re-locks: more than the account has is refused, the order unchanged ...
    url = f"{stack.url}/api/v1/orders/{placed['order_id']}"
    err(carol.session.patch(url, json={"quantity": "0.02"}, timeout=10), 400,
        "insufficient_funds")  # fmt: skip
    assert carol.ok(f"/api/v1/orders/{placed['order_id']}")["quantity"] == "0.01000"
    assert carol.balances() == {"USDT": (Z, "300.30000000")}
    # ... less is released: 0.01 x 29000 + each lot's 0.00029 fee, then half of that
    cheaper = carol.session.patch(url, json={"price": "29000"}, timeout=10).json()
    assert (cheaper["price"], cheaper["locked"]) == ("29000.00", "290.29000000")
    assert carol.balances() == {"USDT": ("10.01000000", "290.29000000")}
    smaller = carol.session.patch(url, json={"quantity": "0.005"}, timeout=10).json()
    assert smaller["locked"] == "145.14500000"
    assert carol.balances() == {"USDT": ("155.15500000", "145.14500000")}
    cancelled = carol.session.delete(f"{stack.url}/api/v1/orders/{placed['order_id']}").json()
    assert (cancelled["status"], cancelled["locked"]) == ("cancelled", Z)
    assert carol.balances() == {"USDT": ("300.30000000", Z)}  # all of it released


def test_a_fill_settles_base_quote_and_fees_and_the_ledger_says_so(stack, accounts):
    maker = accounts("maker", {"BTC": "1", "USDT": "1000"})
    taker = accounts("taker", {"BTC": "1", "USDT": "1000"})
    ask = maker.order(side="sell", price="30000", quantity="0.01")
    assert (ask["status"], ask["locked"], ask["locked_asset"]) == ("new", "0.01000000", "BTC")
    assert maker.balances()["BTC"] == ("0.99000000", "0.01000000")
    bid = taker.order(side="buy", price="30100", quantity="0.004")  # fills at 30000
    assert bid["status"] == "filled" and bid["locked"] == Z
    [fill] = bid["fills"]
    trade_id = fill["trade_id"]
    assert Decimal(fill["fee"]) == Decimal("0.12")  # 120 x 0.001
    # the taker paid 120 + 0.12 (its 120.5204 lock released the rest), got 0.004 BTC
    assert taker.balances() == {"BTC": ("1.00400000", Z), "USDT": ("879.88000000", Z)}
    # the maker gave 0.004 of its locked BTC, got 120 - its 0.12 fee
    assert maker.balances() == {"BTC": ("0.99000000", "0.00600000"),
                                "USDT": ("1119.88000000", Z)}  # fmt: skip
    assert maker.ok(f"/api/v1/orders/{ask['order_id']}")["locked"] == "0.00600000"

    def trade_entries(client: Client, order_id: int) -> dict[str, tuple[str, str, str]]:
        rows = client.ok("/api/v1/ledger")
        mine = [e for e in rows if e["trade_id"] == trade_id]
        assert rows[:len(mine)] == mine  # newest first: the trade's after the deposits
        assert all((e["symbol"], e["order_id"], e["reference"]) == (SYM, order_id, None)
                   for e in mine)  # fmt: skip
        return {f"{e['reason']} {e['asset']}": (e["amount"], e["balance"]) for e in mine}

    assert trade_entries(taker, bid["order_id"]) == {
        "trade BTC": ("0.00400000", "1.00400000"),
        "trade USDT": ("-120.00000000", "880.00000000"),
        "fee USDT": ("-0.12000000", "879.88000000"),
    }
    assert trade_entries(maker, ask["order_id"]) == {  # balance = available + locked after
        "trade BTC": ("-0.00400000", "0.99600000"),
        "trade USDT": ("120.00000000", "1120.00000000"),
        "fee USDT": ("-0.12000000", "1119.88000000"),
    }
    only_btc = taker.ok("/api/v1/ledger", asset="BTC")
    assert [(e["reason"], e["amount"]) for e in only_btc] == [("trade", "0.00400000"),
                                                               ("deposit", "1.00000000")]
    assert taker.ok("/api/v1/ledger", asset="BTC", limit=1) == only_btc[:1]
    assert len(taker.ok("/api/v1/ledger", limit=2)) == 2
    assert taker.ok("/api/v1/ledger", asset="SOL") == []


def test_a_maker_rebate_is_credited_as_such(stack, accounts):
    maker = accounts("maker", {"ETH": "1"})
    taker = accounts("taker", {"BTC": "0.06"})
    ask = maker.order(symbol="ETH-BTC", side="sell", price="0.05", quantity="1")
    bid = taker.order(symbol="ETH-BTC", side="buy", price="0.05", quantity="1")
    assert bid["status"] == "filled"
    # 0.05 BTC notional: the taker pays 0.000025 on top, the maker gets 0.000005 more
    assert taker.balances() == {"BTC": ("0.00997500", Z), "ETH": ("1.00000000", Z)}
    assert maker.balances() == {"BTC": ("0.05000500", Z), "ETH": (Z, Z)}
    rebate = [e for e in maker.ok("/api/v1/ledger") if e["reason"] == "rebate"]
    assert [(e["asset"], e["amount"], e["balance"], e["order_id"]) for e in rebate] == [
        ("BTC", "0.00000500", "0.05000500", ask["order_id"])]
    fee = [e for e in taker.ok("/api/v1/ledger") if e["reason"] == "fee"]
    assert [(e["asset"], e["amount"]) for e in fee] == [("BTC", "-0.00002500")]


# -- withdrawals --------------------------------------------------------------------------------


def test_withdrawals_complete_or_are_rejected_and_a_repeat_answers_the_first(
    stack, ops, accounts
):
    alice, bob = accounts("alice", {"USDT": "100"}), accounts("bob", {"USDT": "5"})
    w1, w2 = ref("w"), ref("w")
    first = alice.withdraw("USDT", "30", w1)
    transfer(dict(first), type="withdrawal", client_withdrawal_id=w1,
             account_id=alice.account_id, asset="USDT", amount="30.00000000",
             status="completed", reason=None, partition=0)  # fmt: skip
    assert alice.balances() == {"USDT": ("70.00000000", Z)}
    short = alice.withdraw("USDT", "80", w2)  # still 201: the outcome is the answer
    assert (short["status"], short["reason"], short["amount"]) == (
        "rejected", "insufficient_funds", "80.00000000")
    assert alice.balances() == {"USDT": ("70.00000000", Z)}
    # a retry is answered with the first outcome and changes nothing, whatever it says now
    assert alice.withdraw("USDT", "1", w1) == first
    ops.deposit(alice.account_id, "USDT", "100", ref())
    assert alice.withdraw("USDT", "80", w2) == short  # rejected once, rejected for good
    assert alice.balances() == {"USDT": ("170.00000000", Z)}
    # client_withdrawal_id is per account: bob's w1 is his own
    theirs = bob.withdraw("USDT", "5", w1)
    assert theirs["status"] == "completed" and theirs["id"] != first["id"]
    assert theirs["account_id"] == bob.account_id
    assert bob.balances() == {"USDT": (Z, Z)}
    assert alice.balances() == {"USDT": ("170.00000000", Z)}
    # the list: each withdrawal once, newest first, rejected ones too
    listed = alice.ok("/api/v1/withdrawals")
    assert listed == [short, first]
    assert alice.ok("/api/v1/withdrawals", limit=1) == [short]
    assert alice.ok("/api/v1/withdrawals", partition=1) == []
    assert bob.ok("/api/v1/withdrawals") == [theirs]
    ledger = [e for e in alice.ok("/api/v1/ledger") if e["reason"] == "withdrawal"]
    assert [(e["amount"], e["balance"], e["reference"]) for e in ledger] == [
        ("-30.00000000", "70.00000000", w1)]  # the rejected one moved nothing


def test_another_accounts_money_is_never_visible(stack, ops, accounts):
    alice = accounts("alice", {"BTC": "1", "USDT": "1000"})
    alice.order(side="buy", price="100", quantity="0.01")
    alice.withdraw("USDT", "1", ref("w"))
    mallory = accounts("mallory")
    for partition in (0, 1):
        for path in ("/api/v1/balances", "/api/v1/ledger", "/api/v1/withdrawals"):
            assert mallory.ok(path, partition=partition) == [], path
    err(mallory.get(f"/api/v1/admin/accounts/{alice.account_id}/balances"), 403, "forbidden")
    # nothing but the operators' routes takes another account's id: a query naming one is not
    # obeyed (the caller's own keys are read)
    assert mallory.ok("/api/v1/balances", account_id=alice.account_id) == []
    assert alice.balances()["USDT"] == ("997.99900000", "1.00100000")  # 1000 - 1 - the lock


def test_bad_inputs_are_400_and_nothing_is_journaled(stack, ops, accounts):
    alice = accounts("alice", {"USDT": "10"})
    w = {"asset": "USDT", "amount": "1", "client_withdrawal_id": "bad-1"}
    d = {"account_id": alice.account_id, "asset": "USDT", "amount": "1", "deposit_id": "bad-1"}
    cases = [
        ({"asset": "XYZ"}, "unknown_asset"),
        ({"asset": "usdt"}, "unknown_asset"),
        ({"asset": "USDT\n"}, "unknown_asset"),
        ({"asset": 5}, "unknown_asset"),
        ({"amount": "0.000000001"}, "off_unit"),  # 9 decimals; the asset has 8
        ({"amount": "-1"}, "invalid_decimal"),
        ({"amount": "0"}, "invalid_decimal"),
        ({"amount": "0.00000000"}, "invalid_decimal"),
        ({"amount": 1}, "invalid_decimal"),  # JSON numbers are never money
        ({"amount": 1.5}, "invalid_decimal"),
        ({"amount": "1e3"}, "invalid_decimal"),
        ({"amount": " 1"}, "invalid_decimal"),
        ({"amount": "1\x00"}, "invalid_decimal"),
        ({"amount": "١"}, "invalid_decimal"),  # an Arabic-Indic digit
        ({"amount": "99999999999999999"}, "invalid_decimal"),  # beyond 10**18 units
        ({"amount": None}, "missing_field"),
        ({"partition": 7}, "invalid_field"),
        ({"partition": "0"}, "invalid_field"),
        ({"partition": True}, "invalid_field"),
        ({"partition": -1}, "invalid_field"),
        ({"partition": 0.0}, "invalid_field"),
        ({"memo": "x"}, "unknown_field"),
    ]
    before = stream_lengths(stack)
    for change, code in cases:
        for client, path, base in ((alice, "/api/v1/withdrawals", w),
                                   (ops, "/api/v1/admin/deposits", d)):
            e = err(client.post(path, {**base, **change}), 400, code)
            assert "\x00" not in e["message"] and "\n" not in e["message"], e
    for client, path, base, field in ((alice, "/api/v1/withdrawals", w, "client_withdrawal_id"),
                                      (ops, "/api/v1/admin/deposits", d, "deposit_id")):
        for bad in ("w\x00", "x" * 65, "a b", "ü", "", 7):
            err(client.post(path, {**base, field: bad}), 400, "invalid_field")
        err(client.post(path, {k: v for k, v in base.items() if k != field}), 400,
            "missing_field")  # fmt: skip
        err(client.post(path, {k: v for k, v in base.items() if k != "asset"}), 400,
            "missing_field")  # fmt: skip
        err(client.post(path, [base]), 400, "malformed_json")
        err(client.session.post(stack.url + path, data='{"asset": "USDT", "asset": "BTC"}',
                                headers={"Content-Type": "application/json"}),
            400, "malformed_json")  # fmt: skip
        err(client.session.post(stack.url + path, data=json.dumps(base),
                                headers={"Content-Type": "text/plain"}),
            415, "unsupported_media_type")  # fmt: skip
    for bad in ("bad\x00id", "a" * 65, 7, "a@b"):
        err(ops.post("/api/v1/admin/deposits", {**d, "account_id": bad}), 400, "invalid_field")
    for path, params, code in (
        ("/api/v1/ledger", {"asset": "NOPE"}, "unknown_asset"),
        ("/api/v1/ledger", {"asset": "usdt"}, "unknown_asset"),
        ("/api/v1/ledger", {"limit": "0"}, "invalid_field"),
        ("/api/v1/ledger", {"limit": "1001"}, "invalid_field"),
        ("/api/v1/ledger", {"limit": "1.5"}, "invalid_field"),
        ("/api/v1/withdrawals", {"limit": "-1"}, "invalid_field"),
        ("/api/v1/balances", {"partition": "9"}, "invalid_field"),
        ("/api/v1/balances", {"partition": "abc"}, "invalid_field"),
        ("/api/v1/balances", {"partition": "-1"}, "invalid_field"),
        ("/api/v1/ledger", {"partition": "٠"}, "invalid_field"),
    ):
        err(alice.get(path, **params), 400, code)
    assert stream_lengths(stack) == before
    assert alice.balances() == {"USDT": ("10.00000000", Z)}


# -- the balance events of the orders channel ----------------------------------------------------


class Socket(LiveSocket):
    """Authenticated and subscribed to the ``orders`` channel."""

    def __init__(self, stack: Stack, api_key: str) -> None:
        super().__init__(stack)
        self.send({"op": "auth", "api_key": api_key})
        assert self.until(lambda m: True)["type"] == "authenticated"
        self.send({"op": "subscribe", "channels": ["orders"]})
        assert self.until(lambda m: True)["type"] == "subscribed"


def test_balance_events_reach_only_their_owner(stack, ops, accounts):
    alice, bob = accounts("alice"), accounts("bob")
    mine, theirs = Socket(stack, alice.api_key), Socket(stack, bob.api_key)
    try:
        ops.deposit(alice.account_id, "USDT", "50", ref())
        event = mine.until(lambda m: m.get("type") == "balance")
        assert event["channel"] == "orders" and isinstance(event["sequence"], int)
        assert event["data"] == {"event": "balance", "partition": 0, "asset": "USDT",
                                 "available": "50.00000000", "locked": Z}  # fmt: skip
        order = alice.order(side="buy", price="100", quantity="0.1")  # 10 + 0.1 x 0.1 fee
        seen = []
        event = mine.until(lambda m: seen.append(m) or m.get("type") == "balance")
        assert event["data"] == {"event": "balance", "partition": 0, "asset": "USDT",
                                 "available": "39.99000000", "locked": "10.01000000"}
        new = [m for m in seen if m.get("type") == "order"]
        assert new and new[0]["data"]["order_id"] == order["order_id"]
        assert new[0]["data"]["locked"] == "10.01000000"
        assert new[0]["sequence"] < event["sequence"]  # the order's events, then its balances
        ops.deposit(alice.account_id, "ETH", "1", ref(), partition=1)
        event = mine.until(lambda m: m.get("type") == "balance")
        assert event["data"] == {"event": "balance", "partition": 1, "asset": "ETH",
                                 "available": "1.00000000", "locked": Z}  # fmt: skip
        assert theirs.drain(1.0) == []  # bob's socket never heard of any of it
    finally:
        mine.close()
        theirs.close()


# -- the operators' CLI, and a worker that does not answer ---------------------------------------


def flask_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLASK, "--app", "app", *args], cwd=ROOT, env=stack.env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_deposit_cli(stack, accounts):
    erin = accounts("erin")
    done = flask_cli(stack, "deposit", erin.account_id, "USDT", "12.5")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["deposit_id"].startswith("cli-") and len(made["deposit_id"]) == 20
    transfer(dict(made), type="deposit", deposit_id=made["deposit_id"],
             account_id=erin.account_id, asset="USDT", amount="12.50000000",
             status="completed", reason=None, partition=0)  # fmt: skip
    reference = ref("bank")
    once = flask_cli(stack, "deposit", erin.account_id, "ETH", "0.5", "--id", reference,
                     "--partition", "1")  # fmt: skip
    twice = flask_cli(stack, "deposit", erin.account_id, "ETH", "0.5", "--id", reference,
                      "--partition", "1")  # fmt: skip
    assert once.returncode == twice.returncode == 0, once.stderr + twice.stderr
    assert json.loads(once.stdout) == json.loads(twice.stdout)  # credited once
    assert json.loads(once.stdout)["partition"] == 1
    assert erin.balances() == {"USDT": ("12.50000000", Z)}
    assert erin.balances(partition=1) == {"ETH": ("0.50000000", Z)}
    before = stream_lengths(stack)
    for args, code in (
        ((erin.account_id, "XYZ", "1"), "unknown_asset"),
        ((erin.account_id, "USDT", "0.000000001"), "off_unit"),
        ((erin.account_id, "USDT", "0"), "invalid_decimal"),
        ((erin.account_id, "USDT", "1,5"), "invalid_decimal"),
        (("99999999", "USDT", "1"), "unknown_account"),
        (("bad id", "USDT", "1"), "invalid_field"),
        ((erin.account_id, "USDT", "1", "--partition", "7"), "invalid_field"),
        ((erin.account_id, "USDT", "1", "--id", "no spaces"), "invalid_field"),
    ):
        bad = flask_cli(stack, "deposit", *args)
        assert bad.returncode == 1 and bad.stdout == "", (args, bad.stdout, bad.stderr)
        assert f"Error: {code}: " in bad.stderr, (args, bad.stderr)
    assert stream_lengths(stack) == before
    assert erin.balances() == {"USDT": ("12.50000000", Z)}


def test_a_slow_worker_answers_202_and_the_same_reference_then_answers_the_outcome(
    stack, ops, accounts
):
    alice = accounts("alice", {"USDT": "10"})
    wid, did = ref("w"), ref("d")
    stack.stop_worker()
    try:
        accepted = alice.withdraw("USDT", "4", wid, status=202)
        assert accepted == {"id": accepted["id"], "status": "accepted", "type": "withdrawal",
                            "client_withdrawal_id": wid, "account_id": alice.account_id,
                            "asset": "USDT", "amount": "4.00000000", "partition": 0}
        deposit = ops.deposit(alice.account_id, "USDT", "1", did, status=202)
        assert (deposit["status"], deposit["type"], deposit["deposit_id"]) == (
            "accepted", "deposit", did)
        cli = flask_cli(stack, "deposit", alice.account_id, "BTC", "2", "--wait", "0.5")
        assert cli.returncode == 0, cli.stderr
        queued = json.loads(cli.stdout)
        assert (queued["status"], queued["asset"], queued["amount"]) == (
            "accepted", "BTC", "2.00000000")
        assert alice.balances() == {"USDT": ("10.00000000", Z)}  # nothing applied yet
    finally:
        stack.start_worker()
    done = alice.withdraw("USDT", "4", wid)  # the retry: the first outcome, with the first id
    assert done["id"] == accepted["id"] and done["status"] == "completed"
    assert ops.deposit(alice.account_id, "USDT", "1", did)["id"] == deposit["id"]
    wait_until(lambda: alice.balances() == {"BTC": ("2.00000000", Z),
                                            "USDT": ("7.00000000", Z)}, 20, "the deposits")


# -- in process: what the routes journal (Flask test client, a fake worker) ----------------------


def test_routes_journal_the_callers_account_and_canonical_amounts(client, rdb, alice,
                                                                  fake_worker):  # fmt: skip
    def respond(wire: dict[str, Any]) -> dict[str, Any]:
        kind = wire["op"]
        ref_field = "deposit_id" if kind == "deposit" else "client_withdrawal_id"
        return {"ok": True, "transfer": {
            "id": wire["id"], "type": kind, ref_field: wire[ref_field],
            "account_id": wire["account"], "asset": wire["asset"], "amount": wire["amount"],
            "status": "completed", "reason": None, "partition": 0, "created_at": 1}}

    worker = fake_worker(respond)
    ops = {"X-API-Key": create_account(rdb, "ops", operator=True)["api_key"]}
    resp = client.post("/api/v1/withdrawals", headers=alice["headers"],
                       json={"asset": "BTC", "amount": "0.5", "client_withdrawal_id": "w-1",
                             "partition": None})  # fmt: skip
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["amount"] == "0.50000000"
    resp = client.post("/api/v1/admin/deposits", headers=ops,
                       json={"account_id": alice["account_id"], "asset": "USDT",
                             "amount": "007.10", "deposit_id": "d-1", "partition": 0})
    assert resp.status_code == 201, resp.get_json()
    seen = [{k: v for k, v in w.items() if k not in ("id", "reply_to")} for w in worker.seen]
    assert seen == [
        {"op": "withdrawal", "account": alice["account_id"], "asset": "BTC",
         "amount": "0.50000000", "client_withdrawal_id": "w-1"},
        {"op": "deposit", "account": alice["account_id"], "asset": "USDT",
         "amount": "7.10000000", "deposit_id": "d-1"},
    ]  # fmt: skip
    # a withdrawal names no account: a body naming one is refused, never obeyed
    resp = client.post("/api/v1/withdrawals", headers=alice["headers"],
                       json={"asset": "BTC", "amount": "1", "client_withdrawal_id": "w-2",
                             "account_id": "1"})  # fmt: skip
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "unknown_field"
    assert len(worker.seen) == 2


def test_a_worker_error_reply_is_an_error_and_no_reply_is_202(client, alice, fake_worker):
    fake_worker(lambda w: {"ok": False, "error": {"code": "invalid_field", "message": "no"}})
    body = {"asset": "BTC", "amount": "1", "client_withdrawal_id": "w-1"}
    resp = client.post("/api/v1/withdrawals", headers=alice["headers"], json=body)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_field"


def test_no_reply_in_time_is_202(client, alice):
    body = {"asset": "BTC", "amount": "1", "client_withdrawal_id": "w-1"}
    resp = client.post("/api/v1/withdrawals", headers=alice["headers"], json=body)
    assert resp.status_code == 202
    assert resp.get_json() == {"id": resp.get_json()["id"], "status": "accepted",
                               "type": "withdrawal", "client_withdrawal_id": "w-1",
                               "account_id": alice["account_id"], "asset": "BTC",
                               "amount": "1.00000000", "partition": 0}  # fmt: skip


def test_the_default_partition_is_the_lowest_in_use(redis_url):
    from web.app import create_app

    every = ",".join(f"{s}=2" for s in ("BTC-USDT", "ETH-USDT", "ETH-BTC", "SOL-USDT",
                                        "DOGE-USDT"))  # fmt: skip
    app = create_app({"REDIS_URL": redis_url, "FAIRBOOK_REPLY_TIMEOUT": 0.2, "TESTING": True,
                      "FAIRBOOK_PARTITIONS": every})  # fmt: skip
    state = app.extensions["fairbook"]
    try:
        acct = create_account(state.redis, "alice")
        client = app.test_client()
        h = {"X-API-Key": acct["api_key"]}
        body = {"asset": "BTC", "amount": "1", "client_withdrawal_id": "w-1"}
        resp = client.post("/api/v1/withdrawals", headers=h, json=body)
        assert resp.status_code == 202 and resp.get_json()["partition"] == 2
        assert resp.get_json()["id"] & 0xFF == 2
        assert state.redis.xlen(state.keys(2).stream) == 1
        resp = client.post("/api/v1/withdrawals", headers=h, json={**body, "partition": 0})
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_field"
        assert client.get("/api/v1/balances", headers=h).get_json() == []
    finally:
        if state.inbox is not None:
            state.inbox.stop()
        state.redis.close()
