"""Run a seeded journal through the Processor and print a digest of every output.

Used by ``tests/test_native.py`` to compare the mypyc-compiled modules with the plain Python
ones: run once in the tree (compiled, if built) and once in a copy holding only ``.py`` files.
The journal: the flow's deposits first (every order needs funds), then the flow with deposits
and withdrawals among it (some beyond the account's means, some repeating a reference) and an
off-tick order now and then. Digested: every command a batch commits (balances, ledger entries
and transfer lists included), every message (replies, market data, account events with their
balance updates), the final snapshot (the ledger in it) and every account's balances.
Prints one JSON line: {"native": bool, "digest": hex, "entries": n, "trades": n, ...}.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any

from bench.flow import OrderFlow
from engine import book
from engine.commands import make_public_id
from engine.markets import assets_of
from protocol import wire
from protocol.config import load_markets
from protocol.keys import Keys
from worker.commit import batch_commands
from worker.processor import Processor


def transfer(flow: OrderFlow, rng: random.Random, i: int, done: list[dict]) -> dict[str, Any]:
    """A deposit or a withdrawal (every fourth beyond the account's means), or a repeat."""
    if done and rng.random() < 0.2:
        return dict(done[rng.randrange(len(done))])
    assets = assets_of(flow.markets)
    kind = "deposit" if rng.random() < 0.5 else "withdrawal"
    asset = rng.choice(flow.assets)
    units = rng.randint(1, 10**10) if rng.random() < 0.75 or kind == "deposit" else 9 * 10**17
    body = {"op": kind, "account": rng.choice(flow.accounts), "asset": asset,
            "amount": assets[asset].format(units)}  # fmt: skip
    body["deposit_id" if kind == "deposit" else "client_withdrawal_id"] = f"t{i}"
    done.append(body)
    return body


def main(entries: int = 20_000, seed: int = 7) -> None:
    markets = load_markets()
    flow = OrderFlow(markets, seed=seed)
    rng = random.Random(seed)
    deposits = flow.deposits()
    done: list[dict] = []
    proc = Processor(markets, 0)
    digest = hashlib.sha256()
    batch: list[tuple[bytes, dict[bytes, bytes]]] = []
    trades = 0
    total = len(deposits) + entries
    for i in range(total):
        if i < len(deposits):
            command = deposits[i]
        elif i % 211 == 0:
            command = transfer(flow, rng, i, done)
        else:
            command = flow.next()
        cmd_id = make_public_id(i + 1, 0)
        flow.record(command, cmd_id)
        body = {"id": cmd_id, **command, "reply_to": f"t{i % 3}-{i}"}
        if i % 997 == 0:
            body["price"] = "1.0000001"  # an off-tick order: the error path too
        batch.append((f"{1_700_000_000_000 + i // 7}-{i % 7}".encode(),
                      {b"c": wire.dumps(body)}))  # fmt: skip
        if len(batch) == 500 or i == total - 1:
            result = proc.process(batch)
            trades += len(result.trades)
            for command in batch_commands(result, Keys(0)):
                digest.update(repr(command).encode())
            for message in result.messages:
                digest.update(message.channel.encode() + message.payload)
            batch = []
    digest.update(proc.snapshot_blob())
    ledger = proc.engine.ledger
    assert ledger is not None
    proc.engine.check()  # conservation holds in both builds
    balances = {a: ledger.balances(a) for a in ledger.list_accounts()}
    digest.update(json.dumps([balances, sorted(ledger.supply.items())]).encode())
    native = not book.__file__.endswith(".py")
    print(json.dumps({"native": native, "digest": digest.hexdigest(), "entries": total,
                      "trades": trades, "deposits": len(deposits), "transfers": len(done),
                      "accounts": len(balances)}))  # fmt: skip


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
