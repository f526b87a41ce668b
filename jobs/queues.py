"""RQ wiring: the connection, Fairbook's queues, enqueue helpers, the retry policy, schedules.

Why RQ's own primitives and not copies: failed jobs are retried by ``rq.Retry`` (delays kept
in RQ's ScheduledJobRegistry and enqueued again by the scheduler the job worker runs) and end in
RQ's FailedJobRegistry, where rq-dashboard shows them; schedules are ``rq.cron`` jobs. What RQ
lacks is added by the smallest subclass: a cron job that enqueues with ``Retry`` (RQ's
``CronJob`` takes no retry policy) and a lock so that, with several ``python -m jobs`` of one
deployment, one cron scheduler enqueues and the others only keep time.

Queues are named per namespace (``<ns>.archive``, ``<ns>.audit``, ``<ns>.exports``:
``protocol.keys.Keys.job_queue``), so deployments sharing a Redis never take each other's jobs.
Settings (environment, read when a schedule or a job is made):

* ``FAIRBOOK_ARCHIVE_SCHEDULE`` (default ``300``), ``FAIRBOOK_AUDIT_SCHEDULE`` (default
  ``3600``): seconds between runs, or a five-field cron line (``*/5 * * * *``, local time as
  RQ reads it), or ``off``. One job per partition each time.
* ``FAIRBOOK_JOB_RETRY`` (default ``10,60,300``): seconds before each retry of a failed job
  (as many retries as numbers; ``0`` or ``off``: none).
* ``FAIRBOOK_JOB_TIMEOUT`` (default 3600): seconds a job may run before RQ kills it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import redis
from rq import Queue, Retry, get_current_job
from rq.cron import CronJob, CronScheduler
from rq.job import Job

from protocol.config import NAMESPACE_ENV, redis_url
from protocol.keys import DEFAULT_NAMESPACE, Keys

log = logging.getLogger("jobs")

ARCHIVE, AUDIT, EXPORTS = "archive", "audit", "exports"
#: the job worker's order: archiving first (it bounds Redis memory), then audits, statements
KINDS = (ARCHIVE, AUDIT, EXPORTS)

ARCHIVE_SCHEDULE_ENV = "FAIRBOOK_ARCHIVE_SCHEDULE"
AUDIT_SCHEDULE_ENV = "FAIRBOOK_AUDIT_SCHEDULE"
RETRY_ENV = "FAIRBOOK_JOB_RETRY"
JOB_TIMEOUT_ENV = "FAIRBOOK_JOB_TIMEOUT"
DEFAULT_SCHEDULES = {ARCHIVE: "300", AUDIT: "3600"}
DEFAULT_RETRY = "10,60,300"
DEFAULT_JOB_TIMEOUT = 3600
#: RQ keeps a finished job (and its return value) this long; audits keep their own results
RESULT_TTL = 24 * 3600
#: expired exports' files are removed this often (their Redis record expires by its TTL)
EXPORT_CLEANUP_INTERVAL = 600
#: the cron lock's time to live: longer than RQ's cron loop (it wakes at least every 60 s)
CRON_LOCK_MS = 180_000

_CRON_LINE = re.compile(r"\S+(\s+\S+){4}")


def namespace_name(explicit: str | None = None) -> str:
    """``explicit``, else ``FAIRBOOK_NAMESPACE``, else ``fb``."""
    return explicit or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def connect(url: str | None = None) -> redis.Redis:
    """A client for RQ from ``url`` / ``REDIS_URL``: bytes replies (RQ requires them), no
    socket timeout (the worker blocks in BLMOVE for minutes on purpose)."""
    return redis.Redis.from_url(redis_url(url), health_check_interval=30)


def rq_client_like(client: redis.Redis) -> redis.Redis:
    """A bytes-mode client to the same server as ``client`` (the web's decodes replies, which
    RQ cannot use): password, TLS and database copied from its pool."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k not in ("decode_responses", "encoding", "encoding_errors")}  # fmt: skip
    return redis.Redis(connection_pool=pool.__class__(connection_class=pool.connection_class,
                                                      **kwargs))  # fmt: skip


def job_connection() -> redis.Redis:
    """Inside a job: the worker's connection (RQ's own, bytes mode); outside: ``REDIS_URL``."""
    job = get_current_job()
    return job.connection if job is not None else connect()


def queue(connection: redis.Redis, kind: str, namespace: str | None = None) -> Queue:
    if kind not in KINDS:
        raise ValueError(f"no job queue {kind!r}: one of {', '.join(KINDS)}")
    return Queue(Keys(0, namespace_name(namespace)).job_queue(kind), connection=connection)


def queues(connection: redis.Redis, namespace: str | None = None) -> list[Queue]:
    """Every queue of the namespace, in the order a job worker serves them."""
    return [queue(connection, kind, namespace) for kind in KINDS]


def parse_retry(text: str | None) -> Retry | None:
    """``"10,60,300"`` -> ``Retry(max=3, interval=[10, 60, 300])``; ``0``/``off``/empty: None."""
    text = (text or "").strip()
    if text in ("", "0", "off"):
        return None
    try:
        intervals = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"fairbook: {RETRY_ENV} must be seconds like 10,60,300, "
                         f"got {text!r}") from None
    if any(i < 0 for i in intervals):
        raise SystemExit(f"fairbook: {RETRY_ENV}: negative delays are not allowed")
    return Retry(max=len(intervals), interval=intervals)


def retry_policy(env: Mapping[str, str] | None = None) -> Retry | None:
    env = os.environ if env is None else env
    return parse_retry(env.get(RETRY_ENV, DEFAULT_RETRY))


def job_timeout(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(JOB_TIMEOUT_ENV) or str(DEFAULT_JOB_TIMEOUT)
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"fairbook: {JOB_TIMEOUT_ENV} must be whole seconds >= 1, got {raw!r}")
    return int(raw)


def enqueue(connection: redis.Redis, kind: str, func: Callable[..., Any] | str,
            kwargs: dict[str, Any], namespace: str | None = None, job_id: str | None = None,
            result_ttl: int = RESULT_TTL, failure_ttl: int | None = None,
            description: str | None = None) -> Job:  # fmt: skip
    """Enqueue one job on the namespace's ``kind`` queue with the retry policy and timeout."""
    return queue(connection, kind, namespace).enqueue_call(
        func, kwargs=kwargs, job_id=job_id, retry=retry_policy(), timeout=job_timeout(),
        result_ttl=result_ttl, failure_ttl=failure_ttl, description=description,
    )  # fmt: skip


# By name, not by function: the web enqueues them without importing the worker's code.
AUDIT_JOB = "jobs.audit.audit_partition"
ARCHIVE_JOB = "jobs.archive.archive_partition"
EXPORT_JOB = "jobs.exports.export_statement"


def enqueue_audit(connection: redis.Redis, partition: int, namespace: str | None = None) -> Job:
    ns = namespace_name(namespace)
    return enqueue(connection, AUDIT, AUDIT_JOB, {"partition": partition, "namespace": ns},
                   ns, description=f"audit {ns} partition {partition}")  # fmt: skip


def enqueue_archive(connection: redis.Redis, partition: int, namespace: str | None = None) -> Job:
    ns = namespace_name(namespace)
    return enqueue(connection, ARCHIVE, ARCHIVE_JOB, {"partition": partition, "namespace": ns},
                   ns, description=f"archive {ns} partition {partition}")  # fmt: skip


# -- schedules ----------------------------------------------------------------------------------


def parse_schedule(text: str | None, name: str = "schedule") -> dict[str, Any] | None:
    """``"300"`` -> ``{"interval": 300}``, a cron line -> ``{"cron": line}``, ``off`` -> None."""
    text = (text or "").strip()
    if text in ("off", "0"):
        return None
    if text.isdigit():
        return {"interval": int(text)}
    if _CRON_LINE.fullmatch(text):
        from croniter import croniter

        if croniter.is_valid(text):
            return {"cron": text}
    raise SystemExit(f"fairbook: {name} must be seconds, a five-field cron line or off, "
                     f"got {text!r}")  # fmt: skip


class RetryingCronJob(CronJob):
    """RQ's cron job, enqueued with a ``Retry`` policy (``CronJob`` has no such option)."""

    def __init__(self, *args: Any, retry: Retry | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry = retry

    def enqueue(self, connection: redis.Redis) -> Job:
        if self.retry is None:
            return super().enqueue(connection)
        # job_options go to Queue.enqueue as they are; kept out of to_dict (not JSON)
        self.job_options["retry"] = self.retry
        try:
            return super().enqueue(connection)
        finally:
            del self.job_options["retry"]


class LockedCronScheduler(CronScheduler):
    """RQ's cron scheduler; of several in one namespace only the holder of ``cron_lock``
    enqueues, the others advance their clocks without enqueueing (and take over within
    :data:`CRON_LOCK_MS` when the holder dies)."""

    def __init__(self, connection: redis.Redis, namespace: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(connection, **kwargs)
        self.lock_key = Keys(0, namespace_name(namespace)).cron_lock

    def add(self, func: Callable[..., Any], queue_name: str, retry: Retry | None = None,
            **options: Any) -> CronJob:  # fmt: skip
        """Like ``CronScheduler.register``, with a retry policy."""
        job = RetryingCronJob(queue_name=queue_name, func=func, retry=retry, **options)
        self._cron_jobs.append(job)
        every = f"every {job.interval} s" if job.interval else f"on {job.cron!r}"
        self.log.info("registered %s on %s %s", job.name, queue_name, every)
        return job

    def holds_lock(self) -> bool:
        """Take the lock if it is free, renew it if it is ours (WATCH, not a script: the
        fast tests' fakeredis runs no Lua)."""
        if self.connection.set(self.lock_key, self.name, nx=True, px=CRON_LOCK_MS):
            return True
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(self.lock_key)
                holder = pipe.get(self.lock_key)
                if holder is None or holder.decode() != self.name:
                    return False
                pipe.multi()
                pipe.pexpire(self.lock_key, CRON_LOCK_MS)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def release_lock(self) -> None:
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(self.lock_key)
                holder = pipe.get(self.lock_key)
                if holder is not None and holder.decode() == self.name:
                    pipe.multi()
                    pipe.delete(self.lock_key)
                    pipe.execute()
            except (redis.WatchError, redis.RedisError):
                pass

    def enqueue_jobs(self) -> list[CronJob]:
        if self.holds_lock():
            return super().enqueue_jobs()
        from rq.utils import now

        moment = now()
        for job in self._cron_jobs:  # another scheduler enqueues them: keep time only
            if job.should_run():
                job.set_enqueue_time(moment)
        return []

    def start(self) -> None:
        try:
            super().start()
        finally:
            self.release_lock()


def build_cron(connection: redis.Redis, partitions: list[int], namespace: str | None = None,
               env: Mapping[str, str] | None = None) -> LockedCronScheduler:  # fmt: skip
    """The namespace's schedules: per partition an archive and an audit job (each as its
    setting says), and the removal of expired exports' files."""
    from jobs.audit import audit_partition
    from jobs.exports import remove_expired

    env = os.environ if env is None else env
    ns = namespace_name(namespace)
    keys = Keys(0, ns)
    retry = retry_policy(env)
    timeout = job_timeout(env)
    scheduler = LockedCronScheduler(connection, ns, name=f"{ns}-cron-{os.getpid()}")
    plans: list[tuple[str, Callable[..., Any] | None]] = [(AUDIT, audit_partition)]
    try:
        from jobs.archive import archive_partition
    except ImportError:  # pragma: no cover - the archive job is another module's
        log.warning("jobs.archive is not available: no archive schedule")
    else:
        plans.insert(0, (ARCHIVE, archive_partition))
    for kind, func in plans:
        setting = ARCHIVE_SCHEDULE_ENV if kind == ARCHIVE else AUDIT_SCHEDULE_ENV
        when = parse_schedule(env.get(setting, DEFAULT_SCHEDULES[kind]), setting)
        if when is None or func is None:
            log.info("%s: %s schedule off", ns, kind)
            continue
        for partition in partitions:
            scheduler.add(func, keys.job_queue(kind), retry=retry, job_timeout=timeout,
                          kwargs={"partition": partition, "namespace": ns},
                          result_ttl=RESULT_TTL, name=f"{ns}:{kind}:p{partition}",
                          **when)  # fmt: skip
    scheduler.add(remove_expired, keys.job_queue(EXPORTS), retry=retry, job_timeout=timeout,
                  kwargs={"namespace": ns}, result_ttl=RESULT_TTL, name=f"{ns}:exports:cleanup",
                  interval=EXPORT_CLEANUP_INTERVAL)  # fmt: skip
    return scheduler
