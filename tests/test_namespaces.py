"""Two whole Fairbooks in ONE Redis: the default namespace ``fb`` beside ``alt``.

Why: ``FAIRBOOK_NAMESPACE`` must reach every process (web, worker and its partition children,
replay, CLI), and a deployment must see nothing of its neighbour. Both stacks run the same
flow in lockstep, so their account ids, order ids and trade ids collide on purpose (each
namespace counts from 1): any read or message crossing over would show the other's prices
(100 on ``fb``, 200 on ``alt``). ``alt`` also has a second partition (ETH-USDT), so its worker
forks a child per partition. One module-scoped pair serves every test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from bench.stack import Stack
from tests.redis_server import STARTUP_TIMEOUT, RedisServer, wait_until
from web.accounts import hash_key

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SYM = "BTC-USDT"
#: each stack's price (and its ETH-USDT price): a value seen on the other stack is a leak
PRICE = {"fb": "100.00", "alt": "200.00"}
ETH_PRICE = {"fb": "900.00", "alt": "1000.00"}
#: what each stack deposits to its accounts (asset -> amount): told apart the same way
FUNDING = {"fb": {"BTC": "1", "USDT": "1000"}, "alt": {"BTC": "2", "USDT": "2000"}}
NAMESPACES = ("fb", "alt")


def other(ns: str) -> str:
    return "alt" if ns == "fb" else "fb"


class Socket:
    """A websocket-client socket that keeps every JSON frame it read."""

    def __init__(self, stack: Stack) -> None:
        self.ws = websocket.create_connection(stack.url.replace("http", "ws", 1) + "/ws",
                                              timeout=10)  # fmt: skip
        self.seen: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def until(self, pred, timeout: float = 20.0) -> dict[str, Any]:
        """The first frame (read from now on, or already seen) matching ``pred``."""
        for msg in self.seen:
            if pred(msg):
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(min(left, 0.5))  # short reads: server pings are not frames
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            self.seen.append(msg)
            if pred(msg):
                return msg
        raise AssertionError(f"expected frame did not arrive; last frames {self.seen[-5:]}")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(min(left, 0.2))
            try:
                self.seen.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                continue

    def close(self) -> None:
        self.ws.close()


@dataclass
class Side:
    """One namespace's stack and what the flow did on it."""

    stack: Stack
    accounts: dict[str, dict[str, str]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    socket: Socket | None = None
    commands: int = 0  # commands journaled by this flow
    cli_accounts: int = 0  # accounts made by ``flask create-account``

    def headers(self, name: str) -> dict[str, str]:
        return {"X-API-Key": self.accounts[name]["api_key"]}

    def get(self, path: str, name: str | None = None) -> requests.Response:
        headers = self.headers(name) if name else {}
        return requests.get(self.stack.url + path, headers=headers, timeout=10)

    def post(self, name: str, **body: Any) -> dict[str, Any]:
        resp = requests.post(self.stack.url + "/api/v1/orders", json=body,
                             headers=self.headers(name), timeout=30)  # fmt: skip
        self.commands += 1
        # 201, never 202: the worker's reply reached this web through its own namespace
        assert resp.status_code == 201, (self.stack.namespace.name, resp.status_code, resp.text)
        return resp.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RedisServer]:
    srv = RedisServer(dir=tmp_path_factory.mktemp("ns-redis"))
    srv.start()
    yield srv
    srv.stop()
    srv.cleanup()


@pytest.fixture(scope="module")
def sides(server, tmp_path_factory) -> Iterator[dict[str, Side]]:
    """Both stacks on the one server, the same flow run on each, their sockets listening."""
    # a long reply timeout: a lost reply shows as a 202 after 10 s, never as a slow machine
    stacks = {
        "fb": Stack(namespace="fb", redis_server=server, reply_timeout=10.0,
                    log_dir=tmp_path_factory.mktemp("ns-fb")),
        "alt": Stack(namespace="alt", redis_server=server, reply_timeout=10.0,
                     partitions="ETH-USDT=1", log_dir=tmp_path_factory.mktemp("ns-alt")),
    }  # fmt: skip
    started: list[Stack] = []
    out: dict[str, Side] = {}
    try:
        for stack in stacks.values():
            stack.start()
            started.append(stack)
        out.update((ns, Side(stack)) for ns, stack in stacks.items())
        for name in ("maker", "taker"):  # lockstep: the same account ids in both namespaces
            for side in out.values():
                side.accounts[name] = side.stack.create_account(name)
            assert out["fb"].accounts[name]["account_id"] == out["alt"].accounts[name]["account_id"]
        for ns, side in out.items():  # every order needs funds: deposits journaled first
            stack = side.stack
            maker, taker = (side.accounts[n]["account_id"] for n in ("maker", "taker"))
            funding = [(maker, "BTC", 0), (maker, "USDT", 0), (taker, "USDT", 0)]  # lockstep
            eth = stack.namespace.partition("ETH-USDT")
            if eth:  # alt: ETH-USDT's partition keeps a ledger of its own
                funding.append((maker, "USDT", eth))
            for account, asset, partition in funding:
                stack.deposit(account, asset, FUNDING[ns][asset], partition)
                side.commands += 1
        for side in out.values():  # subscribed before anything trades
            sock = side.socket = Socket(side.stack)
            sock.send({"op": "auth", "api_key": side.accounts["maker"]["api_key"]})
            assert sock.until(lambda m: m.get("type") == "authenticated")["account"] == (
                side.accounts["maker"]["account_id"])
            channels = ["orders", f"trades:{SYM}", f"book:{SYM}:5", "book:ETH-USDT:5"]
            sock.send({"op": "subscribe", "channels": channels})
            assert sock.until(lambda m: m.get("type") == "subscribed")["channels"] == channels
            sock.until(lambda m: m.get("type") == "snapshot" and m["channel"] == f"book:{SYM}:5")
        for ns, side in out.items():
            side.orders["ask"] = side.post("maker", symbol=SYM, side="sell", price=PRICE[ns],
                                           quantity="0.05")  # fmt: skip
            side.orders["bid"] = side.post("taker", symbol=SYM, side="buy", price=PRICE[ns],
                                           quantity="0.02")  # fmt: skip
            side.orders["eth"] = side.post("maker", symbol="ETH-USDT", side="buy",
                                           price=ETH_PRICE[ns], quantity="0.01")  # fmt: skip
        yield out
    finally:
        for side in out.values():
            if side.socket is not None:
                side.socket.close()
        for stack in started:
            stack.stop()


def _idle(stack: Stack) -> bool:
    """Every partition applied its whole journal."""
    client = stack.redis()
    try:
        for partition in stack.partition_ids():
            keys = stack.namespace.keys(partition)
            last = client.xrevrange(keys.stream, count=1)
            if last and client.get(keys.applied) != last[0][0]:
                return False
        return True
    finally:
        client.close()


# -- REST ---------------------------------------------------------------------------------------


def test_each_stack_matches_its_own_orders(sides):
    for ns, side in sides.items():
        ask, bid, eth = (side.orders[k] for k in ("ask", "bid", "eth"))
        assert ask["status"] == "new" and ask["price"] == PRICE[ns]
        assert bid["status"] == "filled" and [f["price"] for f in bid["fills"]] == [PRICE[ns]]
        assert eth["status"] == "new" and eth["price"] == ETH_PRICE[ns]  # partition 1 on alt
    # lockstep: the same ids on both sides, so a read that crossed over would be undetectable
    # by id alone; the prices tell them apart
    assert sides["fb"].orders["ask"]["order_id"] == sides["alt"].orders["ask"]["order_id"]


def test_rest_reads_show_only_their_own_namespace(sides):
    for ns, side in sides.items():
        ask, bid = side.orders["ask"], side.orders["bid"]
        got = side.get(f"/api/v1/orders/{ask['order_id']}", "maker").json()
        assert got["price"] == PRICE[ns] and got["status"] == "partially_filled"
        assert got["remaining_quantity"] == "0.03000"
        assert [f["price"] for f in got["fills"]] == [PRICE[ns]]
        open_orders = side.get("/api/v1/orders", "maker").json()
        assert sorted(o["price"] for o in open_orders) == sorted([PRICE[ns], ETH_PRICE[ns]])
        closed = side.get("/api/v1/orders?status=closed", "taker").json()
        assert [(o["order_id"], o["price"]) for o in closed] == [(bid["order_id"], PRICE[ns])]
        trades = side.get(f"/api/v1/trades/{SYM}").json()
        assert [(t["price"], t["quantity"]) for t in trades] == [(PRICE[ns], "0.02000")]
        book = side.get(f"/api/v1/book/{SYM}?depth=5").json()
        assert book["asks"] == [[PRICE[ns], "0.03000"]] and book["bids"] == []
        assert side.get(f"/api/v1/book/{SYM}").json()["asks"] == [[PRICE[ns], "0.03000"]]
        eth_book = side.get("/api/v1/book/ETH-USDT?depth=1").json()
        assert eth_book["bids"] == [[ETH_PRICE[ns], "0.0100"]] and eth_book["asks"] == []
        bbo = side.get(f"/api/v1/bbo/{SYM}").json()
        assert (bbo["ask_price"], bbo["bid_price"]) == (PRICE[ns], None)
        text = json.dumps([got, open_orders, closed, trades, book, eth_book, bbo])
        assert PRICE[other(ns)] not in text and ETH_PRICE[other(ns)] not in text


def test_balances_are_each_namespaces_own(sides):
    """Same account ids, same flow, other money: each stack's balances are its deposits and its
    own trades (BTC at 100 on fb, 200 on alt), in each partition of its own."""
    want = {
        # maker: sold 0.02 of 0.05 BTC (0.03 still locked), less the 0.1 % maker fee; its
        # ETH-USDT bid locks 0.01 x price plus the taker fee of each lot (fb: same partition)
        ("fb", "maker", 0): [{"asset": "BTC", "available": "0.95000000", "locked": "0.03000000"},
                             {"asset": "USDT", "available": "992.98900000",
                              "locked": "9.00900000"}],
        ("fb", "taker", 0): [{"asset": "BTC", "available": "0.02000000", "locked": "0.00000000"},
                             {"asset": "USDT", "available": "997.99800000",
                              "locked": "0.00000000"}],
        ("alt", "maker", 0): [{"asset": "BTC", "available": "1.95000000", "locked": "0.03000000"},
                              {"asset": "USDT", "available": "2003.99600000",
                               "locked": "0.00000000"}],
        ("alt", "maker", 1): [{"asset": "USDT", "available": "1989.99000000",
                               "locked": "10.01000000"}],
        ("alt", "taker", 0): [{"asset": "BTC", "available": "0.02000000", "locked": "0.00000000"},
                              {"asset": "USDT", "available": "1995.99600000",
                               "locked": "0.00000000"}],
        ("alt", "taker", 1): [],
    }  # fmt: skip
    for (ns, name, partition), balances in want.items():
        resp = sides[ns].get(f"/api/v1/balances?partition={partition}", name)
        assert resp.status_code == 200, resp.text
        assert resp.json() == balances, (ns, name, partition)
    client = sides["fb"].stack.redis()
    try:
        maker = sides["fb"].accounts["maker"]["account_id"]
        assert client.exists(f"fb:{{p0}}:balances:{maker}", f"alt:{{p0}}:balances:{maker}",
                              f"alt:{{p1}}:balances:{maker}") == 3  # fmt: skip
        assert not client.exists(f"fb:{{p1}}:balances:{maker}")  # fb has one partition
    finally:
        client.close()


def test_an_api_key_works_only_in_its_namespace(sides):
    for ns, side in sides.items():
        theirs = sides[other(ns)]
        # the same account id exists here, with another key: the neighbour's key is unknown
        resp = requests.get(side.stack.url + "/api/v1/orders", headers=theirs.headers("maker"),
                            timeout=10)  # fmt: skip
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"


# -- WebSocket ----------------------------------------------------------------------------------


def test_sockets_get_their_own_trades_books_and_fills(sides):
    for ns, side in sides.items():
        sock = side.socket
        assert sock is not None
        trade = sock.until(lambda m: m.get("channel") == f"trades:{SYM}"
                           and m.get("type") == "trade")  # fmt: skip
        assert trade["data"]["price"] == PRICE[ns] and trade["data"]["quantity"] == "0.02000"
        resting = [[PRICE[ns], "0.03000"]]
        update = sock.until(lambda m, want=resting: m.get("channel") == f"book:{SYM}:5"
                            and m.get("type") == "update" and m["asks"] == want)  # fmt: skip
        assert update["bids"] == []
        eth = [[ETH_PRICE[ns], "0.0100"]]
        sock.until(lambda m, want=eth: m.get("channel") == "book:ETH-USDT:5"
                   and m.get("type") == "update" and m["bids"] == want)  # fmt: skip
        fill = sock.until(lambda m: m.get("channel") == "orders" and m.get("type") == "fill")
        assert fill["data"]["price"] == PRICE[ns] and fill["data"]["liquidity"] == "maker"
        assert fill["data"]["order_id"] == side.orders["ask"]["order_id"]
        sock.until(lambda m, want=ETH_PRICE[ns]: m.get("type") == "order"
                   and m["data"]["price"] == want)  # fmt: skip
    for ns, side in sides.items():
        assert side.socket is not None
        side.socket.drain(0.5)  # anything late from the neighbour would arrive by now
        seen = side.socket.seen
        text = json.dumps(seen)
        assert PRICE[other(ns)] not in text and ETH_PRICE[other(ns)] not in text, seen
        assert len([m for m in seen if m.get("type") == "trade"]) == 1
        assert len([m for m in seen if m.get("type") == "fill"]) == 1


# -- CLI and replay -----------------------------------------------------------------------------


def _env(stack: Stack, namespace: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": stack.redis_url, "FAIRBOOK_NAMESPACE": namespace,
            "FAIRBOOK_PARTITIONS": stack.partitions,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip


def test_cli_creates_the_account_in_its_namespace_only(sides):
    alt, fb = sides["alt"], sides["fb"]
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "create-account", "carol"],
        cwd=ROOT, env=_env(alt.stack, "alt"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    acct = json.loads(out.stdout)
    alt.cli_accounts += 1
    headers = {"X-API-Key": acct["api_key"]}
    resp = requests.get(alt.stack.url + "/api/v1/orders", headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.json() == []
    resp = requests.get(fb.stack.url + "/api/v1/orders", headers=headers, timeout=10)
    assert resp.status_code == 401
    client = alt.stack.redis()
    try:
        digest = hash_key(acct["api_key"])
        assert client.hget("alt:accounts", digest) == acct["account_id"]
        assert client.hget("fb:accounts", digest) is None
        assert client.hget(f"alt:account:{acct['account_id']}", "name") == "carol"
        assert client.hget(f"fb:account:{acct['account_id']}", "name") != "carol"
    finally:
        client.close()


def test_replay_audits_each_namespace(sides):
    for ns, side in sides.items():
        wait_until(lambda s=side: _idle(s.stack), STARTUP_TIMEOUT, f"the {ns} worker catching up")
        out = subprocess.run([sys.executable, "-m", "worker", "replay"], cwd=ROOT,
                             env=_env(side.stack, ns), capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == len(side.stack.partition_ids()), lines  # alt: two partitions
        assert all("replay OK" in line for line in lines), lines
        assert "partition 0: replay OK" in lines[0] and "1 trades compared" in lines[0]
    # a namespace nobody wrote: the audit reads where it is told, nothing else
    empty = subprocess.run([sys.executable, "-m", "worker", "replay"], cwd=ROOT,
                           env=_env(sides["fb"].stack, "none"), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert empty.returncode == 0 and "nothing applied yet" in empty.stdout, empty.stdout


# -- the keys -----------------------------------------------------------------------------------


def test_every_key_is_under_its_namespace(sides):
    for side in sides.values():
        wait_until(lambda s=side: _idle(s.stack), STARTUP_TIMEOUT, "the workers catching up")
    client = sides["alt"].stack.redis()
    try:
        every = set(client.scan_iter(count=1000))
        assert every, "nothing written at all"
        stray = {k for k in every if not k.startswith(("fb:", "alt:"))}
        assert not stray, stray
        alt_keys = {k for k in every if k.startswith("alt:")}
        for expected in ("alt:{p0}:in", "alt:{p0}:applied", "alt:{p0}:trades", "alt:{p0}:lease",
                         f"alt:{{p0}}:book:{SYM}", "alt:{p1}:in", "alt:{p1}:applied",
                         "alt:{p1}:lease", "alt:{p1}:book:ETH-USDT", "alt:accounts",
                         "alt:next_account", "alt:{p0}:balances:1", "alt:{p1}:balances:1",
                         "alt:{p0}:deposits:1", "alt:{p1}:deposits:1", "alt:{p0}:ledger:2",
                         "alt:{p0}:balances:@fees", "alt:{p1}:deposits:1"):  # fmt: skip
            assert expected in alt_keys, (expected, sorted(alt_keys))
        # and nothing of alt's went under fb (or the other way): journals and account tables
        # hold exactly what each flow wrote
        for ns, side in sides.items():
            journaled = sum(client.xlen(side.stack.namespace.keys(p).stream)
                            for p in side.stack.partition_ids())  # fmt: skip
            assert journaled == side.commands, ns
            assert client.xlen(f"{ns}:{{p0}}:trades") == 1
            assert client.hlen(f"{ns}:accounts") == len(side.accounts) + side.cli_accounts, ns
        assert not any(k.startswith("fb:{p1}") for k in every)  # fb has one partition
    finally:
        client.close()
