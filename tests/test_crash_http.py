"""kill -9 through the front door: HTTP clients -> gunicorn web -> journal -> worker.

Concurrent clients post orders over real HTTP while the worker process is killed with SIGKILL
several times (and restarted), and the web server once. Afterwards every order the web
acknowledged (201 or 202) was journaled exactly once and processed exactly once, every fill a
201 reported exists in the recorded trades, and those trades equal a clean replay of the journal.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.stack import Stack
from protocol.config import load_markets
from protocol.keys import Keys
from tests.reply_listener import ReplyListener
from worker.replay import replay_partition

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

K = Keys(0)
CLIENTS = 4
SECONDS = 14.0


def client_loop(
    url: str, api_key: str, seed: int, acked: dict[int, dict], lost: list[str],
    stop: threading.Event, errors: list[BaseException],
) -> None:  # fmt: skip
    try:
        _post_until_stopped(url, api_key, seed, acked, lost, stop)
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(exc)


def _post_until_stopped(
    url: str, api_key: str, seed: int, acked: dict[int, dict], lost: list[str],
    stop: threading.Event,
) -> None:  # fmt: skip
    """Post a crossing flow of limits and markets until told to stop."""
    rng = random.Random(seed)
    session = requests.Session()
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    n = 0
    while not stop.is_set():
        n += 1
        side = rng.choice(("buy", "sell"))
        if rng.random() < 0.15:
            body = {"symbol": "BTC-USDT", "side": side, "type": "market",
                    "quantity": f"0.{rng.randint(100, 3000):05d}"}  # fmt: skip
        else:
            offset = rng.randint(-5, 5)
            price = 30000 + (offset if side == "sell" else -offset)
            body = {"symbol": "BTC-USDT", "side": side, "type": "limit", "price": f"{price}.00",
                    "quantity": f"0.{rng.randint(100, 3000):05d}"}  # fmt: skip
        body["client_order_id"] = f"c{seed}-{n}"
        try:
            resp = session.post(url + "/api/v1/orders", data=json.dumps(body), headers=headers,
                                timeout=10)  # fmt: skip
        except requests.RequestException as exc:  # the web was killed mid-request
            lost.append(type(exc).__name__)
            session = requests.Session()
            time.sleep(0.1)
            continue
        assert resp.status_code in (201, 202), (resp.status_code, resp.text)
        answer = resp.json()
        assert answer["order_id"] not in acked
        acked[answer["order_id"]] = {"status": resp.status_code, "body": answer,
                                     "client_order_id": body["client_order_id"]}  # fmt: skip


def kill_group(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_acknowledged_orders_survive_kill_dash_nine_of_worker_and_web(tmp_path: Path) -> None:
    started = time.monotonic()
    worker_cmd = f"{sys.executable} -m worker --lease-ms 1000 --snapshot-every 500"
    stack = Stack(reply_timeout=0.3, log_dir=tmp_path, env={"FAIRBOOK_WORKER_CMD": worker_cmd})
    os.environ["FAIRBOOK_WORKER_CMD"] = worker_cmd  # Stack.start_worker reads it from here
    stop = threading.Event()
    acked: list[dict[int, dict]] = [{} for _ in range(CLIENTS)]
    lost: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    listener: ReplyListener | None = None
    try:
        stack.start()
        listener = ReplyListener(stack.redis_server.port).start()
        keys = [stack.create_account(f"trader{i}")["api_key"] for i in range(CLIENTS)]
        threads = [
            threading.Thread(target=client_loop, daemon=True,
                             args=(stack.url, keys[i], 100 + i, acked[i], lost[i], stop, errors))
            for i in range(CLIENTS)
        ]  # fmt: skip
        for t in threads:
            t.start()
        rng = random.Random(3)
        worker_kills = web_kills = 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.8, 1.8))
            if worker_kills == 2 and not web_kills:
                kill_group(stack.web_proc)
                web_kills += 1
                time.sleep(0.2)
                stack.start_web()
            kill_group(stack.worker_proc)
            worker_kills += 1
            stack.start_worker(wait=False)
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert not errors, errors
        assert worker_kills >= 4 and web_kills == 1

        client = stack.redis()
        last = client.xrevrange(K.stream, count=1)[0][0]
        wait_until = time.monotonic() + 60
        while client.get(K.applied) != last:
            assert time.monotonic() < wait_until, stack.log_tail("worker")
            time.sleep(0.05)

        journal = [json.loads(fields["c"]) for _, fields in client.xrange(K.stream)]
        ids = [w["id"] for w in journal]
        assert len(ids) == len(set(ids)), "a command was journaled twice"
        every_ack = {oid: a for per_client in acked for oid, a in per_client.items()}
        assert len(every_ack) > 300, "too few orders to prove anything"
        assert any(a["status"] == 202 for a in every_ack.values()), "never hit a dead worker"
        # nothing lost: each acknowledged order is in the journal, with the client's id
        by_id = {w["id"]: w for w in journal}
        for oid, ack in every_ack.items():
            assert by_id[oid]["client_order_id"] == ack["client_order_id"]
        # processed exactly once: one order record per journaled order ...
        pipe = client.pipeline(transaction=False)
        for oid in ids:
            pipe.get(K.order(oid))
        records = pipe.execute()
        assert None not in records, "a journaled order was never processed"
        assert [json.loads(r)["order_id"] for r in records] == ids
        # ... and one reply published per tagged command, heard or not (Redis never restarted,
        # so the listener was subscribed all along)
        time.sleep(0.3)
        listener.stop()
        assert len(listener.resubscribed_at) == 1
        tokens = [w["reply_to"] for w in journal if "reply_to" in w]
        assert len(tokens) > 0.9 * len(journal)  # untagged only while a new web's inbox starts
        assert dict(listener.counts) == dict.fromkeys(tokens, 1), "a reply lost or doubled"
        # the recorded trades: contiguous, each 201's fills among them, equal to a clean replay
        trades = client.xrange(K.trades)
        numbers = [int(entry_id.split("-")[1]) for entry_id, _ in trades]
        assert numbers == list(range(1, len(numbers) + 1))
        recorded = {json.loads(f["t"])["trade_id"] for _, f in trades}
        for ack in every_ack.values():
            for fill in ack["body"].get("fills", []):
                assert fill["trade_id"] in recorded
        result = replay_partition(stack.redis_server.client(), 0, load_markets())
        assert result.ok, result.summary()
        assert result.trades == len(trades) > 100
    finally:
        os.environ.pop("FAIRBOOK_WORKER_CMD", None)
        stop.set()
        if listener is not None:
            listener.stop()
        stack.stop()
    assert time.monotonic() - started < 120
