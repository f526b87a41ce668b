"""jobs.queues: queue names, the retry policy, schedules and the cron lock (fakeredis, fast)."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
from rq import SimpleWorker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from jobs import queues
from protocol.keys import Keys


def boom() -> None:
    """A job that always fails."""
    raise RuntimeError("boom")


@pytest.fixture
def r():
    return fakeredis.FakeRedis()


def test_queues_are_named_per_namespace_in_serving_order(r):
    assert [q.name for q in queues.queues(r, "fb")] == ["fb.archive", "fb.audit", "fb.exports"]
    assert [q.name for q in queues.queues(r, "dev-2")][0] == "dev-2.archive"
    assert Keys(0, "x").job_queue("audit") == queues.queue(r, "audit", "x").name == "x.audit"
    with pytest.raises(ValueError):
        queues.queue(r, "mail")


def test_retry_and_schedule_settings():
    retry = queues.parse_retry("10,60,300")
    assert (retry.max, retry.intervals) == (3, [10, 60, 300])
    assert queues.parse_retry("0") is None and queues.parse_retry("off") is None
    for bad in ("x", "1,-2"):
        with pytest.raises(SystemExit):
            queues.parse_retry(bad)
    assert queues.parse_schedule("300") == {"interval": 300}
    assert queues.parse_schedule("*/5 * * * *") == {"cron": "*/5 * * * *"}
    assert queues.parse_schedule("off") is None
    for bad in ("soon", "* * *", "61 * * * *"):
        with pytest.raises(SystemExit):
            queues.parse_schedule(bad)
    assert queues.job_timeout({}) == queues.DEFAULT_JOB_TIMEOUT
    with pytest.raises(SystemExit):
        queues.job_timeout({queues.JOB_TIMEOUT_ENV: "0"})


def test_a_failing_job_backs_off_then_stays_in_the_failed_registry(r, monkeypatch):
    """RQ's Retry: the delay goes to the scheduled registry (the job worker's scheduler
    enqueues it when due); once the retries are spent, the failed registry keeps the job."""
    monkeypatch.setenv(queues.RETRY_ENV, "30,90")
    job = queues.enqueue(r, queues.AUDIT, boom, {}, "fb")
    assert (job.retries_left, job.retry_intervals) == (2, [30, 90])
    worker = SimpleWorker(queues.queues(r, "fb"), connection=r)
    worker.work(burst=True, logging_level="WARNING")
    scheduled = ScheduledJobRegistry(queues.queue(r, queues.AUDIT, "fb").name, connection=r)
    assert scheduled.get_job_ids() == [job.id]
    due = scheduled.get_scheduled_time(job.id).timestamp()
    assert 25 < due - time.time() <= 31  # the first back-off
    job.refresh()
    assert job.retries_left == 1

    monkeypatch.setenv(queues.RETRY_ENV, "0,0")  # immediate retries: the whole path, fast
    job = queues.enqueue(r, queues.EXPORTS, boom, {}, "fb")
    worker.work(burst=True, logging_level="WARNING")
    failed = FailedJobRegistry(queues.queue(r, queues.EXPORTS, "fb").name, connection=r)
    assert failed.get_job_ids() == [job.id]
    job.refresh()
    assert job.retries_left == 0 and "RuntimeError: boom" in job.latest_result().exc_string


def test_the_cron_lock_lets_one_scheduler_enqueue(r, monkeypatch):
    monkeypatch.setenv(queues.ARCHIVE_SCHEDULE_ENV, "off")
    one = queues.build_cron(r, [0, 1], "fb", env={queues.ARCHIVE_SCHEDULE_ENV: "off"})
    two = queues.build_cron(r, [0, 1], "fb", env={queues.ARCHIVE_SCHEDULE_ENV: "off"})
    two.name = "second"
    names = sorted(j.name for j in one.get_jobs())
    assert names == ["fb:audit:p0", "fb:audit:p1", "fb:exports:cleanup"]
    assert {j.name: j.interval for j in one.get_jobs()}["fb:audit:p0"] == 3600
    assert len(one.enqueue_jobs()) == 3  # interval jobs run at once, then every interval
    assert two.enqueue_jobs() == []  # the other keeps time only
    audit_queue = queues.queue(r, queues.AUDIT, "fb")
    assert audit_queue.count == 2
    job = audit_queue.jobs[0]
    assert job.func_name == "jobs.audit.audit_partition" and job.kwargs["namespace"] == "fb"
    assert job.retries_left == 3 and job.retry_intervals == [10, 60, 300]  # the cron's Retry
    one.save()  # the scheduler's record in Redis (rq-dashboard / monitoring): JSON-clean
    json.loads(r.hget(one.key, "cron_jobs"))
    one.release_lock()
    for job in two.get_jobs():  # due again
        job.next_enqueue_time = job.latest_enqueue_time = None
    assert len(two.enqueue_jobs()) == 3  # the lock was free: it enqueues now
    assert r.get(Keys(0, "fb").cron_lock) == b"second"


def test_schedules_follow_the_settings(r):
    env = {queues.ARCHIVE_SCHEDULE_ENV: "*/5 * * * *", queues.AUDIT_SCHEDULE_ENV: "off",
           queues.RETRY_ENV: "0"}  # fmt: skip
    cron = queues.build_cron(r, [0], "fb", env=env)
    jobs = {j.name: j for j in cron.get_jobs()}
    assert set(jobs) == {"fb:archive:p0", "fb:exports:cleanup"}
    archive = jobs["fb:archive:p0"]
    assert archive.cron == "*/5 * * * *" and archive.queue_name == "fb.archive"
    assert archive.func_name == "jobs.archive.archive_partition"
    assert archive.retry is None and archive.next_enqueue_time is not None


def test_backoff_and_the_failed_registry_with_a_real_job_worker(redis_client, redis_url,
                                                                tmp_path):  # fmt: skip
    """The same through ``python -m jobs``: RQ's scheduler (started by the worker) enqueues
    each retry when its delay is over; out of retries, the job stays in the failed registry."""
    import os

    from tests.jobs.jobs_helpers import JobWorker

    jobs = JobWorker(redis_url, {}, tmp_path / "jobs.log")
    rq = queues.connect(redis_url)
    old = os.environ.get(queues.RETRY_ENV)
    os.environ[queues.RETRY_ENV] = "1,1"
    try:
        job = queues.enqueue(rq, queues.AUDIT, "tests.jobs.jobs_helpers.always_fails",
                             {"note": "e2e"}, "fb")  # fmt: skip
        assert jobs.wait(job, timeout=60) == "failed", jobs.log()
        failed = FailedJobRegistry(queues.queue(rq, queues.AUDIT, "fb").name, connection=rq)
        assert failed.get_job_ids() == [job.id]
        job.refresh()
        assert job.retries_left == 0
        assert "this job always fails e2e" in job.latest_result().exc_string
        log = jobs.log()
        assert log.count("fb.audit: tests.jobs.jobs_helpers.always_fails(") == 3, log
        assert "scheduled for retry" in log and ", 0 remaining" in log  # RQ's back-off
    finally:
        if old is None:
            os.environ.pop(queues.RETRY_ENV, None)
        else:
            os.environ[queues.RETRY_ENV] = old
        assert jobs.stop() == 0, jobs.log()
