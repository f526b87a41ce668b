"""Raw clients of Binance's WebSocket API and of ``/api/v3`` for tests against a live stack."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlencode

import requests
import websocket
from cryptography.hazmat.primitives import serialization

from bench.stack import Stack
from redis_server import wait_until
from tests.web.live_socket import LiveSocket
from web.app import create_app
from web.binance.keys import HMAC, create_api_key, vault_of
from web.ws import LockedSocket


def key_factory(stack: Stack, server_key: str):
    """``make(kind, permissions, account_id=None, funds=True)`` -> an issued key dict (with
    ``account_id``), made in-process with the stack's server key (no CLI round trip)."""
    app = create_app({"REDIS_URL": stack.redis_url, "TESTING": True,
                      "FAIRBOOK_SECRET_KEY_BYTES": base64.urlsafe_b64decode(server_key)})
    st = app.extensions["fairbook"]

    def make(kind: str = HMAC, permissions: tuple[str, ...] = ("read", "trade"),
             account_id: str | None = None, funds: bool = True) -> dict[str, Any]:  # fmt: skip
        if account_id is None:
            account_id = stack.create_account("ws")["account_id"]
            if funds:
                stack.fund(account_id, amount=1000000)
                key = stack.namespace.keys(0).balances(account_id)
                wait_until(lambda: st.redis.hlen(key) >= 2, 20, "deposits applied")
        with app.app_context():
            return create_api_key(st.redis, vault_of(app), account_id,
                                  st.namespace.global_keys, kind=kind,
                                  permissions=permissions)  # fmt: skip

    make.app = app  # type: ignore[attr-defined]
    return make


def _text(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def sign(issued: dict[str, Any], payload: str) -> str:
    if issued["kind"] == HMAC:
        return hmac.new(issued["secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()
    private = serialization.load_pem_private_key(issued["private_key"].encode(), password=None)
    return base64.b64encode(private.sign(payload.encode())).decode()  # type: ignore[union-attr]


class WsApi(LiveSocket):
    """One ``/ws-api/v3`` connection signing with ``issued`` (Binance's payload rules); its
    :meth:`send` takes a method and params (``LiveSocket.send`` sends a raw message)."""

    def __init__(self, stack: Stack, issued: dict[str, Any] | None = None, query: str = "") -> None:
        super().__init__(stack, "/ws-api/v3" + query)
        self.issued = issued
        self._ids = 0
        self.events: list[dict[str, Any]] = []  # user data events seen while waiting for replies

    def signed(self, params: dict[str, Any] | None = None, issued: dict[str, Any] | None = None,
               ts: int | None = None) -> dict[str, Any]:  # fmt: skip
        issued = issued or self.issued
        assert issued is not None
        out = dict(params or {})
        out.setdefault("apiKey", issued["api_key"])
        out.setdefault("timestamp", ts if ts is not None else int(time.time() * 1000))
        payload = "&".join(f"{k}={_text(v)}" for k, v in sorted(out.items()))
        out["signature"] = sign(issued, payload)
        return out

    def send(self, method: str, params: dict[str, Any] | None = None, signed: bool = False,
             msg_id: Any = None) -> Any:  # fmt: skip
        if msg_id is None:
            self._ids += 1
            msg_id = self._ids
        body: dict[str, Any] = {"id": msg_id, "method": method}
        if signed:
            body["params"] = self.signed(params)
        elif params is not None:
            body["params"] = params
        self.ws.send(json.dumps(body))
        return msg_id

    def reply(self, msg_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The reply to ``msg_id`` (events on the way are kept in :attr:`events`)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.05, deadline - time.monotonic()))
            if "event" in msg and "status" not in msg:
                self.events.append(msg)
                continue
            if msg.get("id") == msg_id:
                return msg
            raise AssertionError(f"unexpected frame {msg}")

    def call(self, method: str, params: dict[str, Any] | None = None, signed: bool = False
             ) -> dict[str, Any]:  # fmt: skip
        return self.reply(self.send(method, params, signed))

    def event(self, pred, timeout: float = 10.0) -> dict[str, Any]:
        """The first user data event ``pred`` accepts (kept ones first)."""
        for i, msg in enumerate(self.events):
            if pred(msg["event"]):
                del self.events[i]
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.recv(max(0.05, deadline - time.monotonic()))
            except websocket.WebSocketTimeoutException:
                break
            if "event" in msg and pred(msg["event"]):
                return msg
            self.events.append(msg)
        raise AssertionError("expected event did not arrive")



def rest(stack: Stack, issued: dict[str, Any], method: str, path: str, **params: Any) -> Any:
    """A signed ``/api/v3`` request; its JSON (asserting 200)."""
    params["timestamp"] = int(time.time() * 1000)
    text = urlencode(params)
    url = f"{stack.url}/api/v3/{path}?{text}&signature={sign(issued, text)}"
    resp = requests.request(method, url, headers={"X-MBX-APIKEY": issued["api_key"]}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


class FakeSocket:
    """A flask-sock socket for in-process ``serve`` tests: nothing to receive; records the
    close code and reason the server's writer sends."""

    def __init__(self) -> None:
        self._ends = socket.socketpair()
        self.sock = LockedSocket(self._ends[0])
        self.closed: tuple[Any, Any] | None = None
        self.connected = True
        self.event = threading.Event()

    def receive(self, timeout: float | None = None) -> None:
        self.event.wait(timeout)
        return None

    def close(self, code: Any = None, reason: Any = None) -> None:
        self.closed = (code, reason)
        for end in self._ends:
            end.close()
