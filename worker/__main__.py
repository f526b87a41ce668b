"""``python -m worker``: run the matching worker(s), or audit a partition with ``replay``."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from protocol.archive import ARCHIVE_ENV, DEFAULT_ROOT, ArchiveStore
from protocol.config import NAMESPACE_ENV, PARTITIONS_ENV, load_markets, redacted_url, redis_url
from protocol.keys import DEFAULT_NAMESPACE, Namespace
from worker.replay import replay_partition
from worker.runner import PartitionWorker, connect

log = logging.getLogger("worker")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=None,
        help=f"Redis to use (default: $REDIS_URL, else {redacted_url(redis_url())}); a "
        "password is better passed in $REDIS_URL, where ps cannot show it",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
        help=f"key prefix (default: ${NAMESPACE_ENV}, else {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--symbols",
        default=None,
        help="symbols file (default: $FAIRBOOK_SYMBOLS, else engine/symbols.json)",
    )
    parser.add_argument(
        "--partitions",
        default=None,
        help=f"symbol -> partition map like BTC-USDT=0,ETH-USDT=1 (default: ${PARTITIONS_ENV}; "
        "unlisted symbols are in partition 0)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Fairbook matching worker: consumes fb:{pN}:in, commits trades, orders, "
        "books and replies to Redis atomically, publishes market data. Without a command, "
        "'run' is assumed.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser(
        "run",
        help="match (default command)",
        description="Run one worker per partition. With several partitions and no --partition, "
        "one child process per partition is started. A second worker for the same partition "
        "waits as standby and takes over when the lease expires.",
    )
    _common(run)
    run.add_argument("--partition", type=int, default=None, help="run only this partition")
    run.add_argument("--snapshot-every", type=int, default=50_000,
                     help="snapshot after this many journal entries (default: %(default)s)")
    run.add_argument("--snapshot-seconds", type=float, default=30.0,
                     help="... or after this many seconds with new entries (default: %(default)s)")
    run.add_argument("--keep-snapshots", type=int, default=2,
                     help="snapshots kept in Redis (default: %(default)s)")
    run.add_argument("--trim", action="store_true",
                     help="XTRIM the journal to the oldest kept snapshot (default: keep it all, "
                     "so replay can audit from genesis)")
    run.add_argument("--lease-ms", type=int, default=5000,
                     help="lease time-to-live; a standby takes over this long after a crash "
                     "(default: %(default)s)")
    run.add_argument("--batch", type=int, default=1000,
                     help="max journal entries per batch / atomic commit (default: %(default)s)")
    replay = sub.add_parser(
        "replay",
        help="rebuild books from the journal in memory and compare with recorded trades",
        description="Replays the journal (archive + stream, from genesis; from the oldest "
        "snapshot if the journal was trimmed and the archive does not hold it) with the "
        "worker's own code, in memory, and compares every trade with the fb:{pN}:trades "
        "stream, the final book keys, the balances and every stored candle (fb:{pN}:kline:*). "
        "Exit 0 if all agree, 1 with the first difference, 2 on errors. Writes nothing.",
    )
    _common(replay)
    replay.add_argument("--partition", type=int, default=None,
                        help="replay only this partition (default: all)")
    replay.add_argument(
        "--until", default=None, help="stop at this journal stream id (default: last applied)"
    )
    replay.add_argument(
        "--archive", default=None,
        help=f"the journal archive's directory (default: ${ARCHIVE_ENV}, else {DEFAULT_ROOT}); "
        "read once Redis's journal was trimmed, so the audit still starts at genesis",
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )


def _namespace(args: argparse.Namespace, markets: dict[str, Any]) -> Namespace:
    partitions = args.partitions if args.partitions is not None else os.environ.get(PARTITIONS_ENV)
    return Namespace(args.namespace, markets, partitions)


def cmd_run(args: argparse.Namespace) -> int:
    markets = load_markets(args.symbols)
    namespace = _namespace(args, markets)
    if args.partition is None and len(namespace.partitions) > 1:
        return _run_children(args, namespace.partitions)
    partition = namespace.partitions[0] if args.partition is None else args.partition
    worker = PartitionWorker(
        args.redis_url,
        partition,
        markets,
        namespace=namespace,
        snapshot_every=args.snapshot_every,
        snapshot_seconds=args.snapshot_seconds,
        keep_snapshots=args.keep_snapshots,
        trim=args.trim,
        lease_ms=args.lease_ms,
        batch_size=args.batch,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("partition %d: signal %d, stopping after this batch", partition, signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: B036 - reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"worker-p{partition}")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # the main thread stays free to receive signals
    if failure:
        raise failure[0]
    return 0


def _run_children(args: argparse.Namespace, partitions: list[int]) -> int:
    """One process per partition: the GIL would serialise them in one process."""
    # the URL (which may hold a password) goes in the environment, not on a command line
    env = {**os.environ, "REDIS_URL": args.redis_url}
    base = [sys.executable, "-m", "worker", "run",
            "--namespace", args.namespace, "--snapshot-every", str(args.snapshot_every),
            "--snapshot-seconds", str(args.snapshot_seconds),
            "--keep-snapshots", str(args.keep_snapshots), "--lease-ms", str(args.lease_ms),
            "--batch", str(args.batch), "--log-level", args.log_level]  # fmt: skip
    if args.symbols:
        base += ["--symbols", args.symbols]
    if args.partitions is not None:
        base += ["--partitions", args.partitions]
    if args.trim:
        base.append("--trim")
    children = [subprocess.Popen([*base, "--partition", str(p)], env=env,
                                 preexec_fn=_die_with_parent) for p in partitions]  # fmt: skip
    log.info("started %d partition workers: %s", len(children), partitions)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _die_with_parent() -> None:
    """In a partition child before exec: SIGTERM (stop after this batch) when the parent
    dies, however it dies: a partition must never be matched by an orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def cmd_replay(args: argparse.Namespace) -> int:
    markets = load_markets(args.symbols)
    namespace = _namespace(args, markets)
    partitions = namespace.partitions if args.partition is None else [args.partition]
    client = connect(args.redis_url)
    worst = 0
    for partition in partitions:
        mine = {s: markets[s] for s in namespace.symbols_of(partition)}
        if not mine:
            print(f"partition {partition}: no symbols", file=sys.stderr)
            return 2
        archive = ArchiveStore(args.archive, args.namespace, partition)
        result = replay_partition(client, partition, mine, args.namespace, args.until, archive)
        print(f"partition {partition}: {result.summary()}")
        if not result.ok:
            worst = 1
    return worst


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    args.redis_url = redis_url(args.redis_url)
    _setup_logging(args.log_level)
    try:
        if args.command == "replay":
            return cmd_replay(args)
        return cmd_run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line reason for operators, then the traceback
        log.exception("fatal: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
