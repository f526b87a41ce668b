"""Per-process market-data hub: ONE Redis pub/sub connection fanned out to every WebSocket.

Why one connection with a pattern subscription (``fb:md:*``, ``fb:acct:*``, ``fb:control``):
it is active before the first client arrives, so a book snapshot read later can never miss an
increment (the "subscribe before snapshot" rule holds for free), and there is no per-channel
SUBSCRIBE round trip or refcount race. Messages nobody here listens to are dropped after a dict
lookup on the channel name, before any JSON parsing.

Book channels are served from a per-symbol *mirror* (the worker's ``book:<symbol>`` key plus the
increments published after it) and per-(symbol, depth) *views*: every subscriber of a view gets
the same frames, diffs of the view's top N levels, with ``prev_sequence`` = the sequence of the
previous frame of that view. So a client that applies snapshot + updates holds exactly the
worker's top N levels, and a worker-side gap only makes the mirror re-read the key (clients see
an ordinary diff).

Frames are encoded once (text frame bytes, no compression) and the same ``bytes`` object is put
on every subscriber's bounded queue; a full queue closes that socket (slow consumer) without
ever blocking this reader.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis
from sortedcontainers import SortedDict

from engine.schema import Market
from worker.keys import Keys, partition_for_symbol

log = logging.getLogger("fairbook.ws")

MD_PATTERN = "fb:md:*"
ACCT_PATTERN = "fb:acct:*"
CONTROL_CHANNEL = "fb:control"
MD_PREFIX = "fb:md:"
ACCT_PREFIX = "fb:acct:"

DEFAULT_DEPTH = 50
MAX_DEPTH = 500  # the worker's book key holds the top 500 levels per side
BOOK_KEY_DEPTH = 500


def dumps(obj: Any) -> str:
    """Compact JSON; strings (prices, quantities) pass through untouched."""
    return json.dumps(obj, separators=(",", ":"))


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


# ---------------------------------------------------------------------------------------------
# Book mirror and views
# ---------------------------------------------------------------------------------------------


class Mirror:
    """One symbol's book as the worker published it: sorted by integer ticks, strings kept."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.sequence = -1  # -1 = not loaded
        self.bids: SortedDict = SortedDict()  # -ticks -> (price, qty)
        self.asks: SortedDict = SortedDict()  # ticks -> (price, qty)
        self.bbo: dict[str, Any] | None = None
        self.truncated = False  # the key held BOOK_KEY_DEPTH levels on some side
        self.worst: dict[str, int | None] = {"bids": None, "asks": None}

    def _key(self, side: str, price: str) -> int:
        ticks = self.market.price_to_ticks(price)
        return -ticks if side == "bids" else ticks

    def load(self, snap: dict[str, Any]) -> None:
        """Replace everything with the worker's ``book:<symbol>`` value."""
        self.sequence = int(snap.get("sequence") or 0)
        self.truncated = False
        for side in ("bids", "asks"):
            levels = snap.get(side) or []
            book: SortedDict = getattr(self, side)
            book.clear()
            for price, qty in levels:
                book[self._key(side, price)] = (price, qty)
            if len(levels) >= BOOK_KEY_DEPTH:
                self.truncated = True
                self.worst[side] = book.keys()[-1]
            else:
                self.worst[side] = None
        bbo = snap.get("bbo")
        if isinstance(bbo, dict):
            self.bbo = dict(bbo)
            self.bbo.setdefault("sequence", snap.get("bbo_sequence", 0))
        else:
            self.bbo = {
                "sequence": int(snap.get("bbo_sequence") or 0),
                "bid_price": None,
                "bid_qty": "0",
                "ask_price": None,
                "ask_qty": "0",
            }

    def apply(self, book: dict[str, Any]) -> None:
        """Apply one increment (the caller checked its ``prev_sequence``)."""
        for side in ("bids", "asks"):
            levels: SortedDict = getattr(self, side)
            for price, qty in book.get(side) or ():
                key = self._key(side, price)
                if qty == "0" or _is_zero(qty):
                    levels.pop(key, None)
                else:
                    levels[key] = (price, qty)
        self.sequence = int(book["sequence"])

    def top(self, side: str, depth: int) -> list[tuple[str, str]]:
        levels: SortedDict = getattr(self, side)
        return [levels[k] for k in levels.islice(0, depth)]

    def reliable_for(self, depth: int) -> bool:
        """False when a view of ``depth`` may need levels the 500-level key did not carry."""
        if not self.truncated:
            return True
        for side in ("bids", "asks"):
            worst = self.worst[side]
            if worst is None:
                continue
            levels: SortedDict = getattr(self, side)
            if levels.bisect_right(worst) < depth:
                return False
        return True


def _is_zero(qty: str) -> bool:
    return qty.strip("0.") == ""


class View:
    """The top ``depth`` levels of one symbol as last sent to its subscribers."""

    def __init__(self, symbol: str, depth: int, channel: str) -> None:
        self.symbol = symbol
        self.depth = depth
        self.channel = channel
        self.subs: set[Subscriber] = set()
        self.sequence = 0
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def reset(self, mirror: Mirror) -> None:
        self.sequence = mirror.sequence
        self.bids = dict(mirror.top("bids", self.depth))
        self.asks = dict(mirror.top("asks", self.depth))

    def snapshot_frame(self, mirror: Mirror) -> bytes:
        """The view's current content (identical to the mirror's top N) at the view sequence."""
        return text_frame(
            dumps(
                {
                    "channel": self.channel,
                    "type": "snapshot",
                    "sequence": self.sequence,
                    "bids": [list(x) for x in mirror.top("bids", self.depth)],
                    "asks": [list(x) for x in mirror.top("asks", self.depth)],
                }
            )
        )

    def update(self, mirror: Mirror) -> bytes | None:
        """Diff the mirror's top N against what was sent; a frame if anything visible changed."""
        changes: dict[str, list[list[str]]] = {}
        for side in ("bids", "asks"):
            old: dict[str, str] = getattr(self, side)
            new = dict(mirror.top(side, self.depth))
            diff = [[p, q] for p, q in new.items() if old.get(p) != q]
            diff.extend([p, "0"] for p in old if p not in new)
            changes[side] = diff
            setattr(self, side, new)
        if not changes["bids"] and not changes["asks"]:
            return None
        prev, self.sequence = self.sequence, mirror.sequence
        return text_frame(
            dumps(
                {
                    "channel": self.channel,
                    "type": "update",
                    "prev_sequence": prev,
                    "sequence": self.sequence,
                    "bids": changes["bids"],
                    "asks": changes["asks"],
                }
            )
        )


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
        reconnect_max: float = 2.0,
    ) -> None:
        self.client_factory = client_factory
        self.markets = markets
        self.reconnect_max = reconnect_max
        self.lock = threading.RLock()
        self.trade_subs: dict[str, set[Subscriber]] = {}
        self.bbo_subs: dict[str, set[Subscriber]] = {}
        self.views: dict[str, View] = {}  # by channel name: book:X and book:X:50 are separate
        self.mirrors: dict[str, Mirror] = {}
        self.acct_subs: dict[str, set[Subscriber]] = {}
        self.ready = threading.Event()  # pub/sub active (snapshots may be read)
        self.stats = {"messages": 0, "ignored": 0, "frames": 0, "reconnects": 0, "overflows": 0}
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
                "unknown_channel", f"channel must be a non-empty string: {channel!r}"
            )
        if channel == "orders":
            return "orders", "", 0
        parts = channel.split(":")
        kind = parts[0]
        if kind not in ("trades", "book", "bbo") or len(parts) < 2:
            raise ChannelError(
                "unknown_channel",
                f"unknown channel {channel!r}: use trades:<symbol>, book:<symbol>[:<depth>], "
                "bbo:<symbol> or orders",
            )
        symbol = parts[1]
        if symbol not in self.markets:
            raise ChannelError("unknown_symbol", f"unknown symbol {symbol!r} in {channel!r}")
        depth = 0
        if kind == "book":
            if len(parts) == 2:
                depth = DEFAULT_DEPTH
            elif len(parts) == 3 and parts[2].isdigit() and 1 <= int(parts[2]) <= MAX_DEPTH:
                depth = int(parts[2])
            else:
                raise ChannelError(
                    "unknown_channel",
                    f"{channel!r}: depth must be an integer from 1 to {MAX_DEPTH}",
                )
        elif len(parts) != 2:
            raise ChannelError("unknown_channel", f"unknown channel {channel!r}")
        return kind, symbol, depth

    # -- subscriptions (called from socket threads) ---------------------------------------------
    def subscribe(self, sub: Subscriber, channel: str, before: Iterable[bytes] = ()) -> None:
        """Register ``sub`` and queue ``before`` (the ack) plus the channel's snapshot atomically.

        Holding the hub lock while queueing means no update can slip in before the snapshot.
        """
        kind, symbol, depth = self.parse_channel(channel)
        overflow = False
        with self.lock:
            for frame in before:
                overflow |= not sub.offer(frame)
            if kind == "trades":
                self.trade_subs.setdefault(symbol, set()).add(sub)
            elif kind == "orders":
                if sub.account is None:
                    raise ChannelError("auth_required", "authenticate before subscribing to orders")
                self.acct_subs.setdefault(sub.account, set()).add(sub)
            else:
                mirror = self._mirror(symbol)
                if kind == "bbo":
                    self.bbo_subs.setdefault(symbol, set()).add(sub)
                    overflow |= not sub.offer(self._bbo_frame(symbol, mirror, "snapshot"))
                else:
                    view = self.views.get(channel)
                    if view is None:
                        view = self.views[channel] = View(symbol, depth, channel)
                        view.reset(mirror)
                    view.subs.add(sub)
                    overflow |= not sub.offer(view.snapshot_frame(mirror))
        if overflow:
            sub.slow_consumer()

    def unsubscribe(self, sub: Subscriber, channel: str) -> None:
        kind, symbol, depth = self.parse_channel(channel)
        with self.lock:
            if kind == "trades":
                _discard(self.trade_subs, symbol, sub)
            elif kind == "orders":
                if sub.account is not None:
                    _discard(self.acct_subs, sub.account, sub)
            elif kind == "bbo":
                _discard(self.bbo_subs, symbol, sub)
                self._maybe_drop_mirror(symbol)
            else:
                view = self.views.get(channel)
                if view is not None:
                    view.subs.discard(sub)
                    if not view.subs:
                        del self.views[channel]
                self._maybe_drop_mirror(symbol)

    def remove(self, sub: Subscriber) -> None:
        """Forget a socket everywhere (closed, or a slow consumer)."""
        with self.lock:
            for table in (self.trade_subs, self.bbo_subs, self.acct_subs):
                for key in [k for k, subs in table.items() if sub in subs]:
                    _discard(table, key, sub)
            for key in [k for k, v in self.views.items() if sub in v.subs]:
                view = self.views[key]
                view.subs.discard(sub)
                if not view.subs:
                    del self.views[key]
            for symbol in list(self.mirrors):
                self._maybe_drop_mirror(symbol)

    def _maybe_drop_mirror(self, symbol: str) -> None:
        if self.bbo_subs.get(symbol):
            return
        if any(v.symbol == symbol for v in self.views.values()):
            return
        self.mirrors.pop(symbol, None)

    def _mirror(self, symbol: str) -> Mirror:
        """The symbol's mirror, loaded from the book key on first use (caller holds the lock)."""
        mirror = self.mirrors.get(symbol)
        if mirror is None:
            mirror = Mirror(self.markets[symbol])
            self._load(mirror, symbol)
            self.mirrors[symbol] = mirror
        return mirror

    def _load(self, mirror: Mirror, symbol: str) -> None:
        raw = self.client.get(Keys(partition_for_symbol(symbol)).book(symbol))
        snap = json.loads(raw) if raw else {"sequence": 0, "bids": [], "asks": []}
        mirror.load(snap)

    # -- frames ---------------------------------------------------------------------------------
    @staticmethod
    def _bbo_frame(symbol: str, mirror: Mirror, kind: str) -> bytes:
        bbo = mirror.bbo or {}
        return text_frame(
            dumps(
                {
                    "channel": f"bbo:{symbol}",
                    "type": kind,
                    "sequence": int(bbo.get("sequence") or 0),
                    "bid_price": bbo.get("bid_price"),
                    "bid_qty": bbo.get("bid_qty", "0"),
                    "ask_price": bbo.get("ask_price"),
                    "ask_qty": bbo.get("ask_qty", "0"),
                }
            )
        )

    # -- the reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.05
        first = True
        while not self._stopping:
            pubsub = None
            try:
                client = self.client_factory()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(MD_PATTERN, ACCT_PATTERN)
                pubsub.subscribe(CONTROL_CHANNEL)
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
                    self.stats["reconnects"] += 1
                    log.warning("pub/sub reconnected; resyncing every subscriber")
                    self._client = None  # a fresh client for the snapshot reads too
                    self.resync_all()
                first = False
                delay = 0.05
                self.ready.set()
                while not self._stopping:
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self.dispatch(msg)
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
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

    def dispatch(self, msg: dict[str, Any]) -> None:
        """Route one pub/sub message (from the reader thread, or directly in tests)."""
        channel = msg.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        data = msg.get("data")
        self.stats["messages"] += 1
        if channel.startswith(MD_PREFIX):
            symbol = channel[len(MD_PREFIX) :]
            if not (
                self.trade_subs.get(symbol) or self.bbo_subs.get(symbol) or symbol in self.mirrors
            ):
                self.stats["ignored"] += 1
                return
            self._on_market_data(symbol, json.loads(data))
        elif channel.startswith(ACCT_PREFIX):
            account = channel[len(ACCT_PREFIX) :]
            if not self.acct_subs.get(account):
                self.stats["ignored"] += 1
                return
            self._on_account(account, json.loads(data))
        elif channel == CONTROL_CHANNEL:
            try:
                body = json.loads(data)
            except ValueError:
                return
            if isinstance(body, dict) and body.get("type") == "resync":
                log.warning("worker asked for a resync")
                self.resync_all()

    def _fanout(self, subs: Iterable[Subscriber], frame: bytes, slow: list[Subscriber]) -> None:
        for sub in subs:
            if not sub.offer(frame):
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
                prefix = f'{{"channel":"trades:{symbol}","type":"trade","sequence":'
                for record in body.get("trades") or ():
                    frame = text_frame(
                        f'{prefix}{int(record["trade_id"])},"data":{dumps(record)}}}'
                    )
                    self._fanout(subs, frame, slow)
            mirror = self.mirrors.get(symbol)
            if mirror is not None:
                book = body.get("book")
                if book and int(book["sequence"]) > mirror.sequence:
                    if int(book["prev_sequence"]) == mirror.sequence:
                        mirror.apply(book)
                    else:  # a gap (or a mirror that is ahead of nothing): re-read the key
                        log.info(
                            "book %s gap: have %s, got (%s, %s]; reloading",
                            symbol,
                            mirror.sequence,
                            book["prev_sequence"],
                            book["sequence"],
                        )
                        self._load(mirror, symbol)
                    self._refresh_views(symbol, mirror, slow)
                bbo = body.get("bbo")
                if bbo and int(bbo["sequence"]) > int((mirror.bbo or {}).get("sequence") or 0):
                    mirror.bbo = dict(bbo)
                    bsubs = self.bbo_subs.get(symbol)
                    if bsubs:
                        self._fanout(bsubs, self._bbo_frame(symbol, mirror, "update"), slow)
        self._finish(slow)

    def _refresh_views(self, symbol: str, mirror: Mirror, slow: list[Subscriber]) -> None:
        for view in list(self.views.values()):
            if view.symbol != symbol:
                continue
            if not mirror.reliable_for(view.depth):
                self._load(mirror, symbol)
            frame = view.update(mirror)
            if frame is not None:
                self._fanout(view.subs, frame, slow)

    def _on_account(self, account: str, body: dict[str, Any]) -> None:
        slow: list[Subscriber] = []
        with self.lock:
            subs = self.acct_subs.get(account)
            if not subs:
                return
            events = body.get("events") or []
            # an order event's own "type" is the order type (limit, market...): a fill is
            # recognised by its fields, everything else is an order state change
            encoded = [
                ("fill" if "liquidity" in e and "trade_id" in e else "order", dumps(e))
                for e in events
            ]
            for sub in subs:
                if sub.account != account:  # never another account's data
                    continue
                for kind, data in encoded:
                    seq = sub.next_sequence("orders")
                    frame = text_frame(
                        f'{{"channel":"orders","type":"{kind}","sequence":{seq},"data":{data}}}'
                    )
                    if not sub.offer(frame):
                        slow.append(sub)
                        break
        self._finish(slow)

    def resync_all(self) -> None:
        """After a lost connection or a worker request: tell clients, then fresh snapshots."""
        slow: list[Subscriber] = []
        with self.lock:
            for symbol, subs in self.trade_subs.items():
                self._fanout(subs, _resync_frame(f"trades:{symbol}"), slow)
            for subs in self.acct_subs.values():
                self._fanout(subs, _resync_frame("orders"), slow)
            for symbol, mirror in self.mirrors.items():
                try:
                    self._load(mirror, symbol)
                except redis.exceptions.RedisError:
                    log.warning("resync: cannot read the %s book yet", symbol)
                    raise
                bsubs = self.bbo_subs.get(symbol) or set()
                self._fanout(bsubs, _resync_frame(f"bbo:{symbol}"), slow)
                self._fanout(bsubs, self._bbo_frame(symbol, mirror, "snapshot"), slow)
            for view in self.views.values():
                mirror = self.mirrors[view.symbol]
                view.reset(mirror)
                self._fanout(view.subs, _resync_frame(view.channel), slow)
                self._fanout(view.subs, view.snapshot_frame(mirror), slow)
        self._finish(slow)


def _resync_frame(channel: str) -> bytes:
    return text_frame(dumps({"channel": channel, "type": "resync"}))


def _discard(table: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    subs = table.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del table[key]


__all__ = ["ChannelError", "Hub", "Mirror", "View", "text_frame"]
