"""``python -m bench worker``: how fast one partition worker drains a pre-filled journal.

A private redis-server (AOF on, everysec) is filled with the flow's deposits (every account
funded in every asset first: orders need funds) and N seeded mixed commands by pipelined XADD;
then a worker starts and the clock runs until ``applied`` reaches the last entry, i.e.
every trade, order record, book, reply and snapshot of the run is committed.

Calibration, same run: Redis alone absorbing the same writes. Before the drain, outside any
timing, the journal is read back and processed in batches of ``--batch`` entries by a
``worker.processor.Processor`` (the worker's XREAD returns exactly those batches), and each
batch's commit is packed as the worker packs it (``worker.commit.batch_commands``, SET applied,
the PUBLISHes, in MULTI ... EXEC, and the fence check WATCH/GET/GET behind it; redis-py's packer,
which is hiredis's). Then a fresh private redis-server (AOF on, everysec) is sent those commits
one after the other on one redis-py connection, each read back before the next is sent, as the
worker does with no matching in between; once before the drain and once after it, and the mean
counts. Not replayed: the journal reads, lease renewals and the snapshots (a few per run). The
ratio worker / Redis alone is well below 1: it says how much of the drain time Redis needs.

``--live RATE``: the worker's cost at live flow instead, where batches hold one or two entries
and per-batch costs dominate. ``python -m worker`` runs as its own process; after a drained
warm-up journal (a realistic book), commands are appended one by one, as the web does, paced at
RATE/s for ``--seconds``; reported is the CPU per entry of the worker process and redis-server
(from /proc, so the feeder's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import engine
from bench.flow import OrderFlow
from engine.commands import make_public_id
from protocol import wire
from protocol.config import load_markets
from protocol.keys import DEFAULT_NAMESPACE, Keys, Namespace
from tests.redis_server import RedisServer, wait_until
from worker.batch import Message
from worker.commit import batch_commands
from worker.processor import Processor
from worker.runner import PartitionWorker

ROOT = Path(__file__).resolve().parent.parent
#: a generous bound on any one drain (the loop also stops if the worker thread dies)
DRAIN_TIMEOUT_S = 1800.0


def _redis_server_class() -> Any:
    return RedisServer  # the infra helper, with a start-up wait that retries any error


def prefill(client: Any, keys: Keys, markets: dict, n: int, seed: int) -> tuple[str, int]:
    """XADD the flow's deposits, then ``n`` commands (ids assigned here like the append script
    would); returns the last id and the number of deposits."""
    flow = OrderFlow(markets, seed=seed)
    deposits = flow.deposits()
    pipe = client.pipeline(transaction=False)
    last = ""
    for i in range(len(deposits) + n):
        command = deposits[i] if i < len(deposits) else flow.next()
        cmd_id = make_public_id(i + 1, keys.partition)
        # tagged like the web's commands: the worker renders and publishes every reply
        body = {"id": cmd_id, **command, "reply_to": f"bench-{i + 1}"}
        flow.record(command, cmd_id)
        pipe.xadd(keys.stream, {wire.COMMAND_FIELD: wire.dumps(body)})
        if len(pipe) >= 5000:
            last = pipe.execute()[-1]
    if len(pipe):
        last = pipe.execute()[-1]
    client.set(keys.next_id, len(deposits) + n)
    return (last.decode() if isinstance(last, bytes) else last), len(deposits)


def _cpu(client: Any) -> dict[str, float]:
    """CPU seconds so far: this process (the worker runs on a thread of it), redis-server."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    info = client.info("cpu")
    return {
        "worker": me.ru_utime + me.ru_stime,
        "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    }


class Commit:
    """One commit as the worker sends it, packed: MULTI, ``queued`` commands, EXEC."""

    __slots__ = ("data", "queued", "entries")

    def __init__(self, data: list[bytes], queued: int, entries: int) -> None:
        self.data = data
        self.queued = queued
        self.entries = entries


def worker_commits(client: Any, keys: Keys, markets: dict, batch: int) -> dict[str, Any]:
    """Every commit a worker draining ``keys.stream`` from genesis sends, packed like
    :class:`worker.commit.BatchWriter` packs them (untimed: this is the preparation).

    Returns the commits, the fence check sent behind each, the journal's last id and trade count.
    """
    pool = client.connection_pool
    conn = pool.connection_class(**pool.connection_kwargs)  # only its packer is used
    check = b"".join(conn.pack_commands(
        [("WATCH", keys.lease, keys.applied), ("GET", keys.lease), ("GET", keys.applied)]
    ))  # fmt: skip

    def pack(commands: list[Any], applied: str | None, messages: list[Message],
             entries: int) -> Commit:  # fmt: skip
        tail: list[Any] = [("SET", keys.applied, applied)] if applied else []
        tail += [("PUBLISH", m.channel, m.payload) for m in messages]
        queued = [*commands, *tail]
        return Commit(conn.pack_commands([("MULTI",), *queued, ("EXEC",)]), len(queued), entries)

    proc = Processor(markets, keys.partition, namespace=keys.namespace)
    # the recovery commit at start-up: every book rewritten, a resync message
    books = [x for s in sorted(markets) for x in (keys.book(s), proc.book_value(s))]
    resync = Message(keys.control, wire.resync_message(keys.partition))
    commits = [pack([("MSET", *books)], None, [resync], 0)]
    last = "0-0"
    trades = 0
    orders: set[int] = set()
    short: set[int] = set()  # orders refused or cut short for insufficient funds
    while True:
        entries = client.xrange(keys.stream, min="(" + last, max="+", count=batch)
        if not entries:
            break
        out = proc.process(entries)
        trades += len(out.trades)
        orders.update(out.records)
        short.update(oid for oid, rec in out.records.items() if b"insufficient_funds" in rec)
        commits.append(pack(batch_commands(out, keys), out.last_id, out.messages, len(entries)))
        last = out.last_id or last
    return {"commits": commits, "check": check, "last_id": last, "trades": trades,
            "orders": len(orders), "insufficient_funds": len(short)}  # fmt: skip


def time_redis_alone(commits: list[Commit], check: bytes, keys: Keys) -> dict[str, Any]:
    """Send ``commits`` to a fresh private redis-server, each (with the fence check behind it)
    read back before the next is sent; the clock covers exactly that loop."""
    server = _redis_server_class()()
    server.start()
    try:
        client = server.client()
        pool = client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        conn.connect()
        read = conn.read_response
        send = conn.send_packed_command
        send([check])  # the check in force before the first commit, as in the worker
        read(), read(), read()
        cpu0 = _redis_cpu(client)
        gc.collect()
        gc.freeze()
        try:
            start = time.perf_counter()
            for commit in commits:
                send([*commit.data, check], check_health=False)
                read()  # MULTI: OK
                for _ in range(commit.queued):
                    read()  # QUEUED
                result = read()  # EXEC
                if result is None:
                    raise RuntimeError("EXEC aborted: a watched key changed")
                for reply in result:
                    if isinstance(reply, Exception):
                        raise RuntimeError(f"a command failed inside EXEC: {reply}")
                read(), read(), read()  # WATCH, GET lease, GET applied
            seconds = time.perf_counter() - start
        finally:
            gc.unfreeze()
        redis_cpu = _redis_cpu(client) - cpu0
        written = {
            "applied": (client.get(keys.applied) or b"").decode(),
            "trades": client.xlen(keys.trades),
        }
        conn.disconnect()
        client.close()
    finally:
        server.stop()
        server.cleanup()
    entries = sum(c.entries for c in commits)
    return {
        "entries_per_s": round(entries / seconds, 1),
        "seconds": round(seconds, 3),
        "redis_cpu_us_per_entry": round(redis_cpu / max(1, entries) * 1e6, 1),
        "written": written,
    }


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(n: int, seed: int, snapshot_every: int, batch: int,
        redis_alone: bool = True) -> dict[str, Any]:  # fmt: skip
    markets = load_markets()
    # every symbol in partition 0, whatever the environment says: the prefill writes them all
    namespace = Namespace(DEFAULT_NAMESPACE, markets, "")
    keys = namespace.keys(0)
    server = _redis_server_class()()
    server.start()
    try:
        client = server.client()
        started = time.perf_counter()
        last, deposits = prefill(client, keys, markets, n, seed)
        entries = deposits + n  # the worker drains the deposits too
        fill_s = time.perf_counter() - started
        alone: list[dict[str, Any]] = []
        prep: dict[str, Any] = {}
        if redis_alone:
            started = time.perf_counter()
            prep = worker_commits(client, keys, markets, batch)
            prep_s = time.perf_counter() - started
            if prep["last_id"] != last:
                raise RuntimeError(f"the journal ends at {last}, the batches at {prep['last_id']}")
            alone.append(time_redis_alone(prep["commits"], prep["check"], keys))
        gc.collect()
        worker = PartitionWorker(
            server.url, 0, markets, namespace=namespace, snapshot_every=snapshot_every,
            batch_size=batch,
        )  # fmt: skip
        thread = threading.Thread(target=worker.run, daemon=True)
        cpu0 = _cpu(client)
        t0 = time.perf_counter()
        thread.start()

        def drained() -> bool:
            applied = client.get(keys.applied)
            return applied is not None and applied.decode() == last

        # a Redis error or timeout while polling is retried; a dead worker thread is not
        wait_until(drained, DRAIN_TIMEOUT_S, "the worker drain (see the log above)",
                   alive=thread.is_alive, interval=0.01)  # fmt: skip
        seconds = time.perf_counter() - t0
        worker.stop()
        thread.join(30)
        cpu1 = _cpu(client)
        cpu = {k: round((cpu1[k] - cpu0[k]) / entries * 1e6, 1) for k in cpu0}
        trades = client.xlen(keys.trades)
        if redis_alone:
            alone.append(time_redis_alone(prep["commits"], prep["check"], keys))
        result: dict[str, Any] = {
            "entries_per_s": round(entries / seconds, 1),
            "entries": entries,
            "deposits": deposits,  # journaled first: every order needs funds
            "trades": trades,
            "seconds": round(seconds, 3),
            "prefill_seconds": round(fill_s, 3),
            "batch": batch,
            "snapshot_every": snapshot_every,
            "cpus": os.cpu_count(),
            "native": engine.native(),
            # CPU time per entry: robust on a busy machine where wall-clock rates are not
            "cpu_us_per_entry": cpu,
            "load_average": os.getloadavg()[0],
            "seed": seed,
        }
        if redis_alone:
            rate = statistics.fmean(a["entries_per_s"] for a in alone)
            same = all(a["written"] == {"applied": last, "trades": trades} for a in alone)
            if not same:
                raise RuntimeError(f"Redis alone wrote {alone}, the worker {last}, {trades}")
            result["redis_alone"] = {
                "entries_per_s": round(rate, 1),
                "runs": [a["entries_per_s"] for a in alone],
                "seconds": [a["seconds"] for a in alone],
                "redis_cpu_us_per_entry": [a["redis_cpu_us_per_entry"] for a in alone],
                "commits": len(prep["commits"]),
                "bytes_sent": sum(len(d) for c in prep["commits"] for d in c.data),
                "prepare_seconds": round(prep_s, 3),
                "same_writes": same,  # same applied id and trades stream length as the worker
            }
            # the flow is funded: (almost) no order may be refused for funds
            result["insufficient_funds"] = {
                "orders": prep["orders"], "refused_or_cut": prep["insufficient_funds"],
                "share": round(prep["insufficient_funds"] / max(1, prep["orders"]), 6),
            }  # fmt: skip
            result["ratio"] = round(result["entries_per_s"] / rate, 3)
        return result
    finally:
        server.stop()
        server.cleanup()


def run_live(rate: float, seconds: float, seed: int, warm: int) -> dict[str, Any]:
    from bench.e2e import _proc_cpu, _tree
    from bench.stack import Stack
    from web.journal import Journal

    markets = load_markets()
    stack = Stack(worker=False)
    stack.redis_server.start()
    try:
        client = stack.redis_server.client()
        keys = Keys(0)
        # the live flow replays the warm-up's seed, so its accounts are the ones funded there
        flow = OrderFlow(markets, seed=seed)
        last, deposits = prefill(client, keys, markets, warm, seed)  # deposits first, always
        stack.start_worker()
        assert stack.worker_proc is not None
        proc = stack.worker_proc  # any polling error is retried; a dead worker is not
        wait_until(lambda: (client.get(keys.applied) or b"").decode() == last,
                   DRAIN_TIMEOUT_S, "the warm-up drain", alive=lambda: proc.poll() is None,
                   interval=0.02)  # fmt: skip
        journal = Journal(client, 0)
        worker_pids = _tree(stack.worker_proc.pid)
        redis_pid = stack.redis_server.proc.pid

        def cpu() -> tuple[float, float]:
            return sum(_proc_cpu(p) for p in worker_pids), _proc_cpu(redis_pid)

        # keep the flow's ids in step with the journal's, so cancels aim at live orders
        flow_ids = int(client.get(keys.next_id) or 0)
        worker0, redis0 = cpu()
        execs0 = _exec_calls(client)
        started = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if now - started >= seconds:
                break
            due = started + sent / rate
            if due > now:
                time.sleep(due - now)
            command = flow.next()
            command["reply_to"] = f"bench-{sent + 1}"
            flow_ids = journal.append(command)
            flow.record(command, flow_ids)
            sent += 1
        wait_until(lambda: int(client.get(keys.applied_count) or 0) >= deposits + warm + sent, 60,
                   "the worker catching up", interval=0.01)  # fmt: skip
        elapsed = time.monotonic() - started
        worker1, redis1 = cpu()
        book = json.loads(client.get(keys.book("BTC-USDT")) or b"{}")
        return {
            "mode": "live",
            "rate": rate,
            "entries": sent,
            "entries_per_s": round(sent / elapsed, 1),
            "warm_entries": warm,
            "deposits": deposits,
            "book_levels": [len(book.get("bids", [])), len(book.get("asks", []))],
            "entries_per_commit": round(sent / max(1, _exec_calls(client) - execs0), 2),
            "cpu_us_per_entry": {
                "worker": round((worker1 - worker0) / sent * 1e6, 1),
                "redis": round((redis1 - redis0) / sent * 1e6, 1),
            },
            "cpus": os.cpu_count(),
            "native": engine.native(),
            "load_average": os.getloadavg()[0],
            "seed": seed,
        }
    finally:
        stack.stop()


def _exec_calls(client: Any) -> int:
    stats = client.info("commandstats").get("cmdstat_exec") or {}
    return int(stats.get("calls", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench worker", description=__doc__)
    parser.add_argument("-n", "--entries", type=int, default=200_000,
                        help="journal entries to drain (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="order flow seed (default: 1)")
    parser.add_argument("--snapshot-every", type=int, default=50_000,
                        help="worker snapshot interval in entries (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1000,
                        help="entries per batch (default: %(default)s)")
    parser.add_argument("--live", type=float, default=None, metavar="RATE",
                        help="measure live flow at RATE entries/s instead of a drain")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="live flow duration (default: %(default)s)")
    parser.add_argument("--warm", type=int, default=20_000,
                        help="entries drained before the live flow (default: %(default)s)")
    parser.add_argument("--no-redis-alone", action="store_true",
                        help="drain only: skip the Redis-alone calibration")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    parser.add_argument("-v", "--verbose", action="store_true", help="show worker logs")
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.live:
        result = run_live(args.live, args.seconds, args.seed, args.warm)
        print(
            f"worker live flow: {result['entries']} entries at {result['entries_per_s']:.0f}/s, "
            f"{result['entries_per_commit']} entries per commit, book levels "
            f"{result['book_levels']}; CPU us per entry: {result['cpu_us_per_entry']}"
        )
    else:
        result = run(args.entries, args.seed, args.snapshot_every, args.batch,
                     redis_alone=not args.no_redis_alone)  # fmt: skip
        print(
            f"worker drain: {result['entries']} entries in {result['seconds']} s = "
            f"{result['entries_per_s']:.0f} entries/s ({result['trades']} trades, "
            f"{result['cpus']} CPUs, "
            f"load {result['load_average']:.1f}, "
            f"{'native' if result['native'] else 'pure Python'} modules)"
            f"\nCPU us per entry: {result['cpu_us_per_entry']}"
        )
        if "redis_alone" in result:
            alone = result["redis_alone"]
            funds = result["insufficient_funds"]
            print(f"orders short of funds: {funds['refused_or_cut']} of {funds['orders']}")
            print(
                f"bench worker: drain {result['entries_per_s']:,.0f} entries/s vs Redis alone "
                f"absorbing the same writes {alone['entries_per_s']:,.0f} entries/s "
                f"(runs {alone['runs']}, {alone['commits']} commits, "
                f"{alone['bytes_sent'] / 1e6:.1f} MB) = {result['ratio']}x"
            )
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
