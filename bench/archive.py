"""``python -m bench archive``: Redis memory with the archive job on vs off, same flow, same run.

Two private redis-servers (AOF on, everysec), each with its own ``python -m worker`` process;
the same seeded flow (the deposits, then N mixed commands) is appended to both, chunk by chunk,
as fast as the slower worker drains it (the backlog of each is kept under ``--backlog``). On
server A the archive job runs every ``--every`` seconds (``python -m jobs.archive --every``,
its own process, with the default segment size and minimum age); on B nothing is archived.
Sampled every ``--sample`` seconds: ``used_memory``, journal and trades lengths, keys of both.

Archive throughput is reported twice: the runs during the flow (entries archived / seconds of
the runs, journal and trades entries), and afterwards one run over B's whole backlog (what a
first run on a deployment that never archived does). Matching-path cost: CPU seconds of each
worker process and each redis-server over the flow (A's pay for the archive's reads and trims).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.flow import OrderFlow
from engine.commands import make_public_id
from jobs.archive import Archiver
from protocol import wire
from protocol.archive import ArchiveStore
from protocol.config import load_markets
from protocol.keys import Keys
from tests.redis_server import RedisServer, wait_until

ROOT = Path(__file__).resolve().parent.parent
K = Keys(0)
CHUNK = 2000


def _proc_cpu(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _child(args: list[str], url: str, log: Path, stdout: Any = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url, "FAIRBOOK_PARTITIONS": ""}
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                stdout=stdout or out, stderr=out)  # fmt: skip


def _sample(clients: dict[str, Any], fed: int, t0: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(time.monotonic() - t0, 2), "fed": fed}
    for name, c in clients.items():
        pipe = c.pipeline(transaction=False)
        pipe.info("memory")
        pipe.xlen(K.stream)
        pipe.xlen(K.trades)
        pipe.dbsize()
        mem, journal, trades, keys = pipe.execute()
        row[name] = {"used_memory": int(mem["used_memory"]), "journal": journal,
                     "trades": trades, "keys": keys}  # fmt: skip
    return row


def run(n: int, seed: int, every: float, sample_s: float, backlog: int, accounts: int,
        keep: bool) -> dict[str, Any]:  # fmt: skip
    markets = load_markets()
    work = Path(tempfile.mkdtemp(prefix="fb-bench-archive-"))
    root = work / "archive"
    servers = {name: RedisServer(dir=work / f"redis-{name}") for name in ("on", "off")}
    procs: list[subprocess.Popen] = []
    try:
        for s in servers.values():
            s.start()
        clients = {name: s.client() for name, s in servers.items()}
        workers = {name: _child(["worker", "--log-level", "WARNING"], s.url,
                                work / f"worker-{name}.log")
                   for name, s in servers.items()}  # fmt: skip
        procs += workers.values()
        runs_out = (work / "archive-runs.jsonl").open("w")
        archiver = _child(["jobs.archive", "--partition", "0", "--archive", str(root),
                           "--every", str(every)], servers["on"].url, work / "archiver.log",
                          stdout=runs_out)  # fmt: skip
        procs.append(archiver)
        flow = OrderFlow(markets, seed=seed, accounts=accounts)
        deposits = flow.deposits()
        total = len(deposits) + n
        cpu0 = {name: (_proc_cpu(workers[name].pid), _redis_cpu(c))
                for name, c in clients.items()}  # fmt: skip
        samples: list[dict[str, Any]] = []
        fed = 0
        stop = threading.Event()
        t0 = time.monotonic()

        def sampler() -> None:
            while not stop.wait(sample_s):
                samples.append(_sample(clients, fed, t0))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        last: dict[str, str] = {}
        orders = 0
        while fed < total:
            for c in clients.values():  # flow control: the slower worker sets the pace
                while fed - int(c.get(K.applied_count) or 0) > backlog:
                    time.sleep(0.005)
            bodies = []
            for i in range(fed, min(total, fed + CHUNK)):
                command = deposits[i] if i < len(deposits) else flow.next()
                cmd_id = make_public_id(i + 1, 0)
                flow.record(command, cmd_id)
                orders += command.get("op") == "new"
                bodies.append(wire.dumps({"id": cmd_id, **command}))
            for name, c in clients.items():  # stream ids are each server's clock: its own
                pipe = c.pipeline(transaction=False)
                for body in bodies:
                    pipe.xadd(K.stream, {wire.COMMAND_FIELD: body})
                pipe.set(K.next_id, fed + len(bodies))
                last[name] = pipe.execute()[-2].decode()
            fed += len(bodies)
        flow_s = time.monotonic() - t0
        for name, c in clients.items():
            wait_until(lambda c=c, name=name: (c.get(K.applied) or b"").decode() == last[name], 600,
                       f"worker {name} drain", interval=0.05)  # fmt: skip
        drained_s = time.monotonic() - t0
        cpu = {name: {"worker_s": round(_proc_cpu(workers[name].pid) - cpu0[name][0], 2),
                      "redis_s": round(_redis_cpu(c) - cpu0[name][1], 2)}
               for name, c in clients.items()}  # fmt: skip
        time.sleep(max(every, sample_s) * 2)  # one more archive run after the flow
        stop.set()
        thread.join()
        samples.append(_sample(clients, fed, t0))
        archiver.terminate()
        archiver.wait(30)
        runs_out.close()
        runs = [json.loads(line) for line in (work / "archive-runs.jsonl").read_text().splitlines()
                if line.startswith("{")]  # fmt: skip
        moved = sum(r["journal"]["archived"] + r["trades"]["archived"] for r in runs)
        busy = sum(r["seconds"] for r in runs if r["journal"]["archived"] + r["trades"]["archived"])
        for p in workers.values():
            p.terminate()
            p.wait(30)

        # B's whole backlog in one run (min age 0: the flow is over)
        before_b = int(clients["off"].info("memory")["used_memory"])
        backlog_run = Archiver(clients["off"], K, ArchiveStore(work / "archive-off", "fb", 0),
                               min_age_ms=0).run()  # fmt: skip
        after_b = int(clients["off"].info("memory")["used_memory"])
        on_mem = [s["on"]["used_memory"] for s in samples]
        off_mem = [s["off"]["used_memory"] for s in samples]
        half = len(samples) // 2
        size = sum(f.stat().st_size for f in root.rglob("*.seg.gz"))
        return {
            "commands": total, "orders": orders, "deposits": len(deposits), "seed": seed,
            "accounts": accounts, "flow_seconds": round(flow_s, 1),
            "drained_seconds": round(drained_s, 1),
            "commands_per_s": round(total / drained_s),
            "used_memory": {
                "archive_on": {"max": max(on_mem), "final": on_mem[-1],
                               "max_second_half": max(on_mem[half:])},
                "archive_off": {"max": max(off_mem), "final": off_mem[-1]},
                "off_over_on_final": round(off_mem[-1] / on_mem[-1], 2),
            },
            "final": samples[-1],
            "archive_during_flow": {
                "runs": len(runs), "runs_that_archived": sum(
                    1 for r in runs if r["journal"]["archived"] + r["trades"]["archived"]),
                "entries": moved, "busy_seconds": round(busy, 2),
                "entries_per_s": round(moved / busy) if busy else None,
                "orders_archived": sum(r["orders"]["archived"] for r in runs),
                "segment_bytes": size,
                "bytes_per_entry": round(size / max(1, moved), 1),
            },
            "archive_backlog_run": {
                "journal": backlog_run["journal"]["archived"],
                "trades": backlog_run["trades"]["archived"],
                "orders": backlog_run["orders"]["archived"], "seconds": backlog_run["seconds"],
                "entries_per_s": backlog_run["entries_per_s"],
                "used_memory_before": before_b, "used_memory_after": after_b,
            },
            "cpu": cpu,
            "samples": samples,
            "work_dir": str(work) if keep else None,
        }  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in servers.values():
            s.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--commands", type=int, default=1_000_000,
                        help="flow commands after the deposits (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=50, help="flow accounts (default: 50)")
    parser.add_argument("--every", type=float, default=2.0,
                        help="seconds between archive runs on A (default: %(default)s)")
    parser.add_argument("--sample", type=float, default=1.0,
                        help="seconds between memory samples (default: %(default)s)")
    parser.add_argument("--backlog", type=int, default=20_000,
                        help="most entries either worker may lag (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    args = parser.parse_args(argv)
    result = run(args.commands, args.seed, args.every, args.sample, args.backlog, args.accounts,
                 args.keep)  # fmt: skip
    mem = result["used_memory"]
    during = result["archive_during_flow"]
    backlog = result["archive_backlog_run"]
    print(f"bench archive: {result['commands']:,} commands ({result['orders']:,} new orders) "
          f"through two workers in {result['drained_seconds']} s "
          f"({result['commands_per_s']:,}/s each)")
    print(f"  used_memory archive ON : max {_mb(mem['archive_on']['max'])}, max over the "
          f"second half {_mb(mem['archive_on']['max_second_half'])}, final "
          f"{_mb(mem['archive_on']['final'])}")
    print(f"  used_memory archive OFF: max {_mb(mem['archive_off']['max'])}, final "
          f"{_mb(mem['archive_off']['final'])} ({mem['off_over_on_final']}x ON's)")
    print(f"  archive during the flow: {during['entries']:,} entries in {during['runs']} runs, "
          f"{during['entries_per_s']} entries/s while running, {during['orders_archived']:,} "
          f"order records, {during['bytes_per_entry']} bytes/entry on disk")
    print(f"  archive of OFF's backlog: {backlog['journal']:,} journal + {backlog['trades']:,} "
          f"trades entries + {backlog['orders']:,} records in {backlog['seconds']} s = "
          f"{backlog['entries_per_s']:,} entries/s; used_memory "
          f"{_mb(backlog['used_memory_before'])} -> {_mb(backlog['used_memory_after'])}")
    print(f"  CPU seconds over the flow: {result['cpu']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
