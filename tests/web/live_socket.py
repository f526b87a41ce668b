"""A WebSocket client for tests against a live stack: JSON messages, waits with deadlines."""

from __future__ import annotations

import json
import time
from typing import Any

import websocket

from bench.stack import Stack


class LiveSocket:
    """One ``/ws`` connection to ``stack``."""

    def __init__(self, stack: Stack) -> None:
        self.ws = websocket.create_connection(stack.url.replace("http", "ws", 1) + "/ws",
                                              timeout=10)  # fmt: skip

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def until(self, pred, timeout: float = 10.0) -> dict[str, Any]:
        """The first message ``pred`` accepts (the others are skipped) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if pred(msg):
                return msg
        raise AssertionError("expected message did not arrive")

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every message of the next ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(min(left, 0.5))
            try:
                out.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                continue
        return out

    def frames_until_close(self, timeout: float) -> tuple[list[dict[str, Any]], int, str, float]:
        """Every data frame up to the close frame, its code and reason, and when it came."""
        seen: list[dict[str, Any]] = []
        self.ws.settimeout(timeout)
        while True:
            opcode, frame = self.ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
                return seen, code, frame.data[2:].decode(), time.monotonic()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                seen.append(json.loads(frame.data))

    def close(self) -> None:
        self.ws.close()
