"""WebSocket API (``/ws``, flask-sock) and the browser trading page (``/``).

Why this shape: each socket gets a bounded outbound queue drained by its own writer (a greenlet
under gevent, a thread under gthread), so the one pub/sub reader of the process (web.hub.Hub)
only ever does non-blocking puts: a slow client fills its own queue and is closed with 4008,
nobody else waits for it. Frames are pre-encoded once per message by the hub; the writer sends
them raw (uncompressed: per-socket deflate would multiply the CPU cost of every fan-out).

Client ops: ``subscribe`` / ``unsubscribe`` (``channels``), ``ping``, ``auth`` (``api_key``).
Every reply is JSON with a ``type``; errors are ``{"type": "error", "code", "message"}`` and
never close the socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, request, send_from_directory
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from engine.validation import shown
from web.app import config_float, error_response
from web.hub import ChannelError, Hub, frame
from web.limits import RateLimited, SocketCaps, count_request, socket_caps

log = logging.getLogger("fairbook.ws")

STATIC_DIR = Path(__file__).with_name("static")
MAX_CHANNELS_PER_MESSAGE = 100
MAX_CHANNELS_PER_SOCKET = 200
SLOW_CONSUMER = 4008
POLICY_VIOLATION = 1008  # RFC 6455: the socket's API key was revoked, or has too many sockets
INTERNAL_ERROR = 1011  # RFC 6455: the server failed to handle something for this socket
#: Retry-After (seconds) of a refused upgrade: a socket of the address must close first
SOCKET_CAP_RETRY_AFTER = 5
_WS_IP = "fairbook.ws_ip"  # environ: the address whose socket count this request holds


OPS = ("subscribe", "unsubscribe", "ping", "auth")

#: name -> (default, help); read from app.config, then the environment.
SETTINGS: dict[str, tuple[float, str]] = {
    "FAIRBOOK_WS_QUEUE": (1000, "frames queued per socket before it is closed as slow"),
    "FAIRBOOK_WS_PING_INTERVAL": (20, "seconds between server pings; no pong by the next: closed"),
    "FAIRBOOK_WS_CLOSE_TIMEOUT": (5, "seconds a slow consumer gets to take its close frame"),
    "FAIRBOOK_WS_SNDBUF": (0, "SO_SNDBUF of WebSocket sockets in bytes (0 = kernel default)"),
    "FAIRBOOK_WS_MAX_MESSAGE": (65536, "largest client message (longer: an error reply; past 16x "
                                "it the socket is closed 1009)"),
    "FAIRBOOK_BINANCE_WS_LISTEN_KEY_CHECK": (60, "seconds at most between a listen-key stream's "
                                             "checks of its listen key and API key"),
    # Binance's market streams (web.binance.streams), Binance's own figures
    "FAIRBOOK_BINANCE_WS_MAX_STREAMS": (1024, "streams one Binance stream socket may listen to"),
    "FAIRBOOK_BINANCE_WS_MESSAGES_PER_S": (5, "messages a Binance stream socket may send per "
                                           "second (more: closed 1008; 0 = no cap)"),
}


def is_websocket_path(path: str) -> bool:
    """The native ``/ws`` and the Binance-compatible ``/ws/<streams>``, ``/stream[/<streams>]``,
    ``/ws-api/v3``: every upgrade gets the same handshake checks, socket caps and socket set-up."""
    return path in ("/ws", "/stream") or path.startswith(("/ws/", "/ws-api/", "/stream/"))


def setting(name: str) -> float:
    """A numeric WebSocket setting from app.config or the environment (fail loudly)."""
    return config_float(current_app.config, name, SETTINGS[name][0])


C = TypeVar("C", bound="Connection")


@contextlib.contextmanager
def serving(ws: Any, make: Callable[..., C]) -> Iterator[C]:
    """One socket's set-up and teardown, shared by every WebSocket route: the send lock,
    ``make(ws, hub, queue_limit=, close_timeout=, max_message=, caps=)`` (a Connection) with
    this app's settings, its writer; at the end (a closed socket is no error) it leaves the
    hub, gives back its place in the socket caps, closes and lets the writer finish."""
    hub = get_hub()
    if not isinstance(ws.sock, LockedSocket):  # werkzeug dev server: wrap late
        ws.sock = LockedSocket(ws.sock)
    conn = make(ws, hub, queue_limit=max(1, int(setting("FAIRBOOK_WS_QUEUE"))),
                close_timeout=setting("FAIRBOOK_WS_CLOSE_TIMEOUT"),
                max_message=int(setting("FAIRBOOK_WS_MAX_MESSAGE")),
                caps=socket_caps(current_app))  # fmt: skip
    conn.start()
    try:
        yield conn
    except ConnectionClosed:
        pass
    finally:
        hub.remove(conn)
        conn.release()
        conn.close()
        conn.done.wait(1.0)


class LockedSocket:
    """The client socket with one send lock and ``sendall`` semantics.

    Why: simple-websocket's own reader thread answers pings with ``sock.send`` while our writer
    sends frames; under gevent ``send`` may be partial. Both go through here, so frames are
    never interleaved or cut.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.send(data)

    def abort(self) -> None:
        """Tear the TCP connection down now (wakes a writer blocked in send)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Connection:
    """One client socket: its subscriptions, account, outbound queue and writer."""

    def __init__(
        self, ws: Any, hub: Hub, queue_limit: int, close_timeout: float, max_message: int = 0,
        caps: SocketCaps | None = None,
    ) -> None:  # fmt: skip
        self.ws = ws
        self.caps = caps or SocketCaps()
        #: the account whose socket count this socket holds (released when it ends)
        self.counted: str | None = None
        self.max_message = max_message
        self.hub = hub
        self.account: str | None = None
        #: sha256 of every key this socket authenticated with: revoking any of them closes it
        self.key_hashes: set[str] = set()
        self.channels: set[str] = set()
        # a deque + Event rather than queue.Queue: gevent swaps queue.Queue for its own class,
        # and a deque's append/popleft are atomic in both models
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit
        self.wakeup = threading.Event()
        self.closing: tuple[int | None, str] | None = None
        self.close_timeout = close_timeout
        self.dying = False
        self.done = threading.Event()
        self._seq: dict[str, int] = {}
        self._writer = threading.Thread(target=self._write_loop, name="ws-writer", daemon=True)

    def start(self) -> None:
        self._writer.start()

    # -- hub interface --------------------------------------------------------------------------
    def offer(self, frame: bytes) -> bool:
        if self.dying:
            return True  # already closing: drop quietly
        if len(self.queue) >= self.queue_limit:
            return False
        self.queue.append(frame)
        self.wakeup.set()
        return True

    def next_sequence(self, channel: str) -> int:
        seq = self._seq.get(channel, 0) + 1
        self._seq[channel] = seq
        return seq

    def slow_consumer(self) -> None:
        log.warning("closing slow consumer (queue of %s frames full)", self.queue_limit)
        self.close(SLOW_CONSUMER, "slow consumer")

    def revoked(self) -> None:
        self.close(POLICY_VIOLATION, "api key revoked")

    def failed(self) -> None:
        """The hub could not hand this socket a message (a bug): RFC 6455 1011, not 4008."""
        self.close(INTERNAL_ERROR, "internal error")

    # -- replies --------------------------------------------------------------------------------
    def reply(self, body: dict[str, Any]) -> None:
        if not self.offer(frame(body)):
            self.hub.remove(self)
            self.slow_consumer()

    def error(self, code: str, message: str, msg_id: Any = None) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if msg_id is not None:
            body["id"] = msg_id
        self.reply(body)

    # -- closing --------------------------------------------------------------------------------
    def close(self, code: int | None = None, reason: str = "") -> None:
        """Drop what is queued, send a close frame (if ``code``), abort if it cannot be sent."""
        if self.dying:
            return
        self.dying = True
        self.queue.clear()
        self.closing = (code, reason)
        self.wakeup.set()
        if code:
            timer = threading.Timer(self.close_timeout, self._abort)
            timer.daemon = True
            timer.start()

    def release(self) -> None:
        """Give back this socket's place in its account's count (once; the socket ended)."""
        if self.counted is not None:
            self.caps.release_key(self.counted)
            self.counted = None

    def _abort(self) -> None:
        if not self.done.is_set():
            sock = self.ws.sock
            if isinstance(sock, LockedSocket):
                sock.abort()

    def _write_loop(self) -> None:
        """Drain the queue: several frames per send, close frames last."""
        frames, popleft, wakeup = self.queue, self.queue.popleft, self.wakeup
        sock = self.ws.sock
        try:
            while self.closing is None:
                if not frames:
                    wakeup.wait()
                    wakeup.clear()  # then re-check: an append after this sets it again
                    continue
                parts = []
                size = 0
                while frames and size < 262144:
                    frame = popleft()
                    parts.append(frame)
                    size += len(frame)
                sock.send(parts[0] if len(parts) == 1 else b"".join(parts))
            code, reason = self.closing
            if code:
                try:
                    self.ws.close(code, reason)
                except ConnectionClosed:
                    pass
        except OSError:
            pass
        finally:
            self.ws.connected = False
            self.done.set()
            self.ws.event.set()  # wake the handler's receive()

    # -- client messages ------------------------------------------------------------------------
    def handle(self, raw: str | bytes) -> None:
        """One client message; whatever it holds, the answer is a JSON frame on this socket."""
        if self.max_message and len(raw) > self.max_message:
            self.error("message_too_big",
                       f"a message may hold at most {self.max_message} characters")  # fmt: skip
            return
        try:
            self._handle(raw)
        except Exception:  # a bug must cost this message an error reply, not the socket
            log.exception("websocket message failed")
            self.error("internal_error", "the message could not be handled")

    def _handle(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            self.error("malformed_json", f"message is not valid JSON{where}")
            return
        if not isinstance(msg, dict):
            self.error("invalid_message", "a message must be a JSON object with an op")
            return
        msg_id = msg.get("id")
        if msg_id is not None and not _valid_id(msg_id):
            self.error("invalid_message", "id must be an integer or a short printable string")
            return
        op = msg.get("op")
        if op not in OPS:
            self.error("unknown_op", f"unknown op {shown(op)}; use one of {', '.join(OPS)}", msg_id)
            return
        try:
            getattr(self, f"op_{op}")(msg, msg_id)
        except ChannelError as exc:
            self.error(exc.code, exc.message, msg_id)
        except redis.exceptions.RedisError as exc:
            log.warning("redis unavailable for a ws op: %s", exc)
            self.error("unavailable", "market data is unavailable, retry later", msg_id)

    def _channels(self, msg: dict[str, Any]) -> list[str]:
        channels = msg.get("channels")
        if not isinstance(channels, list) or not channels:
            raise ChannelError("invalid_message", "channels must be a non-empty list of strings")
        if len(channels) > MAX_CHANNELS_PER_MESSAGE:
            raise ChannelError(
                "too_many_channels", f"at most {MAX_CHANNELS_PER_MESSAGE} channels per message"
            )
        for channel in channels:
            self.hub.parse_channel(channel)
        return list(dict.fromkeys(channels))

    def op_subscribe(self, msg: dict[str, Any], msg_id: Any) -> None:
        channels = self._channels(msg)
        # counted like a request of this address: a first subscriber of a symbol reads its
        # book from Redis, so a subscribe/unsubscribe loop must not be free
        try:
            count_request()
        except RateLimited as exc:
            self.error("rate_limited", exc.message, msg_id)
            return
        if "orders" in channels and self.account is None:
            raise ChannelError("auth_required", "send an auth op before subscribing to orders")
        if len(self.channels | set(channels)) > MAX_CHANNELS_PER_SOCKET:
            raise ChannelError(
                "too_many_channels", f"at most {MAX_CHANNELS_PER_SOCKET} channels per socket"
            )
        if not self.hub.wait_ready(5.0):
            self.error("unavailable", "market data is unavailable, retry later", msg_id)
            return
        ack: dict[str, Any] = {"type": "subscribed", "channels": channels}
        if msg_id is not None:
            ack["id"] = msg_id
        self.reply(ack)
        for channel in channels:
            if channel in self.channels:  # resubscribe = fresh snapshot (gap recovery)
                self.hub.unsubscribe(self, channel)
                self._seq.pop(channel, None)
            self.hub.subscribe(self, channel)
            self.channels.add(channel)

    def op_unsubscribe(self, msg: dict[str, Any], msg_id: Any) -> None:
        channels = self._channels(msg)
        for channel in channels:
            self.hub.unsubscribe(self, channel)
            self.channels.discard(channel)
        ack: dict[str, Any] = {"type": "unsubscribed", "channels": channels}
        if msg_id is not None:
            ack["id"] = msg_id
        self.reply(ack)

    def op_ping(self, msg: dict[str, Any], msg_id: Any) -> None:
        body: dict[str, Any] = {"type": "pong", "ts": int(time.time() * 1000)}
        if msg_id is not None:
            body["id"] = msg_id
        self.reply(body)

    def op_auth(self, msg: dict[str, Any], msg_id: Any) -> None:
        from web.accounts import hash_key, lookup_account_counted, valid_api_key

        api_key = msg.get("api_key")
        if not valid_api_key(api_key):
            self.error("unauthorized", "api_key must be a non-empty printable string", msg_id)
            return
        # registered with the hub before the lookup: a revocation committed after the lookup
        # finds this socket; one committed before it makes the lookup fail
        key_hash = hash_key(api_key)
        known = key_hash in self.key_hashes
        if not known:
            self.hub.register_key(self, key_hash)
        accepted = False
        try:
            try:  # an auth op counts like a private request: no key guessing at socket speed
                account = lookup_account_counted(api_key)
            except RateLimited as exc:
                self.error("rate_limited", exc.message, msg_id)
                return
            if account is None:
                self.error("unauthorized", "invalid API key", msg_id)
                if known:  # the key this socket authenticated with is dead: so is the socket
                    self.hub.remove(self)
                    self.revoked()
                return
            if self.account is not None and self.account != account:
                self.error(
                    "already_authenticated",
                    "this socket is authenticated as another account; open a new socket",
                    msg_id,
                )
                return
            if self.counted is None and not self.caps.acquire_key(account):
                # the close frame says why (a close drops any reply still queued)
                self.hub.remove(self)
                self.close(POLICY_VIOLATION, f"at most {self.caps.per_key} sockets per api key")
                return
            self.counted = account
            accepted = True
        finally:
            if not accepted and not known:
                self.hub.forget_key(self, key_hash)
        if self.dying:  # revoked while we looked it up
            return
        self.key_hashes.add(key_hash)
        self.account = account
        body: dict[str, Any] = {"type": "authenticated", "account": account}
        if msg_id is not None:
            body["id"] = msg_id
        self.reply(body)


_MSG_ID = re.compile(r"[\x20-\x7e]{1,64}")
_WS_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")  # base64 of 16 bytes (RFC 6455)


def _handshake_refusal(headers: Any) -> Any:
    """A JSON 400 (426 for another protocol version) for an upgrade RFC 6455 does not allow;
    None for a good one. Checked before the upgrade, so a bad one never reaches the socket."""
    if "websocket" not in headers.get("Upgrade", "").lower() or "upgrade" not in headers.get(
        "Connection", ""
    ).lower():
        return error_response(400, "bad_handshake", "/ws is a WebSocket: send an upgrade")
    if headers.get("Sec-WebSocket-Version") != "13":
        response = error_response(426, "bad_handshake", "only WebSocket version 13 is spoken")
        response.headers["Sec-WebSocket-Version"] = "13"
        return response
    if _WS_KEY.fullmatch(headers.get("Sec-WebSocket-Key", "")) is None:
        return error_response(400, "bad_handshake", "Sec-WebSocket-Key is missing or malformed")
    return None


def _valid_id(value: Any) -> bool:
    """A message id the reply may echo: an integer, or a short printable ASCII string."""
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and _MSG_ID.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Flask wiring
# ---------------------------------------------------------------------------------------------

_hub_lock = threading.Lock()


def get_hub() -> Hub:
    """This process's hub, started on first use (after gunicorn forked and gevent patched)."""
    ext = current_app.extensions
    hub = ext.get("fairbook_ws")
    if hub is None:
        with _hub_lock:
            hub = ext.get("fairbook_ws")
            if hub is None:
                st = ext["fairbook"]
                pool = st.redis.connection_pool
                kwargs = dict(pool.connection_kwargs)
                kwargs.update(
                    socket_timeout=10,
                    socket_connect_timeout=2,
                    health_check_interval=5,
                )

                def factory() -> redis.Redis:
                    """A fresh client of the app's Redis (own pool: pub/sub holds a socket)."""
                    return redis.Redis(
                        connection_pool=redis.ConnectionPool(
                            connection_class=pool.connection_class, **kwargs
                        )
                    )

                hub = ext["fairbook_ws"] = Hub(factory, st.markets, st.namespace)
                hub.start()
    return hub


def init_app(app: Flask) -> None:
    """Register ``/ws`` and ``/`` on the app (called by web.app.create_app)."""
    sock = Sock(app)
    with app.app_context():
        ping = setting("FAIRBOOK_WS_PING_INTERVAL")
        max_message = int(setting("FAIRBOOK_WS_MAX_MESSAGE"))
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        # the library closes the socket on a message past its cap: let it do so only past 16x
        # ours (its buffer's bound); up to that, a message too big is answered with an error
        {"ping_interval": ping or None, "max_message_size": 16 * max_message or None},
    )

    @app.before_request
    def _prepare_websocket() -> Any:
        """No permessage-deflate (frames are pre-encoded), one send lock per socket, and no
        request timeout on a socket that lives on as a WebSocket (``web.server``)."""
        if not is_websocket_path(request.path):
            return None
        refusal = _handshake_refusal(request.headers)
        if refusal is not None:
            return refusal
        environ = request.environ
        caps = socket_caps(current_app)
        ip = request.remote_addr or ""
        if not caps.acquire_ip(ip):
            response = error_response(429, "too_many_connections",
                                      f"at most {caps.per_ip} open sockets per client address")
            response.headers["Retry-After"] = str(SOCKET_CAP_RETRY_AFTER)  # fmt: skip
            return response
        environ[_WS_IP] = ip  # released by _release_socket_count, however the request ends
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        raw = environ.get("gunicorn.socket")
        if raw is not None and not isinstance(raw, LockedSocket):
            raw.settimeout(None)
            sndbuf = int(setting("FAIRBOOK_WS_SNDBUF"))
            if sndbuf:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            environ["gunicorn.socket"] = LockedSocket(raw)
        return None

    @app.teardown_request
    def _release_socket_count(_exc: BaseException | None) -> None:
        ip = request.environ.pop(_WS_IP, None)
        if ip is not None:
            socket_caps(current_app).release_ip(ip)

    @sock.route("/ws")
    def websocket(ws: Any) -> None:
        """One client socket for its whole life."""
        with serving(ws, Connection) as conn:
            while not conn.done.is_set():
                data = ws.receive(timeout=1.0)
                if data is not None:
                    conn.handle(data)

    @app.get("/")
    def index():
        """The trading page (static, no build step)."""
        response = send_from_directory(STATIC_DIR, "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response
