"""``devserver.py`` (what ``scripts/run`` runs) starts the job worker beside web and worker: its
RQ worker registers on Fairbook's queues, its schedules enqueue an audit and an archive run at
once, and Ctrl-C (SIGINT) stops every process, the job worker's cron child included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from rq import Worker

from jobs import audit, queues
from protocol.keys import Keys
from redis_server import free_port, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _tree(pid: int) -> set[int]:
    found = {pid}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return set()
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found |= _tree(int(child))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_devserver_runs_the_job_worker_and_ctrl_c_stops_it(tmp_path):
    port, redis_port = free_port(), free_port()
    env = {**os.environ, "PORT": str(port), "FAIRBOOK_REDIS_PORT": str(redis_port),
           "FAIRBOOK_DATA_DIR": str(tmp_path / "var"), "FAIRBOOK_ARCHIVE": str(tmp_path / "a"),
           "FAIRBOOK_EXPORTS": str(tmp_path / "e"), "PYTHONPATH": str(ROOT),
           "FAIRBOOK_GUNICORN_ARGS": "-k web.server.Worker -w 1"}  # fmt: skip
    env.pop("REDIS_URL", None)
    log = open(tmp_path / "devserver.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "devserver.py"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    client = redis.Redis(port=redis_port, socket_timeout=5)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, 90,
                   "devserver", alive=lambda: proc.poll() is None)  # fmt: skip
        names = [q.name for q in queues.queues(client)]

        def registered():
            return [w for w in Worker.all(connection=client) if w.queue_names() == names]

        wait_until(registered, 60, "the job worker's RQ worker", alive=lambda: proc.poll() is None)
        # the schedules ran at start-up: an audit of partition 0 (nothing applied yet: ok)
        found = wait_until(lambda: audit.latest(client, Keys(0)).get(0), 60, "a scheduled audit")
        assert found["ok"] is True, found
        archive = queues.queue(client, queues.ARCHIVE)  # and an archive run of partition 0
        done = wait_until(lambda: archive.finished_job_registry.get_job_ids(), 60, "archiving")
        assert archive.fetch_job(done[0]).return_value()["partition"] == 0
        pids = _tree(proc.pid)
        lines = [_cmdline(p) for p in pids]
        assert any("-m jobs" in c and c.rstrip().endswith(" cron") for c in lines), lines
        assert any("-m jobs" in c and not c.rstrip().endswith(" cron") for c in lines), lines
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        left = [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]  # fmt: skip
        assert left == [], [_cmdline(p) for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        client.close()
        print((tmp_path / "devserver.log").read_text(errors="replace")[-3000:])
