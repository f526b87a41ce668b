"""The replay audit as a job: ``python -m worker replay`` of one partition, its result kept.

Why the worker's own replay (``worker.replay.replay_partition``) and nothing new: "the audit
passed" must mean exactly what the CLI means (trades, books, balances, candles and order records
against a rebuild from the journal, archive + stream, with the worker's processor). A
difference is a result, not a job failure (retrying would find it again): the job finishes and
records ``ok: false`` with the first difference, which ``/healthz`` reports and
``GET /api/v1/admin/audits`` lists. An error (Redis gone) raises, so RQ retries it and keeps it
in its failed registry.

Results: ``<ns>:audits`` (list, newest first, the newest :data:`KEEP`) and ``<ns>:audit_latest``
(hash partition -> the newest result), JSON objects as :func:`result_record` makes them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from rq import get_current_job

from jobs.queues import job_connection, namespace_name
from protocol.config import PARTITIONS_ENV, load_markets
from protocol.keys import Keys, Namespace

#: audit results kept in ``<ns>:audits``
KEEP = 200


def audit_partition(partition: int, namespace: str | None = None) -> dict[str, Any]:
    """Replay ``partition`` of ``namespace`` from genesis and keep the verdict (the job)."""
    from protocol.archive import ArchiveStore
    from worker.replay import ReplayResult, replay_partition  # the job worker's code only

    client = job_connection()
    ns = namespace_name(namespace)
    markets = load_markets()
    names = Namespace(ns, markets, os.environ.get(PARTITIONS_ENV))
    mine = {s: markets[s] for s in names.symbols_of(partition)}
    started = int(time.time() * 1000)
    if not mine:
        result = ReplayResult(ok=False, difference=f"partition {partition} has no symbols")
    else:
        archive = ArchiveStore(None, ns, partition)  # FAIRBOOK_ARCHIVE, as the archive job's
        result = replay_partition(client, partition, mine, ns, archive=archive)
    job = get_current_job()
    record = result_record(result, partition, started, int(time.time() * 1000),
                           job.id if job is not None else None)  # fmt: skip
    save_result(client, Keys(0, ns), record)
    return record


def result_record(result: Any, partition: int, started_at: int, finished_at: int,
                  job_id: str | None) -> dict[str, Any]:  # fmt: skip
    """One audit as stored and served: the replay's counts and verdict (a
    ``worker.replay.ReplayResult``), times in ms."""
    return {
        "partition": partition, "ok": result.ok, "difference": result.difference,
        "entries": result.entries, "trades": result.trades,
        "books_checked": result.books_checked, "records_checked": result.records_checked,
        "balances_checked": result.balances_checked, "candles_checked": result.candles_checked,
        "start": result.start, "until": result.until, "seconds": round(result.seconds, 3),
        "notes": list(result.notes), "started_at": started_at, "finished_at": finished_at,
        "job_id": job_id,
    }  # fmt: skip


def save_result(client: redis.Redis, keys: Keys, record: dict[str, Any]) -> None:
    text = json.dumps(record, separators=(",", ":"))
    pipe = client.pipeline(transaction=True)
    pipe.lpush(keys.audits, text)
    pipe.ltrim(keys.audits, 0, KEEP - 1)
    pipe.hset(keys.audit_latest, str(record["partition"]), text)
    pipe.execute()


def _load(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def latest(client: redis.Redis, keys: Keys) -> dict[int, dict[str, Any]]:
    """The newest result of every partition audited so far."""
    out: dict[int, dict[str, Any]] = {}
    for field, raw in client.hgetall(keys.audit_latest).items():
        name = field.decode() if isinstance(field, bytes) else field
        record = _load(raw)
        if record is not None and name.isdigit():
            out[int(name)] = record
    return out


def history(client: redis.Redis, keys: Keys, limit: int,
            partition: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Audit results, newest first (of one partition if given), at most ``limit``."""
    out = []
    for raw in client.lrange(keys.audits, 0, KEEP - 1):
        record = _load(raw)
        if record is None or (partition is not None and record.get("partition") != partition):
            continue
        out.append(record)
        if len(out) == limit:
            break
    return out


def first_failure(results: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest partition whose newest audit failed, or None."""
    for partition in sorted(results):
        if not results[partition].get("ok", False):
            return results[partition]
    return None
