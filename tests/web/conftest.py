"""Fixtures for the web tests: an app on the session's private Redis, accounts, a fake worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from protocol.keys import Keys
from web.accounts import create_account
from web.app import create_app


@pytest.fixture
def web_app(redis_url):
    """The app bound to the flushed session Redis; short reply timeout (no worker runs)."""
    app = create_app({"REDIS_URL": redis_url, "FAIRBOOK_REPLY_TIMEOUT": 0.3, "TESTING": True})
    yield app
    state = app.extensions["fairbook"]
    if state.inbox is not None:
        state.inbox.stop()
    state.redis.close()


@pytest.fixture
def client(web_app):
    return web_app.test_client()


@pytest.fixture
def rdb(web_app) -> redis.Redis:
    """The app's own (decoding) Redis client."""
    return web_app.extensions["fairbook"].redis


@pytest.fixture
def alice(rdb) -> dict[str, str]:
    acct = create_account(rdb, "alice")
    return {**acct, "headers": {"X-API-Key": acct["api_key"]}}


@pytest.fixture
def bob(rdb) -> dict[str, str]:
    acct = create_account(rdb, "bob")
    return {**acct, "headers": {"X-API-Key": acct["api_key"]}}


Responder = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeWorker:
    """Answers journaled commands of partition 0 with canned replies, like the worker would.

    Why: the route tests check the web's side of the contract (what it journals, how it maps
    replies to HTTP) fast and without the engine; the e2e tests run the real worker.
    """

    def __init__(self, url: str, responder: Responder) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
        self.keys = Keys(0)
        self.responder = responder
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        last = "0-0"
        while not self._stop.is_set():
            batch = self.client.xread({self.keys.stream: last}, block=50, count=100)
            for _, entries in batch or []:
                for entry_id, fields in entries:
                    last = entry_id
                    wire = json.loads(fields["c"])
                    self.seen.append(wire)
                    reply = self.responder(wire)
                    token = wire.get("reply_to")
                    if reply is not None and token:  # to the web process's inbox, as the worker
                        inbox = self.keys.inbox(token.partition("-")[0])
                        self.client.publish(inbox, json.dumps({token: reply}))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


@pytest.fixture
def fake_worker(redis_url) -> Iterator[Callable[[Responder], FakeWorker]]:
    started: list[FakeWorker] = []

    def start(responder: Responder) -> FakeWorker:
        worker = FakeWorker(redis_url, responder).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
