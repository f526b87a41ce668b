"""A test-side witness of the worker's replies: every inbox message of a partition, counted per
token, across Redis restarts.

After each (re)subscription it reads ``applied``: every journal entry after that id is committed
while it listens, so its reply must arrive, exactly once. Replies of commits made while it was
disconnected (Redis down) are the only ones it may miss.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from protocol.keys import Keys


class ReplyListener:
    def __init__(self, port: int, partition: int = 0) -> None:
        self.port = port
        self.keys = Keys(partition)
        self.counts: Counter[str] = Counter()
        self.resubscribed_at: list[str | None] = []  # ``applied`` after each subscription
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reply-listener", daemon=True)

    def start(self) -> ReplyListener:
        self._thread.start()
        assert self.ready.wait(10), "reply listener could not subscribe"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # no silent reconnects: a resubscription must be seen, to bound what was missed
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                                     retry=Retry(NoBackoff(), 0))
                pubsub = client.pubsub()
                pubsub.psubscribe(self.keys.inbox("*"))
                deadline = time.monotonic() + 5
                while True:  # live once Redis confirmed it; only then is ``applied`` a bound
                    msg = pubsub.get_message(timeout=0.5)
                    if msg and msg["type"] == "psubscribe":
                        break
                    if time.monotonic() > deadline:
                        raise redis.ConnectionError("psubscribe not confirmed")
                applied = client.get(self.keys.applied)
                self.resubscribed_at.append(applied.decode() if applied else None)
                self.ready.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg and msg["type"] == "pmessage":
                        for token in json.loads(msg["data"]):
                            self.counts[token] += 1
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.02)
