"""A whole Fairbook on free ports: private redis-server + worker(s) + gunicorn web.

Why one harness: the end-to-end tests and ``python -m bench e2e`` must start and stop exactly
the processes a deployment runs (``python -m worker``, ``gunicorn app:app``), so the numbers and
the verdicts are about the real thing, not an in-process imitation.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from bench.flow import FUNDING_VALUE
from engine.markets import assets_of
from protocol.config import load_markets
from protocol.keys import Namespace
from tests.redis_server import RedisServer, free_port
from tests.redis_server import RedisServer as TestsRedisServer
from web.accounts import create_account
from web.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GUNICORN_ARGS = ("-k", "gevent", "-w", "1")
#: The worker command line; ``FAIRBOOK_WORKER_CMD`` overrides it (e.g. a profiler wrapper).
DEFAULT_WORKER_CMD = (sys.executable, "-m", "worker")


def journal_deposits(client: redis.Redis, namespace: Namespace, account_id: str,
                     amounts: dict[str, str], partitions: list[int], tag: str) -> list[int]:
    """Journal one deposit per asset of ``amounts`` (asset -> decimal) into each partition,
    pipelined (one round trip per partition), references ``fund-<tag>-p<N>-<account>-<asset>``
    (unique per partition and call): the deposits' command ids. No reply is asked for: journal
    order puts them before anything journaled afterwards. The one funding path of the
    benchmarks and the tests (tests/web/funding.py)."""
    ids: list[int] = []
    for partition in partitions:
        ids += Journal(client, namespace.keys(partition)).append_many([
            {"op": "deposit", "account": account_id, "asset": asset, "amount": amount,
             "deposit_id": f"fund-{tag}-p{partition}-{account_id}-{asset}"}
            for asset, amount in amounts.items()
        ])  # fmt: skip
    return ids


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphans if we die
    except OSError:
        pass


class Stack:
    """Start with :meth:`start` (or as a context manager); every process is ours to stop."""

    def __init__(
        self,
        gunicorn_args: tuple[str, ...] | list[str] = DEFAULT_GUNICORN_ARGS,
        reply_timeout: float = 2.0,
        partitions: str = "",
        worker: bool = True,
        env: dict[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        appendfsync: str = "everysec",
        namespace: str = "fb",
        redis_server: TestsRedisServer | None = None,
        jobs: bool = False,
    ) -> None:
        self.gunicorn_args = list(gunicorn_args)
        self.reply_timeout = reply_timeout
        self.partitions = partitions
        self.want_worker = worker
        self.want_jobs = jobs  # ``python -m jobs`` too (the job worker: archive, audits, ...)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fb-stack-"))
        #: a server of its own, or one shared with another stack (then not stopped by us)
        self.shared_redis = redis_server is not None
        self.redis_server = redis_server or RedisServer(
            dir=self.log_dir / "redis", appendfsync=appendfsync
        )
        self.markets = load_markets()
        self.namespace = Namespace(namespace, self.markets, partitions)
        self._deposits = itertools.count(1)
        self.web_port = free_port()
        self.worker_proc: subprocess.Popen | None = None
        self.jobs_proc: subprocess.Popen | None = None
        self.web_proc: subprocess.Popen | None = None
        self.extra_env = dict(env or {})
        self._logs: list[Any] = []

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            FAIRBOOK_REPLY_TIMEOUT=str(self.reply_timeout),
            FAIRBOOK_PARTITIONS=self.partitions,
            FAIRBOOK_NAMESPACE=self.namespace.name,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def start(self) -> Stack:
        if not self.redis_server.running:
            self.redis_server.start()
        if self.want_worker:
            self.start_worker()
        if self.want_jobs:
            self.start_jobs()
        self.start_web()
        return self

    def start_jobs(self) -> None:
        """``python -m jobs``, its archive and exports in the stack's log directory (unless
        the stack's env says otherwise)."""
        self.extra_env.setdefault("FAIRBOOK_ARCHIVE", str(self.log_dir / "archive"))
        self.extra_env.setdefault("FAIRBOOK_EXPORTS", str(self.log_dir / "exports"))
        self.jobs_proc = self._spawn("jobs", [sys.executable, "-m", "jobs"])

    def start_worker(self, wait: bool = True) -> None:
        """``python -m worker``; waits until every partition's lease is held."""
        cmd = os.environ.get("FAIRBOOK_WORKER_CMD")
        self.worker_proc = self._spawn("worker", shlex.split(cmd) if cmd else [*DEFAULT_WORKER_CMD])
        if wait:
            self.wait_worker()

    def wait_worker(self, timeout: float = 60.0) -> None:
        """Until every partition's lease is held (any error before the deadline is retried:
        a busy machine may answer slowly)."""
        client = self.redis()
        leases = [self.namespace.keys(p).lease for p in self.partition_ids()]
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.worker_proc is not None and self.worker_proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{self.log_tail('worker')}")
                try:
                    if all(client.exists(lease) for lease in leases):
                        return
                except Exception:  # refused, timed out, loading...: all "not yet"
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"worker did not take its lease:\n{self.log_tail('worker')}")

    def stop_worker(self, timeout: float = 15.0) -> None:
        self._stop_proc(self.worker_proc, timeout)
        self.worker_proc = None

    def start_web(self, timeout: float = 60.0) -> None:
        """``gunicorn app:app`` on a free port; waits until it answers /healthz."""
        args = [sys.executable, "-m", "gunicorn", "app:app", "--bind",
                f"127.0.0.1:{self.web_port}", *self.gunicorn_args]  # fmt: skip
        self.web_proc = self._spawn("web", args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web_proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail('web')}")
            try:  # any answer will do; any failure is retried until the deadline
                requests.get(self.url + "/healthz", timeout=2)
                return
            except Exception:  # refused, read timeout, a reply cut short...: all "not yet"
                time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not answer:\n{self.log_tail('web')}")

    @staticmethod
    def _stop_proc(proc: subprocess.Popen | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group: gunicorn's workers too
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def stop(self) -> None:
        self._stop_proc(self.web_proc, 15)
        self.web_proc = None
        self._stop_proc(self.jobs_proc, 30)  # RQ's warm shutdown lets a running job finish
        self.jobs_proc = None
        self.stop_worker()
        if not self.shared_redis:
            self.redis_server.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=30)

    def partition_ids(self) -> list[int]:
        return self.namespace.partitions

    def create_account(self, name: str, operator: bool = False) -> dict[str, str]:
        client = self.redis()
        try:
            return create_account(client, name, self.namespace.global_keys, operator=operator)
        finally:
            client.close()

    def deposit(self, account_id: str, asset: str, amount: str, partition: int = 0,
                deposit_id: str | None = None) -> int:  # fmt: skip
        """Journal one deposit into ``partition`` (as the operator CLI does, without waiting for
        the worker: journal order puts it before anything journaled after it); its command id.
        A reference unique within this stack is made up unless one is given."""
        unit = assets_of(self.markets)[asset]
        reference = deposit_id or f"stack-{account_id}-{asset}-{next(self._deposits)}"
        wire = {"op": "deposit", "account": account_id, "asset": asset,
                "amount": unit.format(unit.to_units(amount)), "deposit_id": reference}
        client = self.redis()
        try:
            return Journal(client, self.namespace.keys(partition)).append(wire)
        finally:
            client.close()

    def fund(self, account_id: str, partitions: list[int] | None = None,
             amount: int = FUNDING_VALUE) -> list[int]:  # fmt: skip
        """Fund an account generously: ``amount`` whole units of every asset the markets of each
        partition trade (default: every partition), journaled like :meth:`deposit`; the
        deposits' command ids. Orders journaled afterwards are never short of funds."""
        ids = []
        client = self.redis()
        try:
            for partition in self.partition_ids() if partitions is None else partitions:
                markets = [self.markets[s] for s in self.namespace.symbols_of(partition)]
                assets = {m.base_asset for m in markets} | {m.quote_asset for m in markets}
                ids += journal_deposits(client, self.namespace, account_id,
                                        {a: str(amount) for a in sorted(assets)}, [partition],
                                        f"stack{next(self._deposits)}")  # fmt: skip
        finally:
            client.close()
        return ids

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return f"(no {name} log)"
        return "\n".join(text.splitlines()[-lines:])
