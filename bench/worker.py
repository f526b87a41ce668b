"""``python -m bench worker``: how fast one partition worker drains a pre-filled journal.

A private redis-server (AOF on, everysec) is filled with N seeded mixed commands by pipelined
XADD; then a worker starts and the clock runs until ``applied`` reaches the last entry, i.e.
every trade, order record, book, reply and snapshot of the run is committed.

``--live RATE``: the worker's cost at live flow instead, where batches hold one or two entries
and per-batch costs dominate. ``python -m worker`` runs as its own process; after a drained
warm-up journal (a realistic book), commands are appended one by one, as the web does, paced at
RATE/s for ``--seconds``; reported is the CPU per entry of the worker process and redis-server
(from /proc, so the feeder's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
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
from protocol.keys import Keys
from worker.runner import PartitionWorker

ROOT = Path(__file__).resolve().parent.parent


def _redis_server_class() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from redis_server import RedisServer  # the infra helper: free port, temp dir, never 6379

    return RedisServer


def prefill(client: Any, keys: Keys, markets: dict, n: int, seed: int) -> str:
    """XADD ``n`` commands (ids assigned here like the append script would); returns last id."""
    flow = OrderFlow(markets, seed=seed)
    pipe = client.pipeline(transaction=False)
    last = ""
    for i in range(n):
        command = flow.next()
        cmd_id = make_public_id(i + 1, keys.partition)
        # tagged like the web's commands: the worker renders and publishes every reply
        body = {"id": cmd_id, **command, "reply_to": f"bench-{i + 1}"}
        flow.record(command, cmd_id)
        pipe.xadd(keys.stream, {wire.COMMAND_FIELD: wire.dumps(body)})
        if len(pipe) >= 5000:
            last = pipe.execute()[-1]
    if len(pipe):
        last = pipe.execute()[-1]
    client.set(keys.next_id, n)
    return last.decode() if isinstance(last, bytes) else last


def _cpu(client: Any) -> dict[str, float]:
    """CPU seconds so far: this process (the worker runs on a thread of it), redis-server."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    info = client.info("cpu")
    return {
        "worker": me.ru_utime + me.ru_stime,
        "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    }


def run(n: int, seed: int, snapshot_every: int, batch: int) -> dict[str, Any]:
    markets = load_markets()
    server = _redis_server_class()()
    server.start()
    try:
        client = server.client()
        keys = Keys(0)
        started = time.perf_counter()
        last = prefill(client, keys, markets, n, seed)
        fill_s = time.perf_counter() - started
        worker = PartitionWorker(
            server.url, 0, markets, snapshot_every=snapshot_every, batch_size=batch
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        cpu0 = _cpu(client)
        t0 = time.perf_counter()
        thread.start()
        while True:
            applied = client.get(keys.applied)
            if applied is not None and applied.decode() == last:
                break
            if not thread.is_alive():
                raise RuntimeError("the worker died; see the log above")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        worker.stop()
        thread.join(30)
        cpu1 = _cpu(client)
        cpu = {k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in cpu0}
        trades = client.xlen(keys.trades)
        return {
            "entries_per_s": round(n / seconds, 1),
            "entries": n,
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
        flow = OrderFlow(markets, seed=seed)
        last = prefill(client, keys, markets, warm, seed) if warm else None
        stack.start_worker()
        assert stack.worker_proc is not None
        if last is not None:
            while (client.get(keys.applied) or b"").decode() != last:
                time.sleep(0.02)
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
        deadline = time.monotonic() + 30
        while int(client.get(keys.applied_count) or 0) < warm + sent:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not catch up")
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        worker1, redis1 = cpu()
        book = json.loads(client.get(keys.book("BTC-USDT")) or b"{}")
        return {
            "mode": "live",
            "rate": rate,
            "entries": sent,
            "entries_per_s": round(sent / elapsed, 1),
            "warm_entries": warm,
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
        result = run(args.entries, args.seed, args.snapshot_every, args.batch)
        print(
            f"worker drain: {result['entries']} entries in {result['seconds']} s = "
            f"{result['entries_per_s']:.0f} entries/s ({result['trades']} trades, "
            f"{result['cpus']} CPUs, "
            f"load {result['load_average']:.1f}, "
            f"{'native' if result['native'] else 'pure Python'} modules)"
            f"\nCPU us per entry: {result['cpu_us_per_entry']}"
        )
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
