"""Run a seeded journal through the Processor and print a digest of every output.

Used by ``tests/test_native.py`` to compare the mypyc-compiled modules with the plain Python
ones: run once in the tree (compiled, if built) and once in a copy holding only ``.py`` files.
Prints one JSON line: {"native": bool, "digest": hex, "entries": n, "trades": n}.
"""

from __future__ import annotations

import hashlib
import json
import sys

from bench.flow import OrderFlow
from engine import book
from engine.commands import make_public_id
from protocol import wire
from protocol.config import load_markets
from protocol.keys import Keys
from worker.commit import batch_commands
from worker.processor import Processor


def main(entries: int = 20_000, seed: int = 7) -> None:
    markets = load_markets()
    flow = OrderFlow(markets, seed=seed)
    proc = Processor(markets, 0)
    digest = hashlib.sha256()
    batch: list[tuple[bytes, dict[bytes, bytes]]] = []
    trades = 0
    for i in range(entries):
        command = flow.next()
        cmd_id = make_public_id(i + 1, 0)
        flow.record(command, cmd_id)
        body = {"id": cmd_id, **command, "reply_to": f"t{i % 3}-{i}"}
        if i % 997 == 0:
            body["price"] = "1.0000001"  # an off-tick order: the error path too
        batch.append((f"{1_700_000_000_000 + i // 7}-{i % 7}".encode(),
                      {b"c": wire.dumps(body)}))  # fmt: skip
        if len(batch) == 500 or i == entries - 1:
            result = proc.process(batch)
            trades += len(result.trades)
            for command in batch_commands(result, Keys(0)):
                digest.update(repr(command).encode())
            for message in result.messages:
                digest.update(message.channel.encode() + message.payload)
            batch = []
    digest.update(proc.snapshot_blob())
    native = not book.__file__.endswith(".py")
    print(json.dumps({"native": native, "digest": digest.hexdigest(), "entries": entries,
                      "trades": trades}))  # fmt: skip


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
