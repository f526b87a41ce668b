"""A WebSocket client for tests against a live stack: JSON messages, waits with deadlines.

One client for the native ``/ws`` and the Binance paths (``/ws/<streams>``, ``/stream``,
``/ws-api/v3``); the suites' own clients add their protocol's requests on top of it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import websocket

from bench.stack import Stack


class LiveSocket:
    """One connection to ``path`` of ``stack``; ``seen`` keeps every message :meth:`until` read."""

    def __init__(self, stack: Stack, path: str = "/ws", **kwargs: Any) -> None:
        self.ws = websocket.create_connection(stack.url.replace("http", "ws", 1) + path,
                                              timeout=10, **kwargs)  # fmt: skip
        self.seen: list[Any] = []

    def send(self, msg: Any) -> None:
        """A JSON message (a ``str`` is sent as it is: hostile and malformed input)."""
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def recv(self, timeout: float = 10.0) -> Any:
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def until(self, pred, timeout: float = 10.0) -> Any:
        """The first message ``pred`` accepts (the others are skipped) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:  # short reads: server pings would otherwise keep one read alive forever
                msg = self.recv(min(left, 0.5))
            except websocket.WebSocketTimeoutException:
                continue
            self.seen.append(msg)
            if pred(msg):
                return msg
        raise AssertionError(f"expected message did not arrive; got {self.seen[-5:]}")

    def drain(self, seconds: float) -> list[Any]:
        """Every message of the next ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.recv(min(left, 0.5)))
            except websocket.WebSocketTimeoutException:
                continue
        return out

    def frames_until_close(self, timeout: float) -> tuple[list[Any], int, str, float]:
        """Every data frame up to the server's close frame, its code and reason, and when it
        came; read frame by frame with ``recv_frame``.

        Why not ``recv_data_frame``: it answers a close frame with one of its own *before*
        returning it, and the server may already have torn the connection down (it does not wait
        for the answer; data it never read, such as messages sent past a cap, makes its kernel
        reset the connection): that send then fails with EPIPE although the close frame arrived.
        """
        seen: list[Any] = []
        self.ws.settimeout(timeout)
        while True:
            frame = self.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
                return seen, code, frame.data[2:].decode(), time.monotonic()
            if frame.opcode == websocket.ABNF.OPCODE_TEXT:
                seen.append(json.loads(frame.data))
            elif frame.opcode == websocket.ABNF.OPCODE_PING:  # the server's keepalive
                try:
                    self.ws.pong(frame.data)
                except (OSError, websocket.WebSocketConnectionClosedException):
                    pass  # the connection is going: the close frame may still be buffered

    def close_frame(self, timeout: float = 10.0) -> tuple[int, str]:
        """The server's close frame as (code, reason), data frames skipped."""
        _, code, reason, _ = self.frames_until_close(timeout)
        return code, reason

    def close(self) -> None:
        self.ws.close()


def wait_idle(stack: Stack, timeout: float = 20.0) -> None:
    """Until the worker applied every journaled command of partition 0."""
    client = stack.redis()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = client.xrevrange("fb:{p0}:in", count=1)
            if not last or client.get("fb:{p0}:applied") == last[0][0]:
                return
            time.sleep(0.05)
        raise AssertionError("worker did not catch up")
    finally:
        client.close()
