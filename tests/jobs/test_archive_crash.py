"""kill -9, for real, while orders flow and the archive job trims: the job process mid-segment
(a temp file on disk when it dies), the matching worker, and redis-server once (AOF always).

Afterwards the archive and the journal together hold every entry ever appended, each once and
in order (so nothing was trimmed unarchived and nothing lost), the replay audit passes from
genesis through the archive, every order created has its record in exactly one place (Redis or
the archive), and one more run of the job, and another, change nothing (idempotent).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.flow import OrderFlow
from jobs.archive import Archiver
from protocol.archive import JOURNAL, ORDERS, TRADES, ArchiveStore, genesis_complete, history
from protocol.config import load_markets
from protocol.keys import Keys
from protocol.wire import parse_order_record
from redis_server import RedisServer
from web.journal import Journal
from worker.replay import replay_partition

ROOT = Path(__file__).resolve().parents[2]
K = Keys(0)
FEEDERS = 2
CHAOS_S = 14.0


class Child:
    """A ``python -m ...`` child logging to a file; kill() is SIGKILL."""

    def __init__(self, args: list[str], log_path: Path, url: str) -> None:
        self.args = args
        self.url = url
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": self.url}
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.args], cwd=ROOT, env=env,
                                         stdout=log, stderr=log)  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


def feeder(port: int, seed: int, acked: list[int], stop: threading.Event) -> None:
    """Append orders of few accounts (so each closes more than its index's 1,000 and records
    go to the archive) in small chunks until told to stop, riding out the Redis restart."""
    flow = OrderFlow(load_markets(), seed=seed, accounts=3)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    journal = Journal(client, 0)
    rng = random.Random(seed)
    while not stop.is_set():
        chunk = [flow.next() for _ in range(12)]
        try:
            ids = journal.append_many(chunk)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.05)  # outcome unknown: not counted as acknowledged
            continue
        for wire, cmd_id in zip(chunk, ids, strict=True):
            flow.record(wire, cmd_id)
        acked.extend(ids)
        time.sleep(rng.uniform(0.005, 0.015))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_kill_dash_nine_job_worker_and_redis(tmp_path: Path) -> None:
    started = time.monotonic()
    markets = load_markets()
    root = tmp_path / "archive"
    server = RedisServer(dir=tmp_path / "redis", appendfsync="always").start()
    funder = server.client()
    funding = OrderFlow(markets, seed=1, accounts=3).deposits()
    for wire in funding:
        wire["amount"] = "1" + wire["amount"]  # deep pockets: the flow runs long
    Journal(funder, 0).append_many(funding)
    worker = Child(["worker", "--lease-ms", "1000", "--batch", "100", "--snapshot-every", "400",
                    "--snapshot-seconds", "0.5"], tmp_path / "worker.log", server.url)  # fmt: skip
    archiver = Child(["jobs.archive", "--partition", "0", "--archive", str(root), "--every",
                      "0.05", "--min-age-ms", "0", "--segment", "5000"],
                     tmp_path / "archiver.log", server.url)  # fmt: skip
    stop = threading.Event()
    acked: list[list[int]] = [[] for _ in range(FEEDERS)]
    threads = [threading.Thread(target=feeder, args=(server.port, 40 + i, acked[i], stop),
                                daemon=True) for i in range(FEEDERS)]  # fmt: skip
    mid_segment = worker_kills = checks = 0
    watcher = server.client(socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        worker.start()
        archiver.start()
        for t in threads:
            t.start()
        rng = random.Random(3)
        redis_killed = False
        while time.monotonic() - started < CHAOS_S or mid_segment < 2:
            assert time.monotonic() - started < 60, f"only {mid_segment} mid-segment kills"
            time.sleep(rng.uniform(0.3, 0.7))
            action = rng.random()
            if action < 0.45:
                # the job dies mid-segment: let the backlog grow, restart it, kill it as soon
                # as its first (big) segment is a temp file on disk
                archiver.kill()
                time.sleep(0.6)
                archiver.start()
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and not temp_files(root):
                    time.sleep(0.0005)
                if temp_files(root):
                    archiver.kill()
                    mid_segment += 1
                    archiver.start()
            elif action < 0.8:
                worker.kill()
                worker_kills += 1
                worker.start()
            elif not redis_killed and time.monotonic() - started > 4:
                server.kill()  # kill -9 redis-server: the AOF (always) is what survives
                time.sleep(0.3)
                server.start()
                redis_killed = True
            assert archiver.alive() or archiver.proc.returncode == -signal.SIGKILL, (
                archiver.log_tail())  # fmt: skip
            # never trimmed unarchived, checked live: what Redis lost off the journal's head
            # (read first) is within what the archive holds (read after)
            try:
                info = watcher.xinfo_stream(K.stream)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                continue  # Redis is being restarted
            held = ArchiveStore(root, "fb", 0).end_index(JOURNAL)
            assert info["entries-added"] - info["length"] <= held
            checks += 1
        assert redis_killed and worker_kills >= 2 and checks >= 10
        stop.set()
        for t in threads:
            t.join(10)

        client = server.client()
        last = client.xrevrange(K.stream, count=1)[0][0].decode()
        deadline = time.monotonic() + 60
        while (client.get(K.applied) or b"").decode() != last:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        worker.stop()
        archiver.kill()
        store = ArchiveStore(root, "fb", 0)
        Archiver(client, K, store, 5000, 0).run()  # what the last kill left, finished
        assert not temp_files(root)

        # nothing lost, nothing twice, nothing trimmed unarchived: archive + journal is every
        # entry ever appended, in order
        info = client.xinfo_stream(K.stream)
        assert info["length"] < info["entries-added"] / 2, "the journal was hardly trimmed"
        assert genesis_complete(client, store, K.stream)
        everything = list(history(client, store, K.stream))
        assert len(everything) == info["entries-added"] == store.count(JOURNAL) + info["length"]
        ids = [json.loads(f[b"c"])["id"] for _, f in everything]
        assert len(set(ids)) == len(ids)
        assert set(ids) >= {i for chunk in acked for i in chunk}
        trades = list(history(client, store, K.trades, TRADES))
        assert [int(t[0].split(b"-")[1]) for t in trades] == list(range(1, len(trades) + 1))
        assert store.count(TRADES) > 0

        # the audit, from genesis through the archive
        result = replay_partition(client, 0, markets, archive=store)
        assert result.ok, result.summary()
        assert result.start == "genesis" and result.archived == store.count(JOURNAL)
        assert result.trades == len(trades)

        # every order has its record in exactly one place; archived ones are closed, unlisted
        archived = dict(store.order_records())
        assert len(archived) == store.count(ORDERS) > 0, "no order record was archived"
        new_ids = [json.loads(f[b"c"])["id"] for _, f in everything
                   if json.loads(f[b"c"])["op"] == "new"]  # fmt: skip
        pipe = client.pipeline(transaction=False)
        for oid in new_ids:
            pipe.get(K.order(oid))
        for oid, raw in zip(new_ids, pipe.execute(), strict=True):
            assert (raw is None) == (oid in archived), f"order {oid}: in Redis and archive?"
        for oid, raw in archived.items():
            account, order = parse_order_record(raw)
            assert order["status"] in ("filled", "cancelled", "rejected")
            assert client.zscore(K.closed(account), oid) is None

        # idempotent: two more runs change nothing
        before = ([s.path.name for k in (JOURNAL, TRADES, ORDERS) for s in store.segments(k)],
                  client.xlen(K.stream), client.xlen(K.trades), client.dbsize())  # fmt: skip
        for _ in range(2):
            out = Archiver(client, K, ArchiveStore(root, "fb", 0), 5000, 0).run()
            assert out["journal"]["archived"] == out["trades"]["archived"] == 0
            assert out["orders"]["archived"] == 0
        after = ([s.path.name for k in (JOURNAL, TRADES, ORDERS) for s in store.segments(k)],
                 client.xlen(K.stream), client.xlen(K.trades), client.dbsize())  # fmt: skip
        assert after == before
    finally:
        stop.set()
        archiver.kill()
        worker.stop()
        server.kill()
    assert time.monotonic() - started < 80
