"""The journal archive job: what recovery no longer needs leaves Redis for segment files.

Per partition, under the archive directory's lock (``ArchiveStore.lock``: one run at a time,
dropped by the kernel however its holder dies):

1. **Journal** (``<ns>:{pN}:in``): entries older than the oldest snapshot still kept (the
   snapshot recovery would fall back to), and older than ``min_age_ms`` by Redis's clock (so an
   entry that an ``appendfsync everysec`` Redis could still lose is never archived), are
   written to segments (``protocol.archive``), read back and checked, and only then trimmed
   (``XTRIM MINID``). The order ids those entries created go to ``archive:orders`` in the same
   MULTI as the trim.
2. **Trades** (``<ns>:{pN}:trades``): the trades of those entries (ids ``<ms>-<n>`` with the ms
   of their command: everything before the cutoff snapshot's millisecond), the same way.
3. **Order records**: of the ids in ``archive:orders``, the records of orders that are closed
   and no longer in their account's ``closed:`` index (its newest 1,000) are archived and then
   deleted; open ones and listed ones wait for a later run; ids without a record are dropped.

Crash safety: every step is "write a segment durably, check it, then change Redis", so a
kill -9 anywhere leaves either a temp file (deleted by the next run) or a segment whose entries
are still in Redis; the next run compares those entries with the segment and trims them then
(a re-run is idempotent). It refuses, changing nothing, when Redis and the archive disagree:
the stream trimmed past the archive (``python -m worker --trim`` beside the archive), an
entry in both that differs, or Redis holding fewer entries than were archived (a Redis that
lost its tail).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis

from engine.commands import CLOSED_STATUSES
from protocol.archive import (
    JOURNAL,
    ORDERS,
    TRADES,
    ArchiveCorrupt,
    ArchiveStore,
    Entry,
    next_id,
    parse_id,
    stream_counts,
)
from protocol.config import NAMESPACE_ENV, load_markets
from protocol.config import redis_url as resolve_url
from protocol.keys import DEFAULT_NAMESPACE, Keys, Namespace
from protocol.wire import parse_order_record

log = logging.getLogger("jobs.archive")

SEGMENT_ENV = "FAIRBOOK_ARCHIVE_SEGMENT"
MIN_AGE_ENV = "FAIRBOOK_ARCHIVE_MIN_AGE_MS"
DEFAULT_SEGMENT = 100_000
DEFAULT_MIN_AGE_MS = 5_000
#: entries per XRANGE (a segment is read in chunks: no huge reply)
READ_CHUNK = 5000
#: members per ZADD / DEL inside one trim transaction
WRITE_CHUNK = 10_000
#: ``archive:orders`` members looked at per round trip
ORDER_CHUNK = 1000
#: ``archive:orders`` members looked at per run at most (round robin from a cursor): the open
#: and still-listed orders are looked at again and again, so each run takes a bounded share
ORDER_SCAN = 20_000
#: order records per segment at most (their deletion is one transaction)
ORDER_SEGMENT = 10_000


#: what a trim also runs in its MULTI, given the entries it trims (the journal's: order ids)
OnTrim = Callable[[list[Entry]], list[tuple[Any, ...]]]


class ArchiveConflict(Exception):
    """Redis and the archive disagree; nothing was trimmed. An operator must look."""


def archive_partition(partition: int, namespace: str | None = None,
                      redis_url: str | None = None, root: str | None = None,
                      segment_entries: int | None = None,
                      min_age_ms: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Archive one partition (see the module doc); returns what it did. Safe to re-run, to
    run beside another run (the second one skips), and to kill at any point."""
    ns = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    seg_n = segment_entries or int(os.environ.get(SEGMENT_ENV) or DEFAULT_SEGMENT)
    age = min_age_ms if min_age_ms is not None else int(
        os.environ.get(MIN_AGE_ENV) or DEFAULT_MIN_AGE_MS)  # fmt: skip
    client = redis.Redis.from_url(resolve_url(redis_url), socket_timeout=60,
                                  socket_connect_timeout=5)
    try:
        return Archiver(client, Keys(partition, ns), ArchiveStore(root, ns, partition), seg_n,
                        age).run()  # fmt: skip
    finally:
        client.close()


def archive_all(namespace: str | None = None, redis_url: str | None = None,
                root: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every partition in use (``FAIRBOOK_SYMBOLS`` / ``FAIRBOOK_PARTITIONS``), in turn."""
    names = Namespace.from_env(load_markets(), namespace)
    return [archive_partition(p, names.name, redis_url, root) for p in names.partitions]


class Archiver:
    """One run over one partition (the job function's body, testable with any client)."""

    def __init__(self, client: redis.Redis, keys: Keys, store: ArchiveStore,
                 segment_entries: int = DEFAULT_SEGMENT, min_age_ms: int = DEFAULT_MIN_AGE_MS,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        self.redis = client
        self.keys = keys
        self.store = store
        self.segment_entries = max(1, segment_entries)
        self.min_age_ms = max(0, min_age_ms)
        #: order records per segment: deleted in one MULTI, so smaller than the streams'
        self.order_segment = min(self.segment_entries, ORDER_SEGMENT)
        self.progress = progress or _rq_progress
        self.result: dict[str, Any] = {"partition": keys.partition}

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        with self.store.lock() as mine:
            if not mine:
                self.result["skipped"] = "another archive run holds the lock"
                return self.result
            self.result["temp_removed"] = self.store.remove_temp()
            journal_lt, trades_lt = self.cutoffs()
            self.result["cutoff"] = journal_lt
            self.result["journal"] = self.stream(self.keys.stream, JOURNAL, journal_lt,
                                                 self._new_orders)  # fmt: skip
            self.result["trades"] = self.stream(self.keys.trades, TRADES, trades_lt, None)
            self.result["orders"] = self.orders()
        seconds = time.monotonic() - started
        moved = self.result["journal"]["archived"] + self.result["trades"]["archived"]
        self.result["seconds"] = round(seconds, 3)
        self.result["entries_per_s"] = round(moved / seconds) if seconds > 0 else 0
        log.info("partition %d archived: %s", self.keys.partition, self.result)
        return self.result

    # -- what may go ----------------------------------------------------------------------------
    def cutoffs(self) -> tuple[str | None, str | None]:
        """Exclusive upper bounds for the journal and the trades: the oldest snapshot still
        kept (and not ahead of ``applied``), no later than ``min_age_ms`` ago; None = nothing."""
        applied = self.redis.get(self.keys.applied)
        if applied is None:
            return None, None
        limit = parse_id(applied)
        ids = sorted((_text(m) for m in self.redis.zrange(self.keys.snapshots, 0, -1)),
                     key=parse_id)  # fmt: skip
        kept = [s for s in ids if parse_id(s) <= limit]
        if not kept:
            return None, None
        oldest = kept[0]
        seconds, micros = self.redis.time()
        young = seconds * 1000 + micros // 1000 - self.min_age_ms
        if parse_id(oldest)[0] > young:
            if young <= 0:
                return None, None
            oldest = f"{young}-0"
        # a trade's id carries its command's ms: those before the cutoff's ms are all older
        return oldest, f"{parse_id(oldest)[0]}-0"

    # -- streams --------------------------------------------------------------------------------
    def stream(self, key: str, kind: str, lt: str | None,
               on_trim: OnTrim | None) -> dict[str, Any]:
        """Archive ``key``'s entries with id < ``lt``, then trim them."""
        out = {"archived": 0, "trimmed": 0, "segments": 0, "last": None}
        segs = self.store.check(kind)
        if segs:
            self.store.verify(segs[-1])  # a torn newest file must stop us, not be built on
        counts = stream_counts(self.redis, key)
        end = segs[-1].end if segs else 0
        if counts is None:
            if segs:
                raise ArchiveConflict(f"{key} does not exist but the archive holds {end} "
                                      f"{kind} entries")  # fmt: skip
            return out
        added, length = counts
        head = added - length  # the ordinal of the stream's first entry
        if added < end:
            raise ArchiveConflict(f"{key} ever held {added} entries, the archive {end}: "
                                  "Redis lost entries it had before they were archived")
        if head > end:
            raise ArchiveConflict(f"{key} was trimmed to ordinal {head} but the archive ends "
                                  f"at {end}: entries were trimmed unarchived (worker --trim?)")
        if head < end:  # archived before a crash, not trimmed yet: compare, then trim
            out["trimmed"] += self._trim_overlap(key, kind, segs, end - head, on_trim)
        last = self.store.last_id(kind)
        if lt is None:
            out["last"] = last
            return out
        while True:
            entries = self._read(key, last, lt)
            if not entries:
                break
            seg = self.store.write(kind, entries, self.store.end_index(kind))
            self._trim(key, seg.last, on_trim(entries) if on_trim else [])
            last = seg.last
            out["archived"] += seg.count
            out["trimmed"] += seg.count
            out["segments"] += 1
            self.progress({"kind": kind, "archived": out["archived"], "last": last})
            if len(entries) < self.segment_entries:
                break
        out["last"] = last
        return out

    def _read(self, key: str, after: str | None, lt: str) -> list[Entry]:
        """Up to one segment of entries after ``after`` and before ``lt``."""
        got: list[Entry] = []
        low = "(" + after if after else "-"
        while len(got) < self.segment_entries:
            want = min(READ_CHUNK, self.segment_entries - len(got))
            chunk = self.redis.xrange(key, min=low, max="(" + lt, count=want)
            got += chunk
            if len(chunk) < want:
                break
            low = "(" + _text(chunk[-1][0])
        return got

    def _trim_overlap(self, key: str, kind: str, segs: list[Any], expected: int,
                      on_trim: OnTrim | None) -> int:
        """The stream's first ``expected`` entries are archived already (the run that wrote
        them died before trimming): they must be exactly the archive's; then trim them."""
        archived_last = segs[-1].last
        first = self.redis.xrange(key, count=1)
        if not first:
            return 0
        since = _before(_text(first[0][0]))
        theirs: Iterator[Entry] = self.store.read(kind, after=since)
        seen = 0
        extra: list[tuple[Any, ...]] = []
        low = "-"
        while True:
            chunk = self.redis.xrange(key, min=low, max=archived_last, count=READ_CHUNK)
            for entry in chunk:
                mine = next(theirs, None)
                if mine is None or mine[0] != entry[0] or mine[1] != entry[1]:
                    raise ArchiveConflict(
                        f"{key} entry {_text(entry[0])} differs from the archive's "
                        f"({_text(mine[0]) if mine else 'none'}): nothing trimmed")  # fmt: skip
                seen += 1
            if on_trim and chunk:
                extra += on_trim(chunk)
            if len(chunk) < READ_CHUNK:
                break
            low = "(" + _text(chunk[-1][0])
        if seen != expected:
            raise ArchiveConflict(f"{key}: {seen} entries up to {archived_last}, the archive "
                                  f"says {expected}: nothing trimmed")  # fmt: skip
        self._trim(key, archived_last, extra)
        log.info("%s: trimmed %d entries a previous run had archived", key, seen)
        return seen

    def _trim(self, key: str, last: str, extra: list[tuple[Any, ...]]) -> None:
        """``XTRIM MINID`` past ``last`` (exact), with ``extra`` commands, in one MULTI."""
        pipe = self.redis.pipeline(transaction=True)
        for command in extra:
            pipe.execute_command(*command)
        pipe.xtrim(key, minid=next_id(last), approximate=False)
        pipe.execute()

    def _new_orders(self, entries: list[Entry]) -> list[tuple[Any, ...]]:
        """``ZADD archive:orders`` of the order ids the journal entries created."""
        ids: list[int] = []
        for _, fields in entries:
            try:
                body = orjson.loads(fields.get(b"c", b""))
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict) and body.get("op") == "new":
                oid = body.get("id")
                if isinstance(oid, int) and not isinstance(oid, bool):
                    ids.append(oid)
        key = self.keys.archive_orders
        return [("ZADD", key, *(x for oid in ids[i : i + WRITE_CHUNK] for x in (oid, oid)))
                for i in range(0, len(ids), WRITE_CHUNK)]  # fmt: skip

    # -- order records --------------------------------------------------------------------------
    def orders(self) -> dict[str, Any]:
        """Archive, then delete, the records of closed orders that left their ``closed:``
        index; drop ids without a record."""
        out = {"archived": 0, "deleted": 0, "dropped": 0, "pending": 0, "segments": 0}
        pending = self.keys.archive_orders
        segs = self.store.check(ORDERS)
        if segs:  # a previous run may have died between writing its segment and deleting
            self.store.verify(segs[-1])
            newest = list(self.store.read(ORDERS, segments=segs[-1:]))
            out["deleted"] += self._finish_segment(newest, unless_done=True)
        ready: list[Entry] = []
        cursor = self.redis.get(self.keys.archive_cursor)
        start = int(cursor) if cursor else None
        # from the cursor to the end, then from the start up to the cursor: once round at most
        passes = [("-inf", "+inf")] if start is None else [(f"({start}", "+inf"), ("-inf", start)]
        looked = 0
        stopped_at: int | None = None
        for low, high in passes:
            while stopped_at is None:
                ids = [int(m) for m in self.redis.zrangebyscore(pending, low, high, start=0,
                                                                num=ORDER_CHUNK)]  # fmt: skip
                if not ids:
                    break
                looked += len(ids)
                low = f"({ids[-1]}"
                if looked >= ORDER_SCAN:
                    stopped_at = ids[-1]  # the next run goes on from here
                self._look_at(ids, ready, out)
                if len(ready) >= self.order_segment:
                    out["deleted"] += self._write_orders(ready, out)
                    ready = []
        if ready:
            out["deleted"] += self._write_orders(ready, out)
        if stopped_at is None:
            self.redis.delete(self.keys.archive_cursor)
        else:
            self.redis.set(self.keys.archive_cursor, stopped_at)
        out["looked_at"] = looked
        out["pending"] = self.redis.zcard(pending)
        return out

    def _look_at(self, ids: list[int], ready: list[Entry], out: dict[str, Any]) -> None:
        """Add to ``ready`` the records of ``ids`` that may go; drop ids without a record."""
        pending = self.keys.archive_orders
        raws = self.redis.mget([self.keys.order(oid) for oid in ids])  # one slot: {pN}
        gone = [oid for oid, raw in zip(ids, raws, strict=True) if raw is None]
        closed: dict[str, list[tuple[int, bytes]]] = {}
        for oid, raw in zip(ids, raws, strict=True):
            parsed = parse_order_record(raw) if raw is not None else None
            if parsed is not None and parsed[1].get("status") in CLOSED_STATUSES:
                closed.setdefault(parsed[0], []).append((oid, raw))
        pipe = self.redis.pipeline(transaction=False)
        for account, rows in closed.items():
            pipe.zmscore(self.keys.closed(account), [oid for oid, _ in rows])
        listed = pipe.execute() if closed else []
        ready += [(str(oid).encode(), {b"r": raw})
                  for rows, scores in zip(closed.values(), listed, strict=True)
                  for (oid, raw), score in zip(rows, scores, strict=True)
                  if score is None]  # fmt: skip
        if gone:
            self.redis.zrem(pending, *gone)
            out["dropped"] += len(gone)

    def _write_orders(self, ready: list[Entry], out: dict[str, Any]) -> int:
        seg = self.store.write(ORDERS, ready, self.store.end_index(ORDERS))
        out["archived"] += seg.count
        out["segments"] += 1
        self.progress({"kind": ORDERS, "archived": out["archived"]})
        return self._finish_segment(ready)

    def _finish_segment(self, entries: list[Entry], unless_done: bool = False) -> int:
        """Delete the records of an archived orders segment and their ``archive:orders`` ids
        in one MULTI (all or nothing: ``unless_done`` looks at the first id alone). Each
        record still in Redis must be the archived bytes (a closed order's never changes)."""
        pending = self.keys.archive_orders
        ids = [int(e[0]) for e in entries]
        if unless_done and self.redis.zscore(pending, ids[0]) is None:
            return 0
        raws: list[Any] = []
        for i in range(0, len(ids), ORDER_CHUNK):
            raws += self.redis.mget([self.keys.order(oid) for oid in ids[i : i + ORDER_CHUNK]])
        for (raw_id, fields), raw in zip(entries, raws, strict=True):
            if raw is not None and raw != fields[b"r"]:
                raise ArchiveConflict(f"{self.keys.order(_text(raw_id))} differs from its "
                                      "archived record: not deleted")  # fmt: skip
        doomed = [self.keys.order(oid) for oid, raw in zip(ids, raws, strict=True)
                  if raw is not None]  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        for i in range(0, len(doomed), WRITE_CHUNK):
            pipe.delete(*doomed[i : i + WRITE_CHUNK])
        for i in range(0, len(ids), WRITE_CHUNK):
            pipe.zrem(pending, *ids[i : i + WRITE_CHUNK])
        pipe.execute()
        return len(doomed)


def _before(stream_id: str) -> str | None:
    """The largest stream id before ``stream_id`` (None before ``0-0``)."""
    ms, seq = parse_id(stream_id)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rq_progress(progress: dict[str, Any]) -> None:
    """In an RQ job: ``job.meta["progress"]`` (the dashboard shows meta)."""
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:  # outside RQ (CLI, tests): nothing to report to
        return
    if job is not None:
        job.meta["progress"] = progress
        job.save_meta()


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.archive``: archive now, once or every ``--every`` seconds (on demand;
    the scheduled runs are RQ's, ``jobs.queues``)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partition", type=int, default=None,
                        help="this partition only (default: every partition in use)")
    parser.add_argument("--namespace", default=None, help=f"default: ${NAMESPACE_ENV} or fb")
    parser.add_argument("--redis-url", default=None, help="default: $REDIS_URL (better: a "
                        "password there is not shown by ps)")
    parser.add_argument("--archive", default=None, help="archive directory (default: "
                        "$FAIRBOOK_ARCHIVE, else ./var/archive)")
    parser.add_argument("--segment", type=int, default=None,
                        help=f"entries per segment (default: ${SEGMENT_ENV} or {DEFAULT_SEGMENT})")
    parser.add_argument("--min-age-ms", type=int, default=None,
                        help=f"archive only entries older than this (default: ${MIN_AGE_ENV} "
                        f"or {DEFAULT_MIN_AGE_MS})")
    parser.add_argument("--every", type=float, default=None,
                        help="run again every this many seconds until killed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    names = Namespace.from_env(load_markets(), args.namespace)
    partitions = names.partitions if args.partition is None else [args.partition]
    while True:
        for partition in partitions:
            try:
                result = archive_partition(partition, names.name, args.redis_url, args.archive,
                                           args.segment, args.min_age_ms)  # fmt: skip
            except (ArchiveConflict, ArchiveCorrupt) as exc:
                log.error("partition %d: %s", partition, exc)
                return 1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if args.every is None:
                    raise
                log.warning("partition %d: Redis unavailable (%s)", partition, exc)
                continue
            print(orjson.dumps(result).decode(), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
