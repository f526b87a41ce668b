"""Statements, audits and rq-dashboard over HTTP (Flask test client, the session redis-server).

The jobs run in this process through RQ's ``SimpleWorker`` on the app's own RQ client, on a
journal applied by ``tests.jobs.jobs_helpers.FakeExchange`` (the worker's processor and
commands); tests/jobs/ run them with a real RQ worker process. Every response is also checked
against web/openapi.json (tests/openapi_conformance.py).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from rq import SimpleWorker

from jobs import queues
from protocol.config import load_markets
from protocol.keys import Keys
from tests.jobs.jobs_helpers import FakeExchange
from web.accounts import create_account

K = Keys(0)


@pytest.fixture(autouse=True)
def _job_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBOOK_EXPORTS", str(tmp_path / "exports"))
    monkeypatch.setenv("FAIRBOOK_JOB_RETRY", "0")  # a failure is final at once
    monkeypatch.delenv("FAIRBOOK_HEALTH_AUDIT", raising=False)


@pytest.fixture
def exchange(rdb, web_app) -> FakeExchange:
    """Accounts 1..4 trading (journal applied); alice is account 1, bob account 2."""
    rq = web_app.extensions["fairbook_rq"]
    ex = FakeExchange(rq, load_markets())
    return ex


@pytest.fixture
def people(rdb) -> dict[str, dict[str, Any]]:
    out = {}
    for name, operator in (("alice", False), ("bob", False), ("ops", True)):
        acct = create_account(rdb, name, operator=operator)
        out[name] = {**acct, "headers": {"X-API-Key": acct["api_key"]}}
    assert out["alice"]["account_id"] == "1" and out["bob"]["account_id"] == "2"
    return out


def run_jobs(web_app) -> None:
    rq = web_app.extensions["fairbook_rq"]
    SimpleWorker(queues.queues(rq), connection=rq).work(burst=True, logging_level="WARNING")


def post_export(client, who, **body):
    return client.post("/api/v1/exports", json=body, headers=who["headers"])


# -- statements ---------------------------------------------------------------------------------


def test_a_statement_from_request_to_download(client, web_app, rdb, people, exchange):
    exchange.feed(600, seed=4, accounts=4)
    alice = people["alice"]
    resp = post_export(client, alice, kind="ledger", format="csv")
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    export_id = body["export_id"]
    assert resp.headers["Location"] == f"/api/v1/exports/{export_id}"
    assert body["status"] == "queued" and body["download"] is None and body["size"] is None
    assert client.get(f"/api/v1/exports/{export_id}/download",
                      headers=alice["headers"]).status_code == 409  # fmt: skip
    run_jobs(web_app)
    view = client.get(f"/api/v1/exports/{export_id}", headers=alice["headers"]).get_json()
    assert view["status"] == "done", view
    progress = view["progress"]
    assert progress["rows_done"] == progress["rows_total"] == rdb.xlen(K.stream)
    assert view["download"] == f"/api/v1/exports/{export_id}/download"
    got = client.get(view["download"], headers=alice["headers"])
    assert got.status_code == 200 and got.mimetype == "text/csv"
    assert "attachment" in got.headers["Content-Disposition"]
    import hashlib

    assert hashlib.sha256(got.data).hexdigest() == view["sha256"] and len(got.data) == view["size"]
    rows = list(csv.DictReader(io.StringIO(got.data.decode())))
    assert len(rows) == view["rows"] > 10
    # the whole history adds up to the balances, asset by asset (available + locked)
    sums: dict[str, Decimal] = {}
    for row in rows:
        sums[row["asset"]] = sums.get(row["asset"], Decimal(0)) + Decimal(row["amount"])
    balances = client.get("/api/v1/balances", headers=alice["headers"]).get_json()
    assert balances and {b["asset"]: Decimal(b["available"]) + Decimal(b["locked"])
                         for b in balances} == sums  # fmt: skip
    # another account: the same answer as an id that never existed
    bob = people["bob"]
    for path in (f"/api/v1/exports/{export_id}", f"/api/v1/exports/{export_id}/download"):
        other = client.get(path, headers=bob["headers"])
        missing = client.get(path.replace(export_id, "0" * 32), headers=bob["headers"])
        assert other.status_code == missing.status_code == 404
        assert other.get_json() == missing.get_json()
        assert other.get_json()["error"]["code"] == "unknown_export"
    assert client.get(f"/api/v1/exports/{export_id}").status_code == 401


def test_fills_and_orders_statements_jsonl(client, web_app, rdb, people, exchange):
    exchange.feed(500, seed=8, accounts=4)
    alice = people["alice"]
    ids = {kind: post_export(client, alice, kind=kind, format="jsonl").get_json()["export_id"]
           for kind in ("fills", "orders")}  # fmt: skip
    run_jobs(web_app)
    texts = {}
    for kind, export_id in ids.items():
        got = client.get(f"/api/v1/exports/{export_id}/download", headers=alice["headers"])
        assert got.status_code == 200 and got.mimetype == "application/x-ndjson"
        texts[kind] = [json.loads(line) for line in got.data.decode().splitlines()]
    # every order of account 1 (its records), and every fill of those orders
    records = [json.loads(rdb.get(k)) for k in rdb.scan_iter(K.order("*"))]
    mine = sorted((r for r in records if r["account"] == "1"), key=lambda r: r["order_id"])
    assert [o["order_id"] for o in texts["orders"]] == [r["order_id"] for r in mine]
    fills = sorted((f["trade_id"], r["order_id"], f["fee"]) for r in mine for f in r["fills"])
    assert sorted((f["trade_id"], f["order_id"], f["fee"]) for f in texts["fills"]) == fills
    assert fills


def test_statement_time_range(client, web_app, people, exchange):
    exchange.feed(300, seed=5, accounts=4)
    alice = people["alice"]
    whole = post_export(client, alice, kind="ledger", format="jsonl").get_json()["export_id"]
    run_jobs(web_app)
    rows = [json.loads(x) for x in client.get(f"/api/v1/exports/{whole}/download",
                                              headers=alice["headers"]).data.splitlines()]
    times = sorted({r["timestamp"] for r in rows})
    assert len(times) >= 2
    start, end = times[1], times[-1]
    part = post_export(client, alice, kind="ledger", format="jsonl", **{"from": start, "to": end})
    assert part.status_code == 202 and part.get_json()["from"] == start
    run_jobs(web_app)
    got = client.get(f"/api/v1/exports/{part.get_json()['export_id']}/download",
                     headers=alice["headers"])  # fmt: skip
    inside = [json.loads(x) for x in got.data.splitlines()]
    assert inside == [r for r in rows if start <= r["timestamp"] <= end]


@pytest.mark.parametrize("body, code", [
    ({"kind": "trades"}, "invalid_field"),
    ({"format": "csv"}, "missing_field"),
    ({"kind": "ledger", "format": "xlsx"}, "invalid_field"),
    ({"kind": "ledger", "from": 10, "to": 9}, "invalid_range"),
    ({"kind": "ledger", "from": -1}, "invalid_field"),
    ({"kind": "ledger", "from": 1.5}, "invalid_field"),
    ({"kind": "ledger", "to": "5"}, "invalid_field"),
    ({"kind": "ledger", "from": True}, "invalid_field"),
    ({"kind": "ledger", "to": 10**16}, "invalid_field"),
    ({"kind": "ledger", "account": "2"}, "unknown_field"),
])  # fmt: skip
def test_bad_statement_requests(client, people, body, code):
    resp = post_export(client, people["alice"], **body)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == code, resp.get_json()


def test_statement_request_needs_a_key_and_json(client, people):
    assert client.post("/api/v1/exports", json={"kind": "ledger"}).status_code == 401
    resp = client.post("/api/v1/exports", data="kind=ledger", headers=people["alice"]["headers"])
    assert resp.status_code == 415
    bad = client.get("/api/v1/exports/not-an-id", headers=people["alice"]["headers"])
    assert bad.status_code == 404 and bad.get_json()["error"]["code"] == "unknown_export"


def test_a_failed_statement_and_an_expired_one(client, web_app, rdb, people, exchange, tmp_path,
                                              monkeypatch):  # fmt: skip
    exchange.feed(50, seed=2, accounts=4)
    alice = people["alice"]
    broken = post_export(client, alice, kind="ledger").get_json()["export_id"]
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FAIRBOOK_EXPORTS", str(tmp_path / "a-file" / "exports"))  # unwritable
    run_jobs(web_app)
    view = client.get(f"/api/v1/exports/{broken}", headers=alice["headers"]).get_json()
    assert view["status"] == "failed" and "NotADirectoryError" in view["error"], view
    assert client.get(f"/api/v1/exports/{broken}/download",
                      headers=alice["headers"]).status_code == 409  # fmt: skip
    gone = post_export(client, alice, kind="fills").get_json()["export_id"]
    rdb.delete(Keys(0).export(gone))  # what its TTL does
    assert client.get(f"/api/v1/exports/{gone}", headers=alice["headers"]).status_code == 404
    run_jobs(web_app)  # the job finds nothing to do
    assert client.get(f"/api/v1/exports/{gone}/download",
                      headers=alice["headers"]).status_code == 404  # fmt: skip
    ttl = rdb.ttl(Keys(0).export(broken))
    assert 0 < ttl <= 24 * 3600


# -- audits -------------------------------------------------------------------------------------


def test_audits_route_and_healthz(client, web_app, rdb, people, exchange, monkeypatch):
    exchange.feed(400, seed=6, accounts=4)
    ops, alice = people["ops"], people["alice"]
    assert client.get("/api/v1/admin/audits").status_code == 401
    for method in (client.get, client.post):
        denied = method("/api/v1/admin/audits", headers=alice["headers"])
        assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "forbidden"
    empty = client.get("/api/v1/admin/audits", headers=ops["headers"]).get_json()
    assert empty == {"latest": [None], "audits": []}
    started = client.post("/api/v1/admin/audits", headers=ops["headers"])
    assert started.status_code == 202 and started.get_json()["jobs"][0]["partition"] == 0
    run_jobs(web_app)
    done = client.get("/api/v1/admin/audits", headers=ops["headers"]).get_json()
    assert done["latest"][0]["ok"] is True and done["latest"][0]["trades"] > 0
    assert done["audits"] == [done["latest"][0]]
    health = client.get("/healthz", headers=ops["headers"]).get_json()
    assert health["audits"][0]["ok"] is True and health["audit_failure"] is None

    # a trade record altered in Redis: the next audit reports it, /healthz names it
    trades = rdb.xrange(K.trades)
    victim_id, fields = trades[len(trades) // 2]
    record = json.loads(fields["t"])
    record["quantity"] = "123"
    pipe = rdb.pipeline()
    for entry_id, f in trades:
        if entry_id == victim_id:
            f = {**f, "t": json.dumps(record, separators=(",", ":"))}
        pipe.xadd("tmp:trades", f, id=entry_id)
    pipe.rename("tmp:trades", K.trades)
    pipe.execute()
    client.post("/api/v1/admin/audits", headers=ops["headers"])
    run_jobs(web_app)
    listed = client.get("/api/v1/admin/audits?partition=0&limit=5",
                        headers=ops["headers"]).get_json()  # fmt: skip
    failed = listed["latest"][0]
    assert failed["ok"] is False and victim_id in failed["difference"]
    assert '"quantity":"123"' in failed["difference"]
    assert [a["ok"] for a in listed["audits"]] == [False, True]
    rdb.set(K.lease, "a-worker")  # the processes are healthy: only the audit is not
    health = client.get("/healthz", headers=ops["headers"])
    assert health.status_code == 200  # by default reported, not fatal
    assert health.get_json()["audit_failure"]["difference"] == failed["difference"]
    assert client.get("/healthz").get_json() == {"status": "ok"}
    monkeypatch.setenv("FAIRBOOK_HEALTH_AUDIT", "fail")
    assert client.get("/healthz").status_code == 503
    bad = client.get("/api/v1/admin/audits?partition=7", headers=ops["headers"])
    assert bad.status_code == 400
    assert client.get("/api/v1/admin/audits?limit=0", headers=ops["headers"]).status_code == 400


# -- rq-dashboard -------------------------------------------------------------------------------


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_the_dashboard_is_for_operators_only(client, web_app, people):
    ops, alice = people["ops"], people["alice"]
    queues.enqueue_audit(web_app.extensions["fairbook_rq"], 0)  # something to show
    anon = client.get("/admin/rq/")
    assert anon.status_code == 401 and anon.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/admin/rq/", headers=_basic("fb_wrong")).status_code == 401
    for headers in (alice["headers"], _basic(alice["api_key"])):
        denied = client.get("/admin/rq/0/data/queues.json", headers=headers)
        assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "forbidden"
    for headers in (ops["headers"], _basic(ops["api_key"])):
        page = client.get("/admin/rq/", headers=headers)
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert b"RQ" in page.data and b"/admin/rq/" in page.data  # links under the mount
        assert "'unsafe-inline'" in page.headers["Content-Security-Policy"]
    data = client.get("/admin/rq/0/data/queues.json", headers=ops["headers"]).get_json()
    names = {q["name"]: q["count"] for q in data["queues"]}
    assert names["fb.audit"] == 1
    static = client.get("/admin/rq/static/js/jquery-3.5.1.min.js", headers=ops["headers"])
    assert static.status_code == 200
    for path in ("/admin/rq/0/view/job/nope", "/admin/rq/9/view", "/admin/rq/nowhere",
                 "/admin/rq/%13%F2%B1%AD%8A", "/admin/rq/0/view/job/%F2%B1",
                 "/admin/rq/0/data/jobs/fb.audit/queued/x/asc/1.json"):
        assert client.get(path, headers=ops["headers"]).status_code == 404, path
    # rq 3.0.0 under rq-dashboard 0.9.0: its pages and data of finished and failed jobs
    rq = web_app.extensions["fairbook_rq"]
    failing = queues.enqueue(rq, queues.AUDIT, "jobs.nowhere.nothing", {})
    run_jobs(web_app)
    for path in ("/admin/rq/0/view/workers", "/admin/rq/0/view/jobs", "/admin/rq/favicon.ico",
                 f"/admin/rq/0/view/job/{failing.id}", "/admin/rq/0/data/workers.json",
                 "/admin/rq/0/view/jobs/fb.audit/failed/8/asc/1"):
        assert client.get(path, headers=ops["headers"]).status_code == 200, path
    failed = client.get("/admin/rq/0/data/jobs/fb.audit/failed/8/asc/1.json",
                        headers=ops["headers"]).get_json()  # fmt: skip
    assert [j["id"] for j in failed["jobs"]] == [failing.id]
    assert "nowhere" in failed["jobs"][0]["exc_info"]
    info = client.get(f"/admin/rq/0/data/job/{failing.id}.json", headers=ops["headers"])
    assert info.get_json()["status"] == "failed"
    done = client.get("/admin/rq/0/data/jobs/fb.audit/finished/8/dsc/1.json",
                      headers=ops["headers"]).get_json()  # fmt: skip
    assert len(done["jobs"]) == 1
    requeued = client.post(f"/admin/rq/job/{failing.id}/requeue", headers=ops["headers"])
    assert requeued.status_code == 200 and requeued.get_json() == {"status": "OK"}
    assert client.post("/admin/rq/queue/fb.audit/queued/empty",
                       headers=ops["headers"]).get_json() == {"status": "OK"}  # fmt: skip
    assert client.post("/admin/rq/queue/fb.audit/compact",
                       headers=ops["headers"]).status_code == 404  # RQ: nothing to compact
    # the rest of the API keeps its own policy
    assert "'unsafe-inline'" not in client.get("/").headers["Content-Security-Policy"]


def test_dashboard_posts_are_same_origin_only(client, web_app, people):
    ops = people["ops"]
    job = queues.enqueue_audit(web_app.extensions["fairbook_rq"], 0)
    path = f"/admin/rq/job/{job.id}/delete"
    evil = client.post(path, headers={**ops["headers"], "Origin": "https://evil.example"})
    assert evil.status_code == 403
    ok = client.post(path, headers={**ops["headers"], "Origin": "http://localhost"})
    assert ok.status_code == 200 and ok.get_json() == {"status": "OK"}


def test_unfinished_statements_are_bounded_per_account(client, web_app, people, exchange,
                                                       monkeypatch):  # fmt: skip
    exchange.feed(50, seed=3, accounts=4)
    monkeypatch.setenv("FAIRBOOK_EXPORTS_UNFINISHED", "2")
    alice, bob = people["alice"], people["bob"]
    for _ in range(2):
        assert post_export(client, alice, kind="ledger").status_code == 202
    refused = post_export(client, alice, kind="fills")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    assert refused.get_json()["error"]["code"] == "too_many_exports"
    assert post_export(client, bob, kind="fills").status_code == 202  # per account
    run_jobs(web_app)
    assert post_export(client, alice, kind="fills").status_code == 202
