"""Account statements: the job on fakeredis (rows, sums, ranges, progress, expiry, the archive)
and end to end (real redis-server, the real matching worker, the archive job and the statement
job in a real ``python -m jobs`` worker process, the web's routes)."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from rq import SimpleWorker
from rq.job import Job

from jobs import exports, queues
from jobs.archive import Archiver
from protocol.archive import ArchiveStore
from protocol.config import load_markets
from protocol.keys import Keys
from tests.jobs.jobs_helpers import FakeExchange, JobWorker
from tests.worker.wk_helpers import WorkerThread, feed, last_stream_id, wait_applied
from web.accounts import create_account
from web.app import create_app
from worker.runner import PartitionWorker

K = Keys(0)


@pytest.fixture(scope="module")
def markets():
    return load_markets()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBOOK_EXPORTS", str(tmp_path / "exports"))
    monkeypatch.setenv("FAIRBOOK_ARCHIVE", str(tmp_path / "archive"))
    monkeypatch.setenv("FAIRBOOK_JOB_RETRY", "0")
    return tmp_path


def _statement(r: Any, account: str, kind: str, fmt: str = "jsonl", start: int | None = None,
               end: int | None = None) -> tuple[dict[str, str], str]:  # fmt: skip
    record = exports.request_export(r, r, "fb", account, kind, fmt, start, end)
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")
    spec = exports.load_export(r, "fb", record["export_id"])
    assert spec is not None and spec["status"] == "done", spec
    return spec, exports.file_path("fb", record["export_id"], fmt).read_text()


def _sums(rows: list[dict[str, Any]]) -> dict[tuple[int, str], Decimal]:
    out: dict[tuple[int, str], Decimal] = {}
    for row in rows:
        key = (int(row["partition"]), row["asset"])
        out[key] = out.get(key, Decimal(0)) + Decimal(row["amount"])
    return out


def _balances(r: Any, account: str) -> dict[tuple[int, str], Decimal]:
    out = {}
    for asset, raw in r.hgetall(K.balances(account)).items():
        value = json.loads(raw)
        out[(0, asset.decode())] = Decimal(value["available"]) + Decimal(value["locked"])
    return out


def test_ledger_statement_adds_up_to_the_balances_and_survives_archiving(markets, dirs):
    r = fakeredis.FakeRedis()
    ex = FakeExchange(r, markets)
    ex.feed(3000, seed=21, accounts=3)
    spec, text = _statement(r, "2", "ledger", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and int(spec["rows"]) == len(rows)
    assert int(spec["rows_done"]) == int(spec["rows_total"]) == r.xlen(K.stream)
    assert _sums(rows) == _balances(r, "2")
    # the worker's own newest 1,000 entries are the statement's tail, byte for byte
    tail = [json.loads(x) for x in r.lrange(K.ledger("2"), 0, -1)][::-1]
    assert len(rows) > len(tail) == 1000  # the statement reaches beyond what Redis keeps
    assert [row["id"] for row in rows[-len(tail):]] == [e["id"] for e in tail]

    # the archive job moves the journal's head out of Redis: the statement stays the same
    r.zadd(K.snapshots, {last_stream_id(r): 0})  # a snapshot recovery would start from
    done = Archiver(r, K, ArchiveStore(None, "fb", 0), segment_entries=400, min_age_ms=0).run()
    assert done["journal"]["trimmed"] > 1000, done
    assert r.xlen(K.stream) < int(spec["rows_total"])
    again, text_again = _statement(r, "2", "ledger", "csv")
    assert text_again == text and again["sha256"] == spec["sha256"]


def test_fills_orders_and_a_time_range(markets, dirs):
    r = fakeredis.FakeRedis()
    FakeExchange(r, markets).feed(700, seed=9, accounts=4)
    _, fills_text = _statement(r, "3", "fills")
    fills = [json.loads(x) for x in fills_text.splitlines()]
    orders = [json.loads(x) for x in _statement(r, "3", "orders")[1].splitlines()]
    records = [json.loads(r.get(k)) for k in r.scan_iter(K.order("*"))]
    mine = {rec["order_id"]: rec for rec in records if rec["account"] == "3"}
    assert sorted(o["order_id"] for o in orders) == sorted(mine)
    for order in orders:  # the whole REST object, as its record holds it
        record = dict(mine[order["order_id"]])
        del record["account"]
        assert {k: v for k, v in order.items() if k != "partition"} == record
    expected = sorted((f["trade_id"], oid, f["liquidity"], f["fee"])
                      for oid, rec in mine.items() for f in rec["fills"])  # fmt: skip
    got = sorted((f["trade_id"], f["order_id"], f["liquidity"], f["fee"]) for f in fills)
    assert got == expected and got
    times = sorted({f["timestamp"] for f in fills})
    start, end = times[len(times) // 3], times[2 * len(times) // 3]
    _, part = _statement(r, "3", "fills", "csv", start, end)
    rows = list(csv.DictReader(io.StringIO(part)))
    assert [int(row["trade_id"]) for row in rows] == [
        f["trade_id"] for f in fills if start <= f["timestamp"] <= end]
    assert rows[0]["liquidity"] in ("maker", "taker") and rows[0]["partition"] == "0"


def test_progress_is_in_the_job_meta(markets, dirs, monkeypatch):
    r = fakeredis.FakeRedis()
    FakeExchange(r, markets).feed(900, seed=2, accounts=3)
    monkeypatch.setattr(exports, "CHUNK", 100)
    seen: list[dict[str, int]] = []
    real = exports._progress

    def spy(client, key, done, total, rows):
        real(client, key, done, total, rows)
        from rq import get_current_job

        seen.append(dict(get_current_job().meta["progress"]))

    monkeypatch.setattr(exports, "_progress", spy)
    spec, _ = _statement(r, "1", "ledger")
    total = int(spec["rows_total"])
    assert seen[0] == {"rows_done": 0, "rows_total": total, "rows": 0}
    assert [s["rows_done"] for s in seen[1:-1]] == list(range(100, total, 100))
    assert seen[-1]["rows_done"] == total


def test_expired_statements_leave_nothing(markets, dirs):
    r = fakeredis.FakeRedis()
    FakeExchange(r, markets).feed(100, seed=3, accounts=3)
    spec = exports.request_export(r, r, "fb", "1", "ledger", "csv", None, None)
    r.delete(K.export(spec["export_id"]))  # expired before a worker took it
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")
    assert not exports.file_path("fb", spec["export_id"], "csv").exists()
    kept, _ = _statement(r, "1", "ledger", "csv")
    folder = exports.exports_dir("fb")
    old = exports.request_export(r, r, "fb", "1", "fills", "csv", None, None)["export_id"]
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")
    r.delete(K.export(old))
    for path in folder.iterdir():
        os.utime(path, (time.time() - 120, time.time() - 120))
    job = queues.enqueue(r, queues.EXPORTS, exports.remove_expired, {"namespace": "fb"}, "fb")
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")
    assert job.return_value() == {"removed": 1, "kept": 1}
    assert [p.name.split(".")[0] for p in folder.iterdir()] != [old]


def test_amounts_that_do_not_add_up_fail_the_statement():
    statement = exports._Statement("1", exports.LEDGER, None, None)
    good = json.dumps({"id": "256-1", "asset": "USDT", "amount": "5.00", "balance": "5.00",
                       "timestamp": 1})  # fmt: skip
    bad = json.dumps({"id": "512-1", "asset": "USDT", "amount": "1.00", "balance": "7.00",
                      "timestamp": 2})  # fmt: skip
    assert len(statement.batch_rows(0, SimpleNamespace(ledger={"1": [good]}))) == 1
    with pytest.raises(exports.StatementMismatch, match="512-1"):
        statement.batch_rows(0, SimpleNamespace(ledger={"1": [bad]}))


def test_a_trimmed_journal_without_its_archive_fails_the_statement(markets, dirs):
    r = fakeredis.FakeRedis()
    FakeExchange(r, markets).feed(200, seed=4, accounts=3)
    r.xtrim(K.stream, maxlen=50, approximate=False)  # python -m worker --trim, no archive
    record = exports.request_export(r, r, "fb", "1", "ledger", "csv", None, None)
    SimpleWorker(queues.queues(r), connection=r).work(burst=True, logging_level="WARNING")
    spec = exports.load_export(r, "fb", record["export_id"])
    assert spec["status"] == "failed" and "IncompleteHistory" in spec["error"]


def test_statement_end_to_end_through_the_archive(redis_client, redis_url, markets, tmp_path):
    """The real processes: the matching worker commits, the archive job trims Redis, the web
    takes the request, the job worker writes the statement from archive + journal."""
    feed(redis_client, markets, 2500, seed=41)
    worker = WorkerThread(PartitionWorker(redis_url, 0, markets, lease_ms=2000, renew_s=0.2,
                                          snapshot_every=600, batch_size=250)).start()  # fmt: skip
    try:
        wait_applied(redis_client, last_stream_id(redis_client))
    finally:
        worker.stop()
    env = {"FAIRBOOK_ARCHIVE": str(tmp_path / "archive"), "FAIRBOOK_ARCHIVE_MIN_AGE_MS": "0",
           "FAIRBOOK_EXPORTS": str(tmp_path / "exports"), "FAIRBOOK_ARCHIVE_SEGMENT": "500"}
    jobs = JobWorker(redis_url, env, tmp_path / "jobs.log")
    app = create_app({"REDIS_URL": redis_url, "TESTING": True})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the web reads the exports directory too
    try:
        rq = queues.connect(redis_url)
        added = redis_client.xinfo_stream(K.stream)["entries-added"]
        archived = queues.enqueue_archive(rq, 0)
        assert jobs.wait(archived) == "finished", jobs.log()
        assert archived.return_value()["journal"]["trimmed"] > 0, archived.return_value()
        assert redis_client.xlen(K.stream) < added  # Redis no longer holds the whole journal
        st = app.extensions["fairbook"]
        owner = create_account(st.redis, "owner")  # account "1" of the flow
        assert owner["account_id"] == "1"
        headers = {"X-API-Key": owner["api_key"]}
        client = app.test_client()
        made = client.post("/api/v1/exports", json={"kind": "ledger", "format": "jsonl"},
                           headers=headers)  # fmt: skip
        assert made.status_code == 202
        export_id = made.get_json()["export_id"]
        job = Job.fetch(export_id, connection=rq)
        assert jobs.wait(job) == "finished", jobs.log()
        view = client.get(f"/api/v1/exports/{export_id}", headers=headers).get_json()
        assert view["status"] == "done" and view["progress"]["rows_done"] == added
        body = client.get(view["download"], headers=headers).data
        rows = [json.loads(line) for line in body.splitlines()]
        balances = client.get("/api/v1/balances", headers=headers).get_json()
        assert _sums(rows) == {(0, b["asset"]): Decimal(b["available"]) + Decimal(b["locked"])
                               for b in balances}  # fmt: skip
        # its first rows (the deposits) come from journal entries only the archive holds now
        first_kept = json.loads(redis_client.xrange(K.stream, count=1)[0][1][b"c"])["id"]
        assert int(rows[0]["id"].split("-")[0]) < first_kept
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert jobs.stop() == 0, jobs.log()
        app.extensions["fairbook"].redis.close()
