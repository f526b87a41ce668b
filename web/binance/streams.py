"""Binance's market streams (``/ws/<streams>``, ``/stream?streams=``) over the process's hub.

Why this shape: one :class:`StreamHub` per web process is the hub's raw listener
(``web.hub.Hub.listen_market``) for every symbol a Binance stream socket asked for; it encodes
each event ONCE per stream (raw and, when someone wants it, the combined ``{"stream","data"}``
form) and offers the same ``bytes`` to every subscriber's bounded queue (``web.ws.Connection``),
so a slow client fills its own queue and is closed 4008 while nobody else waits.

Diff depth (``@depth``, ``@depth@100ms``) carries the worker's increments unchanged in meaning:
``U`` = the first increment's ``prev_sequence`` + 1, ``u`` = the last one's ``sequence``; the
sequence is the book key's, which ``GET /api/v3/depth`` answers as ``lastUpdateId``, so Binance's
"how to manage a local order book" procedure (and ccxt.pro's ``watch_order_book``) rebuild the
REST book exactly. Increments are merged over the stream's window (100 ms / 1 s) only while
they chain: a gap (lost pub/sub messages) ends the event, so the client sees ``U != u + 1``
and starts again, as Binance tells it to. Partial depth, tickers and klines are sent by one
timer thread at Binance's speeds when something changed (and once to each new subscriber).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from flask import Flask, current_app, request
from flask_sock import Sock

from engine.validation import shown
from protocol import wire
from protocol.candles import INTERVALS
from web import candles
from web.app import error_response, state
from web.binance import translate
from web.binance.trading import LISTEN_KEY, now_ms, ticker_24hr
from web.binance.userdata import serve_listen_key
from web.books import BookMirror
from web.hub import ChannelError, Hub, text_frame
from web.limits import RateLimited, count_request, count_stream_connection
from web.ws import POLICY_VIOLATION, Connection, get_hub, serving, setting

log = logging.getLogger("fairbook.binance.streams")

_STREAM = re.compile(
    r"(?P<symbol>[a-z0-9]{1,40})@(?:"
    r"(?P<trade>trade)|(?P<agg>aggTrade)|(?P<book>bookTicker)|(?P<ticker>ticker)"
    r"|(?P<mini>miniTicker)|kline_(?P<interval>[0-9]{1,2}[smhdwM])"
    r"|depth(?P<levels>5|10|20)?(?:@(?P<speed>100ms|1000ms))?)"
)
PARTIAL_LEVELS = (5, 10, 20)
TICK_S = 0.1  # the timer's step: the fastest stream speed
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_TEXT = re.compile(r"[A-Za-z0-9]{1,36}")
#: Binance's stream error codes (web-socket-streams.md "Error Messages")
UNKNOWN_PROPERTY, BAD_VALUE, INVALID_REQUEST, INVALID_JSON = 0, 1, 2, 3
TOO_MANY_MESSAGES = "too many messages"


@dataclass(frozen=True)
class StreamName:
    """One parsed stream name: ``kind`` is trade|aggTrade|bookTicker|depth|partial|kline|
    ticker|miniTicker; ``period`` its update speed in ms (0: real time)."""

    name: str  # canonical: lowercase symbol, ``@1000ms`` dropped
    native: str
    kind: str
    period: int = 0
    levels: int = 0
    interval: str = ""
    #: the name as the client spelled it (LIST_SUBSCRIPTIONS, combined ``stream``)
    given: str = field(default="", compare=False)


def parse_stream(name: Any, natives: dict[str, str]) -> StreamName:
    """A stream name (``natives``: lowercase Binance symbol -> native) or ChannelError."""
    return replace(_parse_stream(name, natives), given=name)


def _parse_stream(name: Any, natives: dict[str, str]) -> StreamName:
    match = _STREAM.fullmatch(name) if isinstance(name, str) and len(name) <= 80 else None
    if match is None:
        raise ChannelError("invalid_stream", f"Invalid request: invalid stream {shown(name)}")
    lower = match["symbol"]
    native = natives.get(lower)
    if native is None:
        raise ChannelError("invalid_stream",
                           f"Invalid request: invalid stream {shown(name)}: unknown symbol")
    if match["trade"]:
        return StreamName(f"{lower}@trade", native, "trade")
    if match["agg"]:
        return StreamName(f"{lower}@aggTrade", native, "aggTrade")
    if match["book"]:
        return StreamName(f"{lower}@bookTicker", native, "bookTicker")
    if match["ticker"]:
        return StreamName(f"{lower}@ticker", native, "ticker", 1000)
    if match["mini"]:
        return StreamName(f"{lower}@miniTicker", native, "miniTicker", 1000)
    interval = match["interval"]
    if interval is not None:
        if interval not in INTERVALS:
            raise ChannelError("invalid_stream",
                               f"Invalid request: invalid stream {shown(name)}: unknown interval")
        return StreamName(f"{lower}@kline_{interval}", native, "kline",
                          1000 if interval == "1s" else 2000, interval=interval)  # fmt: skip
    period = 100 if match["speed"] == "100ms" else 1000
    suffix = "@100ms" if period == 100 else ""
    if match["levels"]:
        levels = int(match["levels"])
        return StreamName(f"{lower}@depth{levels}{suffix}", native, "partial", period, levels)
    return StreamName(f"{lower}@depth{suffix}", native, "depth", period)


# ---------------------------------------------------------------------------------------------
# The process's registry of streams
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Stream:
    """One canonical stream of one symbol: its subscribers and what was last sent on it."""

    spec: StreamName
    subs: set[StreamConnection] = field(default_factory=set)
    #: subscribers that have not had the current value of a timed stream yet
    fresh: set[StreamConnection] = field(default_factory=set)
    dirty: bool = True
    due: float = 0.0
    last: Any = None  # partial: lastUpdateId sent; kline: (open time, last trade id, closed)


@dataclass(eq=False)
class Buffer:
    """Diff-depth increments merged over one window: ``(U, u]`` and each level's last qty."""

    first: int  # U - 1
    last: int  # u
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)


class SymbolState:
    """Everything the streams of one symbol need between two messages."""

    def __init__(self, native: str, binance: str, hub: Hub) -> None:
        self.native = native
        self.binance = binance
        self.market = hub.markets[native]
        self.streams: dict[str, Stream] = {}
        self.buffers: dict[int, Buffer | None] = {}
        self.book_seq: int | None = None
        self.bbo_seq = 0
        #: the top of the book for partial depth (None: no partial stream), and whether it
        #: follows the increments (False: re-read the book key at the next tick)
        self.mirror: BookMirror | None = None
        self.mirror_ok = False
        self.seen_seq = 0  # the newest increment seen while the mirror was stale

    def of_kind(self, *kinds: str) -> Iterable[Stream]:
        return [s for s in self.streams.values() if s.spec.kind in kinds]


class StreamHub:
    """The hub's raw listener for every Binance stream socket of this process (see module)."""

    account: str | None = None  # web.hub.Listener

    def __init__(self, app: Flask, hub: Hub, timer: bool = True) -> None:
        self.app = app
        self.hub = hub
        self.lock = threading.RLock()
        self.symbols: dict[str, SymbolState] = {}
        self.listening: set[str] = set()
        names = app.extensions["fairbook_binance_symbols"].binance
        self.binance: dict[str, str] = dict(names)
        self.natives = {b.lower(): n for n, b in names.items()}
        self._thread = threading.Thread(target=self._run, name="binance-streams", daemon=True)
        if timer:  # (tests drive _tick themselves)
            self._thread.start()

    # -- subscriptions (socket threads) ---------------------------------------------------------
    def subscribe(self, conn: StreamConnection, specs: list[StreamName], reply: bytes | None
                  ) -> None:  # fmt: skip
        """Register ``conn`` on ``specs`` and queue ``reply`` before any of their data."""
        for native in {s.native for s in specs} - self.listening:
            self.hub.listen_market(self, native)  # never unlistened: no race with a newcomer
            self.listening.add(native)
        with self.lock:
            for spec in specs:
                st = self.symbols.get(spec.native)
                if st is None:
                    st = self.symbols[spec.native] = SymbolState(
                        spec.native, self.binance[spec.native], self.hub)
                stream = st.streams.get(spec.name)
                if stream is None:
                    stream = st.streams[spec.name] = Stream(spec)
                    if spec.kind == "depth" and spec.period not in st.buffers:
                        st.buffers[spec.period] = None
                    if spec.kind == "partial" and st.mirror is None:
                        st.mirror = BookMirror(st.market, spec.native)
                        st.mirror_ok = False  # loaded by the timer, off the pub/sub thread
                stream.subs.add(conn)
                if spec.period:
                    stream.fresh.add(conn)
                conn.streams[spec.name] = spec
            if reply is not None:
                conn.send_frame(reply)

    def unsubscribe(self, conn: StreamConnection, names: Iterable[str]) -> None:
        with self.lock:
            for name in names:
                spec = conn.streams.pop(name, None)
                if spec is None:
                    continue
                st = self.symbols.get(spec.native)
                stream = st.streams.get(name) if st is not None else None
                if st is None or stream is None:
                    continue
                stream.subs.discard(conn)
                stream.fresh.discard(conn)
                if not stream.subs:
                    del st.streams[name]
                    if spec.kind == "depth" and not any(
                            s.spec.period == spec.period for s in st.of_kind("depth")):
                        st.buffers.pop(spec.period, None)
                    if spec.kind == "partial" and not st.of_kind("partial"):
                        st.mirror = None
                    if not st.streams:
                        del self.symbols[spec.native]

    def remove(self, conn: StreamConnection) -> None:
        self.unsubscribe(conn, list(conn.streams))

    # -- hub interface (the pub/sub thread, under the hub lock) ---------------------------------
    def offer(self, frame: bytes) -> bool:  # web.hub.Listener; never called for a raw listener
        return True

    def slow_consumer(self) -> None:
        """The hub dropped this listener (it only does so after a failure): listen again."""
        log.error("the hub dropped the Binance stream listener; listening again")
        threading.Thread(target=self._relisten, daemon=True).start()

    def _relisten(self) -> None:
        for native in list(self.listening):
            self.hub.listen_market(self, native)

    def revoked(self) -> None:
        pass

    def failed(self) -> None:
        self.slow_consumer()

    def on_account(self, account: str, body: dict[str, Any]) -> bool:
        return True

    def on_resync(self) -> bool:
        """Messages may have been lost: the next diff event shows the gap to its clients (as
        Binance's procedure expects); the partial books and statistics are re-read."""
        with self.lock:
            for st in self.symbols.values():
                st.mirror_ok = False
                for stream in st.streams.values():
                    stream.dirty = True
        return True

    def on_market(self, symbol: str, body: dict[str, Any]) -> bool:
        slow: list[StreamConnection] = []
        try:
            with self.lock:
                st = self.symbols.get(symbol)
                if st is not None:
                    self._market(st, body, slow)
        except Exception:  # any unusable message (a bad decimal too) costs this message only
            log.exception("a Binance stream could not encode a %s message", symbol[:40])
        self._drop(slow)
        return True  # one socket's trouble is its own (_drop), never the listener's

    def _market(self, st: SymbolState, body: dict[str, Any], slow: list[StreamConnection]
                ) -> None:  # fmt: skip
        now = now_ms()
        trades = body.get("trades") or []
        if trades:
            for stream in st.of_kind("trade"):
                for t in trades:
                    _fanout(stream, {"e": "trade", "E": now, "s": st.binance, "t": t["trade_id"],
                                     "p": t["price"], "q": t["quantity"], "T": t["timestamp"],
                                     "m": t["aggressor_side"] == "sell", "M": True},
                            slow)  # fmt: skip
            aggs = None
            for stream in st.of_kind("aggTrade"):
                aggs = aggs if aggs is not None else translate.agg_trades(trades)
                for a in aggs:
                    _fanout(stream, {"e": "aggTrade", "E": now, "s": st.binance, **a}, slow)
            for stream in st.of_kind("kline", "ticker", "miniTicker"):
                stream.dirty = True
        increment = body.get("book")
        if increment:
            first, last = int(increment["prev_sequence"]), int(increment["sequence"])
            bids, asks = increment.get("bids") or [], increment.get("asks") or []
            st.book_seq = last
            for period, buf in list(st.buffers.items()):
                if buf is not None and buf.last != first:  # a gap: never merged over
                    self._flush_depth(st, period, slow)
                    buf = None
                if buf is None:
                    buf = st.buffers[period] = Buffer(first, last)
                buf.last = last
                for price, qty in bids:
                    buf.bids[price] = qty
                for price, qty in asks:
                    buf.asks[price] = qty
            if st.mirror is not None:
                self._follow(st, increment, first, last)
        bbo = body.get("bbo")
        if bbo and int(bbo.get("sequence") or 0) > st.bbo_seq:
            st.bbo_seq = int(bbo["sequence"])
            zero_p, zero_q = st.market.format_price(0), st.market.format_qty(0)
            bid, ask = bbo.get("bid_price"), bbo.get("ask_price")
            for stream in st.of_kind("bookTicker"):  # an empty side: zeros, as REST's
                _fanout(stream, {"u": st.book_seq if st.book_seq is not None else st.bbo_seq,
                                 "s": st.binance, "b": bid or zero_p,
                                 "B": bbo.get("bid_qty") if bid else zero_q, "a": ask or zero_p,
                                 "A": bbo.get("ask_qty") if ask else zero_q}, slow)  # fmt: skip
            for stream in st.of_kind("ticker"):
                stream.dirty = True

    @staticmethod
    def _follow(st: SymbolState, increment: dict[str, Any], first: int, last: int) -> None:
        mirror = st.mirror
        assert mirror is not None
        if st.mirror_ok:
            if last <= mirror.sequence:
                return
            if first == mirror.sequence:
                mirror.apply(increment)
                if mirror.reliable_for(max(PARTIAL_LEVELS)):
                    return
            st.mirror_ok = False  # a gap, or the top needs levels the key did not hold
        st.seen_seq = max(st.seen_seq, last)

    def _flush_depth(self, st: SymbolState, period: int, slow: list[StreamConnection]) -> None:
        buf = st.buffers.get(period)
        if buf is None:
            return
        st.buffers[period] = None
        payload = {"e": "depthUpdate", "E": now_ms(), "s": st.binance, "U": buf.first + 1,
                   "u": buf.last, "b": [[p, q] for p, q in buf.bids.items()],
                   "a": [[p, q] for p, q in buf.asks.items()]}  # fmt: skip
        for stream in st.of_kind("depth"):
            if stream.spec.period == period:
                _fanout(stream, payload, slow)

    def _drop(self, slow: list[StreamConnection]) -> None:
        for conn in dict.fromkeys(slow):
            self.remove(conn)
            conn.slow_consumer()

    # -- the timer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            try:
                with self.app.app_context():
                    self._tick(time.monotonic())
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("binance streams: redis unavailable (%s)", type(exc).__name__)
            except Exception:  # a bug must not stop every timed stream of the process
                log.exception("binance streams timer failed")

    def _tick(self, mono: float) -> None:
        slow: list[StreamConnection] = []
        reads: list[tuple[SymbolState, Stream]] = []
        reload: list[SymbolState] = []
        with self.lock:
            for st in list(self.symbols.values()):
                if st.mirror is not None and not st.mirror_ok:
                    reload.append(st)
                for stream in list(st.streams.values()):
                    if not stream.spec.period or mono < stream.due:
                        continue  # real-time streams are sent by on_market
                    stream.due = mono + stream.spec.period / 1000 - TICK_S / 2
                    kind = stream.spec.kind
                    if kind == "depth":
                        self._flush_depth(st, stream.spec.period, slow)
                    elif kind == "partial":
                        self._partial(st, stream, slow)
                    elif stream.dirty or stream.fresh or _closing(stream):
                        reads.append((st, stream))
        self._drop(slow)
        for st in reload:
            self._reload(st)
        for st, stream in reads:
            self._timed(st, stream)

    def _partial(self, st: SymbolState, stream: Stream, slow: list[StreamConnection]) -> None:
        mirror = st.mirror
        if mirror is None or not st.mirror_ok:
            return  # re-read first (this tick's reload): sent at the next one
        levels = stream.spec.levels
        payload = {"lastUpdateId": mirror.sequence, "bids": mirror.top("bids", levels),
                   "asks": mirror.top("asks", levels)}  # fmt: skip
        if stream.last != mirror.sequence:
            stream.last = mirror.sequence
            stream.fresh.clear()
            _fanout(stream, payload, slow)
        elif stream.fresh:
            _fanout(stream, payload, slow, only=stream.fresh)
            stream.fresh.clear()

    def _reload(self, st: SymbolState) -> None:
        """Re-read the book key for the partial streams (outside the lock: a Redis read)."""
        st_ = state()
        raw = st_.redis.get(st_.namespace.keys_for(st.native).book(st.native))
        snap = wire.loads(raw) if raw else {"sequence": 0, "bids": [], "asks": []}
        with self.lock:
            mirror = st.mirror
            if mirror is None or st.mirror_ok:
                return
            mirror.load(snap)
            # an increment newer than the key was seen while stale: the key is behind it,
            # read again next tick (a quiet book must not stay one increment behind)
            st.mirror_ok = mirror.sequence >= st.seen_seq

    def _timed(self, st: SymbolState, stream: Stream) -> None:
        """A kline or ticker stream's due send: read (outside the lock), then offer."""
        spec = stream.spec
        app_state = state()
        with self.lock:
            dirty, stream.dirty = stream.dirty, False
        if spec.kind == "kline":
            rows = candles.klines(app_state.redis, app_state.namespace.keys_for(st.native),
                                  st.market, spec.interval, None, None, 2)  # fmt: skip
            self._klines(st, stream, rows)
            return
        full = spec.kind == "ticker"
        t = ticker_24hr(app_state, st.native, full)  # the REST ticker: one definition
        now = now_ms()
        if full:
            payload = {"e": "24hrTicker", "E": now, "s": st.binance, "p": t["priceChange"],
                       "P": t["priceChangePercent"], "w": t["weightedAvgPrice"],
                       "x": t["prevClosePrice"], "c": t["lastPrice"], "Q": t["lastQty"],
                       "b": t["bidPrice"], "B": t["bidQty"], "a": t["askPrice"],
                       "A": t["askQty"], "o": t["openPrice"], "h": t["highPrice"],
                       "l": t["lowPrice"], "v": t["volume"], "q": t["quoteVolume"],
                       "O": t["openTime"], "C": t["closeTime"], "F": t["firstId"],
                       "L": t["lastId"], "n": t["count"]}  # fmt: skip
        else:
            payload = {"e": "24hrMiniTicker", "E": now, "s": st.binance, "c": t["lastPrice"],
                       "o": t["openPrice"], "h": t["highPrice"], "l": t["lowPrice"],
                       "v": t["volume"], "q": t["quoteVolume"]}  # fmt: skip
        slow: list[StreamConnection] = []
        with self.lock:
            if dirty:
                _fanout(stream, payload, slow)
            elif stream.fresh:
                _fanout(stream, payload, slow, only=stream.fresh)
            stream.fresh.clear()
        self._drop(slow)

    def _klines(self, st: SymbolState, stream: Stream, rows: list[dict[str, Any]]) -> None:
        """Send each candle that changed (or closed) since the last send, the newest one to
        new subscribers. ``x`` is true once a newer candle exists or the clock passed its
        close time. ``stream.last`` = (open time, last trade id, closed, close time)."""
        now = now_ms()
        slow: list[StreamConnection] = []
        with self.lock:
            sent_newest = False
            for i, c in enumerate(rows):
                newest = i == len(rows) - 1
                closed = not newest or now > c["close_time"]
                last = stream.last
                if last is None and not newest:
                    continue  # a new stream starts with the current candle
                if last is not None and (c["open_time"] < last[0] or (
                        c["open_time"] == last[0] and (last[2] or (
                            c["last_trade_id"] == last[1] and closed == last[2])))):
                    continue  # older, already sent closed, or unchanged
                stream.last = (c["open_time"], c["last_trade_id"], closed, c["close_time"])
                _fanout(stream, _kline(st, stream.spec.interval, c, closed, now), slow)
                sent_newest = sent_newest or newest
            if stream.fresh and rows and not sent_newest:
                c = rows[-1]
                _fanout(stream, _kline(st, stream.spec.interval, c, now > c["close_time"], now),
                        slow, only=stream.fresh)  # fmt: skip
            stream.fresh.clear()
        self._drop(slow)


def _closing(stream: Stream) -> bool:
    """A kline stream whose last candle was sent open and whose close time has passed."""
    last = stream.last
    return stream.spec.kind == "kline" and last is not None and not last[2] and (
        now_ms() > last[3])


def _kline(st: SymbolState, interval: str, c: dict[str, Any], closed: bool, now: int
           ) -> dict[str, Any]:  # fmt: skip
    return {"e": "kline", "E": now, "s": st.binance,
            "k": {"t": c["open_time"], "T": c["close_time"], "s": st.binance, "i": interval,
                  "f": c["first_trade_id"], "L": c["last_trade_id"], "o": c["open"],
                  "c": c["close"], "h": c["high"], "l": c["low"], "v": c["volume"],
                  "n": c["trades"], "x": closed, "q": c["quote_volume"],
                  "V": c["taker_buy_volume"], "Q": c["taker_buy_quote_volume"],
                  "B": "0"}}  # fmt: skip


def _fanout(stream: Stream, payload: Any, slow: list[StreamConnection],
            only: Iterable[StreamConnection] | None = None) -> None:  # fmt: skip
    """Encode ``payload`` once per form (raw, combined) and offer it to the subscribers."""
    data = wire.dumps(payload)
    raw = None
    combined: dict[str, bytes] = {}  # per spelling of the stream's name (``@1000ms`` or not)
    name = stream.spec.name
    for conn in list(only if only is not None else stream.subs):
        if conn.combined:
            spec = conn.streams.get(name)
            given = spec.given or name if spec is not None else name
            frame = combined.get(given)
            if frame is None:
                frame = combined[given] = text_frame(b'{"stream":"%s","data":%s}'
                                                     % (given.encode(), data))  # fmt: skip
        else:
            if raw is None:
                raw = text_frame(data)
            frame = raw
        if not conn.offer(frame):
            slow.append(conn)


# ---------------------------------------------------------------------------------------------
# One socket
# ---------------------------------------------------------------------------------------------


class StreamConnection(Connection):
    """A Binance stream socket: Binance's request methods, replies and error shapes."""

    def __init__(self, ws: Any, hub: Hub, streams: StreamHub, combined: bool, max_streams: int,
                 max_rate: int, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(ws, hub, **kwargs)
        self.registry = streams
        self.combined = combined
        self.max_streams = max_streams
        self.max_rate = max_rate
        self.streams: dict[str, StreamName] = {}  # subscription order (LIST_SUBSCRIPTIONS)
        self._window = 0
        self._count = 0

    def send_frame(self, frame: bytes) -> None:
        if not self.offer(frame):
            self.registry.remove(self)
            self.slow_consumer()

    def answer(self, msg_id: Any, result: Any = None) -> None:
        self.send_frame(text_frame(wire.dumps({"result": result, "id": msg_id})))

    def error(self, code: str | int, message: str, msg_id: Any = None) -> None:
        """Binance's ``{"error": {"code", "msg"}, "id"}`` (the socket stays open)."""
        number = code if isinstance(code, int) else INVALID_REQUEST
        if not message.startswith(("Invalid ", "Unknown ")):
            message = f"Invalid request: {message}"
        self.send_frame(text_frame(wire.dumps({"error": {"code": number, "msg": message},
                                               "id": msg_id})))  # fmt: skip

    def handle(self, raw: str | bytes) -> None:
        """Binance closes a socket that sends more than 5 messages a second (its limit)."""
        window = int(time.monotonic())
        if window != self._window:
            self._window, self._count = window, 0
        self._count += 1
        if self.max_rate and self._count > self.max_rate:
            self.registry.remove(self)
            self.close(POLICY_VIOLATION, f"{TOO_MANY_MESSAGES}: at most {self.max_rate} per second")
            return
        super().handle(raw)

    def _handle(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.error(INVALID_JSON, f"Invalid JSON: {exc.msg.lower()} at line {exc.lineno} "
                       f"column {exc.colno}")  # fmt: skip
            return
        except (ValueError, RecursionError):
            self.error(INVALID_JSON, "Invalid JSON: not a JSON text")
            return
        if not isinstance(msg, dict):
            self.error(INVALID_REQUEST, "Invalid request: expected a JSON object with a method")
            return
        msg_id = msg.get("id")
        if not _valid_id(msg_id):
            self.error(INVALID_REQUEST, "Invalid request: request ID must be a 64-bit signed "
                       "integer, an alphanumeric string of at most 36 characters, or null")
            return
        method = msg.get("method")
        if "method" not in msg:
            self.error(INVALID_REQUEST, "Invalid request: missing field `method`", msg_id)
            return
        if method not in METHODS:
            names = ", ".join(f"`{m}`" for m in METHODS)
            self.error(INVALID_REQUEST, f"Invalid request: unknown variant {shown(method)}, "
                       f"expected one of {names}", msg_id)  # fmt: skip
            return
        if set(msg) - {"method", "params", "id"}:
            self.error(INVALID_REQUEST, "Invalid request: too many parameters", msg_id)
            return
        params = msg.get("params", [])
        if not isinstance(params, list):
            self.error(INVALID_REQUEST, "Invalid request: params must be a list", msg_id)
            return
        try:
            getattr(self, f"m_{method.lower()}")(params, msg_id)
        except ChannelError as exc:
            self.error(INVALID_REQUEST, exc.message, msg_id)
        except redis.exceptions.RedisError as exc:
            log.warning("redis unavailable for a stream request: %s", exc)
            self.error(INVALID_REQUEST, "Invalid request: market data is unavailable, retry "
                       "later", msg_id)  # fmt: skip

    def _specs(self, params: list[Any]) -> list[StreamName]:
        if not params:
            raise ChannelError("invalid", "Invalid request: params must list at least one stream")
        if len(params) > self.max_streams:
            raise ChannelError("invalid", f"Invalid request: too many streams (at most "
                               f"{self.max_streams} per connection)")  # fmt: skip
        specs = [parse_stream(p, self.registry.natives) for p in params]
        return list({s.name: s for s in specs}.values())

    def subscribe(self, specs: list[StreamName], msg_id: Any, reply: bool = True) -> None:
        new = [s for s in specs if s.name not in self.streams]
        if len(self.streams) + len(new) > self.max_streams:
            raise ChannelError("invalid", f"Invalid request: too many streams (at most "
                               f"{self.max_streams} per connection)")  # fmt: skip
        if new and not self.hub.wait_ready(5.0):
            raise redis.exceptions.ConnectionError("market data not ready")
        body = text_frame(wire.dumps({"result": None, "id": msg_id})) if reply else None
        self.registry.subscribe(self, new, body)

    def m_subscribe(self, params: list[Any], msg_id: Any) -> None:
        specs = self._specs(params)
        try:  # like a native subscribe: a first subscriber may read a book key
            count_request()
        except RateLimited as exc:
            self.error(INVALID_REQUEST, f"Invalid request: {exc.message}", msg_id)
            return
        self.subscribe(specs, msg_id)

    def m_unsubscribe(self, params: list[Any], msg_id: Any) -> None:
        specs = self._specs(params)
        self.registry.unsubscribe(self, [s.name for s in specs])
        self.answer(msg_id)

    def m_list_subscriptions(self, params: list[Any], msg_id: Any) -> None:
        if params:
            self.error(INVALID_REQUEST, "Invalid request: too many parameters", msg_id)
            return
        self.answer(msg_id, [s.given or s.name for s in self.streams.values()])

    def _property(self, params: list[Any], msg_id: Any, count: int) -> bool:
        if len(params) > count:
            self.error(INVALID_REQUEST, "Invalid request: too many parameters", msg_id)
        elif not params or not isinstance(params[0], str):
            self.error(INVALID_REQUEST, "Invalid request: property name must be a string", msg_id)
        elif params[0] != "combined":
            self.error(UNKNOWN_PROPERTY, "Unknown property", msg_id)
        else:
            return True
        return False

    def m_set_property(self, params: list[Any], msg_id: Any) -> None:
        if self._property(params, msg_id, 2):
            if len(params) < 2 or not isinstance(params[1], bool):
                self.error(BAD_VALUE, "Invalid value type: expected Boolean", msg_id)
                return
            self.combined = params[1]
            self.answer(msg_id)

    def m_get_property(self, params: list[Any], msg_id: Any) -> None:
        if self._property(params, msg_id, 1):
            self.answer(msg_id, self.combined)


def _valid_id(value: Any) -> bool:
    """Binance's accepted ids: a 64-bit signed integer, up to 36 letters and digits, or null."""
    if value is None:
        return True
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and _ID_TEXT.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Flask wiring
# ---------------------------------------------------------------------------------------------

_registry_lock = threading.Lock()


def get_streams() -> StreamHub:
    """This process's stream registry (started on first use, after gunicorn forked)."""
    ext = current_app.extensions
    found = ext.get("fairbook_binance_streams")
    if found is None:
        with _registry_lock:
            found = ext.get("fairbook_binance_streams")
            if found is None:
                found = ext["fairbook_binance_streams"] = StreamHub(
                    current_app._get_current_object(), get_hub())  # type: ignore[attr-defined]
    return found


def _url_streams(path: str | None, query: str | None) -> list[str]:
    """Stream names of the URL: ``/ws/a/b``, ``/stream?streams=a/b`` (empty parts dropped)."""
    names: list[str] = []
    for text in (path, query):
        if text:
            names += [n for n in text.split("/") if n]
    return names


def _url_specs(names: list[str], natives: dict[str, str]) -> tuple[list[StreamName], list[str]]:
    """The names that are streams, and those that are not (Binance opens the socket anyway:
    ccxt connects to ``/ws/<n>`` and subscribes afterwards)."""
    specs: list[StreamName] = []
    bad: list[str] = []
    for name in names:
        try:
            specs.append(parse_stream(name, natives))
        except ChannelError:
            bad.append(name)
    return list({s.name: s for s in specs}.values()), bad


def serve(ws: Any, names: list[str], combined: bool) -> None:
    """One stream socket for its whole life."""
    registry = get_streams()

    def make(ws: Any, hub: Hub, **kwargs: Any) -> StreamConnection:
        return StreamConnection(
            ws, hub, registry, combined,
            max_streams=max(1, int(setting("FAIRBOOK_BINANCE_WS_MAX_STREAMS"))),
            max_rate=int(setting("FAIRBOOK_BINANCE_WS_MESSAGES_PER_S")), **kwargs)  # fmt: skip

    with serving(ws, make) as conn:
        try:
            specs, bad = _url_specs(names, registry.natives)
            for name in bad:
                if "@" in name:  # a stream name that is wrong, not a placeholder like ccxt's "0"
                    conn.error(INVALID_REQUEST, f"Invalid request: invalid stream {shown(name)}")
            if specs:
                try:
                    conn.subscribe(specs, None, reply=False)
                except (ChannelError, redis.exceptions.RedisError) as exc:
                    conn.error(INVALID_REQUEST, exc.message if isinstance(exc, ChannelError)
                               else "market data unavailable")  # fmt: skip
            while not conn.done.is_set():
                data = ws.receive(timeout=1.0)
                if data is not None:
                    conn.handle(data)
        except Exception as exc:  # ConnectionClosed, or a bug: the socket ends, the process on
            if type(exc).__name__ != "ConnectionClosed":
                log.exception("binance stream socket failed")
        finally:
            registry.remove(conn)


def init_app(app: Flask) -> None:
    """Register ``/ws/<streams>``, ``/stream`` and ``/stream/<streams>`` (flask-sock)."""
    sock = Sock(app)

    @app.before_request
    def _count_stream_connection() -> Any:
        """Binance's caps before the upgrade: connection attempts per address (shared limiter)
        and streams named in the URL."""
        path = request.path
        if not (path.startswith(("/ws/", "/stream/")) or path == "/stream"):
            return None
        retry = count_stream_connection()
        if retry is not None:
            response = error_response(429, "too_many_connections",
                                      "too many connection attempts from this address")
            response.headers["Retry-After"] = str(retry)  # fmt: skip
            return response
        cap = int(setting("FAIRBOOK_BINANCE_WS_MAX_STREAMS"))
        names = _url_streams(path.split("/", 2)[2] if path.count("/") >= 2 else "",
                             request.args.get("streams"))  # fmt: skip
        if cap and len(names) > cap:
            return error_response(400, "too_many_streams",
                                  f"at most {cap} streams per connection")  # fmt: skip
        return None

    @sock.route("/ws/<path:path>")
    def binance_raw_stream(ws: Any, path: str) -> None:
        """Raw streams (``/ws/btcusdt@trade/...``), or a listen key's user data stream."""
        if LISTEN_KEY.fullmatch(path):
            serve_listen_key(ws, path)
            return
        serve(ws, _url_streams(path, None), combined=False)

    @sock.route("/stream")
    def binance_combined_stream(ws: Any) -> None:
        """Combined streams: ``?streams=a/b``, each event as ``{"stream", "data"}``."""
        serve(ws, _url_streams(None, request.args.get("streams")), combined=True)

    @sock.route("/stream/<path:path>")
    def binance_combined_stream_path(ws: Any, path: str) -> None:
        """As ``/stream`` (Binance: ``combined`` is true on ``/stream/``)."""
        serve(ws, _url_streams(path, request.args.get("streams")), combined=True)
