"""The REST contract, fuzzed on a live stack (schemathesis), and the WebSocket with Hypothesis.

Every documented operation gets schema-conforming (positive) and schema-violating (negative)
requests, with the owner's key, another account's, a revoked, an unknown and no key. Checks:
no 5xx, every status, content type and body as web/openapi.json says, invalid data refused.
Afterwards: every order the fuzzer got a 2xx for is readable by its owner, the web and worker
processes are the ones that started, and the replay audit agrees with what was committed.

Bounded by ``FAIRBOOK_FUZZ_EXAMPLES`` (examples per operation and mode, default sized for about
a minute in CI); a long run is ``FAIRBOOK_FUZZ_EXAMPLES=2000 scripts/test
tests/web/test_fuzz_contract.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from bench.stack import ROOT, Stack
from engine.commands import PRICED_TYPES, STOP_TYPES
from protocol.config import load_markets
from tests.strategies import json_values
from tests.web.funding import fund
from web.accounts import revoke_key

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("FAIRBOOK_FUZZ_EXAMPLES", "50"))
WS_EXAMPLES = int(os.environ.get("FAIRBOOK_FUZZ_WS_EXAMPLES", str(4 * EXAMPLES)))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
#: not REST: the WebSocket is fuzzed below, frame by frame
NOT_REST = {"/ws"}
SYMBOL = "BTC-USDT"


def _tree(pid: int) -> set[int]:
    """A process and all its descendants (gunicorn's worker, the worker's partition children)."""
    found = {pid}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return set()
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found |= _tree(int(child))
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st_ = Stack(
        log_dir=tmp_path_factory.mktemp("fuzz"),
        gunicorn_args=("-k", "web.server.Worker", "-w", "1"), env={"FAIRBOOK_RATE_LIMITS": "off"},
    )  # fmt: skip
    st_.start()
    yield st_
    st_.stop()


@pytest.fixture(scope="module")
def keys(stack) -> dict[str, str]:
    """The keys the fuzzer sends: owner, another account, an operator (the admin routes),
    revoked, unknown, too long. Owner and other are funded: their orders can rest and trade."""
    accounts = {name: stack.create_account(f"fuzz-{name}", operator=name == "operator")
                for name in ("owner", "other", "operator", "revoked")}  # fmt: skip
    for name in ("owner", "other"):
        fund(stack, accounts[name]["account_id"])
    owner, other, revoked = (accounts[n]["api_key"] for n in ("owner", "other", "revoked"))
    client = stack.redis()
    try:
        revoke_key(client, revoked, stack.namespace.global_keys)
    finally:
        client.close()
    return {"owner": owner, "other": other, "operator": accounts["operator"]["api_key"],
            "revoked": revoked, "unknown": "fb_" + "x" * 43, "too_long": "k" * 300,
            "owner_account": accounts["owner"]["account_id"]}  # fmt: skip


@pytest.fixture(scope="module")
def contract(stack) -> Any:
    """The document as the stack serves it (its markets as the ``Symbol`` enum)."""
    doc = requests.get(stack.url + "/api/v1/openapi.json", timeout=10).json()
    # schemathesis' own list of refusals (no 5xx: those fail not_a_server_error anyway), plus
    # what the HTTP server refuses before routing: a request line or headers too long
    refusals = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429",
                "414", "431"]  # fmt: skip
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    return schemathesis.openapi.from_dict(doc, config=config)


def _mutated(case: Any, location: str) -> bool:
    """Whether a negative case broke something in ``location`` ("header", "path"): then that
    part is sent as schemathesis made it (no key of ours, no known order id)."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    places = [m.parameter_location for m in getattr(data, "mutations", None) or ()]
    places.append(getattr(data, "parameter_location", None))
    return any(str(getattr(place, "value", "")) == location for place in places)


MARKETS = load_markets()


def _make_valid(data: Any, body: dict[str, Any]) -> None:
    """Turn a positive order body into one the engine takes: the fields its type needs, amounts
    on the market's tick and lot grid (the schema says neither), so that a good share is placed
    and rests for amends and cancels to find. Symbol, side, type, stp and ids stay as made."""
    market = MARKETS.get(body.get("symbol"))
    if market is None:
        return
    kind = body.get("type") or "limit"
    for name in ("price", "stop_price", "quantity", "quote_quantity"):
        body.pop(name, None)
    top = min(market.max_lots, market.min_lots * 1000)
    lots = data.draw(st.integers(market.min_lots, top))
    cheapest = -(-market.min_notional_atoms // lots)  # price * quantity >= min_notional
    if kind in PRICED_TYPES:
        body["price"] = market.format_price(data.draw(st.integers(max(1, cheapest), 10**7)))
    if kind in STOP_TYPES:
        body["stop_price"] = market.format_price(data.draw(st.integers(1, 10**7)))
    if kind == "market" and data.draw(st.booleans()):
        low = max(1, market.min_notional_atoms)
        body["quote_quantity"] = market.format_quote(data.draw(st.integers(low, low * 1000)))
    else:
        body["quantity"] = market.format_qty(lots)
    if kind != "limit" or body.get("time_in_force") not in (None, "GTC"):
        body["post_only"] = False
    if kind in ("market", "stop_loss", "take_profit"):
        body["time_in_force"] = "IOC"


TRANSFERS = {"/api/v1/withdrawals", "/api/v1/admin/deposits"}


def _make_valid_transfer(data: Any, body: dict[str, Any], account: str) -> None:
    """A positive deposit or withdrawal body the engine takes: an amount on the asset's unit
    (8 decimals), partition 0 or absent, and a deposit for the owner's account."""
    units = data.draw(st.integers(1, 10**12))
    body["amount"] = f"{units // 10**8}.{units % 10**8:08d}"
    body["partition"] = data.draw(st.sampled_from([0, None]))
    if "account_id" in body:
        body["account_id"] = account


#: orders are placed first and cancelled all at once last, so reads, amends and cancels by id
#: in between find open ones
FIRST = ["POST /api/v1/orders", "GET /api/v1/orders", "GET /api/v1/orders/{order_id}",
         "PATCH /api/v1/orders/{order_id}", "DELETE /api/v1/orders/{order_id}"]  # fmt: skip


def _running_order(operation: Any) -> int:
    label = operation.label
    if label == "DELETE /api/v1/orders":
        return len(FIRST)
    return FIRST.index(label) if label in FIRST else len(FIRST) + 1


def _fuzz(stack: Stack, session: requests.Session, keys: dict[str, str], operation: Any,
          mode: GenerationMode, created: dict[int, str], statuses: Counter) -> None:
    """One operation in one generation mode, ``EXAMPLES`` cases: each sent with a drawn key
    (unless a negative case mutated the headers itself) and, for an id path, sometimes the id
    of an order placed earlier in the run, so amends and cancels reach real orders."""
    strategy = operation.as_strategy(generation_mode=mode)
    checks = CHECKS + ([negative_data_rejection] if mode.is_negative else [])

    @FUZZ
    @given(data=st.data())
    def run(data: Any) -> None:
        case = data.draw(strategy)
        if not (mode.is_negative and _mutated(case, "header")):
            who = data.draw(st.sampled_from(["owner"] * 10 + [
                "other", "operator", "revoked", "unknown", "too_long", None]))  # fmt: skip
            case.headers = dict(case.headers or {})
            case.headers.pop("X-API-Key", None)
            if who is not None:
                case.headers["X-API-Key"] = keys[who]
        if ("order_id" in (case.path_parameters or {}) and created
                and not _mutated(case, "path") and data.draw(st.booleans())):  # fmt: skip
            case.path_parameters["order_id"] = str(data.draw(st.sampled_from(sorted(created))))
        if (mode.is_positive and isinstance(case.body, dict) and operation.method.upper() == "POST"
                and data.draw(st.integers(0, 3))):  # three in four: made valid  # fmt: skip
            if operation.path in TRANSFERS:
                _make_valid_transfer(data, case.body, keys["owner_account"])
            else:
                _make_valid(data, case.body)
        response = case.call_and_validate(
            base_url=stack.url, session=session, checks=checks, timeout=30)
        statuses[(operation.label, response.status_code)] += 1
        if operation.label == "POST /api/v1/orders" and response.status_code in (201, 202):
            created[response.json()["order_id"]] = case.headers["X-API-Key"]

    try:
        run()
    except Unsatisfiable:  # no parameter, body or key to break (GET /api/v1/symbols)
        if not mode.is_negative:
            raise


@pytest.mark.timeout(300 + 2 * EXAMPLES)  # a long run takes ~0.7 s per example count
def test_rest_contract_holds_under_fuzzing(stack, keys, contract) -> None:
    before = {"web": _tree(stack.web_proc.pid), "worker": _tree(stack.worker_proc.pid)}
    assert all(before.values()), before
    session = requests.Session()
    created: dict[int, str] = {}  # order id -> the key that placed it
    statuses: Counter[tuple[str, int]] = Counter()
    operations = sorted((r.ok() for r in contract.get_all_operations()), key=_running_order)
    started = time.monotonic()
    for operation in operations:
        if operation.path not in NOT_REST:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(stack, session, keys, operation, mode, created, statuses)
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests in {elapsed:.1f} s, {len(created)} orders placed")
    for (label, status), n in sorted(statuses.items()):
        print(f"  {label} -> {status}: {n}")
    assert any(status == 201 for _, status in statuses), "no order was ever accepted"

    # anything accepted is consistent: readable by its owner (a 202 once the worker caught up)
    deadline = time.monotonic() + 30
    for order_id, key in sorted(created.items()):
        while True:
            got = session.get(f"{stack.url}/api/v1/orders/{order_id}",
                              headers={"X-API-Key": key}, timeout=10)  # fmt: skip
            if got.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.status_code == 200, (order_id, got.status_code, got.text)
        assert got.json()["order_id"] == order_id

    # the same processes served the whole run
    after = {"web": _tree(stack.web_proc.pid), "worker": _tree(stack.worker_proc.pid)}
    assert after == before, (before, after)
    assert stack.web_proc.poll() is None and stack.worker_proc.poll() is None

    # ... and the replay audit agrees with everything committed, these orders' records included
    _wait_applied(stack)
    audit = subprocess.run(
        [sys.executable, "-m", "worker", "replay", "--redis-url", stack.redis_url],
        cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    print(audit.stdout)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    records = sum(int(n) for n in re.findall(r"(\d+) order records read", audit.stdout))
    assert records >= len(created), (records, len(created))


def _wait_applied(stack: Stack, timeout: float = 30.0) -> None:
    """Until every partition's worker applied its journal's last entry."""
    client = stack.redis()
    try:
        deadline = time.monotonic() + timeout
        for partition in stack.partition_ids():
            k = stack.namespace.keys(partition)
            while True:
                last = client.xrevrange(k.stream, count=1)
                if not last or client.get(k.applied) == last[0][0]:
                    break
                assert time.monotonic() < deadline, "the worker did not catch up"
                time.sleep(0.05)
    finally:
        client.close()


# -- the WebSocket ------------------------------------------------------------------------------

channels = st.one_of(
    st.sampled_from(["trades:BTC-USDT", "bbo:ETH-USDT", "book:BTC-USDT:20", "book:BTC-USDT:0",
                     "orders", "trades:NOPE-USDT", "book:BTC-USDT:x", ""]),
    st.text(max_size=40),
)  # fmt: skip
ws_values = json_values(max_text=20, max_leaves=8)
ws_objects = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "nope"]) | ws_values},
    optional={"channels": st.lists(channels, max_size=5) | ws_values,
              "id": st.integers() | st.text(max_size=70) | ws_values,
              "api_key": st.text(max_size=30) | ws_values},
)  # fmt: skip
ws_messages = st.one_of(
    ws_objects.map(json.dumps),
    ws_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda n, c: c * n, st.integers(65_000, 70_000), st.sampled_from(["x", "[", "{"])),
    st.builds(lambda n: "y" * n, st.integers(16 * 65536 + 1, 16 * 65536 + 10)),  # closed 1009
)


def _connect(stack: Stack) -> websocket.WebSocket:
    return websocket.create_connection(stack.url.replace("http", "ws", 1) + "/ws", timeout=10)


def _frames_until_pong(ws: websocket.WebSocket, token: int) -> list[dict[str, Any]] | None:
    """Every frame up to our ping's pong; None if the server closed the socket (cleanly)."""
    ws.send(json.dumps({"op": "ping", "id": token}))
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:  # only ever 1009, for a message far too big
            assert int.from_bytes(data[:2], "big") == websocket.STATUS_MESSAGE_TOO_BIG, data
            return None
        if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            continue
        assert opcode == websocket.ABNF.OPCODE_TEXT, opcode
        frame = json.loads(data)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        if frame["type"] == "pong" and frame.get("id") == token:
            return frames
        frames.append(frame)
    raise AssertionError(f"no pong within 10 s; got {frames[-5:]}")


@pytest.mark.timeout(300 + WS_EXAMPLES)
def test_websocket_messages_get_json_answers_and_others_keep_their_data(stack, keys) -> None:
    watcher = _connect(stack)
    watcher.send(json.dumps({"op": "subscribe", "channels": [f"trades:{SYMBOL}"]}))
    assert json.loads(watcher.recv())["type"] == "subscribed"
    sockets = {"ws": _connect(stack)}
    counts: Counter[str] = Counter()
    tokens = iter(range(10**9))

    @settings(max_examples=WS_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(message=ws_messages)
    def run(message: str | bytes) -> None:
        ws = sockets["ws"]
        try:
            if isinstance(message, bytes):
                ws.send_binary(message)
            else:
                ws.send(message)
            frames = _frames_until_pong(ws, next(tokens))
            closed = "closed 1009"
        except (websocket.WebSocketConnectionClosedException, BrokenPipeError,
                ConnectionResetError):  # fmt: skip
            frames, closed = None, "reset while sending"  # closed while we still sent
        if frames is None:  # only a message past 16x the cap may cost the socket
            assert len(message) > 16 * 65536, len(message)
            counts[closed] += 1
            ws.close()
            sockets["ws"] = _connect(stack)
            return
        for frame in frames:
            counts[frame["type"]] += 1
            if frame["type"] == "error":
                assert set(frame) <= {"type", "code", "message", "id"}, frame
                assert isinstance(frame["code"], str) and isinstance(frame["message"], str)

    try:
        run()
        print(f"\nwebsocket fuzz: {dict(counts)}")
        assert counts["error"] > 0
        # the other client's subscription still delivers: one trade between two accounts
        maker = stack.create_account("ws-fuzz-maker")
        fund(stack, maker["account_id"])
        other = maker["api_key"]
        for key, side in ((other, "sell"), (keys["owner"], "buy")):
            resp = requests.post(stack.url + "/api/v1/orders", headers={"X-API-Key": key},
                                 json={"symbol": SYMBOL, "side": side, "price": "12345.00",
                                       "quantity": "0.001"}, timeout=10)  # fmt: skip
            assert resp.status_code == 201, resp.text
        watcher.settimeout(10)
        deadline = time.monotonic() + 10
        while True:
            frame = json.loads(watcher.recv())
            if frame.get("type") == "trade":
                break
            assert time.monotonic() < deadline, "the watcher got no trade"
    finally:
        sockets["ws"].close()
        watcher.close()
