"""Helpers shared by the worker tests (imported as a plain module: tests/worker is on sys.path)."""

from __future__ import annotations

import threading
import time
from typing import Any

from protocol.keys import Keys
from worker.runner import PartitionWorker


class WorkerThread:
    """A PartitionWorker running in a thread; ``crash()`` stops it without releasing the lease."""

    def __init__(self, worker: PartitionWorker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: B036 - surfaced by the test
            self.error = exc

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker thread did not stop"

    def crash(self) -> None:
        """Like kill -9 for the lease: stop matching, but leave the lease to expire."""
        self.worker.lease.release = lambda: None  # type: ignore[method-assign]
        self.stop()


def wait_applied(client: Any, last_id: str, partition: int = 0, timeout: float = 20.0) -> None:
    """Block until ``applied`` reaches ``last_id`` (the stream id of the last appended entry)."""
    keys = Keys(partition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = client.get(keys.applied)
        if applied is not None and applied.decode() == last_id:
            return
        time.sleep(0.01)
    raise AssertionError(f"applied={client.get(keys.applied)!r} never reached {last_id}")


def last_stream_id(client: Any, partition: int = 0) -> str:
    entries = client.xrevrange(Keys(partition).stream, count=1)
    return entries[0][0].decode()


def feed(client: Any, markets: dict, n: int, seed: int = 1, flow: Any = None,
         fund: bool = False) -> Any:  # fmt: skip
    """Append ``n`` seeded mixed commands through the real append script; returns the flow.
    ``fund``: first one deposit per account and asset (every order needs its money), so the
    flow trades; the deposits come on top of the ``n`` commands."""
    from bench.flow import OrderFlow
    from engine.markets import assets_of
    from web.journal import Journal

    flow = flow or OrderFlow(markets, seed=seed, accounts=20)
    journal = Journal(client, 0)
    wires = [flow.next() for _ in range(n)]
    if fund:
        wires[:0] = [{"op": "deposit", "account": account, "asset": asset,
                      "amount": "1000000000", "deposit_id": f"feed-{account}-{asset}"}
                     for account in flow.accounts for asset in assets_of(markets)]  # fmt: skip
    for start in range(0, len(wires), 500):
        chunk = wires[start : start + 500]
        for wire, cmd_id in zip(chunk, journal.append_many(chunk), strict=True):
            flow.record(wire, cmd_id)
    return flow


def redis_state(client: Any, skip: tuple[str, ...] = ("lease",)) -> dict[str, Any]:
    """Every key's type and content (not TTLs), for before/after comparisons."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key.rsplit(":", 1)[-1] in skip:
            continue
        kind = client.type(raw).decode()
        if kind == "string":
            value: Any = client.get(raw)
        elif kind == "hash":
            value = client.hgetall(raw)
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "list":
            value = client.lrange(raw, 0, -1)
        elif kind == "stream":
            value = client.xrange(raw)
        else:
            value = kind
        out[key] = (kind, value)
    return out


def trade_numbers(client: Any, partition: int = 0) -> list[int]:
    return [int(i.split(b"-")[1]) for i, _ in client.xrange(Keys(partition).trades)]
