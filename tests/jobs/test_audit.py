"""The replay audit as a job: fast on fakeredis, then end to end (real redis-server, the real
matching worker, a real ``python -m jobs`` worker process): it passes on a clean partition,
and a trade record altered in Redis is found, kept and reported with the first difference."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from rq import SimpleWorker

from jobs import audit, queues
from protocol.config import load_markets
from protocol.keys import Keys
from tests.jobs.jobs_helpers import FakeExchange, JobWorker
from tests.worker.wk_helpers import WorkerThread, feed, last_stream_id, wait_applied
from worker.runner import PartitionWorker

K = Keys(0)
G = Keys(0).audits


@pytest.fixture(scope="module")
def markets():
    return load_markets()


def _alter_trade(client: Any, index: int, field: str, value: str) -> str:
    """Rewrite one trade record of the trades stream (append-only: rebuilt and swapped)."""
    trades = client.xrange(K.trades)
    victim = trades[index][0]
    pipe = client.pipeline()
    for entry_id, fields in trades:
        if entry_id == victim:
            record = json.loads(fields[b"t"])
            record[field] = value
            fields = {**fields, b"t": json.dumps(record, separators=(",", ":")).encode()}
        pipe.xadd("tmp:trades", fields, id=entry_id)
    pipe.rename("tmp:trades", K.trades)
    pipe.execute()
    return victim.decode()


def _run(r: Any) -> None:
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")


def test_audit_job_keeps_results_and_finds_an_altered_trade(markets, monkeypatch):
    monkeypatch.setenv("FAIRBOOK_ARCHIVE", "/nonexistent/archive")  # nothing archived here
    r = fakeredis.FakeRedis()
    FakeExchange(r, markets).feed(800, seed=11)
    first = queues.enqueue_audit(r, 0)
    _run(r)
    ok = first.return_value()
    assert ok["ok"] is True and ok["trades"] == r.xlen(K.trades) > 50
    assert ok["job_id"] == first.id and ok["start"] == "genesis" and ok["balances_checked"]
    assert audit.latest(r, K) == {0: ok}

    victim = _alter_trade(r, 20, "price", "1.00")
    queues.enqueue_audit(r, 0)
    _run(r)
    latest = audit.latest(r, K)[0]
    assert latest["ok"] is False
    assert victim in latest["difference"] and '"price":"1.00"' in latest["difference"]
    assert [a["ok"] for a in audit.history(r, K, 10)] == [False, True]
    assert audit.history(r, K, 10, partition=1) == []
    assert audit.first_failure(audit.latest(r, K)) == latest


def test_results_are_trimmed_and_unreadable_ones_skipped():
    r = fakeredis.FakeRedis()
    for i in range(audit.KEEP + 5):
        audit.save_result(r, K, {"partition": i % 2, "ok": True, "n": i})
    assert r.llen(G) == audit.KEEP
    assert audit.history(r, K, 3) == [{"partition": (audit.KEEP + 4 - i) % 2, "ok": True,
                                       "n": audit.KEEP + 4 - i} for i in range(3)]  # fmt: skip
    r.lpush(G, b"not json")
    r.hset(K.audit_latest, "x", b"{}")
    assert len(audit.history(r, K, 500)) == audit.KEEP - 1
    assert set(audit.latest(r, K)) == {0, 1}


def test_audit_end_to_end_with_a_real_job_worker(redis_client, redis_url, markets, tmp_path):
    feed(redis_client, markets, 1200, seed=31)
    worker = WorkerThread(PartitionWorker(redis_url, 0, markets, lease_ms=2000, renew_s=0.2,
                                          snapshot_every=400, batch_size=200)).start()  # fmt: skip
    try:
        wait_applied(redis_client, last_stream_id(redis_client))
    finally:
        worker.stop()
    jobs = JobWorker(redis_url, {"FAIRBOOK_ARCHIVE": str(tmp_path / "archive")},
                     tmp_path / "jobs.log")  # fmt: skip
    try:
        rq = queues.connect(redis_url)
        clean = queues.enqueue_audit(rq, 0)
        assert jobs.wait(clean) == "finished", jobs.log()
        result = clean.return_value()
        assert result["ok"] is True, result
        assert result["trades"] == redis_client.xlen(K.trades) > 100
        victim = _alter_trade(redis_client, redis_client.xlen(K.trades) // 2, "quantity", "7")
        dirty = queues.enqueue_audit(rq, 0)
        assert jobs.wait(dirty) == "finished"  # a difference is a verdict, not a job failure
        stored = audit.latest(redis_client, K)[0]
        assert stored["ok"] is False and stored["job_id"] == dirty.id
        assert victim in stored["difference"] and '"quantity":"7"' in stored["difference"]
        assert "Job OK" in jobs.log()  # RQ's own worker ran them, each in its work horse
    finally:
        assert jobs.stop() == 0, jobs.log()
