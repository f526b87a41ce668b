"""Helpers shared by the worker tests (imported as a plain module: tests/worker is on sys.path)."""

from __future__ import annotations

import threading
import time
from typing import Any

from worker.keys import Keys
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
