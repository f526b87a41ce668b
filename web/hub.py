"""Per-process market-data hub: ONE Redis pub/sub connection fanned out to every WebSocket.

Why one connection with pattern subscriptions (``<ns>:md:*``, ``<ns>:acct:*``, the control
channel): it is live before the first client subscribes, so a book snapshot read later can
never miss an increment ("subscribe before snapshot" holds for free). Messages nobody here
listens to are dropped after a dict lookup on the channel name, before any JSON is parsed.

Books: the worker publishes, per batch, the levels that changed (with the sequence range they
cover); the hub keeps ONE copy of each subscribed symbol's book (:class:`BookMirror`: the
``book:<symbol>`` key plus those increments) and forwards each increment to every depth view as
the part of it that view can see, plus the levels that enter or leave its top N. A client that
applies snapshot + updates therefore holds exactly ``GET /api/v1/book/<symbol>?depth=N``.

Frames are encoded once and the same ``bytes`` object is offered to every subscriber's bounded
queue; a full queue closes that socket (slow consumer) without ever blocking this reader.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis

from engine.markets import Market
from engine.validation import shown
from protocol import wire
from protocol.keys import Namespace
from web.books import MAX_DEPTH, BookMirror, BookView

log = logging.getLogger("fairbook.ws")

DEFAULT_DEPTH = 50
_KEY_HASH = re.compile(r"[0-9a-f]{64}")  # sha256 hex of an API key (web.accounts.hash_key)


def text_frame(payload: str | bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed WebSocket text frame (server -> client).

    Server frames are never masked, so one encoding serves every socket of the process.
    """
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + data


def frame(obj: Any) -> bytes:
    return text_frame(wire.dumps(obj))


class Subscriber(Protocol):
    """What the hub needs from a socket (web.ws.Connection)."""

    account: str | None

    def offer(self, frame: bytes) -> bool:
        """Queue a frame without blocking; False means the queue overflowed."""
        ...

    def next_sequence(self, channel: str) -> int: ...

    def slow_consumer(self) -> None:
        """Called (outside the hub lock) after :meth:`offer` returned False."""
        ...

    def revoked(self) -> None:
        """Called (outside the hub lock) when a key it authenticated with was revoked."""
        ...


class Listener(Protocol):
    """A socket of another adapter (``web.binance``) that takes the worker's messages raw and
    makes its own frames. Called in the hub's reader thread, under the hub lock: it must only
    encode and :meth:`Subscriber.offer`, never block; it returns False when its queue
    overflowed (the hub then removes it and calls ``slow_consumer`` outside the lock)."""

    account: str | None

    def offer(self, frame: bytes) -> bool: ...

    def slow_consumer(self) -> None: ...

    def revoked(self) -> None: ...

    def failed(self) -> None:
        """Called (outside the hub lock) after one of its ``on_*`` raised: the hub removed it."""
        ...

    def on_market(self, symbol: str, body: dict[str, Any]) -> bool:
        """One ``<ns>:md:<symbol>`` message (protocol.wire: trades, book increment, bbo)."""
        ...

    def on_account(self, account: str, body: dict[str, Any]) -> bool:
        """One ``<ns>:acct:<account>`` message (``{"account", "events"}``)."""
        ...

    def on_resync(self) -> bool:
        """Pub/sub reconnected or the worker recovered: messages may have been lost."""
        ...


# ---------------------------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------------------------


class ChannelError(ValueError):
    """A channel name the hub does not serve (``code`` for the error reply)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Hub:
    """Subscriptions of this process's sockets and the pub/sub reader thread feeding them."""

    def __init__(
        self,
        client_factory: Callable[[], redis.Redis],
        markets: dict[str, Market],
        namespace: Namespace | None = None,
        reconnect_max: float = 2.0,
    ) -> None:
        self.client_factory = client_factory
        self.markets = markets
        self.namespace = namespace or Namespace(symbols=markets)
        self.reconnect_max = reconnect_max
        self.lock = threading.RLock()
        self.trade_subs: dict[str, set[Subscriber]] = {}
        self.bbo_subs: dict[str, set[Subscriber]] = {}
        self.books: dict[str, BookMirror] = {}
        self.acct_subs: dict[str, set[Subscriber]] = {}
        #: sha256 of an API key -> the sockets that authenticated (or are authenticating) with it
        self.key_subs: dict[str, set[Subscriber]] = {}
        #: raw listeners of another adapter, by symbol and by account
        self.market_listeners: dict[str, set[Listener]] = {}
        self.account_listeners: dict[str, set[Listener]] = {}
        self.ready = threading.Event()  # pub/sub active (snapshots may be read)
        self.stats = {"messages": 0, "ignored": 0, "poison": 0, "frames": 0, "reconnects": 0,
                      "overflows": 0, "listener_errors": 0}  # fmt: skip
        self._client: redis.Redis | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fairbook-pubsub", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    # -- channel names --------------------------------------------------------------------------
    def parse_channel(self, channel: Any) -> tuple[str, str, int]:
        """``(kind, symbol, depth)``; kind is trades|book|bbo|orders. Raises ChannelError."""
        if not isinstance(channel, str) or not channel:
            raise ChannelError(
                "unknown_channel", "a channel must be a non-empty string"
            )
        if channel == "orders":
            return "orders", "", 0
        parts = channel.split(":")
        kind = parts[0]
        if kind not in ("trades", "book", "bbo") or len(parts) < 2:
            raise ChannelError(
                "unknown_channel",
                f"unknown channel {shown(channel)}: use trades:<symbol>, book:<symbol>[:<depth>], "
                "bbo:<symbol> or orders",
            )
        symbol = parts[1]
        if symbol not in self.markets:
            raise ChannelError("unknown_symbol", f"unknown symbol in {shown(channel)}")
        depth = 0
        if kind == "book":
            if len(parts) == 2:
                depth = DEFAULT_DEPTH
            elif (len(parts) == 3 and parts[2].isascii() and parts[2].isdigit()
                  and len(parts[2]) <= 3 and 1 <= int(parts[2]) <= MAX_DEPTH):  # fmt: skip
                depth = int(parts[2])
            else:
                raise ChannelError(
                    "unknown_channel",
                    f"{shown(channel)}: depth must be an integer from 1 to {MAX_DEPTH}",
                )
        elif len(parts) != 2:
            raise ChannelError("unknown_channel", f"unknown channel {shown(channel)}")
        return kind, symbol, depth

    # -- subscriptions (called from socket threads) ---------------------------------------------
    def subscribe(self, sub: Subscriber, channel: str) -> None:
        """Register ``sub`` and queue the channel's snapshot atomically: holding the hub lock
        means no update can slip in before the snapshot."""
        kind, symbol, depth = self.parse_channel(channel)
        overflow = False
        slow: list[Subscriber] = []
        with self.lock:
            if kind == "trades":
                self.trade_subs.setdefault(symbol, set()).add(sub)
            elif kind == "orders":
                if sub.account is None:
                    raise ChannelError("auth_required", "authenticate before subscribing to orders")
                self.acct_subs.setdefault(sub.account, set()).add(sub)
            else:
                book = self._book(symbol)
                if kind == "bbo":
                    self.bbo_subs.setdefault(symbol, set()).add(sub)
                    overflow = not sub.offer(self._bbo_frame(symbol, book, "snapshot"))
                else:
                    view = book.views.get(channel)
                    if view is None:
                        view = book.views[channel] = BookView(channel, depth, book.sequence)
                        if not book.reliable_for(depth):  # the other views follow the re-read
                            for other, update in self._reload(book):
                                self._fanout(other.subs, frame(update), slow)
                    view.subs.add(sub)
                    overflow = not sub.offer(frame(book.snapshot(view)))
        self._finish(slow)
        if overflow:
            sub.slow_consumer()

    def unsubscribe(self, sub: Subscriber, channel: str) -> None:
        kind, symbol, _depth = self.parse_channel(channel)
        with self.lock:
            if kind == "trades":
                _discard(self.trade_subs, symbol, sub)
            elif kind == "orders":
                if sub.account is not None:
                    _discard(self.acct_subs, sub.account, sub)
            elif kind == "bbo":
                _discard(self.bbo_subs, symbol, sub)
                self._maybe_drop_book(symbol)
            else:
                book = self.books.get(symbol)
                view = book.views.get(channel) if book is not None else None
                if view is not None:
                    view.subs.discard(sub)
                    if not view.subs:
                        del book.views[channel]  # type: ignore[union-attr]
                self._maybe_drop_book(symbol)

    def listen_market(self, listener: Listener, symbol: str) -> None:
        """Hand ``listener`` every market-data message of ``symbol`` from now on."""
        if symbol not in self.markets:
            raise ChannelError("unknown_symbol", f"unknown symbol {shown(symbol)}")
        with self.lock:
            self.market_listeners.setdefault(symbol, set()).add(listener)

    def unlisten_market(self, listener: Listener, symbol: str) -> None:
        with self.lock:
            _discard(self.market_listeners, symbol, listener)  # type: ignore[arg-type]

    def listen_account(self, listener: Listener, account: str) -> None:
        """Hand ``listener`` every event message of ``account`` (the caller proved it owns it)."""
        with self.lock:
            self.account_listeners.setdefault(account, set()).add(listener)

    def unlisten_account(self, listener: Listener, account: str) -> None:
        with self.lock:
            _discard(self.account_listeners, account, listener)  # type: ignore[arg-type]

    def register_key(self, sub: Subscriber, key_hash: str) -> None:
        """Remember that ``sub`` authenticates with this key. Called *before* the key is looked
        up: a revocation committed after the lookup then always finds the socket."""
        with self.lock:
            self.key_subs.setdefault(key_hash, set()).add(sub)

    def forget_key(self, sub: Subscriber, key_hash: str) -> None:
        with self.lock:
            _discard(self.key_subs, key_hash, sub)

    def revoke(self, key_hash: str) -> int:
        """A key was revoked: no more events for its sockets, then each is closed (1008)."""
        with self.lock:
            subs = self.key_subs.pop(key_hash, set())
            for sub in subs:
                self.remove(sub)
        for sub in subs:
            sub.revoked()
        if subs:
            log.info("closed %d socket(s) of a revoked API key", len(subs))
        return len(subs)

    def recheck_keys(self) -> None:
        """Close the sockets whose key is gone from Redis: after a pub/sub reconnect a
        revocation may have been published while nobody here listened."""
        with self.lock:
            hashes = list(self.key_subs)
        if not hashes:
            return
        keys = self.namespace.global_keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(keys.accounts, hashes)  # native keys
        for key_hash in hashes:  # signed (Binance) keys live in their own records
            pipe.exists(keys.api_key(key_hash))
        found, *signed = pipe.execute()
        for key_hash, account, alive in zip(hashes, found, signed, strict=True):
            if account is None and not alive:
                self.revoke(key_hash)

    def remove(self, sub: Subscriber) -> None:
        """Forget a socket everywhere (closed, or a slow consumer)."""
        with self.lock:
            for table in (self.trade_subs, self.bbo_subs, self.acct_subs, self.key_subs,
                          self.market_listeners, self.account_listeners):  # fmt: skip
                for key in [k for k, subs in table.items() if sub in subs]:
                    _discard(table, key, sub)
            for symbol, book in list(self.books.items()):
                for name in [n for n, v in book.views.items() if sub in v.subs]:
                    view = book.views[name]
                    view.subs.discard(sub)
                    if not view.subs:
                        del book.views[name]
                self._maybe_drop_book(symbol)

    def _maybe_drop_book(self, symbol: str) -> None:
        book = self.books.get(symbol)
        if book is not None and not book.views and not self.bbo_subs.get(symbol):
            del self.books[symbol]

    def _book(self, symbol: str) -> BookMirror:
        """The symbol's mirror, loaded from the book key on first use (caller holds the lock)."""
        book = self.books.get(symbol)
        if book is None:
            book = BookMirror(self.markets[symbol], symbol)
            book.load(self._read_book(symbol))
            self.books[symbol] = book
        return book

    def _read_book(self, symbol: str) -> dict[str, Any]:
        raw = self.client.get(self.namespace.keys_for(symbol).book(symbol))
        return wire.loads(raw) if raw else {"sequence": 0, "bids": [], "asks": []}

    def _reload(self, book: BookMirror) -> list[tuple[BookView, dict[str, Any]]]:
        return book.reload(self._read_book(book.symbol))

    # -- frames ---------------------------------------------------------------------------------
    @staticmethod
    def _bbo_frame(symbol: str, book: BookMirror, kind: str) -> bytes:
        bbo = book.bbo
        return frame({"channel": f"bbo:{symbol}", "type": kind,
                      "sequence": int(bbo.get("sequence") or 0),
                      "bid_price": bbo.get("bid_price"), "bid_qty": bbo.get("bid_qty", "0"),
                      "ask_price": bbo.get("ask_price"),
                      "ask_qty": bbo.get("ask_qty", "0")})  # fmt: skip

    # -- the reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.05
        first = True
        ns = self.namespace
        while not self._stopping:
            pubsub = None
            try:
                pubsub = self.client_factory().pubsub()
                pubsub.psubscribe(ns.md_pattern, ns.acct_pattern)
                pubsub.subscribe(ns.global_keys.control)
                # wait for the confirmations: only then is the subscription live
                confirmed = 0
                deadline = time.monotonic() + 5
                while confirmed < 3 and time.monotonic() < deadline:
                    msg = pubsub.parse_response(block=False, timeout=0.5)
                    if msg and msg[0] in (b"psubscribe", b"subscribe", "psubscribe", "subscribe"):
                        confirmed += 1
                if confirmed < 3:
                    raise redis.exceptions.ConnectionError("pub/sub subscribe not confirmed")
                if not first:
                    self._resubscribed()
                else:  # a socket may have authenticated before the control channel was live
                    self.recheck_keys()
                first = False
                delay = 0.05
                self.ready.set()
                while not self._stopping:
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] in ("message", "pmessage"):
                        self.dispatch(msg)
                    elif msg["type"] in ("subscribe", "psubscribe"):
                        # redis-py reconnected and resubscribed: increments may be lost
                        self._resubscribed(msg)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    OSError) as exc:  # fmt: skip
                if not first or self.ready.is_set():
                    log.warning("pub/sub connection lost (%s); reconnecting in %.2fs", exc, delay)
                self.ready.clear()
                time.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
            except Exception:  # a bug must not kill market data for the whole process
                log.exception("pub/sub reader failed; restarting it")
                self.ready.clear()
                time.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a dead connection
                        pass

    def _resubscribed(self, msg: dict[str, Any] | None = None) -> None:
        """After a reconnect (ours, or redis-py's behind our back, seen as a repeated
        subscription confirmation): fresh snapshots for everyone, once per reconnect."""
        if msg is not None:  # a reconnect confirms three subscriptions: resync once
            channel = msg.get("channel")
            if isinstance(channel, bytes):
                channel = channel.decode()
            if channel == self.namespace.global_keys.control:
                # a revocation published while nobody listened: whichever order redis-py
                # confirms the three subscriptions in, this one runs once control is live
                self.recheck_keys()
            if channel != self.namespace.md_pattern:
                return
        self.stats["reconnects"] += 1
        log.warning("pub/sub reconnected; resyncing every subscriber")
        self._client = None  # a fresh client for the snapshot reads too
        self.recheck_keys()
        self.resync_all()

    def dispatch(self, msg: dict[str, Any]) -> None:
        """Route one pub/sub message (from the reader thread, or directly in tests).

        A message this process cannot use (not JSON, not the documented shape) is counted in
        ``stats["poison"]``, logged and skipped alone: it never stops the reader or disturbs
        other subscribers. A book whose increment failed half-way is re-read from its key.
        """
        channel = msg.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        self.stats["messages"] += 1
        ns = self.namespace
        try:
            if channel.startswith(ns.md_prefix):
                symbol = channel[len(ns.md_prefix) :]
                listeners = self.market_listeners.get(symbol)
                if not (self.trade_subs.get(symbol) or symbol in self.books or listeners):
                    self.stats["ignored"] += 1
                    return
                body = _object(msg.get("data"))
                if listeners:
                    self._to_listeners(self.market_listeners, symbol, "on_market", body)
                if self.trade_subs.get(symbol) or symbol in self.books:
                    self._guarded_market_data(symbol, body)
            elif channel.startswith(ns.acct_prefix):
                account = channel[len(ns.acct_prefix) :]
                listeners = self.account_listeners.get(account)
                if not (self.acct_subs.get(account) or listeners):
                    self.stats["ignored"] += 1
                    return
                body = _object(msg.get("data"))
                if listeners:
                    self._to_listeners(self.account_listeners, account, "on_account", body)
                if self.acct_subs.get(account):
                    self._on_account(account, body)
            elif channel == ns.global_keys.control:
                body = _object(msg.get("data"))
                if body.get("type") == "resync":
                    log.warning("worker asked for a resync")
                    self.resync_all()
                elif body.get("type") == "revoked":
                    key_hash = body.get("key")
                    if not isinstance(key_hash, str) or _KEY_HASH.fullmatch(key_hash) is None:
                        raise ValueError("revoked: key is not a sha256 hex digest")
                    self.revoke(key_hash)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.stats["poison"] += 1
            log.warning("skipped an unusable message on %s (%s)", wire_channel(channel),
                        type(exc).__name__)  # fmt: skip

    def _guarded_market_data(self, symbol: str, body: dict[str, Any]) -> None:
        try:
            self._on_market_data(symbol, body)
        except (ValueError, TypeError, KeyError, AttributeError):
            book = self.books.get(symbol)
            if book is not None:  # it may hold half an increment: start from the key again
                slow: list[Subscriber] = []
                with self.lock:
                    for view, update in self._reload(book):
                        self._fanout(view.subs, frame(update), slow)
                self._finish(slow)
            raise

    def _to_listeners(self, table: dict[str, set[Listener]], name: str, method: str,
                      body: dict[str, Any]) -> None:  # fmt: skip
        """One message to each raw listener of ``name``; one that fails or overflows is closed
        alone (a bug in one adapter's frame must not stop the native fan-out)."""
        slow: list[Any] = []
        failed: list[Any] = []
        with self.lock:
            for listener in list(table.get(name) or ()):
                self._call_listener(listener, method, (name, body), slow, failed)
        self._finish(slow)
        self._finish_failed(failed)

    def _call_listener(self, listener: Listener, method: str, args: tuple[Any, ...],
                       slow: list[Any], failed: list[Any]) -> None:  # fmt: skip
        """``listener.<method>(*args)``: False -> ``slow``; any exception -> ``failed`` (a bug
        of one adapter socket, a bad decimal too, must not restart the reader for everyone)."""
        try:
            ok = getattr(listener, method)(*args)
        except Exception:
            log.exception("a %s listener failed", method)
            failed.append(listener)
            return
        if not ok:
            slow.append(listener)

    def _finish_failed(self, failed: list[Any]) -> None:
        for listener in failed:
            self.stats["listener_errors"] += 1
            self.remove(listener)
            listener.failed()

    def _fanout(self, subs: Iterable[Subscriber], data: bytes, slow: list[Subscriber]) -> None:
        for sub in subs:
            if not sub.offer(data):
                slow.append(sub)
            self.stats["frames"] += 1

    def _finish(self, slow: list[Subscriber]) -> None:
        for sub in slow:
            self.stats["overflows"] += 1
            self.remove(sub)
            sub.slow_consumer()

    def _on_market_data(self, symbol: str, body: dict[str, Any]) -> None:
        slow: list[Subscriber] = []
        with self.lock:
            subs = self.trade_subs.get(symbol)
            if subs:
                channel = f"trades:{symbol}"
                for record in body.get("trades") or ():
                    self._fanout(subs, frame({"channel": channel, "type": "trade",
                                              "sequence": int(record["trade_id"]),
                                              "data": record}), slow)  # fmt: skip
            book = self.books.get(symbol)
            if book is not None:
                increment = body.get("book")
                if increment and int(increment["sequence"]) > book.sequence:
                    if int(increment["prev_sequence"]) == book.sequence:
                        frames = book.apply_or_reload(increment,
                                                      lambda: self._read_book(symbol))
                    else:  # a gap (or a mirror ahead of nothing): re-read the key
                        log.info("book %s gap: have %s, got (%s, %s]; reloading", symbol,
                                 book.sequence, increment["prev_sequence"],
                                 increment["sequence"])  # fmt: skip
                        frames = self._reload(book)
                    for view, update in frames:
                        self._fanout(view.subs, frame(update), slow)
                bbo = body.get("bbo")
                if bbo and int(bbo["sequence"]) > int(book.bbo.get("sequence") or 0):
                    book.bbo = bbo
                    bsubs = self.bbo_subs.get(symbol)
                    if bsubs:
                        self._fanout(bsubs, self._bbo_frame(symbol, book, "update"), slow)
        self._finish(slow)

    def _on_account(self, account: str, body: dict[str, Any]) -> None:
        slow: list[Subscriber] = []
        with self.lock:
            subs = self.acct_subs.get(account)
            if not subs:
                return
            # "transfer" events (a deposit's or withdrawal's delta) are the Binance adapter's
            events = [(e.get("event", "order"), wire.dumps(e)) for e in body.get("events") or []
                      if e.get("event") != "transfer"]  # fmt: skip
            for sub in subs:
                if sub.account != account:  # never another account's data
                    continue
                for kind, data in events:
                    seq = sub.next_sequence("orders")
                    item = frame({"channel": "orders", "type": kind, "sequence": seq,
                                  "data": wire.Fragment(data)})  # fmt: skip
                    if not sub.offer(item):
                        slow.append(sub)
                        break
        self._finish(slow)

    def resync_all(self) -> None:
        """After a lost connection or a worker request: tell clients, then fresh snapshots."""
        slow: list[Any] = []
        failed: list[Any] = []
        with self.lock:
            for table in (self.market_listeners, self.account_listeners):
                for listener in {x for subs in table.values() for x in subs}:
                    self._call_listener(listener, "on_resync", (), slow, failed)
            for symbol, subs in self.trade_subs.items():
                self._fanout(subs, _resync_frame(f"trades:{symbol}"), slow)
            for subs in self.acct_subs.values():
                self._fanout(subs, _resync_frame("orders"), slow)
            for symbol, book in self.books.items():
                try:
                    book.load(self._read_book(symbol))
                except redis.exceptions.RedisError:
                    log.warning("resync: cannot read the %s book yet", symbol)
                    raise
                bsubs = self.bbo_subs.get(symbol) or set()
                self._fanout(bsubs, _resync_frame(f"bbo:{symbol}"), slow)
                self._fanout(bsubs, self._bbo_frame(symbol, book, "snapshot"), slow)
                for view in book.views.values():
                    view.sequence = book.sequence
                    self._fanout(view.subs, _resync_frame(view.channel), slow)
                    self._fanout(view.subs, frame(book.snapshot(view)), slow)
        self._finish(slow)
        self._finish_failed(failed)


def _object(data: Any) -> dict[str, Any]:
    """A pub/sub payload as the JSON object it must be (ValueError otherwise)."""
    body = wire.loads(data)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def wire_channel(channel: str) -> str:
    """A channel name fit for a log line (names come from Redis, not from clients)."""
    return channel[:80].encode("ascii", "replace").decode()


def _resync_frame(channel: str) -> bytes:
    return frame({"channel": channel, "type": "resync"})


def _discard(table: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    subs = table.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del table[key]
