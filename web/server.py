"""The HTTP server's own edge: gunicorn's gevent worker, hardened (``-k web.server.Worker``).

Why a subclass: some answers never reach Flask. A request line or headers gunicorn cannot parse
(or that are too long, 414/431) are answered by gunicorn itself with an HTML page that quotes the
input back; here they are short JSON errors that quote nothing. And gunicorn holds a half-sent
request for as long as the client likes, so a few thousand of them from one address would take
every connection slot: here each address has a connection cap, and a request must arrive whole
within a header timeout (a WebSocket lifts it once upgraded, ``web.ws``).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from typing import Any

from gunicorn.http import errors
from gunicorn.workers.ggevent import GeventWorker


def _setting(name: str, default: str) -> float:
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise SystemExit(f"fairbook: {name} must be a finite number >= 0, got {raw[:40]!r}")
    return value


#: open connections one client address may hold (browsers use ~6 per host); 0 = no cap (behind
#: a reverse proxy every client has the proxy's address: cap per client at the proxy instead)
MAX_CONNECTIONS_PER_IP = int(_setting("FAIRBOOK_MAX_CONNECTIONS_PER_IP", "256"))
#: seconds a request (line, headers and body) may take to arrive
HEADER_TIMEOUT_S = _setting("FAIRBOOK_HEADER_TIMEOUT", "10")

#: (exception types, status, reason, code, message) for requests gunicorn refuses to parse
_REFUSALS: list[tuple[tuple[type[BaseException], ...], int, str, str, str]] = [
    ((errors.LimitRequestLine,), 414, "URI Too Long", "uri_too_long",
     "the request line is too long"),
    ((errors.LimitRequestHeaders,), 431, "Request Header Fields Too Large",
     "headers_too_large", "the request headers are too large"),
    ((errors.ExpectationFailed,), 417, "Expectation Failed", "expectation_failed",
     "the Expect header is not supported"),
    ((errors.ForbiddenProxyRequest,), 403, "Forbidden", "forbidden", "request forbidden"),
    ((errors.ParseException, errors.NoMoreData), 400, "Bad Request", "bad_request",
     "malformed HTTP request"),
]  # fmt: skip


def error_bytes(status: int, reason: str, code: str, message: str, retry_after: int = 0) -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON error body; the connection closes."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        + (f"Retry-After: {retry_after}\r\n" if retry_after else "")
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Worker(GeventWorker):
    """gunicorn's gevent worker with per-address connection caps, a header timeout and JSON
    errors. The counts are per worker process (one per spare core by default)."""

    def init_process(self) -> None:
        self.connections_per_ip: Counter[str] = Counter()
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        ip = addr[0] if isinstance(addr, tuple) and addr else ""
        if MAX_CONNECTIONS_PER_IP and self.connections_per_ip[ip] >= MAX_CONNECTIONS_PER_IP:
            refusal = error_bytes(429, "Too Many Requests", "too_many_connections",
                                  "too many open connections from this address", 1)  # fmt: skip
            self._send(client, refusal)
            client.close()
            return
        self.connections_per_ip[ip] += 1
        try:
            client.settimeout(HEADER_TIMEOUT_S)
            super().handle(listener, client, addr)
        finally:
            self.connections_per_ip[ip] -= 1
            if not self.connections_per_ip[ip]:
                del self.connections_per_ip[ip]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        for types, status, reason, code, message in _REFUSALS:
            if isinstance(exc, types) and not isinstance(
                exc, (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)
            ):
                self.log.warning("refused a request from %s: %s", _ip(addr), type(exc).__name__)
                self._send(client, error_bytes(status, reason, code, message))
                return
        if isinstance(exc, TimeoutError | OSError):  # a client too slow, or gone
            self.log.info("dropped a connection from %s: %s", _ip(addr), type(exc).__name__)
            return
        self.log.exception("error handling a request from %s", _ip(addr))
        self._send(client, error_bytes(500, "Internal Server Error", "internal_error",
                                       "internal error"))  # fmt: skip

    @staticmethod
    def _send(client: Any, data: bytes) -> None:
        """Send a final answer, then read what the client still sends for a moment before the
        connection closes: closing on unread input resets it, and the client loses the answer."""
        try:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            client.settimeout(0.5)
            for _ in range(64):
                if not client.recv(65536):
                    break
        except OSError:
            pass


def _ip(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else "?"
