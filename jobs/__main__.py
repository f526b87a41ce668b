"""``python -m jobs``: the job worker (RQ worker + RQ's scheduler + the cron schedules).

Commands:

* ``run`` (default): an RQ ``Worker`` on the namespace's queues (archive, audit, exports, in
  that order) with ``with_scheduler=True`` (RQ's scheduler enqueues the delayed retries), and
  a child ``python -m jobs cron`` for the schedules. SIGINT / SIGTERM: RQ's warm shutdown (the
  running job finishes), then the child is stopped.
* ``cron``: the schedules alone (``jobs.queues.build_cron``; one per namespace enqueues).
* ``enqueue archive|audit [--partition N]``: run a job now (every partition by default);
  prints the job ids.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from jobs import queues
from protocol.config import PARTITIONS_ENV, load_markets, redacted_url, redis_url
from protocol.keys import Namespace

log = logging.getLogger("jobs")


def _die_with_parent() -> None:
    """In the cron child before exec: SIGTERM when the job worker dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None,
                        help="Redis (default: $REDIS_URL); a password is better passed there")
    parser.add_argument("--namespace", default=None,
                        help="key prefix and queue prefix (default: $FAIRBOOK_NAMESPACE, else fb)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="the job worker with its scheduler (default)")
    run.add_argument("--no-cron", action="store_true", help="do not start the schedules")
    run.add_argument("--burst", action="store_true",
                     help="work until the queues are empty, then exit (tests, one-off runs)")
    sub.add_parser("cron", help="the schedules alone")
    enq = sub.add_parser("enqueue", help="enqueue a job now")
    enq.add_argument("kind", choices=[queues.ARCHIVE, queues.AUDIT])
    enq.add_argument("--partition", type=int, default=None, help="default: every partition")
    return parser  # fmt: skip


def _partitions() -> list[int]:
    return Namespace("fb", load_markets(), os.environ.get(PARTITIONS_ENV)).partitions


def cmd_run(args: argparse.Namespace) -> int:
    from rq import Worker

    connection = queues.connect(args.redis_url)
    served = queues.queues(connection, args.namespace)
    cron: subprocess.Popen | None = None
    burst = getattr(args, "burst", False)
    if not getattr(args, "no_cron", False) and not burst:
        env = {**os.environ, "REDIS_URL": args.redis_url}  # never on a command line
        cmd = [sys.executable, "-m", "jobs", "--log-level", args.log_level]
        if args.namespace:
            cmd += ["--namespace", args.namespace]
        cron = subprocess.Popen([*cmd, "cron"], env=env, preexec_fn=_die_with_parent)
    log.info("job worker on %s, queues %s", redacted_url(args.redis_url),
             ", ".join(q.name for q in served))  # fmt: skip
    try:
        worker = Worker(served, connection=connection)
        worker.work(burst=burst, with_scheduler=True, logging_level=args.log_level)
    finally:
        if cron is not None and cron.poll() is None:
            cron.send_signal(signal.SIGTERM)
            try:
                cron.wait(10)
            except subprocess.TimeoutExpired:
                cron.kill()
                cron.wait()
    return 0


def cmd_cron(args: argparse.Namespace) -> int:
    connection = queues.connect(args.redis_url)
    scheduler = queues.build_cron(connection, _partitions(), args.namespace)
    scheduler.start()  # until SIGINT / SIGTERM (RQ's handlers)
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    connection = queues.connect(args.redis_url)
    partitions = _partitions() if args.partition is None else [args.partition]
    make = queues.enqueue_archive if args.kind == queues.ARCHIVE else queues.enqueue_audit
    for partition in partitions:
        job = make(connection, partition, args.namespace)
        print(f"partition {partition}: {args.kind} job {job.id} on {job.origin}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.redis_url = redis_url(args.redis_url)
    args.namespace = queues.namespace_name(args.namespace)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    commands: dict[str | None, Any] = {"cron": cmd_cron, "enqueue": cmd_enqueue}
    try:
        return commands.get(args.command, cmd_run)(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
