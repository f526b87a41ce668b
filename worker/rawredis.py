"""A plain socket speaking RESP, parsed by hiredis: Redis without redis-py's per-call overhead.

redis-py spends tens of microseconds of Python per command (connection pool checkout with a
readiness poll, retry wrapper, response callbacks). That is noise for an admin call but most
of the cost on the hot paths: the worker's batch commit (thousands of pre-encoded commands), the
web's order submit (one EVAL per HTTP request) and its reply inbox (a pub/sub reader). Under
gevent the socket module is monkey-patched, so these connections cooperate with other greenlets.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from urllib.parse import quote

import hiredis
import redis
import redis.connection


def command(args: Sequence[str | bytes | int]) -> bytes:
    """One command in RESP (byte lengths, so any text is framed correctly)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def raise_errors(replies: list[object]) -> list[object]:
    """``replies`` unchanged, unless one is an error reply: then the first is raised."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
    return replies


#: What :meth:`RawConnection.next_or_idle` returns when the socket timeout passed with no data.
IDLE = object()


def client_url(client: redis.Redis) -> str:
    """A ``redis://`` URL for the server a redis-py client talks to (TCP only)."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        raise ValueError("raw connections need TCP; this client uses a unix socket")
    auth = ""
    if kw.get("password"):
        auth = f"{quote(kw.get('username') or '')}:{quote(kw['password'])}@"
    return f"redis://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


class RawConnection:
    """One connection; errors surface as redis-py's exception types, so callers that already
    handle ``redis.ConnectionError`` (the worker's recovery loop, the web's 503) need nothing new.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        connect_timeout: float | None = None,
        buffer_size: int = 1 << 20,  # a 1,000-entry XREAD reply is ~200 KB
        kernel_timeout: bool = False,
    ) -> None:
        """``kernel_timeout``: enforce ``timeout`` with SO_RCVTIMEO/SO_SNDTIMEO on a socket that
        Python sees as blocking. With a Python-level timeout CPython polls before every send
        and recv: at live flow that was six extra system calls per batch in the worker. For
        threads only: gevent's sockets keep their timeouts in the hub and ignore the kernel's.
        """
        kwargs = redis.connection.parse_url(url)
        self.host = kwargs.get("host", "localhost")
        self.port = int(kwargs.get("port", 6379))
        self.db = int(kwargs.get("db", 0) or 0)
        self.username = kwargs.get("username")
        self.password = kwargs.get("password")
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.kernel_timeout = kernel_timeout
        self.sock: socket.socket | None = None
        self.reader = hiredis.Reader()
        # recv_into one reused buffer: sock.recv(n) allocates n bytes per call (an mmap/munmap
        # pair for big n), which showed up as a fifth of the commit thread's CPU
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)

    def connect(self) -> None:
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:  # the worker's loop recovers from redis.ConnectionError only
            raise redis.ConnectionError(f"cannot connect to Redis: {exc}") from exc
        if self.kernel_timeout:
            sock.settimeout(None)
            seconds = int(self.timeout)
            timeval = struct.pack("ll", seconds, int((self.timeout - seconds) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        else:
            sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.reader = hiredis.Reader()
        if self.password:
            auth = ["AUTH", self.username, self.password] if self.username else [
                "AUTH", self.password]  # fmt: skip
            self.call(auth)
        if self.db:
            self.call(["SELECT", str(self.db)])

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis connection: {exc}") from exc

    def _recv(self, size: int = 0, idle_ok: bool = False) -> int:
        """Receive up to ``size`` bytes (0: a bufferful) into ``self.buffer``; returns how many.

        A dead or closed connection is a redis.ConnectionError, a timeout redis.TimeoutError
        (with ``idle_ok``: 0, and the connection stays open).
        """
        assert self.sock is not None
        try:
            n = self.sock.recv_into(self.view, size)
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO passed
            if idle_ok:
                return 0
            self.close()
            raise redis.TimeoutError(f"Redis connection: {exc}") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis connection: {exc}") from exc
        if not n:
            self.close()
            raise redis.ConnectionError("Redis closed the connection")
        return n

    def read(self, count: int) -> list[object]:
        """The next ``count`` replies (error replies are returned, not raised)."""
        assert self.sock is not None
        out: list[object] = []
        reader = self.reader
        while len(out) < count:
            reply = reader.gets()
            if reply is False:
                reader.feed(self.buffer, 0, self._recv())
                continue
            out.append(reply)
        return out

    def next_or_idle(self) -> object:
        """The next reply, or :data:`IDLE` if none came within the socket timeout; unlike
        :meth:`read`, a quiet connection stays open (a pub/sub reader pings it instead)."""
        assert self.sock is not None
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            n = self._recv(idle_ok=True)
            if not n:
                return IDLE
            reader.feed(self.buffer, 0, n)
            reply = reader.gets()
        return reply

    def read_prefix(self, prefix: bytes) -> bool:
        """Read ``len(prefix)`` bytes; True if they equal ``prefix`` (the rest stays buffered).

        Thousands of ``+QUEUED`` replies are checked by one comparison instead of being parsed
        one by one. On a mismatch everything read is handed to the parser for :meth:`read`.
        """
        assert self.sock is not None
        buf = bytearray()
        need = len(prefix)
        while len(buf) < need:
            n = self._recv(min(max(need - len(buf), 1 << 16), len(self.buffer)))
            buf += self.view[:n]
        if buf[:need] == prefix:
            if len(buf) > need:
                self.reader.feed(bytes(buf[need:]))
            return True
        self.reader.feed(bytes(buf))
        return False

    def call(self, args: Sequence[str | bytes | int]) -> object:
        self.send(command(args))
        (reply,) = raise_errors(self.read(1))
        return reply


class RawPool:
    """Idle :class:`RawConnection` objects for request handlers, one checked out per call.

    A connection that failed in any way is closed and dropped, never returned: a half-read
    reply must not be taken for the next caller's answer.
    """

    def __init__(
        self, url: str, timeout: float, connect_timeout: float = 2.0, max_idle: int = 64
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[RawConnection] = []

    def pipeline(self, commands: list[bytes], count: int) -> list[object]:
        """Send pre-encoded ``commands`` in one write; return their ``count`` replies."""
        try:
            conn = self.idle.pop()
        except IndexError:
            # replies here are one order or a page of them: a small buffer per connection
            conn = RawConnection(self.url, self.timeout, self.connect_timeout, buffer_size=1 << 16)
        try:
            conn.send(b"".join(commands))
            replies = conn.read(count)
        except BaseException:
            conn.close()
            raise
        if conn.connected and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        return replies

    def call(self, args: Sequence[str | bytes | int]) -> object:
        """One command; an error reply is raised as redis.ResponseError."""
        (reply,) = raise_errors(self.pipeline([command(args)], 1))
        return reply

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
