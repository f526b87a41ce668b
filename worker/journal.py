"""Appending commands to a partition's journal and waiting for the worker's reply.

The id is assigned *inside* Redis by the same Lua script that appends the entry, so the id order
equals the journal order and one append is one round trip.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from worker.keys import DEFAULT_NAMESPACE, Keys
from worker.rawredis import RawPool, command, raise_errors

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


class Journal:
    """Append wire commands to ``fb:{pN}:in`` and read replies from ``fb:{pN}:reply:<id>``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        partition: int,
        namespace: str = DEFAULT_NAMESPACE,
        raw: RawPool | None = None,
    ) -> None:
        self.redis = redis_client
        self.partition = partition
        self.keys = Keys(partition, namespace)
        self._script = redis_client.register_script(APPEND_LUA)
        # With a raw pool, submit() bypasses redis-py: it is the web's per-request hot path.
        self.raw = raw
        # EVAL <script> 2 <next_id> <stream> <partition> <body>: all but the body, encoded once
        static = command(["EVAL", APPEND_LUA, "2", self.keys.next_id, self.keys.stream,
                          str(partition), ""])  # fmt: skip
        self._eval_head = static[: -len(b"$0\r\n\r\n")]

    def _body(self, wire: dict[str, Any]) -> str:
        body = {k: v for k, v in wire.items() if k != "id"}
        return dumps_compact(body)

    def append(self, wire: dict[str, Any]) -> int:
        """Assign the public id, journal the command (one round trip); returns the id.

        ``wire["id"]`` is set to the id as a side effect, so the caller can build its reply key.
        """
        result = self._script(
            keys=[self.keys.next_id, self.keys.stream], args=[self.partition, self._body(wire)]
        )
        cmd_id = int(result)
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

    def submit(self, wire: dict[str, Any], timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """Journal a command and wait for its reply, in ONE round trip.

        The reply key is a fresh token (``reply_to``) chosen here, so the BLPOP can travel in the
        same pipeline as the append instead of waiting for the id the append returns. Returns
        the id and the reply, or None if the worker did not answer within ``timeout_s``.
        """
        if timeout_s <= 0:
            return self.append(wire), None
        token = secrets.token_hex(8)
        wire["reply_to"] = token
        if self.raw is not None:
            return self._submit_raw(wire, token, timeout_s)
        pipe = self.redis.pipeline(transaction=False)
        # EVAL, not EVALSHA: a pipelined Script costs an extra SCRIPT EXISTS round trip, and a
        # NOSCRIPT (after a Redis restart) would leave the BLPOP waiting out its whole timeout.
        pipe.eval(APPEND_LUA, 2, self.keys.next_id, self.keys.stream, self.partition,
                  self._body(wire))  # fmt: skip
        pipe.blpop([self.keys.reply(token)], timeout=timeout_s)
        result, item = pipe.execute()
        cmd_id = int(result)
        wire["id"] = cmd_id
        return cmd_id, None if item is None else json.loads(item[1])

    def _submit_raw(
        self, wire: dict[str, Any], token: str, timeout_s: float
    ) -> tuple[int, dict[str, Any] | None]:
        assert self.raw is not None
        body = self._body(wire).encode()
        append = self._eval_head + b"$%d\r\n%s\r\n" % (len(body), body)
        wait = command(["BLPOP", self.keys.reply(token), repr(float(timeout_s))])
        result, item = raise_errors(self.raw.pipeline([append, wait], 2))
        cmd_id = int(result)  # type: ignore[call-overload]
        wire["id"] = cmd_id
        return cmd_id, None if item is None else orjson.loads(item[1])  # type: ignore[index]

    def wait_reply(self, cmd_id: int, timeout_s: float) -> dict[str, Any] | None:
        """Block until the worker answered command ``cmd_id``; None on timeout.

        The client's socket timeout must exceed ``timeout_s`` (redis-py would raise otherwise).
        """
        item = self.redis.blpop([self.keys.reply(cmd_id)], timeout=timeout_s)
        if item is None:
            return None
        return json.loads(item[1])
