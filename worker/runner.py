"""The partition worker: journal -> engine -> one fenced atomic commit per batch -> pub/sub.

Exactly-once rests on three facts: (1) a batch's writes and the new ``applied`` id are one
MULTI/EXEC transaction, so they land together or not at all; (2) WATCH makes that transaction
fail unless the lease is ours AND ``applied`` still equals the id we committed last, so a stale
or duplicate worker writes nothing; (3) recovery replays entries up to ``applied`` into memory
only. Any doubt (connection
error, lost lease) throws the in-memory state away and recovers from Redis again.
"""

from __future__ import annotations

import gc
import logging
import marshal
import multiprocessing
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import hiredis
import redis
import redis.connection

import engine
from engine.schema import Market
from worker.journal import dumps_compact
from worker.keys import DEFAULT_NAMESPACE, Keys, symbols_of_partition
from worker.processor import Processor, parse_stream_id, resp
from worker.rawredis import RawConnection

log = logging.getLogger("worker")

#: CPython hands the GIL to a waiting thread only every ``switchinterval`` (5 ms by default).
#: The commit and journal-reader threads wake on Redis replies and need the GIL for a moment
#: while the matcher holds it: at 5 ms Redis sat idle waiting for the next EXEC. 1 ms drained
#: the journal 1.04-1.25x faster in interleaved runs; idle workers are not affected.
GIL_SWITCH_INTERVAL_S = 0.001
#: The commit process renders with slack while the matcher is the pipeline's bottleneck: when
#: the two cores are contended (matcher, renderer, redis-server), the scheduler should run the
#: matcher first. Niceness 10 drained 1.07-1.11x faster in interleaved runs on 2 cores.
COMMIT_PROCESS_NICE = 10
#: Collector thresholds of the matcher and the commit process: both allocate many short-lived
#: tuples, and no reference cycles worth a collection every 700 allocations.
GC_THRESHOLDS = (50_000, 50, 100)
#: ``adaptive`` commit mode: a batch of at least this share of the batch size means a backlog
#: (render in the child process) ...
ADAPTIVE_BIG_SHARE = 0.5
#: ... and one below this share means live flow again (render on a thread).
ADAPTIVE_SMALL_SHARE = 0.05


class LeaseLost(Exception):
    """Our lease expired or was taken: stop writing, become standby."""


class StateMismatch(Exception):
    """``applied`` in Redis is not what we committed last: someone else wrote; recover."""


RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, snapshots zset, stream. ARGV: token, stream id, blob, keep, trim (1/0),
# snapshot key prefix, score (the id's ms).
SNAPSHOT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', ARGV[6] .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
table.sort(ids, function(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end)
local keep = tonumber(ARGV[4])
local drop = #ids - keep
if drop < 0 then drop = 0 end
for i = 1, drop do
  redis.call('DEL', ARGV[6] .. ids[i])
  redis.call('ZREM', KEYS[2], ids[i])
end
if ARGV[5] == '1' and #ids > drop then
  redis.call('XTRIM', KEYS[3], 'MINID', ids[drop + 1])
end
return 1
"""


def connect(url: str, **kwargs: object) -> redis.Redis:
    """A bytes client (no decoding: json.loads takes bytes) with generous timeouts."""
    kwargs.setdefault("socket_timeout", 30)
    kwargs.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, **kwargs)  # type: ignore[arg-type]


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class Lease:
    """``SET NX PX`` ownership of a partition, renewed by a background thread.

    The thread only *detects* loss (``lost``); correctness comes from the commit script
    re-checking the token, so a paused or partitioned worker can never write.
    """

    def __init__(
        self, client: redis.Redis, key: str, ttl_ms: int = 5000, renew_s: float = 1.0,
        token: str | None = None,
    ) -> None:  # fmt: skip
        self.redis = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.renew_s = renew_s
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        # after a Redis restart the (persisted) lease may still be ours
        return _text(self.redis.get(self.key)) == self.token

    def holder(self) -> str | None:
        return _text(self.redis.get(self.key))

    def start_renewing(self) -> None:
        self.stop_renewing()
        self.lost.clear()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease:{self.key}", args=(self._stop,), daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        last_ok = time.monotonic()
        while not stop.wait(self.renew_s):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
                    log.warning("lease %s lost (held by %s)", self.key, self.holder())
                    self.lost.set()
                    return
                last_ok = time.monotonic()
            except redis.RedisError as exc:
                if time.monotonic() - last_ok > self.ttl_ms / 1000:
                    log.warning("lease %s: cannot renew (%s), assuming it lost", self.key, exc)
                    self.lost.set()
                    return

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.renew_s + 1)
        self._thread = None

    def release(self) -> None:
        """Give the lease up now (clean shutdown) so a standby need not wait for the TTL."""
        self.stop_renewing()
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError:
            pass


def _encode(ops: list[str]) -> bytes:
    """Join RESP commands; if a non-ASCII argument slipped in, re-encode with byte lengths."""
    text = "".join(ops)
    data = text.encode()
    if len(data) != len(text):
        raise ValueError("non-ASCII data in a commit; refusing to send wrong RESP lengths")
    return data


class OutputWriter:
    """Commits a batch's writes and its pub/sub messages atomically and fenced.

    The check: ``WATCH lease applied`` + ``GET lease`` + ``GET applied``; the write, only if the
    lease holds our token and ``applied`` is what we committed last: ``MULTI``, the batch's
    commands, ``SET applied <last id>``, its PUBLISHes and ``EXEC``. WATCH makes EXEC fail if
    either key changed (or the lease expired) after the check, so check and writes are one
    atomic step. The check for the next commit is sent right behind each EXEC, in the same
    write, so a commit costs one round trip, not two: the WATCH stays in force until the next
    EXEC, however long that is. Our own lease renewal also touches the key; such an EXEC (or a
    check that no longer matches) is simply retried with a fresh check.
    """

    def __init__(self, url: str, client: redis.Redis, keys: Keys, lease: Lease) -> None:
        self.redis = client
        self.keys = keys
        self.lease = lease
        self.conn = RawConnection(url, kernel_timeout=True)
        self.committed: str | None = None  # ``applied`` as we last wrote (or found) it
        # (lease holder, applied) as read by the check sent behind the last EXEC, whose WATCH
        # is still in force on ``conn``; None when there is none
        self._checked: tuple[str | None, str | None] | None = None
        lk, ak = keys.lease, keys.applied
        self._head = (resp(["WATCH", lk, ak]) + resp(["GET", lk]) + resp(["GET", ak])).encode()
        self._unwatch = resp(["UNWATCH"]).encode()
        self._multi = resp(["MULTI"])
        self._exec = resp(["EXEC"])

    def _read_check(self) -> tuple[str | None, str | None]:
        _, holder_raw, applied_raw = self.conn.read(3)
        holder = holder_raw.decode() if isinstance(holder_raw, bytes) else None
        applied = applied_raw.decode() if isinstance(applied_raw, bytes) else None
        return holder, applied

    def commit(
        self, ops: list[str], new_applied: str | None, messages: list[tuple[str, str]] = ()
    ) -> None:  # type: ignore[assignment]
        """Write ``ops`` + ``applied`` and publish ``messages``, all inside one EXEC.

        PUBLISH inside the transaction means subscribers hear of a batch exactly when (and only
        if) it is committed, after its writes; PUBLISH is not written to the AOF.
        """
        tail = [resp(["SET", self.keys.applied, new_applied])] if new_applied else []
        tail += [resp(["PUBLISH", channel, text]) for channel, text in messages]
        body = _encode([self._multi, *ops, *tail, self._exec]) + self._head
        queued = len(ops) + len(tail)  # one command per op
        expect = b"+OK\r\n" + b"+QUEUED\r\n" * queued
        conn = self.conn
        try:
            for _attempt in range(50):
                want = (self.lease.token, self.committed)
                checked, self._checked = self._checked, None
                if checked != want or not conn.connected:
                    if checked is not None and conn.connected:  # stale: start over
                        conn.send(self._unwatch + self._head)
                        conn.read(1)
                    else:
                        conn.send(self._head)
                    holder, applied = self._read_check()
                    if (holder, applied) != want:
                        conn.call(["UNWATCH"])
                        if holder != self.lease.token:
                            raise LeaseLost(f"lease {self.keys.lease} is held by {holder}, not us")
                        raise StateMismatch(
                            f"{self.keys.applied} is {applied}, we committed {self.committed}"
                        )
                conn.send(body)
                if not conn.read_prefix(expect):
                    replies = conn.read(queued + 2)
                    bad = [r for r in replies if isinstance(r, hiredis.ReplyError)]
                    raise redis.ResponseError(f"commit refused, nothing written: {bad[:3]}")
                (result,) = conn.read(1)
                next_check = self._read_check()  # the check that rode behind the EXEC
                if isinstance(result, hiredis.ReplyError):
                    raise redis.ResponseError(f"commit failed: {result}")
                if result is None:  # a watched key changed (e.g. our own renewal): again
                    self._checked = next_check
                    continue
                for reply in result:  # type: ignore[union-attr]
                    if isinstance(reply, hiredis.ReplyError):
                        # MULTI has no rollback: the batch is half written. Stop loudly.
                        raise RuntimeError(f"a commit command failed inside EXEC: {reply}")
                if new_applied:
                    self.committed = new_applied
                self._checked = next_check
                return
        except redis.ResponseError:
            conn.close()  # replies may be left unread: never reuse the connection
            raise
        raise LeaseLost("commit kept being interrupted; giving the partition up")

    def close(self) -> None:
        self.conn.close()


class CommitterDied(RuntimeError):
    """The commit process went away: its last batch may or may not be committed; recover."""


class ThreadCommitter:
    """Renders in the calling thread, commits on a second thread (Redis runs batch k while
    Python matches batch k+1). Used when ``commit_process`` is off.

    Depth is bounded. After the first failure every later batch is dropped, never committed:
    committing k+1 without k would lose k's outputs. The failure is re-raised to the matching
    thread at its next :meth:`check`, :meth:`submit` or :meth:`drain`.
    """

    #: batches in flight at most: one committing, one rendered and waiting behind it
    DEPTH = 2

    def __init__(self, writer: OutputWriter, proc: Processor) -> None:
        self.writer = writer
        self.proc = proc
        # SimpleQueues (C) rather than queue.Queue, whose Python-level locking cost ~10 % of
        # the worker's CPU at live flow: ``queue`` carries batches, ``slots`` one token per
        # batch allowed in flight (taken by submit, given back when the commit is done)
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self.DEPTH):
            self.slots.put(None)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.thread.start()

    @property
    def pending(self) -> int:
        return self.DEPTH - self.slots.qsize()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if self.error is None:
                    ops, last_id, messages = item
                    self.writer.commit(ops, last_id, messages)
            except BaseException as exc:  # noqa: B036 - handed to the matching thread
                self.error = exc
            finally:
                self.slots.put(None)

    def check(self) -> None:
        """Re-raise the committer's failure, if any, in the calling thread."""
        if self.error is not None:
            raise self.error

    def submit(self, batch: Any, more: bool = True) -> None:
        """Render ``batch`` and commit it on the thread; inline when ``more`` is False.

        ``more`` says whether another batch is already waiting to be matched. When none is
        and nothing is in flight, the thread would overlap the commit with nothing, and the two
        hand-overs (to the thread, and back through :meth:`drain`) cost more than the commit's
        wait: at live flow, one order per batch, that was 0.1 ms of worker CPU per order.
        """
        self.check()
        ops, messages = self.proc.render(batch)
        if not more and self.slots.qsize() == self.DEPTH:  # the thread is idle: no race
            self.writer.commit(ops, batch.last_id, messages)
            return
        self.slots.get()
        self.queue.put((ops, batch.last_id, messages))

    def drain(self) -> None:
        """Wait until everything submitted is committed (or failed: then raise)."""
        for _ in range(self.DEPTH):
            self.slots.get()
        for _ in range(self.DEPTH):
            self.slots.put(None)
        self.check()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)


class _Token:
    """The lease as the commit process sees it: just our token (it never renews)."""

    def __init__(self, token: str) -> None:
        self.token = token


def _commit_process_main(
    conn: Any, url: str, partition: int, namespace: str, markets: dict[str, Market],
    render_config: tuple[Any, ...], token: str, committed: str | None, log_level: int,
) -> None:  # fmt: skip
    """Child process: receive marshalled plans, render, commit (fenced), answer ok / error.

    Exits when the parent closes the pipe (also when the parent was killed). After an error it
    answers once and exits: nothing after a failed batch may be committed.
    """
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # the commit thread waits on EXEC replies
    os.nice(COMMIT_PROCESS_NICE)
    from worker.render import Renderer

    # unmarshalled plans are mostly tuples, which the collector tracks: with the default
    # thresholds it scanned them every 700 allocations (0.83-0.88x CPU per entry without that)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    keys = Keys(partition, namespace)
    writer = OutputWriter(url, connect(url), keys, _Token(token))  # type: ignore[arg-type]
    writer.committed = committed
    renderer = Renderer(markets, *render_config)
    # Render batch k+1 here while a thread waits for Redis to run batch k's EXEC. Only that
    # thread answers the parent, so answers stay in batch order and never interleave.
    work: queue.Queue[Any] = queue.Queue(maxsize=1)
    failed = threading.Event()

    def commit_loop() -> None:
        while True:
            item = work.get()
            if item is None:
                return
            if isinstance(item, BaseException):  # rendering failed: report it, in order
                conn.send(("error", repr(item)))
                failed.set()
                return
            if len(item) == 2:  # ("sync", id): the thread committer committed up to id
                writer.committed = item[1]
                continue
            ops, last_id, messages = item
            try:
                writer.commit(ops, last_id, messages)
                conn.send(("ok", last_id))
                continue
            except LeaseLost as exc:
                conn.send(("lease", str(exc)))
            except StateMismatch as exc:
                conn.send(("state", str(exc)))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                conn.send(("conn", str(exc)))
            except Exception as exc:
                log.exception("commit process failed")
                conn.send(("error", repr(exc)))
            failed.set()
            return

    def hand_over(item: Any) -> bool:
        """Queue ``item`` for the commit thread; False once that thread has failed."""
        while not failed.is_set():
            try:
                work.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # A plan is ~1 MB and a pipe holds 64 KB: read plans as they come, on a thread, or the
    # matcher's send would block until this loop finished rendering the plan before (the
    # parent bounds the plans in flight; nothing here needs to).
    incoming: queue.Queue[bytes] = queue.Queue()

    def receive_loop() -> None:
        try:
            while True:
                data = conn.recv_bytes()
                incoming.put(data)
                if not data:
                    return
        except (EOFError, OSError):  # the parent is gone: stop like on its b"" goodbye
            incoming.put(b"")

    committer = threading.Thread(target=commit_loop, name="commit", daemon=True)
    committer.start()
    threading.Thread(target=receive_loop, name="receive", daemon=True).start()
    try:
        while not failed.is_set():
            data = incoming.get()
            if not data:
                return
            try:
                plan = marshal.loads(data)
                if len(plan) == 2:  # ("sync", committed id), in order with the plans
                    if not hand_over(plan):
                        return
                    continue
                ops, messages = renderer.render(plan)
            except Exception as exc:
                log.exception("commit process failed")
                hand_over(exc)
                return
            if not hand_over((ops, plan[0], messages)):
                return
    finally:
        hand_over(None)
        committer.join()


class ProcessCommitter:
    """Renders and commits in a child process: the matcher is CPU bound and the GIL would make
    a thread share its core. Plans (plain tuples) are marshalled over a pipe; at most ``depth``
    batches are in flight; results come back in order."""

    _errors: dict[str, type[Exception]] = {
        "lease": LeaseLost,
        "state": StateMismatch,
        "conn": redis.ConnectionError,
    }

    def __init__(
        self, url: str, keys: Keys, markets: dict[str, Market], proc: Processor, token: str,
        committed: str | None, depth: int = 2,
    ) -> None:  # fmt: skip
        ctx = multiprocessing.get_context("spawn")  # no fork: we have threads and sockets
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_commit_process_main,
            args=(child, url, keys.partition, keys.namespace, markets, proc.render_config,
                  token, committed, logging.getLogger("worker").getEffectiveLevel()),
            name=f"fairbook-commit-p{keys.partition}",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()
        self.depth = depth
        self.pending = 0
        self.committed = committed  # ``applied`` as the child last committed it
        self.error: BaseException | None = None

    def _receive(self) -> None:
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.error = CommitterDied(f"commit process died: {exc!r}")
            raise self.error from None
        self.pending -= 1
        if kind != "ok":
            self.error = self._errors.get(kind, CommitterDied)(detail)
            raise self.error
        self.committed = detail

    def check(self) -> None:
        if self.error is not None:
            raise self.error
        while self.pending and self.conn.poll():
            self._receive()

    def submit(self, batch: Any, more: bool = True) -> None:
        self.check()
        while self.pending >= self.depth:
            self._receive()
        try:
            # marshal: plans are plain tuples/lists/str/int/None, and it dumps faster than
            # pickle on the (CPU-bound) matcher side; both ends run the same interpreter
            self.conn.send_bytes(marshal.dumps(batch.plan))
        except OSError as exc:
            self.error = CommitterDied(f"commit process gone: {exc!r}")
            raise self.error from None
        self.pending += 1

    def drain(self) -> None:
        self.check()
        while self.pending:
            self._receive()

    def sync(self, committed: str | None) -> None:
        """Tell the child what ``applied`` is now (another committer wrote batches meanwhile)."""
        self.check()
        try:
            self.conn.send_bytes(marshal.dumps(("sync", committed)))
        except OSError as exc:
            self.error = CommitterDied(f"commit process gone: {exc!r}")
            raise self.error from None
        self.committed = committed

    def close(self) -> None:
        try:
            self.conn.send_bytes(b"")
        except OSError:
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class AdaptiveCommitter:
    """A thread for small batches, the child process for big ones.

    Live flow comes in batches of one or two entries: there the child's pipe hop and the plan's
    marshalling cost more CPU than they free (0.66-0.73 against 0.48 ms per request), and the
    web needs that CPU. A backlog (recovery, a burst) comes in batches of hundreds: there the
    matcher is the bottleneck and rendering on the other core drains 1.1-1.2x faster. Switching
    waits until the active committer has committed everything it was given, then hands the
    committed id over, so batches are committed strictly in order by one committer at a time.
    """

    def __init__(
        self, thread: ThreadCommitter, process: ProcessCommitter, writer: OutputWriter,
        big: int, small: int,
    ) -> None:  # fmt: skip
        self.thread = thread
        self.process = process
        self.writer = writer
        self.active: ThreadCommitter | ProcessCommitter = thread
        self.big = big
        self.small = small
        self.switches = 0

    @property
    def pending(self) -> int:
        return self.active.pending

    def check(self) -> None:
        self.thread.check()
        self.process.check()

    def submit(self, batch: Any, more: bool = True) -> None:
        if self.active is self.thread:
            if batch.count >= self.big:
                self.thread.drain()
                self.process.sync(self.writer.committed)
                self.active = self.process
                self.switches += 1
                log.info("backlog (a batch of %d): rendering in the commit process", batch.count)
        elif batch.count < self.small:
            self.process.drain()
            self.writer.committed = self.process.committed
            self.active = self.thread
            self.switches += 1
            log.info("live flow (a batch of %d): rendering on a thread", batch.count)
        self.active.submit(batch, more)

    def drain(self) -> None:
        self.active.drain()
        if self.active is self.process:
            self.writer.committed = self.process.committed
        self.check()

    def close(self) -> None:
        self.thread.close()
        self.process.close()


class SnapshotStore:
    """Worker snapshots under ``snapshot:<stream id>``, indexed by the ``snapshots`` zset."""

    def __init__(self, client: redis.Redis, keys: Keys, keep: int = 2, trim: bool = False) -> None:
        self.redis = client
        self.keys = keys
        self.keep = max(1, keep)
        self.trim = trim
        self._save = client.register_script(SNAPSHOT_LUA)

    def save(self, token: str, stream_id: str, blob: bytes) -> None:
        ms = parse_stream_id(stream_id)[0]
        ok = self._save(
            keys=[self.keys.lease, self.keys.snapshots, self.keys.stream],
            args=[token, stream_id, blob, self.keep, "1" if self.trim else "0",
                  self.keys.snapshot(""), ms],
        )  # fmt: skip
        if not ok:
            raise LeaseLost("lease lost while saving a snapshot")

    def ids(self) -> list[str]:
        """Snapshot stream ids, oldest first."""
        members = [_text(m) or "" for m in self.redis.zrange(self.keys.snapshots, 0, -1)]
        return sorted(members, key=parse_stream_id)

    def load(self, stream_id: str) -> bytes | None:
        return self.redis.get(self.keys.snapshot(stream_id))  # type: ignore[return-value]


def stream_was_trimmed(client: redis.Redis, stream: str) -> bool:
    """True if entries were ever deleted from the stream (so genesis replay is impossible)."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:
        return False  # no stream yet
    added = info.get("entries-added", info.get(b"entries-added"))
    if added is None:  # Redis < 7 cannot tell
        return False
    return int(added) > int(info.get("length", info.get(b"length", 0)))


class JournalReader:
    """Reads the journal one batch ahead, on its own thread and connection.

    XREAD waits for Redis, which is busy running the previous batch's EXEC: done inline, that
    wait idles the matcher. Here it overlaps with matching. The queue holds at most ``depth``
    batches; a read failure is raised by :meth:`next` once the batches read before it are
    consumed.
    """

    def __init__(
        self, url: str, stream: str, after: str, count: int, block_ms: int, depth: int = 2
    ) -> None:
        self.conn = RawConnection(url, kernel_timeout=True)
        self.stream = stream
        self.after = after
        self.count = str(count)
        self.block = str(block_ms)
        # SimpleQueues (C), as in ThreadCommitter: ``slots`` holds one token per batch the
        # reader may hold unconsumed
        self.batches: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(depth):
            self.slots.put(None)
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="journal-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                reply = self.conn.call(["XREAD", "COUNT", self.count, "BLOCK", self.block,
                                        "STREAMS", self.stream, self.after])  # fmt: skip
                if not reply:
                    continue
                entries = reply[0][1]  # type: ignore[index]
                last = entries[-1][0]
                self.after = last.decode() if isinstance(last, bytes) else last
                while True:
                    if self.stopped.is_set():
                        return
                    try:
                        self.slots.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                self.batches.put(entries)
        except BaseException as exc:  # noqa: B036 - handed to the matching thread
            self.error = exc
        finally:
            self.conn.close()

    def next(self, timeout: float) -> list[Any] | None:
        """The next batch of entries, None if none came within ``timeout`` (0: don't wait)."""
        try:
            entries = self.batches.get(timeout=timeout) if timeout else self.batches.get_nowait()
        except queue.Empty:
            if self.error is not None and self.batches.empty():
                raise self.error from None
            return None
        self.slots.put(None)
        return entries

    def ready(self) -> bool:
        """Whether a batch is already read and waiting."""
        return not self.batches.empty()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


class PartitionWorker:
    """One partition's matcher: standby until it holds the lease, then recover and match."""

    def __init__(
        self,
        redis_url: str,
        partition: int,
        markets: dict[str, Market],
        namespace: str = DEFAULT_NAMESPACE,
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
        commit_process: bool | None = None,
        commit: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.partition = partition
        symbols = symbols_of_partition(partition, markets, partitions_config)
        if not symbols:
            raise ValueError(f"partition {partition} has no symbols")
        self.markets = {s: markets[s] for s in symbols}
        self.keys = Keys(partition, namespace)
        self.namespace = namespace
        self.snapshot_every = snapshot_every
        self.snapshot_seconds = snapshot_seconds
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.on_batch = on_batch
        # Where batches are rendered and committed (``commit``, else ``commit_process``):
        # "thread" (shares the matcher's GIL), "process" (a child process: pays off with a core
        # to spare next to the matcher and redis-server) or "adaptive" (a thread for live flow,
        # the child for backlogs). Default: process on 4+ CPUs, adaptive on 2-3, else thread.
        if commit is None and commit_process is not None:
            commit = "process" if commit_process else "thread"
        if commit is None or commit == "auto":
            cpus = os.cpu_count() or 1
            commit = "process" if cpus >= 4 else "adaptive" if cpus >= 2 else "thread"
        if commit not in ("thread", "process", "adaptive"):
            raise ValueError(f"commit must be thread, process or adaptive, not {commit!r}")
        self.commit = commit
        self.commit_process = commit == "process"
        self.committer: ThreadCommitter | ProcessCommitter | AdaptiveCommitter | None = None
        self.redis = connect(redis_url)
        self.lease = Lease(connect(redis_url), self.keys.lease, lease_ms, renew_s)
        self.writer = OutputWriter(redis_url, self.redis, self.keys, self.lease)
        self.snapshots = SnapshotStore(self.redis, self.keys, keep_snapshots, trim)
        self.processor: Processor | None = None
        self.stop_event = threading.Event()
        self.active = threading.Event()  # set while this worker holds the lease and matches
        self.applied_total = 0  # entries committed by this process (for benchmarks/tests)
        self._frozen = False

    # -- life cycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Until :meth:`stop`: wait for the lease, recover, match; on any doubt start over."""
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        log.info("partition %d: worker %s starting (%s; %s modules)", self.partition,
                 self.lease.token, ", ".join(self.markets),
                 "native" if engine.native() else "pure Python")  # fmt: skip
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
            except (redis.ConnectionError, redis.TimeoutError, CommitterDied) as exc:
                log.warning("partition %d: Redis unavailable (%s); will recover", self.partition,
                            exc)  # fmt: skip
                self.stop_event.wait(0.2)
            except Exception:
                log.exception("partition %d: worker failed", self.partition)
                raise
            finally:
                self.active.clear()
                self.processor = None  # memory may be ahead of or behind Redis: never trust it
                self.lease.stop_renewing()
        self.lease.release()
        log.info("partition %d: worker stopped", self.partition)

    # -- recovery -------------------------------------------------------------------------------
    def recover(self) -> Processor:
        """Newest usable snapshot + silent replay up to ``applied``; then write the books."""
        started = time.monotonic()
        applied = _text(self.redis.get(self.keys.applied))
        proc: Processor | None = None
        used = None
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
                        self.markets, blob, self.partition, namespace=self.namespace
                    )
                    used = sid
                    break
                except (ValueError, KeyError) as exc:
                    log.warning("partition %d: snapshot %s unusable: %s", self.partition, sid,
                                exc)  # fmt: skip
        if proc is None:
            if stream_was_trimmed(self.redis, self.keys.stream) and applied is not None:
                raise RuntimeError(
                    f"partition {self.partition}: the journal was trimmed and no usable "
                    "snapshot exists; refusing to rebuild from a partial stream"
                )
            proc = Processor(self.markets, self.partition, namespace=self.namespace)
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
        # Readers may have seen nothing yet (fresh start) or a book key written before a crash:
        # rewrite every book from memory, fenced like any commit.
        # Also tell the web hubs to resync: book sequences now continue from the replayed state.
        resync = dumps_compact({"type": "resync", "partition": self.partition})
        self.writer.commit(proc.all_books_ops(), None, [(self.keys.control, resync)])
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        log.info(
            "partition %d: recovered from %s + %d journal entries in %.3f s (applied=%s)",
            self.partition, f"snapshot {used}" if used else "genesis", silent,
            time.monotonic() - started, applied,
        )  # fmt: skip
        if not self._frozen:
            gc.collect()
            gc.freeze()  # start-up objects never need scanning again
            gc.set_threshold(*GC_THRESHOLDS)  # matching allocates many short-lived tuples
            self._frozen = True
        return proc

    # -- matching -------------------------------------------------------------------------------
    def _match_loop(self) -> None:
        proc = self.processor
        assert proc is not None
        stream = self.keys.stream
        last = proc.last_id or "0-0"
        committer: ThreadCommitter | ProcessCommitter | AdaptiveCommitter
        child: ProcessCommitter | None = None
        if self.commit != "thread":
            try:
                child = ProcessCommitter(
                    self.redis_url, self.keys, self.markets, proc, self.lease.token,
                    self.writer.committed,
                )  # fmt: skip
            except Exception:
                if self.commit == "process":
                    raise
                # adaptive is only an optimisation: a host that cannot spawn (say, a script
                # without a __main__ guard) still gets a working worker
                log.exception("partition %d: no commit process; committing on a thread",
                              self.partition)  # fmt: skip
        if child is None:
            committer = ThreadCommitter(self.writer, proc)
        elif self.commit == "process":
            committer = child
        else:  # the child starts now, so it is ready when a backlog comes
            committer = AdaptiveCommitter(
                ThreadCommitter(self.writer, proc), child, self.writer,
                big=max(2, int(self.batch_size * ADAPTIVE_BIG_SHARE)),
                small=max(1, int(self.batch_size * ADAPTIVE_SMALL_SHARE)),
            )  # fmt: skip
        self.committer = committer
        # XREAD over a raw hiredis connection (entries arrive as plain lists, no per-entry
        # redis-py post-processing), one batch ahead on its own thread
        reader = JournalReader(self.redis_url, stream, last, self.batch_size, self.block_ms)
        block_s = self.block_ms / 1000
        try:
            while not self.stop_event.is_set():
                if self.lease.lost.is_set():
                    raise LeaseLost("lease renewal failed")
                committer.check()  # a failed commit ends matching at once, not at the next batch
                # wait only when nothing is in flight, so a lone batch is committed at once
                entries = reader.next(0 if committer.pending else block_s)
                if entries:
                    batch = proc.process(entries, emit=True)
                    committer.submit(batch, reader.ready())
                    self._since_snapshot += len(entries)
                    self.applied_total += len(entries)
                    if self.on_batch is not None:
                        self.on_batch(len(entries))
                elif committer.pending:
                    committer.drain()
                    continue
                if self._since_snapshot and (
                    self._since_snapshot >= self.snapshot_every
                    or time.monotonic() - self._last_snapshot >= self.snapshot_seconds
                ):
                    committer.drain()  # a snapshot must never be ahead of ``applied``
                    self.writer.committed = proc.last_id
                    self.snapshot()
            committer.drain()
        finally:
            committer.close()
            reader.close()

    def snapshot(self) -> str | None:
        """Save the current state (between batches, after its commit), keep the newest N."""
        proc = self.processor
        if proc is None or proc.last_id is None:
            return None
        started = time.monotonic()
        blob = proc.snapshot_blob()
        self.snapshots.save(self.lease.token, proc.last_id, blob)
        log.info("partition %d: snapshot %s (%d bytes, %d open orders) in %.3f s",
                 self.partition, proc.last_id, len(blob), len(proc.orders),
                 time.monotonic() - started)  # fmt: skip
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        return proc.last_id
