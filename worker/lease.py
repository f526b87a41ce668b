"""Ownership of a partition: ``SET NX PX`` with a token, renewed by a background thread.

The thread only *detects* loss (:attr:`Lease.lost`); safety comes from every commit checking
the token under WATCH (``worker.commit``), so a paused or partitioned worker can never write.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

log = logging.getLogger("worker")

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


class LeaseLost(Exception):
    """Our lease expired or was taken: stop writing, become standby."""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Lease:
    """The partition's lease under ``key``, held with a token unique to this process."""

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
        return self.holder() == self.token

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
