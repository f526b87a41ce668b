"""Hostile input, finding by finding: each answer is a clear 4xx JSON error and changes nothing.

Route-level checks run against the app with a fake worker; what only the real server shows
(framing, slow clients, WebSocket handshakes) runs against a whole stack.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from typing import Any

import pytest
import requests
import websocket

from bench.stack import Stack
from engine.validation import command_from_wire, validate_amend_request, validate_order_request
from protocol import wire
from protocol.config import load_markets
from web.hub import Hub

ORDER = {"symbol": "BTC-USDT", "side": "sell", "type": "limit", "price": "30000.00",
         "quantity": "0.01000"}  # fmt: skip
JSON = {"Content-Type": "application/json"}


def post(client: Any, who: dict, body: Any) -> Any:
    return client.post("/api/v1/orders", data=json.dumps(body), headers={**who["headers"], **JSON})


def assert_error(resp: Any, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.data)
    error = resp.get_json()["error"]
    assert set(error) == {"code", "message"}
    if code is not None:
        assert error["code"] == code
    return error


# -- strict, whole-string validation ------------------------------------------------------------


@pytest.mark.parametrize("coid", ["c1\n", "c1\r", "c\x00", "c1\t", "\u00e9t\u00e9", "c" * 65, " c"])
def test_client_order_id_must_match_in_full(client, alice, coid) -> None:
    error = assert_error(post(client, alice, {**ORDER, "client_order_id": coid}), 400)
    assert error["code"] == "invalid_field"


@pytest.mark.parametrize(
    "field,value",
    [("price", "30000.0\n"), ("price", "30000.00 "), ("price", "\t30000.00"),
     ("price", "30000\u00b2"), ("price", "\u0663\u0660\u0660\u0660\u0660"),
     ("quantity", "0.0100\n"),
     ("price", "+30000"), ("price", "3e4"), ("price", "NaN"), ("price", "Infinity"),
     ("price", "30000."), ("price", ".5"), ("price", "1.2.3"), ("price", 30000),
     ("quantity", 0.01), ("price", True), ("price", ["30000"]), ("price", "")],
)  # fmt: skip
def test_decimals_are_ascii_digits_with_one_point(client, alice, field, value) -> None:
    assert_error(post(client, alice, {**ORDER, field: value}), 400, "invalid_decimal")


def test_amends_and_quote_budgets_are_as_strict() -> None:
    markets = load_markets()
    for body in ({"quantity": "0.0100\n"}, {"price": "30000.0\n"}, {"price": " 1"}):
        with pytest.raises(ValueError):
            validate_amend_request(body, markets["BTC-USDT"])
    budget = {"symbol": "BTC-USDT", "side": "buy", "type": "market", "quote_quantity": "100.0\n"}
    with pytest.raises(ValueError):
        validate_order_request(budget, markets)
    # the worker applies the same checks to what it reads from the journal
    journaled = {"op": "new", "id": 256, "account": "1", **ORDER, "client_order_id": "x\n"}
    with pytest.raises(ValueError):
        command_from_wire(journaled, 1, markets)
    with pytest.raises(ValueError):
        command_from_wire({"op": "new", "id": 256, "account": "1\n", **ORDER}, 1, markets)


@pytest.mark.parametrize("field", ["side", "type", "time_in_force", "stp", "symbol"])
def test_enumerations_are_exact_strings(client, alice, field) -> None:
    for bad in (ORDER.get(field, "GTC") + "\n", 1, ["x"]):
        assert post(client, alice, {**ORDER, field: bad}).status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/orders/256%0A", "/api/v1/orders/%C2%B2",
                                  "/api/v1/orders/+256", "/api/v1/orders/256%00"])  # fmt: skip
def test_path_ids_match_in_full(client, alice, path) -> None:
    assert_error(client.get(path, headers=alice["headers"]), 404, "unknown_order")


def test_query_numbers_match_in_full(client) -> None:
    for depth in ("5\n", "\u0665", "5 ", "99999999999999999999"):
        resp = client.get("/api/v1/book/BTC-USDT", query_string={"depth": depth})
        assert_error(resp, 400, "invalid_field")


def test_errors_quote_nothing_they_should_not(client, alice) -> None:
    hostile = "<script>alert(1)</script>" + "x" * 500
    for body in ({**ORDER, "symbol": hostile}, {**ORDER, hostile: 1}, {"a": 1, "a ": 2}):
        error = assert_error(post(client, alice, body), 400)
        assert "<script>" not in error["message"] and len(error["message"]) < 200
    resp = client.post("/api/v1/orders", data=b'{"symbol":"\xff\xfe"}',
                       headers={**alice["headers"], **JSON})  # fmt: skip
    assert_error(resp, 400, "malformed_json")


def test_a_key_with_control_characters_or_surrogates_is_just_unauthorized(client) -> None:
    for key in ("fb_x\x01", "fb_\x00", "fb_\u00e9", "k" * 300):
        assert_error(client.get("/api/v1/orders", headers={"X-API-Key": key}), 401)


def test_another_accounts_order_looks_exactly_like_a_missing_one(client, alice, bob,
                                                                 rdb, fake_worker) -> None:
    fake_worker(lambda w: {"ok": False, "error": {"code": "unknown_order", "message": "no open"}})
    rdb.set("fb:{p0}:order:256", wire.order_record(alice["account_id"], {
        "order_id": 256, "symbol": "BTC-USDT", "status": "new"}, []))  # fmt: skip
    for method in ("get", "delete", "patch"):
        theirs = getattr(client, method)("/api/v1/orders/256", json={"quantity": "0.01"},
                                         headers=bob["headers"])  # fmt: skip
        missing = getattr(client, method)("/api/v1/orders/512", json={"quantity": "0.01"},
                                          headers=bob["headers"])  # fmt: skip
        assert (theirs.status_code, theirs.get_json()) == (missing.status_code, missing.get_json())
        assert theirs.status_code == 404


# -- poison-proof pub/sub ---------------------------------------------------------------------


class _Sub:
    account = "1"

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def offer(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def next_sequence(self, channel: str) -> int:
        return len(self.frames)

    def slow_consumer(self) -> None:  # pragma: no cover - never full here
        raise AssertionError


class _NoRedis:
    def get(self, key: str) -> None:
        return None


def test_a_poisoned_message_is_counted_and_skipped_alone() -> None:
    markets = load_markets()
    hub = Hub(lambda: _NoRedis(), markets)  # type: ignore[arg-type,return-value]
    sub = _Sub()
    hub.subscribe(sub, "trades:BTC-USDT")
    hub.subscribe(sub, "book:BTC-USDT:5")
    hub.subscribe(sub, "orders")
    before = len(sub.frames)
    good = wire.market_data_message("BTC-USDT", [wire.dumps({"trade_id": 1})], {
        "prev_sequence": 0, "sequence": 1, "bids": [["100.00", "0.01000"]], "asks": []}, None)
    for poison in (b'{"symbol":"BTC-USDT","trades":[{"trade_id":1}]\n', b"\xff", b"[]",
                   b'{"trades":[{"no_id":1}]}', b'{"book":{"sequence":"x"}}', b"null"):
        hub.dispatch({"channel": b"fb:md:BTC-USDT", "data": poison})
        hub.dispatch({"channel": b"fb:acct:1", "data": poison})
    assert hub.stats["poison"] >= 10
    hub.dispatch({"channel": b"fb:md:BTC-USDT", "data": good})
    frames = [json.loads(f[f.index(b"{"):]) for f in sub.frames[before:]]
    assert {"trade", "update"} <= {f["type"] for f in frames}  # the next good message still flows
    update = [f for f in frames if f["type"] == "update"][-1]
    assert update["bids"] == [["100.00", "0.01000"]]


# -- what only the real server shows ----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = Stack(log_dir=tmp_path_factory.mktemp("hostile"), gunicorn_args=(
        "-k", "web.server.Worker", "-w", "1"), env={
        "FAIRBOOK_MAX_CONNECTIONS_PER_IP": "200", "FAIRBOOK_HEADER_TIMEOUT": "3"})  # fmt: skip
    st.start()
    yield st
    st.stop()


def _raw(stack: Stack, data: bytes, source: str = "127.0.0.1") -> bytes:
    sock = socket.create_connection(("127.0.0.1", stack.web_port), source_address=(source, 0))
    sock.settimeout(10)
    sock.sendall(data)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    sock.close()
    return out


def _json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body.split(b"\r\nHTTP/")[0].split(b"\nHTTP/")[0])["error"]


@pytest.mark.e2e
@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE <script>\r\n\r\n", 400),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"<b>" * 4000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: 1\r\n\r\n", 400),
])  # fmt: skip
def test_the_server_refuses_in_json_and_quotes_nothing(stack, request_bytes, status) -> None:
    got, error = _json_error(_raw(stack, request_bytes))
    assert got == status
    assert b"<" not in json.dumps(error).encode() and "script" not in error["message"]


@pytest.mark.e2e
def test_broken_bodies_are_400_and_place_nothing(stack) -> None:
    key = stack.create_account("framing")["api_key"]
    head = (f"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/json\r\n").encode()  # fmt: skip
    body = json.dumps(ORDER).encode()
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n"
    got, error = _json_error(_raw(stack, chunked))
    assert got == 400, error
    sock = socket.create_connection(("127.0.0.1", stack.web_port))
    sock.sendall(head + f"Content-Length: {len(body) + 20}\r\n\r\n".encode() + body)
    sock.shutdown(socket.SHUT_WR)  # the client stops short of its Content-Length
    sock.settimeout(10)
    answer = sock.recv(65536)
    sock.close()
    assert answer.split(b" ", 2)[1] == b"400", answer
    orders = requests.get(stack.url + "/api/v1/orders?status=all", headers={"X-API-Key": key})
    assert orders.json() == []


@pytest.mark.e2e
def test_half_sent_connections_from_one_address_do_not_starve_others(stack) -> None:
    held = []
    try:
        for _ in range(400):  # twice the per-address cap, all from 127.0.0.2
            sock = socket.create_connection(("127.0.0.1", stack.web_port),
                                            source_address=("127.0.0.2", 0))  # fmt: skip
            sock.sendall(b"GET /api/v1/symbols HTTP/1.1\r\nHost")
            held.append(sock)
        times = []
        for _ in range(20):
            started = time.monotonic()
            assert requests.get(stack.url + "/api/v1/symbols", timeout=10).status_code == 200
            times.append(time.monotonic() - started)
        assert sorted(times)[len(times) // 2] < 1.0, times  # another address is served at once
        refusal = _raw(stack, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        status, error = _json_error(refusal)
        assert status == 429 and error["code"] == "too_many_connections"
        assert b"\r\nRetry-After: 1\r\n" in refusal.partition(b"\r\n\r\n")[0]
    finally:
        for sock in held:
            sock.close()


@pytest.mark.e2e
@pytest.mark.parametrize("headers,status", [
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}, 400),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8",
      "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}, 426),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "short"}, 400),
    ({}, 400),
])  # fmt: skip
def test_bad_websocket_handshakes_are_refused_before_the_upgrade(stack, headers, status) -> None:
    resp = requests.get(stack.url + "/ws", headers=headers, timeout=10)
    assert resp.status_code == status and resp.json()["error"]["code"] == "bad_handshake"


@pytest.mark.e2e
def test_bad_websocket_messages_get_json_errors_on_a_socket_that_stays_open(stack) -> None:
    ws = websocket.create_connection(stack.url.replace("http", "ws", 1) + "/ws", timeout=10)
    try:
        messages = [
            json.dumps({"op": "subscribe", "channels": ["book:BTC-USDT:\u00b2"]}),
            json.dumps({"op": "subscribe", "channels": ["book:BTC-USDT:" + "9" * 5000]}),
            json.dumps({"op": "subscribe", "channels": ["trades:BTC-USDT\n"]}),
            '{"op":"auth","api_key":"\\ud800"}',
            json.dumps({"op": "ping", "id": {"nested": 1}}),
            "[" * 60_000,
            "\x00\x01",
            "x" * 70_000,  # past FAIRBOOK_WS_MAX_MESSAGE
        ]
        for message in messages:
            ws.send(message)
            reply = json.loads(ws.recv())
            assert reply["type"] == "error", reply
            assert set(reply) <= {"type", "code", "message", "id"}
        ws.send(json.dumps({"op": "ping", "id": 7}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "pong" and reply["id"] == 7
    finally:
        ws.close()
