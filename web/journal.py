"""Appending commands to a partition's journal, and receiving the worker's replies.

The id is assigned *inside* Redis by the script that appends the entry, so id order is journal
order and an append is one round trip. Appends are never retried behind the caller's back: an
append whose connection died may have run, and a resend could journal an order twice.

Replies travel by pub/sub: each web process has one :class:`Inbox` (one subscribed connection)
and tags its commands ``reply_to = "<inbox id>-<n>"``; the worker publishes, inside each
batch's commit, one message per inbox holding every reply of the batch. A reply is a
notification, not state (the order record is the state): one nobody hears is dropped, and its
request has already answered 202.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from protocol import wire
from protocol.keys import Keys

log = logging.getLogger("fairbook.journal")

# KEYS[1] = next_id counter, KEYS[2] = stream, KEYS[3] = applied_count, KEYS[4] = applied;
# ARGV[1] = partition,
# ARGV[2] = the wire command WITHOUT "id" (a JSON object), ARGV[3] = the backlog bound (0: none).
# The id is spliced in as the first field, so no JSON library runs in Redis and the entry keeps
# the encoder's exact text. Backlog = entries ever added - entries the worker consumed (what
# /healthz reports); at the bound the script refuses before the INCR, so nothing is journaled.
# A worker that applied entries without counting them (no applied_count, an applied id: an older
# worker) leaves the backlog unknown: no bound then (fail open), as /healthz falls back too.
APPEND_LUA = """
local bound = tonumber(ARGV[3])
if bound > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local added = nil
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] break end
  end
  if added == nil then added = tonumber(redis.call('GET', KEYS[1]) or '0') end -- Redis < 7
  local done = redis.call('GET', KEYS[3])
  if done == false and redis.call('EXISTS', KEYS[4]) == 1 then added = nil end
  local backlog = added and (added - tonumber(done or '0')) or 0
  if added and backlog >= bound then
    return redis.error_reply('OVERLOADED ' .. backlog)
  end
end
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
#: ops refused at the backlog bound: those that add work (orders, amends, money moving in or
#: out); cancels always go through
BOUNDED_OPS = frozenset({"new", "amend", "deposit", "withdrawal"})


class Overloaded(Exception):
    """The partition's journal holds its bound of unprocessed entries: nothing was journaled."""

    def __init__(self, partition: int, backlog: int) -> None:
        super().__init__(f"partition {partition}: {backlog} unprocessed journal entries")
        self.partition = partition
        self.backlog = backlog


class DirectConnections:
    """Idle redis-py connections for request handlers, one checked out per call.

    Why not the client's own pool: per command it polls the socket for unread data, and wraps
    the call in a retry helper; on the web's hot path (an order's append, its record's GET)
    that was a fifth of the process's CPU. Here a call is ``send_command`` + ``read_response``
    on a connection nobody else holds. A connection that failed is dropped, never reused, and
    nothing is retried: an append whose outcome is unknown must not be sent twice.
    """

    def __init__(self, client: redis.Redis, max_idle: int = 64) -> None:
        self.pool = client.connection_pool
        self.max_idle = max_idle
        self.idle: list[Any] = []

    def call(self, *args: Any) -> Any:
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self.pool.connection_class(**self.pool.connection_kwargs)
        try:
            conn.send_command(*args)
            reply = conn.read_response()
        except redis.ResponseError:  # an error reply: the connection is still in step
            self._release(conn)
            raise
        except BaseException:
            conn.disconnect()
            raise
        self._release(conn)
        return reply

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one round trip; their replies in order (an error reply is
        returned as its exception, not raised: the connection stays in step)."""
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self.pool.connection_class(**self.pool.connection_kwargs)
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        self._release(conn)
        return replies

    def _release(self, conn: Any) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.disconnect()


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
    """This process's replies: one subscribed connection read by one thread (a greenlet under
    gevent), handing each reply to the request that waits for its token.

    Started on first use and restarted with a new id in a forked child (two processes must
    never share an inbox). After a lost connection it resubscribes; replies published meanwhile
    are lost and their requests time out (202), the documented answer for "not yet".
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Iterable[Keys],
        ping_s: float = 5.0,
        reconnect_max: float = 2.0,
    ) -> None:
        self.client = client
        self.keys = list(keys)
        self.ping_s = ping_s
        self.reconnect_max = reconnect_max
        self.ready = threading.Event()  # subscribed: replies published from now on arrive
        self.settled = threading.Event()  # the first subscribe attempt succeeded or failed
        self.stats = {"messages": 0, "replies": 0, "unclaimed": 0, "poison": 0, "reconnects": 0}
        self._lock = threading.Lock()
        self._pid = -1
        self._stopping = False
        self._reset()

    def _reset(self) -> None:
        self.id = secrets.token_hex(8)
        self.channels = [k.inbox(self.id) for k in self.keys]
        #: token -> the waiter of a blocked request, or the callback of a pipelined one
        self.waiting: dict[str, ReplyWaiter | Callable[[dict[str, Any]], None]] = {}
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
            threading.Thread(target=self._run, name="fairbook-inbox", daemon=True).start()
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
        token = wire.reply_token(self.id, next(self._count))
        waiter = self.waiting[token] = ReplyWaiter()
        return token, waiter

    def expect_call(self, callback: Callable[[dict[str, Any]], None]) -> str:
        """A fresh ``reply_to`` token whose reply is handed to ``callback`` in the reader
        thread, in journal order (so a connection with many commands in flight answers them
        in the order the worker decided them, without a waiting greenlet per command). The
        callback must not block; whoever claims the token first (the reader, or a
        caller giving up) owns it."""
        self.start()
        token = wire.reply_token(self.id, next(self._count))
        self.waiting[token] = callback
        return token

    def claim(self, token: str) -> bool:
        """Take ``token`` away from the reader (a timeout): True if its reply had not come."""
        return self.waiting.pop(token, None) is not None

    def forget(self, token: str) -> None:
        self.waiting.pop(token, None)

    def deliver(self, data: bytes | str) -> None:
        """Hand out one inbox message ``{token: reply, ...}`` (the reader thread; tests)."""
        self.stats["messages"] += 1
        try:
            answers = wire.loads(data)
        except wire.DecodeError:
            answers = None
        if not isinstance(answers, dict):
            self.stats["poison"] += 1
            log.error("inbox %s: unreadable message dropped", self.id)
            return
        for token, reply in answers.items():
            if not isinstance(reply, dict):  # one bad answer costs only its own request
                self.stats["poison"] += 1
                continue
            waiter = self.waiting.pop(token, None)
            if waiter is None:  # timed out already (the request answered 202)
                self.stats["unclaimed"] += 1
                continue
            self.stats["replies"] += 1
            if isinstance(waiter, ReplyWaiter):
                waiter.reply = reply
                waiter.event.set()
                continue
            try:
                waiter(reply)
            except Exception:  # one failing callback must not cost the batch's other replies
                log.exception("inbox %s: a reply callback failed", self.id)

    def _resubscribed(self) -> None:
        self.stats["reconnects"] += 1
        log.warning("inbox %s: resubscribed (replies published meanwhile are lost)", self.id)

    def _run(self) -> None:
        delay = 0.05
        first = True
        while not self._stopping:
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(*self.channels)
                confirmed = 0
                while confirmed < len(self.channels):
                    msg = pubsub.get_message(timeout=self.ping_s)
                    if msg is None:
                        raise redis.ConnectionError("SUBSCRIBE was not confirmed")
                    confirmed += msg["type"] == "subscribe"
                if not first:
                    self._resubscribed()
                first = False
                delay = 0.05
                self.ready.set()
                self.settled.set()
                pinged = False  # a quiet connection must still be a live one
                while not self._stopping:
                    msg = pubsub.get_message(timeout=self.ping_s)
                    if msg is None:
                        if pinged:
                            raise redis.ConnectionError("no answer to PING")
                        pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    if msg["type"] == "message":
                        self.deliver(msg["data"])
                    elif msg["type"] == "subscribe":  # redis-py reconnected and resubscribed
                        self._resubscribed()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                # warn when a live connection is lost or the first attempt fails, not at every
                # retry while Redis is down
                live = self.ready.is_set() or not self.settled.is_set()
                self.ready.clear()
                self.settled.set()
                level = logging.WARNING if live else logging.DEBUG
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
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass


class Journal:
    """Append wire commands to a partition's stream; replies arrive in an :class:`Inbox`."""

    def __init__(
        self, client: redis.Redis, keys: Keys | int, inbox: Inbox | None = None,
        connections: DirectConnections | None = None, max_backlog: int = 0,
    ) -> None:  # fmt: skip
        self.redis = client
        #: new orders and amends are refused (:class:`Overloaded`) at this many unprocessed
        #: entries (0: never)
        self.max_backlog = max_backlog
        self.keys = keys if isinstance(keys, Keys) else Keys(keys)
        self.partition = self.keys.partition
        self._script = client.register_script(APPEND_LUA)
        self._inbox = inbox
        self.connections = connections or DirectConnections(client)

    @property
    def inbox(self) -> Inbox:
        """The inbox replies come to (a private one for this partition unless one was given)."""
        if self._inbox is None:
            self._inbox = Inbox(self.redis, [self.keys])
        return self._inbox

    def _args(self, command: dict[str, Any]) -> dict[str, Any]:
        body = wire.dumps({k: v for k, v in command.items() if k != "id"})
        k = self.keys
        return {"keys": [k.next_id, k.stream, k.applied_count, k.applied],
                "args": [self.partition, body, 0]}  # fmt: skip

    def append(self, command: dict[str, Any]) -> int:
        """Assign the public id and journal the command (one round trip); returns the id and
        sets ``command["id"]``. EVAL, not EVALSHA: no NOSCRIPT round trip after a restart.
        Raises :class:`Overloaded` (nothing journaled) for a new order, an amend, a deposit or a
        withdrawal while the backlog is at ``max_backlog``."""
        try:
            cmd_id = int(self.connections.call(*self.append_args(command)))
        except redis.ResponseError as exc:
            raise _overloaded(self.partition, exc) or exc from None
        command["id"] = cmd_id
        return cmd_id

    def append_args(self, command: dict[str, Any]) -> tuple[Any, ...]:
        """The EVAL of :meth:`append` for ``command``, for :func:`append_all`."""
        body = wire.dumps({k: v for k, v in command.items() if k != "id"})
        bound = self.max_backlog if command.get("op") in BOUNDED_OPS else 0
        k = self.keys
        return ("EVAL", APPEND_LUA, 4, k.next_id, k.stream, k.applied_count, k.applied,
                self.partition, body, bound)  # fmt: skip

    def append_many(self, commands: Iterable[dict[str, Any]]) -> list[int]:
        """Pipelined :meth:`append` for tools and tests (one round trip for the lot)."""
        commands = list(commands)
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            self._script(**self._args(command), client=pipe)
        ids = [int(x) for x in pipe.execute()]
        for command, cmd_id in zip(commands, ids, strict=True):
            command["id"] = cmd_id
        return ids

    def send(self, command: dict[str, Any], ready_s: float = 2.0
             ) -> tuple[int, ReplyWaiter | None]:  # fmt: skip
        """Journal a command tagged with a ``reply_to`` token of our inbox; returns the id and
        the waiter of its reply. The waiter is None (untagged command, no reply) if the inbox
        could not subscribe within ``ready_s``: an answer we cannot hear must not be asked for.
        """
        inbox = self.inbox
        if not inbox.wait_ready(ready_s):
            command.pop("reply_to", None)
            return self.append(command), None
        token, waiter = inbox.expect()
        command["reply_to"] = token
        try:
            return self.append(command), waiter
        except BaseException:
            inbox.forget(token)
            raise

    def send_call(self, command: dict[str, Any], callback: Callable[[dict[str, Any]], None]
                  ) -> tuple[int, str | None]:  # fmt: skip
        """Journal a command whose reply goes to ``callback`` (:meth:`Inbox.expect_call`);
        returns the id and the token (None: journaled untagged, the inbox is not subscribed,
        no reply will come). Never waits for the inbox's first subscription beyond its
        first attempt; the caller times the token out with :meth:`Inbox.claim`."""
        inbox = self.inbox
        if not inbox.wait_ready(2.0):
            command.pop("reply_to", None)
            return self.append(command), None
        token = inbox.expect_call(callback)
        command["reply_to"] = token
        try:
            return self.append(command), token
        except BaseException:
            inbox.forget(token)
            raise

    def wait(self, command: dict[str, Any], waiter: ReplyWaiter | None, timeout_s: float
             ) -> dict[str, Any] | None:  # fmt: skip
        """The reply for a :meth:`send`, or None if none came within ``timeout_s``."""
        if waiter is None:
            return None
        try:
            return waiter.wait(timeout_s)
        finally:
            self.inbox.forget(command["reply_to"])

    def submit(self, command: dict[str, Any], timeout_s: float
               ) -> tuple[int, dict[str, Any] | None]:  # fmt: skip
        """Journal a command and wait up to ``timeout_s`` for the worker's reply: (id, reply or
        None). With ``timeout_s`` 0 the command is only journaled (no ``reply_to``)."""
        if timeout_s <= 0:
            command.pop("reply_to", None)
            return self.append(command), None
        deadline = time.monotonic() + timeout_s
        cmd_id, waiter = self.send(command, ready_s=timeout_s)
        return cmd_id, self.wait(command, waiter, max(0.0, deadline - time.monotonic()))


def append_all(connections: DirectConnections, items: list[tuple[Journal, dict[str, Any]]]
               ) -> list[int | Exception]:  # fmt: skip
    """:meth:`Journal.append` of several commands (any partitions) in ONE round trip, in
    order: each one's id (also set in it), or its :class:`Overloaded` / error reply. A failed
    connection raises for the lot (outcome unknown, as for one append: nothing is resent)."""
    replies = connections.pipeline([journal.append_args(command) for journal, command in items])
    out: list[int | Exception] = []
    for (journal, command), reply in zip(items, replies, strict=True):
        if isinstance(reply, Exception):
            out.append(_overloaded(journal.partition, reply) or reply)
            continue
        command["id"] = int(reply)
        out.append(command["id"])
    return out


def _overloaded(partition: int, exc: Exception) -> Overloaded | None:
    """The append script's ``OVERLOADED <backlog>`` error reply as :class:`Overloaded`."""
    text = str(exc)
    if isinstance(exc, redis.ResponseError) and text.startswith("OVERLOADED"):
        return Overloaded(partition, int(text.split()[-1]))
    return None
