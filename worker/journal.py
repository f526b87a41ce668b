"""Appending commands to a partition's journal and waiting for the worker's reply.

The id is assigned *inside* Redis by the same Lua script that appends the entry, so the id order
equals the journal order and one append is one round trip.

Replies travel by pub/sub, not through keys: each process has one :class:`Inbox` (a subscribed
connection) and tags its commands ``reply_to = "<inbox id>-<n>"``; the worker publishes, inside
each batch's commit, one message per inbox holding every reply of the batch. A reply is a
notification, not state (the order record is the state), so it costs Redis no key, no expiry and
no AOF write; one nobody hears (the web timed out or reconnected) is simply dropped, and the web
has already answered 202 for it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from worker.keys import DEFAULT_NAMESPACE, Keys
from worker.rawredis import IDLE, RawConnection, RawPool, client_url, command, raise_errors

log = logging.getLogger("fairbook.journal")

# KEYS[1] = next_id counter, KEYS[2] = stream; ARGV[1] = partition, ARGV[2] = compact JSON of
# the wire command WITHOUT "id" (an object, "{...}"). The id is spliced in as the first field,
# so no JSON library runs in Redis and the payload keeps Python's exact text.
APPEND_LUA = """
local counter = redis.call('INCR', KEYS[1])
local id = string.format('%d', counter * 256 + tonumber(ARGV[1]))
local body = ARGV[2]
local rest = string.sub(body, 2)
if rest == '}' then
  body = '{"id":' .. id .. '}'
else
  body = '{"id":' .. id .. ',' .. rest
end
redis.call('XADD', KEYS[2], '*', 'c', body)
return id
"""


def dumps_compact(obj: Any) -> str:
    """The one JSON style of the journal and of every worker output (compact, ASCII-safe)."""
    return json.dumps(obj, separators=(",", ":"))


class ReplyWaiter:
    """One command's pending reply."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()  # a gevent Event once gevent has patched threading
        self.reply: dict[str, Any] | None = None

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        """The reply, or None if none came within ``timeout_s``."""
        return self.reply if self.event.wait(timeout_s) else None


class Inbox:
    """This process's replies: one subscribed connection, read by one thread (a greenlet under
    gevent), handing each reply to the request that waits for its token.

    Started on first use and restarted in a forked child (with a new id: two processes must
    never share an inbox). After a lost connection it resubscribes; replies published meanwhile
    are lost and their requests time out (202), which is the documented answer for "not yet".
    """

    def __init__(
        self,
        url: str,
        partitions: Iterable[int],
        namespace: str = DEFAULT_NAMESPACE,
        ping_s: float = 5.0,
        reconnect_max: float = 2.0,
    ) -> None:
        self.url = url
        self.partitions = list(partitions)
        self.namespace = namespace
        self.ping_s = ping_s
        self.reconnect_max = reconnect_max
        self.ready = threading.Event()  # subscribed: replies published from now on arrive
        self.settled = threading.Event()  # the first subscribe attempt succeeded or failed
        self.stats = {"messages": 0, "replies": 0, "unclaimed": 0, "reconnects": 0}
        self._lock = threading.Lock()
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._reset()

    def _reset(self) -> None:
        self.id = secrets.token_hex(8)
        self.channels = [Keys(p, self.namespace).inbox(self.id) for p in self.partitions]
        self.waiting: dict[str, ReplyWaiter] = {}
        self._count = itertools.count(1)
        self.ready.clear()
        self.settled.clear()

    def start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._pid != -1:
                self._reset()  # forked: the parent's id, waiters and thread are not ours
            self._thread = threading.Thread(target=self._run, name="fairbook-inbox", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        self._stopping = True

    def wait_ready(self, timeout_s: float) -> bool:
        """Subscribed? Waits (up to ``timeout_s``) only for the very first attempt: while the
        reader reconnects, callers go on at once (their commands are journaled untagged)."""
        self.start()
        self.settled.wait(timeout_s)
        return self.ready.is_set()

    def expect(self) -> tuple[str, ReplyWaiter]:
        """A fresh ``reply_to`` token and the waiter its reply will be handed to."""
        self.start()
        token = f"{self.id}-{next(self._count)}"
        waiter = self.waiting[token] = ReplyWaiter()
        return token, waiter

    def forget(self, token: str) -> None:
        self.waiting.pop(token, None)

    def deliver(self, data: bytes | str) -> None:
        """Hand out one inbox message ``{token: reply, ...}`` (the reader thread; tests)."""
        self.stats["messages"] += 1
        try:
            answers = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.error("inbox %s: unreadable message dropped", self.id)
            return
        if not isinstance(answers, dict):
            return
        waiting = self.waiting
        for token, reply in answers.items():
            waiter = waiting.pop(token, None)
            if waiter is None:  # timed out already (the request answered 202)
                self.stats["unclaimed"] += 1
                continue
            self.stats["replies"] += 1
            waiter.reply = reply
            waiter.event.set()

    def _run(self) -> None:
        delay = 0.05
        first = True
        while not self._stopping:
            conn = RawConnection(self.url, timeout=self.ping_s, connect_timeout=2.0)
            try:
                conn.send(command(["SUBSCRIBE", *self.channels]))
                for _ in self.channels:
                    kind = conn.read(1)[0]
                    if not (isinstance(kind, list) and kind[0] == b"subscribe"):
                        raise redis.ConnectionError(f"SUBSCRIBE answered {kind!r}")
                if not first:
                    self.stats["reconnects"] += 1
                    log.warning("inbox %s: resubscribed", self.id)
                first = False
                delay = 0.05
                self.ready.set()
                self.settled.set()
                pinged = False
                while not self._stopping:
                    msg = conn.next_or_idle()
                    if msg is IDLE:
                        if pinged:
                            raise redis.ConnectionError("no answer to PING")
                        conn.send(command(["PING"]))
                        pinged = True
                        continue
                    pinged = False
                    if isinstance(msg, list) and msg[0] == b"message":
                        self.deliver(msg[2])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                # warn when a live connection is lost or the first attempt fails, not at every
                # retry while Redis is down
                live = self.ready.is_set() or not self.settled.is_set()
                level = logging.WARNING if live else logging.DEBUG
                self.ready.clear()
                self.settled.set()
                log.log(level, "inbox %s: no connection (%s); retrying in %.2f s", self.id, exc,
                        delay)  # fmt: skip
                time.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
            except Exception:  # a bug must not leave every later request waiting out its timeout
                self.ready.clear()
                self.settled.set()
                log.exception("inbox %s: reader failed; restarting it", self.id)
                time.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
            finally:
                conn.close()


class Journal:
    """Append wire commands to ``fb:{pN}:in``; replies arrive in an :class:`Inbox`."""

    def __init__(
        self,
        redis_client: redis.Redis,
        partition: int,
        namespace: str = DEFAULT_NAMESPACE,
        raw: RawPool | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        self.redis = redis_client
        self.partition = partition
        self.namespace = namespace
        self.keys = Keys(partition, namespace)
        self._script = redis_client.register_script(APPEND_LUA)
        # With a raw pool, appends bypass redis-py: it is the web's per-request hot path.
        self.raw = raw
        self._inbox = inbox
        # EVAL <script> 2 <next_id> <stream> <partition> <body>: all but the body, encoded once
        static = command(["EVAL", APPEND_LUA, "2", self.keys.next_id, self.keys.stream,
                          str(partition), ""])  # fmt: skip
        self._eval_head = static[: -len(b"$0\r\n\r\n")]

    @property
    def inbox(self) -> Inbox:
        """The inbox replies come to (a private one for this partition unless one was given)."""
        if self._inbox is None:
            url = self.raw.url if self.raw is not None else client_url(self.redis)
            self._inbox = Inbox(url, [self.partition], self.namespace)
        return self._inbox

    def _body(self, wire: dict[str, Any]) -> str:
        body = {k: v for k, v in wire.items() if k != "id"}
        return dumps_compact(body)

    def append(self, wire: dict[str, Any]) -> int:
        """Assign the public id, journal the command (one round trip); returns the id.

        ``wire["id"]`` is set to the id as a side effect.
        """
        if self.raw is not None:
            # EVAL, not EVALSHA: no NOSCRIPT round trip after a Redis restart
            body = self._body(wire).encode()
            append = self._eval_head + b"$%d\r\n%s\r\n" % (len(body), body)
            (result,) = raise_errors(self.raw.pipeline([append], 1))
        else:
            result = self._script(
                keys=[self.keys.next_id, self.keys.stream], args=[self.partition, self._body(wire)]
            )
        cmd_id = int(result)  # type: ignore[call-overload]
        wire["id"] = cmd_id
        return cmd_id

    def append_many(self, wires: Iterable[dict[str, Any]]) -> list[int]:
        """Pipelined :meth:`append` for tools and tests (one round trip for the lot)."""
        wires = list(wires)
        pipe = self.redis.pipeline(transaction=False)
        for wire in wires:
            self._script(
                keys=[self.keys.next_id, self.keys.stream],
                args=[self.partition, self._body(wire)],
                client=pipe,
            )
        ids = [int(x) for x in pipe.execute()]
        for wire, cmd_id in zip(wires, ids, strict=True):
            wire["id"] = cmd_id
        return ids

    def send(self, wire: dict[str, Any], ready_s: float = 2.0) -> tuple[int, ReplyWaiter | None]:
        """Journal a command tagged with a ``reply_to`` token of our inbox; returns the id and the
        waiter of its reply. The waiter is None (untagged command, no reply) if the inbox could
        not subscribe within ``ready_s``: an answer we could not hear must not be asked for.
        """
        inbox = self.inbox
        if not inbox.wait_ready(ready_s):
            wire.pop("reply_to", None)
            return self.append(wire), None
        token, waiter = inbox.expect()
        wire["reply_to"] = token
        try:
            return self.append(wire), waiter
        except BaseException:
            inbox.forget(token)
            raise

    def wait(self, wire: dict[str, Any], waiter: ReplyWaiter | None, timeout_s: float
             ) -> dict[str, Any] | None:  # fmt: skip
        """The reply for a :meth:`send`, or None if none came within ``timeout_s``."""
        if waiter is None:
            return None
        try:
            return waiter.wait(timeout_s)
        finally:
            self.inbox.forget(wire["reply_to"])

    def submit(self, wire: dict[str, Any], timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """Journal a command and wait up to ``timeout_s`` for the worker's reply: (id, reply or
        None). With ``timeout_s`` 0 the command is only journaled (no ``reply_to``)."""
        if timeout_s <= 0:
            wire.pop("reply_to", None)
            return self.append(wire), None
        deadline = time.monotonic() + timeout_s
        cmd_id, waiter = self.send(wire, ready_s=timeout_s)
        return cmd_id, self.wait(wire, waiter, max(0.0, deadline - time.monotonic()))
