"""Committing a processed batch to Redis: fenced, atomic, overlapped with matching the next.

Exactly-once rests on three facts: (1) a batch's writes, its messages and the new ``applied``
id are one MULTI/EXEC, so they land together or not at all; (2) WATCH makes that EXEC fail
unless the lease still holds our token AND ``applied`` is the id we committed last, checked
right before MULTI, so a stale or duplicate worker writes nothing; (3) recovery replays entries
up to ``applied`` into memory only.

The check for the next commit (``WATCH lease applied``, ``GET lease``, ``GET applied``) is sent
in the same write as each EXEC, and a commit is *sent* before its replies are read
(:meth:`BatchWriter.send`, then :meth:`BatchWriter.finish`): the runner matches the next batch
while Redis executes this one, on one thread and one connection of redis-py's own.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.connection import Connection

from protocol.candles import RETENTION
from protocol.keys import Keys
from worker.batch import Batch, Message
from worker.lease import Lease, LeaseLost

log = logging.getLogger("worker")

#: Redis command arguments, as redis-py packs them
Command = tuple[Any, ...]


class StateMismatch(Exception):
    """``applied`` in Redis is not what we committed last: someone else wrote; recover."""


def batch_commands(batch: Batch, keys: Keys, recent_len: int = 1000,
                   closed_len: int = 1000) -> list[Command]:  # fmt: skip
    """A batch's writes as Redis commands (without ``applied`` and the messages)."""
    values: list[Any] = []
    for oid, record in batch.records.items():
        values += (keys.order(oid), record)
    for book in batch.books:
        values += (keys.book(book.symbol), book.value)
    values += (keys.applied_count, batch.consumed)  # lag = XINFO entries-added - this
    commands: list[Command] = [("MSET", *values)]
    for account, ids in batch.opened.items():
        commands.append(("ZADD", keys.open(account), *_scored(ids)))
    for account, ids in batch.unopened.items():
        commands.append(("ZREM", keys.open(account), *ids))
    for account, ids in batch.closed.items():
        ckey = keys.closed(account)
        commands.append(("ZADD", ckey, *_scored(ids)))
        commands.append(("ZREMRANGEBYRANK", ckey, 0, -closed_len - 1))
    recent: dict[str, list[bytes]] = {}
    for trade in batch.trades:
        commands.append(("XADD", keys.trades, trade.stream_id, "t", trade.record,
                         "ma", trade.maker_account, "ta", trade.taker_account))  # fmt: skip
        recent.setdefault(trade.symbol, []).append(trade.record)
    for symbol, records in recent.items():
        rkey = keys.recent(symbol)
        commands.append(("LPUSH", rkey, *records[-recent_len:]))
        commands.append(("LTRIM", rkey, 0, recent_len - 1))
    trimmed: dict[str, int] = {}
    for candle in batch.candles:  # one member per open time: drop the older value, add the new
        kkey = keys.kline(candle.symbol, candle.interval)
        commands.append(("ZREMRANGEBYSCORE", kkey, candle.open_time, candle.open_time))
        commands.append(("ZADD", kkey, candle.open_time, candle.value))
        if candle.opened:  # only a new candle can take a key past its retention
            trimmed[kkey] = RETENTION[candle.interval]
    for kkey, keep in trimmed.items():
        commands.append(("ZREMRANGEBYRANK", kkey, 0, -keep - 1))
    for account, fields in batch.balances.items():
        commands.append(("HSET", keys.balances(account), *(x for kv in fields.items() for x in kv)))
    lists = [(keys.ledger(account), rows) for account, rows in batch.ledger.items()]
    lists += [(keys.transfers(acct, kind), rows) for (acct, kind), rows in batch.transfers.items()]
    for lkey, rows in lists:
        commands.append(("LPUSH", lkey, *rows[-recent_len:]))
        commands.append(("LTRIM", lkey, 0, recent_len - 1))
    return commands


def _scored(ids: list[int]) -> list[int]:
    """``score member`` pairs: an order's score is its id."""
    return [x for oid in ids for x in (oid, oid)]


class BatchWriter:
    """One partition's committer, on a dedicated connection built from the client's pool
    settings (so passwords and TLS carry over)."""

    def __init__(self, client: redis.Redis, keys: Keys, lease: Lease) -> None:
        pool = client.connection_pool
        self.conn: Connection = pool.connection_class(**pool.connection_kwargs)
        self.keys = keys
        self.lease = lease
        self.committed: str | None = None  # ``applied`` as we last wrote (or found) it
        self._check = b"".join(self.conn.pack_commands(
            [("WATCH", keys.lease, keys.applied), ("GET", keys.lease), ("GET", keys.applied)]
        ))  # fmt: skip
        #: (lease holder, applied) read from the check in force on the connection, or None
        self._checked: tuple[str | None, str | None] | None = None
        self._check_unread = False
        #: the sent commit whose replies are unread: (packed data, commands queued, new applied)
        self._in_flight: tuple[list[bytes], int, str | None] | None = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    # -- the two halves of a commit ---------------------------------------------------------------
    def send(self, commands: list[Command], applied: str | None,
             messages: list[Message] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
        """Check the fence, then send ``commands`` + ``SET applied`` + PUBLISHes in one EXEC
        (and the next check behind it) without waiting for the replies."""
        assert self._in_flight is None, "finish() the commit in flight first"
        tail: list[Command] = [("SET", self.keys.applied, applied)] if applied else []
        tail += [("PUBLISH", m.channel, m.payload) for m in messages]
        queued = [*commands, *tail]
        data = self.conn.pack_commands([("MULTI",), *queued, ("EXEC",)])
        try:
            self._verify()
            self.conn.send_packed_command([*data, self._check], check_health=False)
        except BaseException:
            self._reset()
            raise
        self._check_unread = True
        self._checked = None
        self._in_flight = (data, len(queued), applied)

    def finish(self) -> None:
        """Read the commit in flight; resend it if a watched key changed under it (our own
        lease renewal does that); raise if the fence no longer holds."""
        if self._in_flight is None:
            return
        data, queued, applied = self._in_flight
        try:
            for _attempt in range(50):
                result = self._read_exec(queued)
                self._read_check()
                if result is not None:
                    for reply in result:
                        if isinstance(reply, Exception):
                            # MULTI has no rollback: the batch is half written. Stop loudly.
                            raise RuntimeError(f"a command failed inside EXEC: {reply}")
                    if applied:
                        self.committed = applied
                    self._in_flight = None
                    return
                self._verify()  # aborted: nothing was written; try again if still ours
                self.conn.send_packed_command([*data, self._check], check_health=False)
                self._check_unread = True
                self._checked = None
        except BaseException:
            self._reset()
            raise
        self._reset()
        raise LeaseLost("commit kept being interrupted; giving the partition up")

    def commit(self, commands: list[Command], applied: str | None,
               messages: list[Message] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
        """:meth:`send` then :meth:`finish`."""
        self.send(commands, applied, messages)
        self.finish()

    # -- the fence --------------------------------------------------------------------------------
    def _verify(self) -> None:
        """Make sure a check is in force and says the partition is still ours, unchanged."""
        if self._check_unread:
            self._read_check()
        if self._checked is None:
            self.conn.send_packed_command([self._check], check_health=False)
            self._read_check()
        want = (self.lease.token, self.committed)
        if self._checked != want:
            holder, applied = self._checked or (None, None)
            self._checked = None
            self.conn.send_packed_command(self.conn.pack_command("UNWATCH"))
            self.conn.read_response()
            if holder != self.lease.token:
                raise LeaseLost(f"lease {self.keys.lease} is held by {holder}, not us")
            raise StateMismatch(f"{self.keys.applied} is {applied}, we committed {self.committed}")

    def _read_check(self) -> None:
        read = self.conn.read_response
        read()  # WATCH: OK
        holder, applied = read(), read()
        self._checked = (_text(holder), _text(applied))
        self._check_unread = False

    def _read_exec(self, queued: int) -> list[Any] | None:
        read = self.conn.read_response
        read()  # MULTI: OK
        for _ in range(queued):
            read()  # QUEUED (an error reply raises: EXEC will then be refused, nothing written)
        return read()  # type: ignore[no-any-return]

    def _reset(self) -> None:
        """After any failure the connection may hold unread replies: never reuse it."""
        self._in_flight = None
        self._checked = None
        self._check_unread = False
        self.conn.disconnect()

    def close(self) -> None:
        self._reset()


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
