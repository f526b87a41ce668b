"""The partition worker: journal -> processor -> one fenced atomic commit per batch -> pub/sub.

One thread does the work, in this order per batch: read (XREAD), process (pure), finish the
previous batch's commit, read the next batch, send this batch's commit. So Redis executes batch
k while Python matches batch k+1, with no second thread or process (``worker.commit``). Any
doubt (a connection error, a lost lease, ``applied`` not what we wrote) throws memory away and
recovers from Redis: newest snapshot, then the journal up to ``applied`` replayed silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

import engine
from engine.markets import Market
from protocol import wire
from protocol.keys import Namespace
from worker.batch import Message
from worker.commit import BatchWriter, StateMismatch, batch_commands
from worker.lease import Lease, LeaseLost
from worker.processor import Entry, Processor, parse_stream_id
from worker.snapshots import SnapshotStore, stream_was_trimmed

log = logging.getLogger("worker")


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A bytes client (no decoding: the codec takes bytes) with generous timeouts."""
    kwargs.setdefault("socket_timeout", 30)
    kwargs.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, **kwargs)


class PartitionWorker:
    """One partition's matcher: standby until it holds the lease, then recover and match."""

    def __init__(
        self,
        redis_url: str,
        partition: int,
        markets: dict[str, Market],
        namespace: Namespace | str | None = None,
        partitions_config: str | None = None,
        snapshot_every: int = 50_000,
        snapshot_seconds: float = 30.0,
        keep_snapshots: int = 2,
        trim: bool = False,
        lease_ms: int = 5000,
        renew_s: float = 1.0,
        batch_size: int = 1000,
        block_ms: int = 50,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(namespace, Namespace):
            namespace = Namespace.from_env(markets, namespace, partitions_config)
        symbols = namespace.symbols_of(partition)
        if not symbols:
            raise ValueError(f"partition {partition} has no symbols")
        self.partition = partition
        self.markets = {s: markets[s] for s in symbols}
        self.namespace = namespace
        self.keys = namespace.keys(partition)
        self.snapshot_every = snapshot_every
        self.snapshot_seconds = snapshot_seconds
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.on_batch = on_batch
        self.redis = connect(redis_url)
        # XREAD BLOCK holds its connection: a client of its own
        self.reader = connect(redis_url)
        self.lease = Lease(connect(redis_url), self.keys.lease, lease_ms, renew_s)
        self.writer = BatchWriter(self.redis, self.keys, self.lease)
        self.snapshots = SnapshotStore(self.redis, self.keys, keep_snapshots, trim)
        self.processor: Processor | None = None
        self.stop_event = threading.Event()
        self.active = threading.Event()  # set while this worker holds the lease and matches
        self.applied_total = 0  # entries committed by this process (benchmarks, tests)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()

    # -- life cycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Until :meth:`stop`: wait for the lease, recover, match; on any doubt start over."""
        log.info("partition %d: worker %s starting (%s; %s core)", self.partition,
                 self.lease.token, ", ".join(self.markets),
                 "compiled" if engine.native() else "pure Python")  # fmt: skip
        waiting_logged = False
        while not self.stop_event.is_set():
            try:
                if not self.lease.acquire():
                    if not waiting_logged:
                        log.info("partition %d: standby, lease held by %s", self.partition,
                                 self.lease.holder())  # fmt: skip
                        waiting_logged = True
                    self.stop_event.wait(min(0.2, self.lease.ttl_ms / 5000))
                    continue
                waiting_logged = False
                log.info("partition %d: lease acquired", self.partition)
                self.lease.start_renewing()
                self.recover()
                self.active.set()
                self._match_loop()
            except (LeaseLost, StateMismatch) as exc:
                log.warning("partition %d: %s; back to standby", self.partition, exc)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("partition %d: Redis unavailable (%s); will recover", self.partition,
                            exc)  # fmt: skip
                self.stop_event.wait(0.2)
            except Exception:
                log.exception("partition %d: worker failed", self.partition)
                raise
            finally:
                self.active.clear()
                self.processor = None  # memory may be ahead of or behind Redis: never trust it
                self.writer.close()
                self.lease.stop_renewing()
        self.lease.release()
        log.info("partition %d: worker stopped", self.partition)

    # -- recovery -------------------------------------------------------------------------------
    def recover(self) -> Processor:
        """Newest usable snapshot + silent replay up to ``applied``; then rewrite the books."""
        started = time.monotonic()
        applied = _text(self.redis.get(self.keys.applied))
        proc, used = self._from_snapshot(applied)
        silent = 0
        if applied is not None:
            last = proc.last_id or "0-0"
            while True:
                entries = self.redis.xrange(
                    self.keys.stream, min="(" + last, max=applied, count=self.batch_size
                )
                if not entries:
                    break
                proc.process(entries, emit=False)
                silent += len(entries)
                last = proc.last_id or last
            if proc.last_id != applied:
                raise RuntimeError(
                    f"partition {self.partition}: applied={applied} but the journal ends at "
                    f"{proc.last_id}; the stream lost entries"
                )
        self.writer.committed = applied
        self.processor = proc
        # Readers may have seen nothing yet (fresh start) or a book written before a crash:
        # rewrite every book from memory, fenced like any commit, and tell the web to resync
        # (book sequences continue from the replayed state).
        books = [x for s in sorted(self.markets) for x in (self.keys.book(s), proc.book_value(s))]
        resync = Message(self.keys.control, wire.resync_message(self.partition))
        self.writer.commit([("MSET", *books)], None, [resync])
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        log.info(
            "partition %d: recovered from %s + %d journal entries in %.3f s (applied=%s)",
            self.partition, f"snapshot {used}" if used else "genesis", silent,
            time.monotonic() - started, applied,
        )  # fmt: skip
        return proc

    def _from_snapshot(self, applied: str | None) -> tuple[Processor, str | None]:
        """The newest usable snapshot not ahead of ``applied``, else an empty processor."""
        if applied is not None:
            limit = parse_stream_id(applied)
            for sid in reversed(self.snapshots.ids()):
                if parse_stream_id(sid) > limit:
                    continue  # cannot be: snapshots follow commits; ignore rather than trust
                blob = self.snapshots.load(sid)
                if blob is None:
                    continue
                try:
                    proc = Processor.from_blob(
                        self.markets, blob, self.partition, namespace=self.namespace.name
                    )
                    return proc, sid
                except (ValueError, KeyError) as exc:
                    log.warning("partition %d: snapshot %s unusable: %s", self.partition, sid,
                                exc)  # fmt: skip
            if stream_was_trimmed(self.redis, self.keys.stream):
                raise RuntimeError(
                    f"partition {self.partition}: the journal was trimmed and no usable "
                    "snapshot exists; refusing to rebuild from a partial stream"
                )
        return Processor(self.markets, self.partition, namespace=self.namespace.name), None

    # -- matching -------------------------------------------------------------------------------
    def _read(self, after: str, block: bool) -> list[Entry]:
        """The next batch after ``after``: waits up to ``block_ms`` only when ``block``."""
        reply = self.reader.xread(
            {self.keys.stream: after}, count=self.batch_size,
            block=self.block_ms if block else None,
        )  # fmt: skip
        if not reply:
            return []
        # RESP3: {stream: entries}; RESP2: [[stream, entries]]
        return next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]

    def _match_loop(self) -> None:
        proc = self.processor
        assert proc is not None
        writer = self.writer
        last = proc.last_id or "0-0"
        entries = self._read(last, block=True)
        while not self.stop_event.is_set():
            if self.lease.lost.is_set():
                raise LeaseLost("lease renewal failed")
            if entries:
                batch = proc.process(entries)
                last = batch.last_id or last
                writer.finish()  # the previous batch: Redis ran it while we matched this one
                upcoming = self._read(last, block=False)  # Redis is idle: read ahead now
                writer.send(batch_commands(batch, self.keys), batch.last_id, batch.messages)
                self._since_snapshot += len(entries)
                self.applied_total += len(entries)
                if self.on_batch is not None:
                    self.on_batch(len(entries))
                entries = upcoming
            else:
                writer.finish()  # nothing to overlap it with
            if self._since_snapshot and (
                self._since_snapshot >= self.snapshot_every
                or time.monotonic() - self._last_snapshot >= self.snapshot_seconds
            ):
                self.snapshot()
            if not entries:
                entries = self._read(last, block=True)
        writer.finish()

    def snapshot(self) -> str | None:
        """Save the current state (between batches, after its commit), keep the newest N."""
        proc = self.processor
        if proc is None or proc.last_id is None:
            return None
        self.writer.finish()  # a snapshot must never be ahead of ``applied``
        started = time.monotonic()
        blob = proc.snapshot_blob()
        self.snapshots.save(self.lease.token, proc.last_id, blob)
        log.info("partition %d: snapshot %s (%d bytes, %d open orders) in %.3f s",
                 self.partition, proc.last_id, len(blob), len(proc.orders),
                 time.monotonic() - started)  # fmt: skip
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        return proc.last_id


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
