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


def feed(client: Any, markets: dict, n: int, seed: int = 1, flow: Any = None) -> Any:
    """Append ``n`` seeded mixed commands through the real append script; returns the flow.

    A new flow (no ``flow`` given) first journals its deposits (``len(flow.deposits())``
    entries more): every order needs funds. A flow passed back in is already funded."""
    from bench.flow import OrderFlow
    from web.journal import Journal

    journal = Journal(client, 0)
    if flow is None:
        flow = OrderFlow(markets, seed=seed, accounts=20)
        journal.append_many(flow.deposits())
    wires = [flow.next() for _ in range(n)]
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


FUND_ASSETS = ("BTC", "DOGE", "ETH", "SOL", "USDT")


def fund(client: Any, *accounts: str, partition: int = 0, amount: str = "100000000") -> None:
    """Journal a deposit of ``amount`` of every asset to each account (references made of the
    account and asset: funding an account twice credits it once): every order needs funds."""
    from web.journal import Journal

    Journal(client, partition).append_many(
        {"op": "deposit", "account": account, "asset": asset, "amount": amount,
         "deposit_id": f"fund-{account}-{asset}"}
        for account in accounts for asset in FUND_ASSETS
    )  # fmt: skip


Entry = tuple[bytes, dict[bytes, bytes]]


def deposit_entries(*accounts: str, first: int = 900, partition: int = 0,
                    amount: str = "100000000") -> list[Entry]:  # fmt: skip
    """Journal entries (stream id, fields) funding each account in every asset, for tests that
    feed a :class:`worker.processor.Processor` by hand: command counters ``first``.. (ids
    ``make_public_id(counter)``), stream ids ``<counter>-1``: before, and not in the way of,
    entries numbered from 1 with stream ids from 1001 on."""
    from engine.commands import make_public_id
    from protocol import wire

    out = []
    for n, (account, asset) in enumerate(
        ((a, asset) for a in accounts for asset in FUND_ASSETS), first
    ):
        body = {"id": make_public_id(n, partition), "op": "deposit", "account": account,
                "asset": asset, "amount": amount, "deposit_id": f"fund-{account}-{asset}"}
        out.append((f"{n}-1".encode(), {b"c": wire.dumps(body)}))  # fmt: skip
    return out


def trade_numbers(client: Any, partition: int = 0) -> list[int]:
    return [int(i.split(b"-")[1]) for i, _ in client.xrange(Keys(partition).trades)]


# -- the money audit ----------------------------------------------------------------------------


def _units(text: str, decimals: int) -> int:
    from decimal import Decimal

    value = Decimal(text).scaleb(decimals)
    assert value == value.to_integral_value(), f"{text} is off the {decimals}-decimal unit"
    return int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def money_audit(client: Any, markets: dict, partition: int = 0,
                namespace: str = "fb") -> dict[str, Any]:  # fmt: skip
    """Check a partition's money in Redis on its own terms, independently of ``worker.replay``:

    * every ``balances:<account>`` hash equals the balances of a clean in-memory replay of the
      whole journal (an asset a side lacks counts as zero; no hash for an account the replay
      never saw), and the replayed engine passes ``check()`` (conservation, locks = orders);
    * conservation from Redis alone: per asset, the hashes of every account (the fee account
      ``@fees`` included) sum to the completed deposits minus the completed withdrawals of the
      ``deposits:<account>`` / ``withdrawals:<account>`` lists;
    * exactly once: each reference journaled (a deposit's per partition, a withdrawal's per
      account) has exactly one transfer object in its list, carrying the id of the first
      command that used it, and nothing else is listed.

    Returns counts for the caller's own assertions. The journal must be whole (never trimmed).
    """
    import json

    from engine.markets import assets_of
    from worker.processor import Processor
    from worker.snapshots import stream_was_trimmed

    keys = Keys(partition, namespace)
    assets = assets_of(markets)
    assert not stream_was_trimmed(client, keys.stream), "the audit needs the whole journal"
    proc = Processor(markets, partition, namespace=namespace)
    first_ref: dict[tuple[str, str, str], int] = {}  # (kind, account or "", ref) -> first id
    repeats = 0
    last = "-"
    while True:
        chunk = client.xrange(keys.stream, min=last, max="+", count=2000)
        if not chunk:
            break
        proc.process(chunk, emit=False)
        for _, fields in chunk:
            try:
                body = json.loads(fields[b"c"])
            except (KeyError, ValueError):
                continue
            if isinstance(body, dict) and body.get("op") in ("deposit", "withdrawal"):
                kind = body["op"]
                if kind == "deposit":
                    key = (kind, "", body["deposit_id"])
                else:
                    key = (kind, body["account"], body["client_withdrawal_id"])
                repeats += key in first_ref
                first_ref.setdefault(key, body["id"])
        last = "(" + _text(chunk[-1][0])
    engine = proc.engine
    engine.check()
    ledger = engine.ledger
    assert ledger is not None

    # the hashes against the replay
    prefix = keys.balances("")
    stored: dict[str, dict[str, tuple[int, int]]] = {}
    for raw in client.scan_iter(match=prefix + "*", count=1000):
        account = _text(raw)[len(prefix) :]
        fields = {}
        for asset, value in client.hgetall(raw).items():
            asset, obj = _text(asset), json.loads(value)
            fields[asset] = (_units(obj["available"], assets[asset].decimals),
                             _units(obj["locked"], assets[asset].decimals))  # fmt: skip
        stored[account] = fields
    replayed = {account: ledger.balances(account) for account in ledger.list_accounts()}

    def nonzero(table: dict[str, dict[str, tuple[int, int]]]) -> dict[str, dict]:
        """Only what is not zero: an asset a side lacks counts as zero."""
        out = {a: {k: v for k, v in f.items() if v != (0, 0)} for a, f in table.items()}
        return {a: f for a, f in out.items() if f}

    unseen = set(stored) - set(replayed)
    assert not unseen, f"balances hashes of accounts the replay never saw: {sorted(unseen)}"
    assert nonzero(stored) == nonzero(replayed), "balances in Redis differ from a clean replay"

    # the transfer lists: each reference once, the first command's id
    listed: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind in ("deposit", "withdrawal"):
        tprefix = keys.transfers("", kind)
        for raw in client.scan_iter(match=tprefix + "*", count=1000):
            rows = client.lrange(raw, 0, -1)
            assert len(rows) < 1000, f"{_text(raw)} was trimmed: the audit cannot be complete"
            for row in rows:
                obj = json.loads(row)
                ref = obj["deposit_id"] if kind == "deposit" else obj["client_withdrawal_id"]
                key = (kind, "" if kind == "deposit" else obj["account_id"], ref)
                assert key not in listed, f"{key} listed twice: applied twice"
                assert obj["account_id"] == _text(raw)[len(tprefix) :]
                listed[key] = obj
    assert set(listed) == set(first_ref), (
        f"lost: {sorted(set(first_ref) - set(listed))[:5]}, "
        f"never journaled: {sorted(set(listed) - set(first_ref))[:5]}"
    )
    for key, obj in listed.items():
        assert obj["id"] == first_ref[key], f"{key}: listed as {obj['id']}, first {first_ref[key]}"

    # conservation from Redis alone
    completed = dict.fromkeys(assets, 0)
    outcomes = {"deposit": {"completed": 0, "rejected": 0},
                "withdrawal": {"completed": 0, "rejected": 0}}  # fmt: skip
    for (kind, _, _), obj in listed.items():
        outcomes[kind][obj["status"]] += 1
        if obj["status"] == "completed":
            units = _units(obj["amount"], assets[obj["asset"]].decimals)
            completed[obj["asset"]] += units if kind == "deposit" else -units
    totals = dict.fromkeys(assets, 0)
    for fields in stored.values():
        for asset, (available, locked) in fields.items():
            totals[asset] += available + locked
    assert totals == completed == ledger.supply, (totals, completed, ledger.supply)
    return {
        "accounts": len(stored),
        "fees": stored.get("@fees", {}),
        "transfers": outcomes,
        "repeated_references": repeats,
        "supply": dict(ledger.supply),
    }
