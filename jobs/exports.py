"""Account statements: one account's fills, ledger entries or orders, from genesis, to a file.

Why a replay and not the Redis lists: ``ledger:<account>`` and the ``closed:`` index keep only
the newest 1,000, and old journal entries, trades and closed order records move to the archive
(``protocol.archive``). The one complete source is the journal itself, archive + stream, replayed
with the worker's own processor (``worker.processor.Processor``, as ``python -m worker replay``
does) up to the partition's ``applied`` id: the rows are then exactly the entries the worker
committed, in journal order, and a ledger statement's amounts add up, asset by asset, to the
balances the worker holds (checked here row by row against each entry's ``balance`` and at the
end against the replayed ledger; a mismatch fails the job).

A statement (``<ns>:export:<id>`` hash, TTL = ``FAIRBOOK_EXPORT_TTL``, default one day) has an
owner, ``kind`` (fills, ledger, orders), ``format`` (csv, jsonl) and a time range ``[from, to]``
in ms (journal time: a fill's or ledger entry's ``timestamp``, an order's ``created_at``). The job
(id = the export id) writes ``<FAIRBOOK_EXPORTS>/<ns>/<id>.<format>`` (default ``./var/exports``,
written to a ``.part`` file and renamed when complete) and keeps its progress, journal entries
read / to read, in the RQ job's meta and in the hash. Expired files are removed by
:func:`remove_expired` (scheduled by ``jobs.queues.build_cron``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job

from engine.markets import Market
from jobs.queues import EXPORT_JOB, EXPORTS, enqueue, job_connection, namespace_name
from protocol.config import PARTITIONS_ENV, load_markets
from protocol.keys import Keys, Namespace

FILLS, LEDGER, ORDERS = "fills", "ledger", "orders"
KINDS = (FILLS, LEDGER, ORDERS)
FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
EXPORTS_DIR_ENV = "FAIRBOOK_EXPORTS"
EXPORT_TTL_ENV = "FAIRBOOK_EXPORT_TTL"
#: unfinished statements an account may have at once (each is a replay of the whole journal)
MAX_UNFINISHED_ENV = "FAIRBOOK_EXPORTS_UNFINISHED"
DEFAULT_MAX_UNFINISHED = 3
DEFAULT_EXPORTS_DIR = "./var/exports"
DEFAULT_EXPORT_TTL = 24 * 3600
#: journal entries per processor batch (and per progress update)
CHUNK = 2000
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

COLUMNS = {
    FILLS: ("partition", "trade_id", "symbol", "order_id", "side", "price", "quantity", "fee",
            "fee_asset", "liquidity", "timestamp"),
    LEDGER: ("partition", "id", "asset", "amount", "reason", "balance", "symbol", "order_id",
             "trade_id", "reference", "timestamp"),
    ORDERS: ("partition", "order_id", "client_order_id", "symbol", "side", "type",
             "time_in_force", "post_only", "stp", "status", "reject_reason", "price",
             "stop_price", "quantity", "quote_quantity", "filled_quantity", "remaining_quantity",
             "cum_quote", "locked", "locked_asset", "created_at", "updated_at"),
}  # fmt: skip


class StatementMismatch(Exception):
    """The replayed ledger entries do not add up to the balances: the job fails loudly."""


def export_ttl(env: Any = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(EXPORT_TTL_ENV) or str(DEFAULT_EXPORT_TTL)
    if not str(raw).isdigit() or int(raw) < 1:
        raise SystemExit(f"fairbook: {EXPORT_TTL_ENV} must be whole seconds >= 1, got {raw!r}")
    return int(raw)


def max_unfinished(env: Any = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(MAX_UNFINISHED_ENV) or str(DEFAULT_MAX_UNFINISHED)
    if not str(raw).isdigit():
        raise SystemExit(f"fairbook: {MAX_UNFINISHED_ENV} must be a whole number, got {raw!r}")
    return int(raw)


def exports_dir(namespace: str, env: Any = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(EXPORTS_DIR_ENV) or DEFAULT_EXPORTS_DIR) / namespace


def file_path(namespace: str, export_id: str, fmt: str) -> Path:
    return exports_dir(namespace) / f"{export_id}.{fmt}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- requesting and reading (the web's side) ----------------------------------------------------


def request_export(client: redis.Redis, rq_connection: redis.Redis, namespace: str,
                   account: str, kind: str, fmt: str, start: int | None,
                   end: int | None) -> dict[str, Any]:  # fmt: skip
    """Record a statement request (already validated) and enqueue its job; the record."""
    ttl = export_ttl()
    export_id = uuid.uuid4().hex
    now = int(time.time() * 1000)
    record = {"account": account, "kind": kind, "format": fmt,
              "from": "" if start is None else str(start), "to": "" if end is None else str(end),
              "created_at": str(now), "expires_at": str(now + ttl * 1000), "status": QUEUED,
              "rows_done": "0", "rows_total": "0", "rows": "0"}  # fmt: skip
    keys = Keys(0, namespace)
    key = keys.export(export_id)
    mine = keys.exports_of(account)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping=record)
    pipe.expire(key, ttl)
    pipe.zadd(mine, {export_id: now})
    pipe.zremrangebyscore(mine, "-inf", now - ttl * 1000)  # expired ones
    pipe.expire(mine, ttl)
    pipe.execute()
    enqueue(rq_connection, EXPORTS, EXPORT_JOB,
            {"export_id": export_id, "namespace": namespace}, namespace, job_id=export_id,
            result_ttl=ttl, failure_ttl=ttl,
            description=f"{kind} statement of account {account}")  # fmt: skip
    return {"export_id": export_id, **record}


def unfinished(rq_connection: redis.Redis, namespace: str, account: str) -> int:
    """The account's statements whose job is still to run (queued, running or waiting for a
    retry), by RQ's own job status."""
    from rq.job import Job, JobStatus

    ids = [_text(i) for i in rq_connection.zrange(Keys(0, namespace).exports_of(account), 0, -1)]
    waiting = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
    jobs = Job.fetch_many(ids, connection=rq_connection) if ids else []
    return sum(1 for job in jobs if job is not None and job.get_status(refresh=False) in waiting)


def load_export(client: redis.Redis, namespace: str, export_id: str) -> dict[str, str] | None:
    """The statement's record (strings), or None when absent or expired."""
    raw = client.hgetall(Keys(0, namespace).export(export_id))
    if not raw:
        return None
    return {_text(k): _text(v) for k, v in raw.items()}


# -- the job ------------------------------------------------------------------------------------


class IncompleteHistory(Exception):
    """The journal was trimmed and the archive does not hold it from genesis: a statement
    would silently miss rows, so the job fails instead."""


def _journal(client: redis.Redis, namespace: str, partition: int, keys: Keys,
             upto: str) -> Iterator[Any]:  # fmt: skip
    """The partition's journal from genesis up to ``upto``: the archive, then the stream."""
    from protocol.archive import ArchiveStore, genesis_complete, history
    from worker.snapshots import stream_was_trimmed

    store = ArchiveStore(None, namespace, partition)  # FAIRBOOK_ARCHIVE, as the archive job's
    if stream_was_trimmed(client, keys.stream) and not genesis_complete(client, store,
                                                                         keys.stream):
        raise IncompleteHistory(f"partition {partition}: {keys.stream} was trimmed and the "
                                f"archive ({store.dir}) does not hold it from genesis")
    yield from history(client, store, keys.stream, upto=upto, chunk=CHUNK)


def _journal_size(client: redis.Redis, namespace: str, partition: int, keys: Keys) -> int:
    """Journal entries since genesis (``applied_count``: what the worker consumed)."""
    raw = client.get(keys.applied_count)
    return int(raw) if raw is not None else int(client.xlen(keys.stream))


class _Statement:
    """Rows of one account out of replayed batches, with the ledger's running totals."""

    def __init__(self, account: str, kind: str, start: int | None, end: int | None) -> None:
        self.account = account
        self.kind = kind
        self.start = start
        self.end = end
        self.orders: dict[int, dict[str, Any]] = {}  # this partition's, final state
        #: (partition, asset) -> the sum of every ledger amount so far (whole history)
        self.totals: dict[tuple[int, str], Decimal] = {}

    def _in_range(self, ts: Any) -> bool:
        if not isinstance(ts, int):
            return False
        return (self.start is None or ts >= self.start) and (self.end is None or ts <= self.end)

    def batch_rows(self, partition: int, batch: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.kind == LEDGER:
            for raw in batch.ledger.get(self.account, ()):
                entry = json.loads(raw)
                key = (partition, entry["asset"])
                total = self.totals.get(key, Decimal(0)) + Decimal(entry["amount"])
                if total != Decimal(entry["balance"]):
                    raise StatementMismatch(
                        f"partition {partition} ledger entry {entry['id']}: the amounts so far "
                        f"add up to {total}, the entry says the balance is {entry['balance']}")
                self.totals[key] = total
                if self._in_range(entry.get("timestamp")):
                    rows.append({"partition": partition, **entry})
        elif self.kind == FILLS:
            for trade in batch.trades:
                if self.account not in (trade.maker_account, trade.taker_account):
                    continue
                record = json.loads(trade.record)
                if not self._in_range(record.get("timestamp")):
                    continue
                if trade.maker_account == self.account:
                    rows.append(_fill_row(partition, record, "maker"))
                if trade.taker_account == self.account:
                    rows.append(_fill_row(partition, record, "taker"))
        else:
            for raw in batch.records.values():
                record = json.loads(raw)
                if record.pop("account", None) == self.account:
                    self.orders[int(record["order_id"])] = record
        return rows

    def partition_done(self, partition: int, proc: Any) -> list[dict[str, Any]]:
        """The orders of the partition (oldest first); for a ledger, the final check."""
        if self.kind == LEDGER and proc.engine.ledger is not None:
            for asset, (available, locked) in proc.engine.ledger.balances(self.account).items():
                held = Decimal(proc.assets[asset].format(available + locked))
                total = self.totals.get((partition, asset), Decimal(0))
                if total != held:
                    raise StatementMismatch(
                        f"partition {partition} {asset}: the ledger entries add up to {total}, "
                        f"the balance is {held}")
        if self.kind != ORDERS:
            return []
        rows = [{"partition": partition, **order} for oid, order in sorted(self.orders.items())
                if self._in_range(order.get("created_at"))]  # fmt: skip
        self.orders = {}
        return rows


def _fill_row(partition: int, trade: dict[str, Any], liquidity: str) -> dict[str, Any]:
    maker = liquidity == "maker"
    taker_side = trade["aggressor_side"]
    return {
        "partition": partition, "trade_id": trade["trade_id"], "symbol": trade["symbol"],
        "order_id": trade["maker_order_id" if maker else "taker_order_id"],
        "side": ("sell" if taker_side == "buy" else "buy") if maker else taker_side,
        "price": trade["price"], "quantity": trade["quantity"],
        "fee": trade["maker_fee" if maker else "taker_fee"], "fee_asset": trade["fee_asset"],
        "liquidity": liquidity, "timestamp": trade["timestamp"],
    }  # fmt: skip


class _Writer:
    """CSV (the kind's columns, empty cells for null) or JSON lines (the whole row)."""

    def __init__(self, path: Path, kind: str, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.columns = COLUMNS[kind]
        self.file = path.open("w", encoding="utf-8", newline="")
        self.sha = hashlib.sha256()
        self.rows = 0
        if fmt == "csv":
            self._write_csv(self.columns)

    def _write_csv(self, values: Any) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self._emit(buf.getvalue())

    def _emit(self, text: str) -> None:
        data = text.encode()
        self.sha.update(data)
        self.file.write(text)

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self.fmt == "csv":
                self._write_csv(["" if row.get(c) is None else _cell(row.get(c))
                                 for c in self.columns])  # fmt: skip
            else:
                self._emit(json.dumps(row, separators=(",", ":")) + "\n")
            self.rows += 1

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _update(client: redis.Redis, key: str, mapping: dict[str, Any]) -> None:
    """HSET on a record that still lives (an expired one must not come back without a TTL)."""
    if client.exists(key):
        client.hset(key, mapping=mapping)


def _progress(client: redis.Redis, key: str, done: int, total: int, rows: int) -> None:
    """Rows (journal entries) read / to read, in the job's meta and in the record."""
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = {"rows_done": done, "rows_total": total, "rows": rows}
        job.save_meta()
    _update(client, key, {"rows_done": done, "rows_total": total, "rows": rows})


def export_statement(export_id: str, namespace: str | None = None) -> dict[str, Any]:
    """Write one statement (the job). Returns the record's final fields. A failure is
    recorded for its owner (``status`` failed, ``error``), then raised: RQ retries it or
    keeps it in its failed registry."""
    client = job_connection()
    ns = namespace_name(namespace)
    key = Keys(0, ns).export(export_id)
    spec = load_export(client, ns, export_id)
    if spec is None:  # expired (or never made) before a worker took it: nothing to do
        return {"export_id": export_id, "status": "expired"}
    _update(client, key, {"status": RUNNING, "started_at": int(time.time() * 1000)})
    try:
        result = _write(client, ns, export_id, spec)
    except Exception as exc:
        _update(client, key, {"status": FAILED, "error": f"{type(exc).__name__}: {exc}"})
        raise
    if not client.exists(key):  # expired while it ran: nobody may download it
        file_path(ns, export_id, spec["format"]).unlink(missing_ok=True)
        return {"export_id": export_id, "status": "expired"}
    client.hset(key, mapping=result)
    return {"export_id": export_id, **result}


def _write(client: redis.Redis, ns: str, export_id: str, spec: dict[str, str]) -> dict[str, Any]:
    """Replay every partition's journal and write the account's rows; the final fields."""
    from worker.processor import Processor  # the job worker's code only (the web enqueues)

    key = Keys(0, ns).export(export_id)
    kind, fmt, account = spec["kind"], spec["format"], spec["account"]
    if kind not in KINDS or fmt not in FORMATS:
        raise ValueError(f"cannot write a {kind!r} statement as {fmt!r}")
    start = int(spec["from"]) if spec.get("from") else None
    end = int(spec["to"]) if spec.get("to") else None
    markets = load_markets()
    names = Namespace(ns, markets, os.environ.get(PARTITIONS_ENV))
    plan: list[tuple[int, Keys, str, dict[str, Market]]] = []
    total = 0
    for partition in names.partitions:
        keys = names.keys(partition)
        applied = client.get(keys.applied)
        mine = {s: markets[s] for s in names.symbols_of(partition)}
        if applied is None or not mine:
            continue
        plan.append((partition, keys, _text(applied), mine))
        total += _journal_size(client, ns, partition, keys)
    final = file_path(ns, export_id, fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    writer = _Writer(part, kind, fmt)
    statement = _Statement(account, kind, start, end)
    done = 0
    try:
        _progress(client, key, 0, total, 0)
        for partition, keys, applied, mine in plan:
            proc = Processor(mine, partition, namespace=ns)
            chunk: list[Any] = []
            for entry in _journal(client, ns, partition, keys, applied):
                chunk.append(entry)
                if len(chunk) == CHUNK:
                    writer.write(statement.batch_rows(partition, proc.process(chunk)))
                    done += len(chunk)
                    chunk = []
                    _progress(client, key, done, max(total, done), writer.rows)
            if chunk:
                writer.write(statement.batch_rows(partition, proc.process(chunk)))
                done += len(chunk)
            writer.write(statement.partition_done(partition, proc))
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(part, final)
    _progress(client, key, done, max(total, done), writer.rows)
    return {"status": DONE, "rows_done": done, "rows_total": max(total, done),
            "rows": writer.rows, "size": final.stat().st_size,
            "sha256": writer.sha.hexdigest(), "finished_at": int(time.time() * 1000)}  # fmt: skip


def remove_expired(namespace: str | None = None, min_age_s: float = 60.0) -> dict[str, int]:
    """Delete statement files whose record has expired (a scheduled job). Files younger than
    ``min_age_s`` are left alone: their job may have just created them."""
    client = job_connection()
    ns = namespace_name(namespace)
    keys = Keys(0, ns)
    folder = exports_dir(ns)
    removed = kept = 0
    if folder.is_dir():
        now = time.time()
        for path in folder.iterdir():
            export_id = path.name.split(".", 1)[0]
            try:
                young = now - path.stat().st_mtime < min_age_s
            except FileNotFoundError:
                continue
            if young or client.exists(keys.export(export_id)):
                kept += 1
                continue
            path.unlink(missing_ok=True)
            removed += 1
    return {"removed": removed, "kept": kept}
