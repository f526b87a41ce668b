"""Helpers of the job tests: a journal and a worker in one process, on any client (fakeredis too).

Why: the job functions' unit tests run against fakeredis (no Lua there, so neither the web's
append script nor the worker's fenced commit); this appends as the script does (INCR next_id,
id = counter << 8 | partition, XADD) and commits the worker's own ``batch_commands`` of its own
``Processor``, so the keys are the worker's. The end-to-end tests run the real processes.
"""

from __future__ import annotations

import json
from typing import Any

from bench.flow import OrderFlow
from engine.markets import Market
from protocol.keys import Keys
from worker.commit import batch_commands
from worker.processor import Processor


class FakeExchange:
    def __init__(self, client: Any, markets: dict[str, Market], partition: int = 0,
                 namespace: str = "fb") -> None:  # fmt: skip
        self.client = client
        self.markets = markets
        self.partition = partition
        self.keys = Keys(partition, namespace)
        self.proc = Processor(markets, partition, namespace=namespace)
        self.flow: OrderFlow | None = None

    def append(self, wires: list[dict[str, Any]]) -> list[int]:
        ids = []
        for wire in wires:
            counter = self.client.incr(self.keys.next_id)
            cmd_id = counter * 256 + self.partition
            body = json.dumps({"id": cmd_id, **{k: v for k, v in wire.items() if k != "id"}},
                              separators=(",", ":"))  # fmt: skip
            self.client.xadd(self.keys.stream, {"c": body})
            wire["id"] = cmd_id
            ids.append(cmd_id)
        return ids

    def drain(self) -> int:
        """Apply every journal entry after ``applied``, committing like the worker."""
        applied = self.client.get(self.keys.applied)
        start = "-" if applied is None else "(" + applied.decode()
        entries = self.client.xrange(self.keys.stream, min=start, max="+")
        if not entries:
            return 0
        batch = self.proc.process(entries)
        pipe = self.client.pipeline(transaction=True)
        for command in batch_commands(batch, self.keys):
            pipe.execute_command(*command)
        pipe.set(self.keys.applied, batch.last_id)
        pipe.execute()
        return len(entries)

    def feed(self, n: int, seed: int = 1, accounts: int = 8) -> OrderFlow:
        """``n`` seeded commands of a funded flow (its deposits first), applied."""
        if self.flow is None:
            self.flow = OrderFlow(self.markets, seed=seed, accounts=accounts)
            self.append(self.flow.deposits())
        wires = [self.flow.next() for _ in range(n)]
        for wire, cmd_id in zip(wires, self.append(wires), strict=True):
            self.flow.record(wire, cmd_id)
        self.drain()
        return self.flow


# -- end to end: a real job worker process --------------------------------------------------------


class JobWorker:
    """``python -m jobs run`` (an RQ worker forking a work horse per job, with RQ's scheduler)
    as a process of its own, against a real redis-server; stopped with SIGTERM (RQ's warm
    shutdown)."""

    def __init__(self, url: str, env: dict[str, str], log_path: Any, cron: bool = False) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parents[2]
        args = [sys.executable, "-m", "jobs", "--log-level", "INFO", "run"]
        if not cron:
            args.append("--no-cron")
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(root), "REDIS_URL": url, **env},
        )  # fmt: skip

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def wait(self, job: Any, timeout: float = 60.0) -> Any:
        """Block until the RQ job is finished or failed (the worker must be alive)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = job.get_status(refresh=True)
            if status in ("finished", "failed"):
                return status
            assert self.proc.poll() is None, f"the job worker died:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"job {job.id} still {job.get_status()}:\n{self.log()}")

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def always_fails(note: str = "") -> None:
    """A job that fails every time (the retry and failed-registry tests)."""
    raise RuntimeError(f"this job always fails {note}".strip())
