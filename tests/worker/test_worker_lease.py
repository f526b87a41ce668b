"""Lease and fencing: one matcher per partition, a standby takes over, a stale worker writes
nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wk_helpers import (
    feed,
    fund,
    last_stream_id,
    money_audit,
    redis_state,
    trade_numbers,
    wait_applied,
)

from protocol.keys import Keys
from redis_server import STARTUP_TIMEOUT, wait_until
from web.journal import Journal
from worker.batch import Message
from worker.commit import BatchWriter, StateMismatch
from worker.lease import Lease, LeaseLost
from worker.replay import replay_partition
from worker.runner import connect

K = Keys(0)
ROOT = Path(__file__).resolve().parents[2]


def test_two_workers_one_active_standby_takes_over(redis_client, start_worker, markets):
    a = start_worker(lease_ms=1000)
    assert a.worker.active.wait(10)
    b = start_worker(lease_ms=1000)
    flow = feed(redis_client, markets, 400, seed=3)
    wait_applied(redis_client, last_stream_id(redis_client))
    assert not b.worker.active.is_set()
    assert redis_client.get(K.lease).decode() == a.worker.lease.token
    assert b.worker.applied_total == 0
    a.crash()  # lease left to expire
    assert b.worker.active.wait(10)
    feed(redis_client, markets, 400, flow=flow)
    wait_applied(redis_client, last_stream_id(redis_client))
    assert b.worker.applied_total == 400
    b.stop()
    numbers = trade_numbers(redis_client)
    assert numbers == list(range(1, len(numbers) + 1))
    assert replay_partition(redis_client, 0, markets).ok
    money_audit(redis_client, markets)  # balances = replay, conservation, deposits once


def test_stolen_lease_fences_writes(redis_client, start_worker, markets):
    # slow renewal: the commit must notice first
    a = start_worker(lease_ms=1000, renew_s=5.0)
    assert a.worker.active.wait(10)
    fund(redis_client, "1", "2")
    journal = Journal(redis_client, 0)
    _, reply = journal.submit({"op": "new", "account": "1", "symbol": "BTC-USDT", "side": "buy",
                               "type": "limit", "price": "100", "quantity": "0.1"}, 5)  # fmt: skip
    assert reply is not None
    redis_client.set(K.lease, "thief", px=3000)
    before = redis_state(redis_client)
    wire = {"op": "new", "account": "2", "symbol": "BTC-USDT", "side": "sell", "type": "limit",
            "price": "100", "quantity": "0.1"}  # fmt: skip
    second, waiter = journal.send(wire)
    deadline = time.monotonic() + 5
    while a.worker.active.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not a.worker.active.is_set()  # fenced out: back to standby
    after = redis_state(redis_client, skip=("lease", "in", "next_id"))
    assert after == {k: v for k, v in before.items() if not k.endswith((":in", ":next_id"))}
    assert not redis_client.exists(K.order(second))
    # when the thief's lease expires, the worker recovers and answers exactly once
    reply = journal.wait(wire, waiter, 10)
    assert reply is not None and reply["order"]["status"] == "filled"
    assert trade_numbers(redis_client) == [1]
    a.stop()


def test_writer_refuses_on_applied_mismatch_or_foreign_lease(redis_client):
    url = f"redis://127.0.0.1:{redis_client.connection_pool.connection_kwargs['port']}/0"
    lease = Lease(connect(url), K.lease, ttl_ms=5000)
    writer = BatchWriter(redis_client, K, lease)
    with pytest.raises(LeaseLost):
        writer.commit([("SET", "fb:{p0}:x", "1")], "1-0")
    assert lease.acquire()
    writer.committed = "5-0"  # we believe 5-0 was applied; Redis has nothing
    with pytest.raises(StateMismatch):
        writer.commit([("SET", "fb:{p0}:x", "1")], "6-0")
    assert not redis_client.exists("fb:{p0}:x") and not redis_client.exists(K.applied)
    writer.committed = None
    writer.commit([("SET", "fb:{p0}:x", "1")], "6-0", [Message("fb:md:X", b"{}")])
    assert redis_client.get("fb:{p0}:x") == b"1" and redis_client.get(K.applied) == b"6-0"
    writer.close()


def _spawn(url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "--redis-url", url, "--lease-ms", "1000"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_real_processes_kill_active_standby_takes_over(redis_client, redis_url, markets):
    procs = [_spawn(redis_url), _spawn(redis_url)]
    try:
        # two interpreters starting on a busy machine: any error is "not yet" until the deadline
        lease = wait_until(lambda: redis_client.get(K.lease), STARTUP_TIMEOUT, "a worker's lease",
                           alive=lambda: all(p.poll() is None for p in procs))  # fmt: skip
        holder = lease.decode()
        active = next(p for p in procs if f":{p.pid}:" in holder)
        standby = next(p for p in procs if p is not active)
        flow = feed(redis_client, markets, 300, seed=8)
        wait_applied(redis_client, last_stream_id(redis_client))
        active.send_signal(signal.SIGKILL)
        active.wait(10)
        feed(redis_client, markets, 300, flow=flow)
        wait_applied(redis_client, last_stream_id(redis_client), timeout=30)
        assert f":{standby.pid}:" in redis_client.get(K.lease).decode()
        numbers = trade_numbers(redis_client)
        assert numbers == list(range(1, len(numbers) + 1))
        assert replay_partition(redis_client, 0, markets).ok
        money_audit(redis_client, markets)  # balances = replay, conservation, deposits once
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(15) == 0
        assert redis_client.get(K.lease) is None  # released on a clean stop
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
