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
