"""Worker test helpers: in-thread workers against the real session redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from wk_helpers import WorkerThread

from engine.markets import Market
from protocol.config import load_markets
from worker.runner import PartitionWorker


@pytest.fixture(scope="session")
def markets() -> dict[str, Market]:
    return load_markets()


@pytest.fixture
def start_worker(
    redis_url: str, markets: dict[str, Market]
) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(**kwargs: Any) -> WorkerThread:
        kwargs.setdefault("partition", 0)
        kwargs.setdefault("lease_ms", 2000)
        kwargs.setdefault("renew_s", 0.2)
        url = kwargs.pop("url", redis_url)
        wt = WorkerThread(PartitionWorker(url, markets=markets, **kwargs)).start()
        started.append(wt)
        return wt

    yield start
    for wt in started:
        if wt.thread.is_alive():
            wt.stop()


