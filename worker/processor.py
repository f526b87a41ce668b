"""Pure batch processing: journal entries in, engine state advanced, Redis writes described out.

No I/O here. The runner feeds XREAD batches and commits what :meth:`Processor.process` returns;
recovery and ``python -m worker replay`` run the very same code with ``emit=False``, so the state
they rebuild (engine, open orders, sequences, trade numbers) cannot drift from the live worker's.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import orjson

from engine.events import BBO, LEVEL, ORDER, REJECT, TRADE
from engine.matcher import MatchingEngine
from engine.schema import (
    BUY,
    CANCELLED,
    FILLED,
    REJECTED,
    AmendOrder,
    CancelAll,
    CancelOrder,
    Market,
    NewOrder,
    Reason,
    SchemaError,
    command_from_wire,
)
from worker.keys import DEFAULT_NAMESPACE, Keys
from worker.orders import MarketFormat, OrderState, jstr
from worker.render import Plan, Renderer, resp

log = logging.getLogger("worker")

CLOSED_STATUSES = frozenset((FILLED, CANCELLED, REJECTED))
AMENDED = "amended"  # the engine's order-event reason for a successful amend
WORKER_SNAPSHOT_MAGIC = b"FBWK"
WORKER_SNAPSHOT_VERSION = 1

Entry = Sequence[Any]  # (stream id, fields): a tuple from redis-py, a list from raw hiredis
_ACCOUNT = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
#: ``reply_to`` = "<inbox>-<n>" (n: 1-20 decimal digits): the reply goes to channel
#: ``inbox:<inbox>`` under the whole token
_INBOX = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_OK_INBOXES: set[str] = set()  # inbox ids known to pass _INBOX (cleared when full: a cache)
_OK_ACCOUNTS_MAX = 100_000  # accounts known to pass _ACCOUNT (cleared when full: a cache)
DUPLICATE_ORDER_ID = Reason.DUPLICATE_ORDER_ID


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fill_head(st: OrderState | None, symbol: str, side: str) -> str:
    """The opening of a fill event up to the fill's own fields; cached on the order (an order's
    id, client id, symbol and side never change)."""
    if st is None:
        return (
            f'{{"event":"fill","order_id":0,"client_order_id":null,"symbol":"{symbol}",'
            f'"side":"{side}",'
        )
    head = st.fill_head = (
        f'{{"event":"fill","order_id":{st.id},"client_order_id":{jstr(st.client_order_id)},'
        f'"symbol":"{symbol}","side":"{side}",'
    )
    return head


def _field(flat: list[Any], name: bytes) -> Any:
    """Value of ``name`` in a flat [field, value, ...] list, None if absent."""
    for i in range(0, len(flat) - 1, 2):
        if flat[i] == name:
            return flat[i + 1]
    return None


def parse_stream_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` -> (ms, seq), the order Redis sorts stream ids in."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Batch:
    """What one processed batch produced.

    ``plan`` (emit mode only) describes every write and message; :class:`~worker.render.Renderer`
    turns it into RESP commands (``render()`` here does it in-process). ``trades`` are the trade
    records in order, in both modes: (trades stream id, record JSON, maker account, taker
    account, symbol).
    """

    __slots__ = ("first_id", "last_id", "count", "plan", "trades")

    def __init__(self) -> None:
        self.first_id: str | None = None
        self.last_id: str | None = None
        self.count = 0
        self.plan: Plan | None = None
        self.trades: list[tuple[str, str, str, str, str]] = []


class DepthView:
    """One book side's top levels as the ``book:<symbol>`` key shows them, kept across batches.

    Why: the book key is rewritten after every batch that touches the symbol. Rebuilding its
    ``book_depth`` levels (500 per side) from the book each time cost O(depth) per batch: at
    live flow, one order per batch, that was more than half of process + render for a book of
    300 levels. A batch changes a few levels, so the view is patched with the batch's level
    changes (the very increments the market-data message carries) instead.

    Invariant between batches: ``keys`` are the best ``len(keys)`` levels of the side, best
    first (ask ticks, or minus bid ticks, so ascending either way), ``texts`` their rendered
    ``["price","qty"]``, and ``complete`` says whether that is every level of the side.
    """

    __slots__ = ("keys", "texts", "complete", "json")

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.texts: list[str] = []
        self.complete = False  # nothing loaded yet: the first refill reads the book
        self.json: str | None = None

    def patch(self, key: int, text: str | None, depth: int) -> None:
        """One level changed to ``text`` (None: the level is gone)."""
        keys = self.keys
        i = bisect_left(keys, key)
        n = len(keys)
        if i < n and keys[i] == key:
            if text is None:
                del keys[i]
                del self.texts[i]
            else:
                self.texts[i] = text
            self.json = None
        elif text is not None and (i < n or self.complete):  # beyond an incomplete view: hidden
            keys.insert(i, key)
            self.texts.insert(i, text)
            if n + 1 > depth:
                keys.pop()
                self.texts.pop()
                self.complete = False
            self.json = None

    def refill(self, side: Any, is_bid: bool, fmt: MarketFormat, depth: int) -> None:
        """Top the view up from the book after removals left it short of ``depth``."""
        have = len(self.keys)
        total = len(side)
        if self.complete or have >= depth or have >= total:
            self.complete = total <= depth
            return
        if is_bid:  # ascending prices: the best bid is last
            prices = side.islice(max(0, total - depth), total - have, reverse=True)
        else:
            prices = side.islice(have, depth)
        level = fmt.level_t
        keys = self.keys
        texts = self.texts
        for price in prices:
            keys.append(-price if is_bid else price)
            texts.append(level[(price, side[price].total)])
        self.complete = total <= depth
        self.json = None

    def render(self) -> str:
        text = self.json
        if text is None:
            text = self.json = "[" + ",".join(self.texts) + "]"
        return text


class _SymbolBatch:
    """Market data collected for one symbol during one batch."""

    __slots__ = ("trades", "levels", "bbo", "prev_sequence")

    def __init__(self, prev_sequence: int) -> None:
        self.trades: list[str] = []  # trade record JSON
        self.levels: dict[tuple[str, int], int] = {}
        self.bbo: tuple[Any, ...] | None = None
        self.prev_sequence = prev_sequence


class Processor:
    """The worker's whole in-memory state for one partition, advanced batch by batch."""

    def __init__(
        self,
        markets: dict[str, Market],
        partition: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
        engine: MatchingEngine | None = None,
        book_depth: int = 500,
        recent_len: int = 1000,
        closed_len: int = 1000,
    ) -> None:
        self.markets = markets
        self.partition = partition
        self.keys = Keys(partition, namespace)
        self.engine = engine if engine is not None else MatchingEngine(markets)
        self.fmt = {s: MarketFormat(m) for s, m in markets.items()}
        self.book_depth = book_depth
        self.recent_len = recent_len
        self.closed_len = closed_len
        self.renderer = Renderer(markets, partition, namespace, recent_len, closed_len)
        self.render_config = (partition, namespace, recent_len, closed_len)
        # -- state that lives in the worker snapshot ---------------------------------------
        self.orders: dict[int, OrderState] = {}  # open orders (plus, mid-batch, just closed)
        self.book_seq: dict[str, int] = dict.fromkeys(markets, 0)
        self.bbo_seq: dict[str, int] = dict.fromkeys(markets, 0)
        self.trade_no = 0  # every trade of the partition, from 1: the trades stream id's seq
        self.last_id: str | None = None  # last stream id applied
        self.entries = 0  # valid commands applied since genesis
        self.consumed = 0  # journal entries consumed since genesis (= fb:{pN}:applied_count)
        self._ok_accounts: set[str] = set()
        # symbol -> (bids, asks): the book key's levels, patched batch by batch (emit mode only)
        self._views: dict[str, tuple[DepthView, DepthView]] = {}

    # ------------------------------------------------------------------------------------------
    def process(self, entries: list[Entry], emit: bool = True) -> Batch:
        """Apply journal entries in order. With ``emit`` False only state advances (recovery,
        replay); the returned batch then holds just the trade records."""
        batch = Batch()
        if not entries:
            return batch
        if not emit:  # level changes are not collected: rebuild the views when emitting again
            self._views.clear()
        engine = self.engine
        markets = self.markets
        fmts = self.fmt
        orders = self.orders
        book_seq = self.book_seq
        bbo_seq = self.bbo_seq
        trades_out = batch.trades
        dirty: dict[int, OrderState] = {}
        symbols: dict[str, _SymbolBatch] = {}
        acct: list[tuple[str, Any]] = []  # (account, order Snap | rendered fill event)
        # (reply_to token, JSON | ("o", snap, fills) | ("c", ...))
        replies: list[tuple[str, Any]] = []
        trade_no = self.trade_no
        account_ok = _ACCOUNT.match

        count = 0
        ok_accounts = self._ok_accounts
        for raw_id, fields in entries:
            # ms straight from the id (bytes from XREAD): the text form is only needed for logs
            if isinstance(raw_id, bytes):
                ts = int(raw_id.partition(b"-")[0])
            else:
                ts = int(raw_id.partition("-")[0])
            if type(fields) is list:  # raw RESP: [field, value, ...]
                payload = fields[1] if len(fields) == 2 else _field(fields, b"c")
            else:  # redis-py: {field: value}
                payload = fields.get(b"c") if b"c" in fields else fields.get("c")
            # -- parse -------------------------------------------------------------------------
            try:
                wire = orjson.loads(payload)  # ~3x json.loads: this is per journal entry
                if not isinstance(wire, dict):
                    raise ValueError("not a JSON object")
            except (TypeError, ValueError) as exc:
                log.warning("entry %s: unreadable command (%s), skipped", _text(raw_id), exc)
                continue
            try:
                cmd = command_from_wire(wire, ts, markets)
                account = cmd.account
                if account not in ok_accounts:  # the regex once per account, not per command
                    if not account_ok(account):
                        raise SchemaError(
                            "invalid_field", "account must be 1-64 characters of A-Za-z0-9_.:-",
                            "account",
                        )  # fmt: skip
                    if len(ok_accounts) >= _OK_ACCOUNTS_MAX:
                        ok_accounts.clear()
                    ok_accounts.add(account)
            except SchemaError as exc:
                token = _reply_token(wire)
                if token is not None:
                    if emit:
                        body = _dumps({"ok": False, "error": exc.as_dict()})
                        replies.append((token, body))
                else:
                    log.warning("entry %s: invalid command, nobody to tell: %s", _text(raw_id),
                                exc)  # fmt: skip
                continue
            try:
                events = engine.apply(cmd)
            except Exception:  # an engine bug must not wedge the partition forever
                log.exception("entry %s: engine failed on %r", _text(raw_id), cmd)
                token = _reply_token(wire)
                if emit and token is not None:
                    err = {"code": "internal_error", "message": "the matching engine failed"}
                    replies.append((token, _dumps({"ok": False, "error": err})))
                continue
            kind = type(cmd)
            is_new = kind is NewOrder
            touched: OrderState | None = None  # the order a new/cancel/amend reply shows
            cancelled: list[OrderState] = []
            rejected: str | None = None
            target = cmd.id if is_new else getattr(cmd, "order_id", None)
            # -- events (most frequent kinds first) ----------------------------------------------
            for ev in events:
                tag = ev[0]
                if tag == ORDER:
                    _, symbol, oid, account, status, filled, remaining, cum_quote, reason = ev
                    st = orders.get(oid)
                    detached = False
                    if oid == target and is_new:
                        if reason == DUPLICATE_ORDER_ID:
                            # a hand-made entry reusing a live id: answer, touch nothing
                            st = self._new_state(cmd, ts)  # type: ignore[arg-type]
                            detached = True
                        elif st is None:
                            st = self._new_state(cmd, ts)  # type: ignore[arg-type]
                            orders[oid] = st
                    elif st is None:
                        log.error("entry %s: order event for unknown order %s", _text(raw_id), oid)
                        continue
                    st.status = status
                    st.filled = filled
                    st.remaining = remaining
                    st.cum_quote = cum_quote
                    st.updated_at = ts
                    if reason is not None:
                        if reason == AMENDED:
                            fmt = fmts[symbol]
                            new_price = st.price
                            if kind is AmendOrder and cmd.price is not None:  # type: ignore[union-attr]
                                new_price = fmt.price(cmd.price)  # type: ignore[union-attr]
                            st.set_terms(new_price, fmt.qty(filled + remaining))
                        else:
                            st.reason = reason
                    if not detached:
                        dirty[oid] = st
                    if oid == target:
                        touched = st
                    elif kind is CancelAll and status == CANCELLED:
                        cancelled.append(st)
                    if emit:
                        # == st.snap() now; replies reuse this very tuple, so the renderer
                        # renders the order body once for the event and the reply
                        snap = (st.head, status, st.reason, st.mid, symbol, filled, remaining,
                                cum_quote, st.created_at, ts)  # fmt: skip
                        st.last_snap = snap
                        acct.append((account, snap))
                elif tag == LEVEL:
                    symbol = ev[1]
                    if emit:
                        sb = symbols.get(symbol)
                        if sb is None:
                            sb = symbols[symbol] = _SymbolBatch(book_seq[symbol])
                        sb.levels[(ev[2], ev[3])] = ev[4]
                    book_seq[symbol] += 1
                elif tag == TRADE:
                    (_, symbol, trade_id, price, qty, taker_side, maker_id, taker_id,
                     maker_account, taker_account, maker_fee, taker_fee, tts) = ev  # fmt: skip
                    fmt = fmts[symbol]
                    trade_no += 1
                    p = fmt.price_t[price]
                    q = fmt.qty_t[qty]
                    mf = fmt.quote_t[maker_fee]
                    tf = fmt.quote_t[taker_fee]
                    asset = fmt.quote_asset
                    record = (
                        f'{{"trade_id":{trade_id},"symbol":"{symbol}","price":"{p}",'
                        f'"quantity":"{q}","aggressor_side":"{taker_side}",'
                        f'"maker_order_id":{maker_id},"taker_order_id":{taker_id},'
                        f'"maker_fee":"{mf}","taker_fee":"{tf}","fee_asset":"{asset}",'
                        f'"timestamp":{tts}}}'
                    )
                    trades_out.append(
                        (f"{tts}-{trade_no}", record, maker_account, taker_account, symbol)
                    )
                    common = f'"trade_id":{trade_id},"price":"{p}","quantity":"{q}","fee":"'
                    maker_body = f'{common}{mf}","fee_asset":"{asset}","liquidity":"maker"'
                    taker_body = f'{common}{tf}","fee_asset":"{asset}","liquidity":"taker"'
                    maker = orders.get(maker_id)
                    if maker is not None:
                        maker.fills.append(f"{{{maker_body}}}")
                        maker.new_fills = True
                    taker = orders.get(taker_id)
                    if taker is not None:
                        taker.fills.append(f"{{{taker_body}}}")
                        taker.new_fills = True
                    if emit:
                        # fill events: per-order cached head + this fill + timestamp
                        tail = f',"timestamp":{tts}}}'
                        head = maker.fill_head if maker is not None else None
                        if head is None:
                            head = _fill_head(maker, symbol, "sell" if taker_side == BUY else "buy")
                        acct.append((maker_account, f"{head}{maker_body}{tail}"))
                        head = taker.fill_head if taker is not None else None
                        if head is None:
                            head = _fill_head(taker, symbol, taker_side)
                        acct.append((taker_account, f"{head}{taker_body}{tail}"))
                        sb = symbols.get(symbol)
                        if sb is None:
                            sb = symbols[symbol] = _SymbolBatch(book_seq[symbol])
                        sb.trades.append(record)
                elif tag == BBO:
                    symbol = ev[1]
                    bbo_seq[symbol] += 1
                    if emit:
                        sb = symbols.get(symbol)
                        if sb is None:
                            sb = symbols[symbol] = _SymbolBatch(book_seq[symbol])
                        sb.bbo = ev[2:]
                elif tag == REJECT:
                    rejected = ev[3]
            # -- reply (only to a web process waiting in its inbox) -----------------------------
            token = _reply_token(wire) if emit else None
            if token is not None:
                if rejected is not None:
                    reply: Any = _reject_reply(rejected)
                elif kind is CancelAll:
                    reply = ("c", [(o.last_snap, tuple(o.fills)) for o in cancelled])
                elif touched is not None:
                    reply = ("o", touched.last_snap, tuple(touched.fills))
                else:  # cannot happen with a correct engine; never leave a client hanging
                    reply = '{"ok":false,"error":{"code":"internal_error","message":"no outcome"}}'
                replies.append((token, reply))
            count += 1
        batch.count = count

        self.trade_no = trade_no
        self.entries += batch.count
        self.consumed += len(entries)
        first = entries[0][0]
        last = entries[-1][0]
        batch.first_id = first.decode() if isinstance(first, bytes) else first
        self.last_id = batch.last_id = last.decode() if isinstance(last, bytes) else last
        # -- writes (described, rendered elsewhere) ------------------------------------------------
        records: list[tuple[Any, ...]] = []
        for oid, st in dirty.items():
            closed = st.status in CLOSED_STATUSES
            if st.new_fills:
                st.fills_json = None
                st.new_fills = False
            if emit:
                fills_json = st.fills_json
                if fills_json is None:
                    fills_json = st.fills_json = "[" + ",".join(st.fills) + "]"
                records.append((oid, st.account, st.last_snap, fills_json, st.persisted, closed))
            st.persisted = True
            if closed and orders.get(oid) is st:
                del orders[oid]
        if not emit:
            return batch
        books = []
        for symbol in sorted(symbols):
            sb = symbols[symbol]
            book = engine.book(symbol)
            bids, asks = self._depth_json(symbol, book, sb.levels)
            books.append(
                (symbol, book_seq[symbol], bids, asks, book.bbo(), bbo_seq[symbol],
                 book.trade_seq, sb.trades, [(s, p, q) for (s, p), q in sb.levels.items()],
                 sb.prev_sequence, sb.bbo)
            )  # fmt: skip
        batch.plan = (self.last_id, trades_out, acct, replies, records, books, self.consumed)
        return batch

    def _depth_json(
        self, symbol: str, book: Any, changes: dict[tuple[str, int], int]
    ) -> tuple[str, str]:
        """The book key's bids and asks JSON after this batch's level ``changes``."""
        depth = self.book_depth
        if depth <= 0:
            return "[]", "[]"
        fmt = self.fmt[symbol]
        views = self._views.get(symbol)
        if views is None:  # read from the book, which already holds this batch's changes
            views = self._views[symbol] = (DepthView(), DepthView())
        else:
            bid_view, ask_view = views
            level = fmt.level_t
            for (side, price), qty in changes.items():
                text = level[(price, qty)] if qty else None
                if side == BUY:
                    bid_view.patch(-price, text, depth)
                else:
                    ask_view.patch(price, text, depth)
        views[0].refill(book.bids, True, fmt, depth)
        views[1].refill(book.asks, False, fmt, depth)
        return views[0].render(), views[1].render()

    def render(self, batch: Batch) -> tuple[list[str], list[tuple[str, str]]]:
        """Render a batch's plan in this process: (RESP commands, pub/sub messages)."""
        if batch.plan is None:
            return [], []
        return self.renderer.render(batch.plan)

    def _new_state(self, cmd: NewOrder, ts: int) -> OrderState:
        fmt = self.fmt[cmd.symbol]
        return OrderState(
            cmd.id,
            cmd.account,
            cmd.symbol,
            cmd.side,
            cmd.type,
            cmd.time_in_force,
            cmd.post_only,
            None if cmd.price is None else fmt.price_t[cmd.price],
            None if cmd.stop_price is None else fmt.price_t[cmd.stop_price],
            None if cmd.quantity is None else fmt.qty_t[cmd.quantity],
            None if cmd.quote_quantity is None else fmt.quote_t[cmd.quote_quantity],
            cmd.client_order_id,
            ts,
        )

    def book_json(self, symbol: str) -> str:
        """The ``book:<symbol>`` value as of now (same text the commits write)."""
        book = self.engine.book(symbol)
        bids, asks = book.depth(self.book_depth)
        fmt = self.fmt[symbol]
        levels_json = self.renderer.levels_json
        return self.renderer.book_json(
            fmt, symbol, self.book_seq[symbol], levels_json(fmt, bids), levels_json(fmt, asks),
            book.bbo(), self.bbo_seq[symbol], book.trade_seq,
        )  # fmt: skip

    def all_books_ops(self) -> list[str]:
        """SET every book key from memory (after recovery, so readers see the current books)."""
        return [resp(["SET", self.keys.book(s), self.book_json(s)]) for s in sorted(self.markets)]

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot_blob(self) -> bytes:
        """Engine snapshot + worker state; taken between batches only."""
        engine_blob = self.engine.snapshot()
        state = {
            "version": WORKER_SNAPSHOT_VERSION,
            "last_id": self.last_id,
            "entries": self.entries,
            "consumed": self.consumed,
            "trade_no": self.trade_no,
            "book_seq": self.book_seq,
            "bbo_seq": self.bbo_seq,
            "orders": [st.to_list() for st in self.orders.values()],
        }
        # no sort_keys: fills dicts must come back in their original key order
        body = zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 6)
        return (
            WORKER_SNAPSHOT_MAGIC
            + bytes([WORKER_SNAPSHOT_VERSION])
            + struct.pack(">Q", len(engine_blob))
            + engine_blob
            + body
        )

    @classmethod
    def from_blob(
        cls, markets: dict[str, Market], blob: bytes, partition: int = 0, **kwargs: Any
    ) -> Processor:
        if not blob.startswith(WORKER_SNAPSHOT_MAGIC):
            raise ValueError("not a Fairbook worker snapshot")
        version = blob[len(WORKER_SNAPSHOT_MAGIC)]
        if version != WORKER_SNAPSHOT_VERSION:
            raise ValueError(f"worker snapshot version {version} is not supported")
        at = len(WORKER_SNAPSHOT_MAGIC) + 1
        (size,) = struct.unpack(">Q", blob[at : at + 8])
        at += 8
        engine = MatchingEngine.restore(markets, blob[at : at + size])
        state = json.loads(zlib.decompress(blob[at + size :]))
        proc = cls(markets, partition, engine=engine, **kwargs)
        proc.last_id = state["last_id"]
        proc.entries = state["entries"]
        proc.consumed = state.get("consumed", 0)
        proc.trade_no = state["trade_no"]
        for symbol, value in state["book_seq"].items():
            proc.book_seq[symbol] = value
        for symbol, value in state["bbo_seq"].items():
            proc.bbo_seq[symbol] = value
        for fields in state["orders"]:
            st = OrderState.from_list(fields)
            proc.orders[st.id] = st
        return proc


_REJECT_MESSAGES = {
    Reason.UNKNOWN_ORDER: "no open order with that id for this account",
    Reason.NOT_AMENDABLE: "the order cannot be amended (an untriggered stop order)",
    Reason.INVALID_AMEND: "the amend changes nothing or is not allowed",
    Reason.MIN_NOTIONAL: "the amended order is below the minimum notional",
    Reason.POST_ONLY_WOULD_TAKE: "the amended post-only order would take liquidity",
}


def _reject_message(reason: str) -> str:
    return _REJECT_MESSAGES.get(reason, reason.replace("_", " "))


_REJECT_REPLIES: dict[str, str] = {}


def _reply_token(wire: dict[str, Any]) -> str | None:
    """The web's ``reply_to`` token if it sent a well-formed one; None: nobody waits, no reply.

    The regex runs once per inbox, not per command (it was 5 % of the worker's CPU per entry).
    """
    token = wire.get("reply_to")
    if type(token) is not str:
        return None
    inbox, sep, number = token.partition("-")
    if not (sep and number.isascii() and number.isdigit() and len(number) <= 20):
        return None
    if inbox not in _OK_INBOXES:
        if not _INBOX.match(inbox):
            return None
        if len(_OK_INBOXES) >= _OK_ACCOUNTS_MAX:
            _OK_INBOXES.clear()
        _OK_INBOXES.add(inbox)
    return token


def _reject_reply(reason: str) -> str:
    """The reply JSON for an engine ``reject`` (one per reason, cached: json.dumps per cancel of
    an unknown order was ~1 us/entry)."""
    text = _REJECT_REPLIES.get(reason)
    if text is None:
        text = _dumps({"ok": False, "error": {"code": reason, "message": _reject_message(reason)}})
        if len(_REJECT_REPLIES) < 1000:
            _REJECT_REPLIES[reason] = text
    return text


def command_kinds() -> tuple[type, ...]:
    """The engine command classes (for callers that build commands directly)."""
    return (NewOrder, CancelOrder, CancelAll, AmendOrder)
