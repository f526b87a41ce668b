"""Journal entries in, engine advanced, the batch's outputs described out. No I/O here.

:meth:`Processor.process` takes one XREAD batch through four named steps per entry (decode,
validate, apply, fold the engine's events into order states and messages) and finishes the
batch into a :class:`Batch`: order records, index changes, trades, book keys and every pub/sub
message, already encoded. The committer writes it; recovery and ``python -m worker replay`` run
the same code with ``emit=False`` (state only), so the state they rebuild cannot drift from the
live worker's.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from engine.book import OrderBook
from engine.commands import (
    BUY,
    CANCELLED,
    CLOSED_STATUSES,
    COMPLETED,
    REJECTED,
    SELL,
    AmendOrder,
    CancelAll,
    Command,
    NewOrder,
    Reason,
)
from engine.events import BBO, LEVEL, ORDER, REJECT, TRADE, TRANSFER, Event
from engine.ledger import FEE_ACCOUNT
from engine.markets import Market, assets_of
from engine.matcher import MatchingEngine
from engine.units import SchemaError
from engine.validation import command_from_wire
from protocol import wire
from protocol.candles import BASE, BASE_SPANS
from protocol.keys import DEFAULT_NAMESPACE, Keys
from worker.batch import Batch, BookUpdate, CandleUpdate, Message, TradeRecord
from worker.orders import OrderState

log = logging.getLogger("worker")

SNAPSHOT_MAGIC = b"FBWK"
#: 4: the open candles; 3: the engine's ledger, orders' locks (2: fills are objects; 1: fills
#: were JSON texts)
SNAPSHOT_VERSION = 4
#: Levels per side in the ``book:<symbol>`` key (the REST and WebSocket depth limit).
BOOK_DEPTH = 500

#: (stream id, {field: value}) as redis-py returns a stream entry
Entry = Sequence[Any]

_REJECT_MESSAGES = {
    Reason.UNKNOWN_ORDER: "no open order with that id for this account",
    Reason.NOT_AMENDABLE: "the order cannot be amended (an untriggered stop order)",
    Reason.INVALID_AMEND: "the amend changes nothing or is not allowed",
    Reason.MIN_NOTIONAL: "the amended order is below the minimum notional",
    Reason.POST_ONLY_WOULD_TAKE: "the amended post-only order would take liquidity",
    Reason.INSUFFICIENT_FUNDS: "the available balance cannot cover the amended order",
}


def parse_stream_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` -> (ms, seq), the order Redis sorts stream ids in."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# -- per-batch and per-command scratch state ----------------------------------------------------


class _SymbolWork:
    """Market data collected for one symbol during one batch."""

    __slots__ = ("trades", "levels", "bbo", "prev_sequence")

    def __init__(self, prev_sequence: int) -> None:
        self.trades: list[bytes] = []
        self.levels: dict[tuple[str, int], int] = {}  # (side, ticks) -> final total lots
        self.bbo: tuple[Any, ...] | None = None
        self.prev_sequence = prev_sequence


class _Work:
    """Everything one batch collects before it is finished into a :class:`Batch`."""

    __slots__ = ("emit", "ts", "dirty", "bodies", "symbols", "events", "replies", "trades",
                 "touched", "entries", "transfers", "command_id", "entry_no",
                 "candles", "opened")  # fmt: skip

    def __init__(self, emit: bool) -> None:
        self.emit = emit
        self.ts = 0  # the current entry's milliseconds
        self.dirty: dict[int, OrderState] = {}
        self.bodies: dict[int, dict[str, Any]] = {}  # order id -> body at its last event
        self.symbols: dict[str, _SymbolWork] = {}
        self.events: dict[str, list[bytes]] = {}  # account -> its events, in engine order
        self.replies: dict[str, dict[str, bytes]] = {}  # inbox -> {token: reply}
        self.trades: list[TradeRecord] = []
        self.touched: dict[tuple[str, str], None] = {}  # (account, asset) changed, in order
        #: account -> ledger entries in order: [id, asset, amount, reason, symbol, order, trade,
        #: reference, ts]; ``balance`` is added when the batch is finished
        self.entries: dict[str, list[list[Any]]] = {}
        self.transfers: dict[tuple[str, str], list[bytes]] = {}
        self.command_id = 0
        self.entry_no = 0  # ledger entries of the current command so far
        #: (symbol, base interval index, open time) -> that candle (its final state at the end)
        self.candles: dict[tuple[str, int, int], list[int]] = {}
        self.opened: set[tuple[str, int, int]] = set()  # of those, the ones it opened

    def entry(self, account: str, asset: str, amount: int, reason: str, symbol: str | None,
              order_id: int | None, trade_id: int | None,
              reference: str | None) -> None:  # fmt: skip
        self.entry_no += 1
        row = [f"{self.command_id}-{self.entry_no}", asset, amount, reason, symbol, order_id,
               trade_id, reference, self.ts]  # fmt: skip
        rows = self.entries.get(account)
        if rows is None:
            self.entries[account] = [row]
        else:
            rows.append(row)

    def account_event(self, account: str, event: bytes) -> None:
        events = self.events.get(account)
        if events is None:
            self.events[account] = [event]
        else:
            events.append(event)

    def reply(self, token: str, inbox: str, reply: bytes) -> None:
        answers = self.replies.get(inbox)
        if answers is None:
            self.replies[inbox] = {token: reply}
        else:
            answers[token] = reply


class _Outcome:
    """What one command did to the order its reply shows."""

    __slots__ = ("command", "target", "touched", "touched_body", "cancelled", "rejected",
                 "transfer")  # fmt: skip

    def __init__(self, command: Command) -> None:
        self.command = command
        self.target = command.id if type(command) is NewOrder else getattr(command, "order_id", 0)
        self.touched: OrderState | None = None
        self.touched_body: dict[str, Any] | None = None
        self.cancelled: list[bytes] = []  # cancel_all: each order as it was cancelled
        self.rejected: str | None = None
        self.transfer: bytes | None = None  # deposit / withdrawal: the transfer object


# -- the processor ------------------------------------------------------------------------------


class Processor:
    """One partition's in-memory state (engine, open orders, sequences), advanced batch by batch.

    ``book_seq`` counts the symbol's ``level`` events since genesis, ``bbo_seq`` its ``bbo``
    events, ``trade_no`` every trade of the partition: all deterministic, so a replay gives the
    same numbers and clients can sync on them across restarts.
    """

    def __init__(
        self,
        markets: dict[str, Market],
        partition: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
        engine: MatchingEngine | None = None,
        book_depth: int = BOOK_DEPTH,
    ) -> None:
        self.markets = markets
        self.partition = partition
        self.keys = Keys(partition, namespace)
        self.engine = engine if engine is not None else MatchingEngine(markets)
        self.assets = assets_of(markets)
        self.book_depth = book_depth
        # -- kept in the worker snapshot ---------------------------------------------------
        self.orders: dict[int, OrderState] = {}  # open orders (and, mid-batch, just closed)
        self.book_seq: dict[str, int] = dict.fromkeys(markets, 0)
        self.bbo_seq: dict[str, int] = dict.fromkeys(markets, 0)
        self.trade_no = 0
        self.last_id: str | None = None  # last stream id applied
        self.entries = 0  # valid commands applied since genesis
        self.consumed = 0  # journal entries consumed since genesis (= applied_count)
        #: symbol -> its newest candle per base interval (``protocol.candles.BASE`` order), [] if
        #: none yet: [open time, open, high, low, close, lots, atoms, trades, taker-buy lots,
        #: taker-buy atoms, first trade id, last trade id] (ticks, lots, quote atoms)
        self.candles: dict[str, list[list[int]]] = {s: [[] for _ in BASE] for s in markets}
        #: state-only mode too reports the candles a batch changed (the replay compares them)
        self.collect_candles = False

    # -- a batch --------------------------------------------------------------------------------
    def process(self, entries: list[Entry], emit: bool = True) -> Batch:
        """Apply journal entries in order. With ``emit`` False only state advances (recovery,
        replay): the batch then holds just ids, counts and trade records."""
        work = _Work(emit)
        count = 0
        for entry in entries:
            count += self._apply_entry(entry, work)
        batch = Batch(count=count, trades=work.trades)
        if entries:
            self.entries += count
            self.consumed += len(entries)
            batch.first_id = _text(entries[0][0])
            self.last_id = batch.last_id = _text(entries[-1][0])
        batch.consumed = self.consumed
        self._finish_orders(work, batch)
        if emit or self.collect_candles:
            self._finish_candles(work, batch)
        if emit:
            self._finish_messages(work, batch)
        return batch

    def _apply_entry(self, entry: Entry, work: _Work) -> int:
        """Decode, validate, apply, fold: 1 if the entry was a valid command, else 0."""
        raw_id, fields = entry
        work.ts = ts = int(_text(raw_id).partition("-")[0])
        command_wire = _decode(raw_id, fields)
        if command_wire is None:
            return 0
        token = command_wire.get("reply_to") if work.emit else None
        inbox = wire.reply_inbox(token)
        try:
            command = command_from_wire(command_wire, ts, self.markets, self.assets)
        except SchemaError as exc:
            if inbox is not None:
                work.reply(token, inbox, wire.error_reply(exc.code, exc.message))  # type: ignore[arg-type]
            else:
                log.warning("entry %s: invalid command, nobody to tell: %s", _text(raw_id), exc)
            return 0
        try:
            events = self.engine.apply(command)
        except Exception:  # an engine bug must not wedge the partition forever
            log.exception("entry %s: engine failed on %r", _text(raw_id), command)
            if inbox is not None:
                reply = wire.error_reply("internal_error", "the matching engine failed")
                work.reply(token, inbox, reply)  # type: ignore[arg-type]
            return 0
        outcome = _Outcome(command)
        work.command_id = command.id
        work.entry_no = 0
        self._fold(events, outcome, work)
        if inbox is not None:
            work.reply(token, inbox, self._reply(outcome))  # type: ignore[arg-type]
        return 1

    def _fold(self, events: list[Event], outcome: _Outcome, work: _Work) -> None:
        """The engine's events into order states, trade records and market data."""
        for ev in events:
            kind = ev[0]
            if kind == ORDER:
                self._on_order(ev, outcome, work)
            elif kind == LEVEL:
                symbol = ev[1]
                if work.emit:
                    self._symbol_work(symbol, work).levels[(ev[2], ev[3])] = ev[4]
                self.book_seq[symbol] += 1
            elif kind == TRADE:
                self._on_trade(ev, work)
            elif kind == BBO:
                symbol = ev[1]
                self.bbo_seq[symbol] += 1
                if work.emit:
                    self._symbol_work(symbol, work).bbo = ev[2:]
            elif kind == REJECT:
                outcome.rejected = ev[3]
            elif kind == TRANSFER:
                self._on_transfer(ev, outcome, work)

    def _symbol_work(self, symbol: str, work: _Work) -> _SymbolWork:
        found = work.symbols.get(symbol)
        if found is None:
            found = work.symbols[symbol] = _SymbolWork(self.book_seq[symbol])
        return found

    def _on_order(self, ev: Event, outcome: _Outcome, work: _Work) -> None:
        _, symbol, oid, account, status, filled, remaining, cum_quote, reason = ev
        command = outcome.command
        st = self.orders.get(oid)
        detached = False  # a state no index holds (a hand-made entry reusing a live id)
        if oid == outcome.target and type(command) is NewOrder:
            if reason == Reason.DUPLICATE_ORDER_ID:
                st = self._new_state(command, work.ts)
                detached = True
            elif st is None:
                st = self.orders[oid] = self._new_state(command, work.ts)
        elif st is None:
            log.error("order event for unknown order %s", oid)
            return
        st.status = status
        st.filled = filled
        st.remaining = remaining
        st.cum_quote = cum_quote
        st.updated_at = work.ts
        market = self.markets[symbol]
        if reason == Reason.AMENDED:
            if type(command) is AmendOrder and command.price is not None:
                st.price = market.format_price(command.price)
            st.quantity = market.format_qty(filled + remaining)
        elif reason is not None:
            st.reason = reason
        if not detached:
            work.dirty[oid] = st
        if self.engine.ledger is not None:
            held = self.engine.index.orders.get(oid)
            asset = market.quote_asset if st.side == BUY else market.base_asset
            st.locked = self.assets[asset].format(0 if held is None else held.locked)
            if work.emit and status != REJECTED:  # a rejection moved nothing
                work.touched[(account, asset)] = None
        if not work.emit:
            if oid == outcome.target:
                outcome.touched = st
            return
        body = st.event(market)
        work.account_event(account, wire.dumps(body))
        del body["event"]  # the same dict, now the order's body for its reply and record
        if not detached:
            work.bodies[oid] = body
        if oid == outcome.target:
            outcome.touched = st
            outcome.touched_body = body
        elif type(command) is CancelAll and status == CANCELLED:
            outcome.cancelled.append(wire.dumps({**body, "fills": st.fills}))

    def _on_trade(self, ev: Event, work: _Work) -> None:
        (_, symbol, trade_id, price, qty, taker_side, maker_id, taker_id, maker_account,
         taker_account, maker_fee, taker_fee, ts) = ev  # fmt: skip
        market = self.markets[symbol]
        p = market.format_price(price)
        q = market.format_qty(qty)
        mf = market.format_quote(maker_fee)
        tf = market.format_quote(taker_fee)
        asset = market.quote_asset
        self.trade_no += 1
        self._candle_trade(symbol, price, qty, taker_side == BUY, trade_id, ts, work)
        record = wire.trade_record(trade_id, symbol, p, q, taker_side, maker_id, taker_id, mf, tf,
                                   asset, ts)  # fmt: skip
        work.trades.append(
            TradeRecord(f"{ts}-{self.trade_no}", record, maker_account, taker_account, symbol)
        )
        maker = self.orders.get(maker_id)
        taker = self.orders.get(taker_id)
        maker_fill = {"trade_id": trade_id, "price": p, "quantity": q, "fee": mf,
                      "fee_asset": asset, "liquidity": "maker", "timestamp": ts}  # fmt: skip
        taker_fill = {"trade_id": trade_id, "price": p, "quantity": q, "fee": tf,
                      "fee_asset": asset, "liquidity": "taker", "timestamp": ts}  # fmt: skip
        if maker is not None:
            maker.fills.append(maker_fill)
        if taker is not None:
            taker.fills.append(taker_fill)
        if work.emit and self.engine.ledger is not None:
            self._trade_entries(market, ev, work)
        if work.emit:
            maker_side = SELL if taker_side == BUY else BUY
            work.account_event(maker_account, _fill_event(maker, maker_id, symbol, maker_side,
                                                           maker_fill, ts))  # fmt: skip
            work.account_event(taker_account, _fill_event(taker, taker_id, symbol, taker_side,
                                                           taker_fill, ts))  # fmt: skip
            self._symbol_work(symbol, work).trades.append(record)

    def _candle_trade(self, symbol: str, price: int, qty: int, taker_buys: bool, trade_id: int,
                      ts: int, work: _Work) -> None:  # fmt: skip
        """One trade into the symbol's current candle of every base interval (a new candle
        when the trade's time is past the current one's)."""
        rows = self.candles[symbol]
        atoms = price * qty
        collect = work.emit or self.collect_candles
        for i in range(len(BASE_SPANS)):
            opened = ts - ts % BASE_SPANS[i]
            c = rows[i]
            if not c or c[0] != opened:
                c = rows[i] = [opened, price, price, price, price, 0, 0, 0, 0, 0, trade_id,
                               trade_id]  # fmt: skip
                if collect:
                    work.opened.add((symbol, i, opened))
            else:
                if price > c[2]:
                    c[2] = price
                if price < c[3]:
                    c[3] = price
                c[4] = price
                c[11] = trade_id
            c[5] += qty
            c[6] += atoms
            c[7] += 1
            if taker_buys:
                c[8] += qty
                c[9] += atoms
            if collect:
                work.candles[(symbol, i, opened)] = c

    def _trade_entries(self, market: Market, ev: Event, work: _Work) -> None:
        """The ledger entries of one fill for both sides (the fee account keeps no list)."""
        (_, symbol, trade_id, price, qty, taker_side, maker_id, taker_id, maker_account,
         taker_account, maker_fee, taker_fee, _ts) = ev  # fmt: skip
        base, quote = market.base_asset, market.quote_asset
        base_units = qty * market.lot_units
        quote_units = price * qty * market.atom_units
        au = market.atom_units
        taker = (taker_account, taker_id, taker_fee)
        maker = (maker_account, maker_id, maker_fee)
        buyer, seller = (taker, maker) if taker_side == BUY else (maker, taker)
        sides = ((*buyer, 1), (*seller, -1))
        for account, oid, fee, sign in sides:  # sign: +1 the buyer, -1 the seller
            work.entry(account, base, sign * base_units, "trade", symbol, oid, trade_id, None)
            work.entry(account, quote, -sign * quote_units, "trade", symbol, oid, trade_id, None)
            if fee:
                work.entry(account, quote, -fee * au, "fee" if fee > 0 else "rebate", symbol,
                           oid, trade_id, None)  # fmt: skip
            work.touched[(account, base)] = None
            work.touched[(account, quote)] = None
        if maker_fee + taker_fee:
            work.touched[(FEE_ACCOUNT, quote)] = None

    def _on_transfer(self, ev: Event, outcome: _Outcome, work: _Work) -> None:
        (_, command_id, kind, account, asset, amount, reference, status, reason, original_id,
         original_ts) = ev  # fmt: skip
        if not work.emit:
            return
        fmt = self.assets[asset].format if asset in self.assets else str
        transfer = wire.transfer_object(original_id, kind, account, asset, fmt(amount),
                                        reference, status, reason, self.partition, original_ts)
        obj = wire.dumps(transfer)
        outcome.transfer = obj
        if original_id != command_id:
            return  # a repeated reference: answered with the first outcome, nothing changed
        if status == COMPLETED:  # the delta of a Binance balanceUpdate (native /ws skips it)
            work.account_event(account, wire.dumps({"event": "transfer", **transfer}))
        rows = work.transfers.get((account, kind))
        if rows is None:
            work.transfers[(account, kind)] = [obj]
        else:
            rows.append(obj)
        work.touched[(account, asset)] = None
        if status == COMPLETED:
            signed = amount if kind == "deposit" else -amount
            work.entry(account, asset, signed, kind, None, None, None, reference)

    def _reply(self, outcome: _Outcome) -> bytes:
        """The answer the waiting web request gets (see DESIGN.md, Replies)."""
        if outcome.transfer is not None:
            return wire.transfer_reply_raw(outcome.transfer)
        if outcome.rejected is not None:
            reason = outcome.rejected
            return wire.error_reply(reason, _REJECT_MESSAGES.get(reason, reason.replace("_", " ")))
        if type(outcome.command) is CancelAll:
            return wire.cancelled_reply(outcome.cancelled)
        st, body = outcome.touched, outcome.touched_body
        if st is None or body is None:  # cannot happen with a correct engine; never hang a client
            return wire.error_reply("internal_error", "no outcome")
        return wire.order_reply(body, st.fills)

    def _new_state(self, cmd: NewOrder, ts: int) -> OrderState:
        market = self.markets[cmd.symbol]
        price, stop, qty, quote = cmd.price, cmd.stop_price, cmd.quantity, cmd.quote_quantity
        return OrderState(
            cmd.id, cmd.account, cmd.symbol, cmd.side, cmd.type, cmd.time_in_force,
            cmd.post_only,
            None if price is None else market.format_price(price),
            None if stop is None else market.format_price(stop),
            None if qty is None else market.format_qty(qty),
            None if quote is None else market.format_quote(quote),
            cmd.client_order_id, ts, stp=cmd.stp,
        )  # fmt: skip

    # -- finishing a batch ----------------------------------------------------------------------
    def _finish_orders(self, work: _Work, batch: Batch) -> None:
        """Order records and index changes; closed orders leave memory."""
        for oid, st in work.dirty.items():
            closed = st.status in CLOSED_STATUSES
            if work.emit:
                batch.records[oid] = wire.order_record(st.account, work.bodies[oid], st.fills)
                if not st.persisted:
                    if not closed:
                        batch.opened.setdefault(st.account, []).append(oid)
                elif closed:
                    batch.unopened.setdefault(st.account, []).append(oid)
                if closed:
                    batch.closed.setdefault(st.account, []).append(oid)
            st.persisted = True
            if closed and self.orders.get(oid) is st:
                del self.orders[oid]

    def _finish_candles(self, work: _Work, batch: Batch) -> None:
        """The final value of every candle the batch's trades changed."""
        for key, c in work.candles.items():
            symbol, i, opened = key
            batch.candles.append(
                CandleUpdate(symbol, BASE[i], opened,
                             candle_value(self.markets[symbol], c, BASE_SPANS[i]),
                             key in work.opened)
            )  # fmt: skip

    def _finish_balances(self, work: _Work, batch: Batch) -> None:
        """Every balance the batch changed (its last value), and the ledger entries with the
        total each left, counted back from that last value."""
        ledger = self.engine.ledger
        if ledger is None:
            return
        totals: dict[tuple[str, str], int] = {}
        for account, asset in work.touched:
            available, locked = ledger.balance(account, asset)
            totals[(account, asset)] = available + locked
            fmt = self.assets[asset].format
            a, lk = fmt(available), fmt(locked)
            fields = batch.balances.get(account)
            if fields is None:
                fields = batch.balances[account] = {}
            fields[asset] = wire.balance_field(a, lk)
            if account != FEE_ACCOUNT:
                work.account_event(account, wire.balance_event(self.partition, asset, a, lk))
        for account, rows in work.entries.items():
            texts: list[bytes] = []
            for row in reversed(rows):
                entry_id, asset, amount, reason, symbol, oid, trade_id, reference, ts = row
                key = (account, asset)
                after = totals[key]
                totals[key] = after - amount
                fmt = self.assets[asset].format
                texts.append(wire.ledger_entry(entry_id, asset, fmt(amount), reason, fmt(after),
                                               ts, symbol, oid, trade_id, reference))  # fmt: skip
            texts.reverse()
            batch.ledger[account] = texts
        batch.transfers = work.transfers

    def _finish_messages(self, work: _Work, batch: Batch) -> None:
        self._finish_balances(work, batch)
        keys = self.keys
        for inbox, answers in work.replies.items():
            batch.messages.append(Message(keys.inbox(inbox), wire.inbox_message(answers)))
        for symbol in sorted(work.symbols):
            sw = work.symbols[symbol]
            market = self.markets[symbol]
            increment = None
            if sw.levels:
                changes = sorted(sw.levels.items(), key=_best_first)
                increment = {
                    "prev_sequence": sw.prev_sequence,
                    "sequence": self.book_seq[symbol],
                    "bids": _levels(market, [(p, q) for (s, p), q in changes if s == BUY]),
                    "asks": _levels(market, [(p, q) for (s, p), q in changes if s != BUY]),
                }
            bbo = None if sw.bbo is None else self._bbo(symbol, sw.bbo)
            message = wire.market_data_message(symbol, sw.trades, increment, bbo)
            batch.books.append(BookUpdate(symbol, self.book_value(symbol), message))
            batch.messages.append(Message(keys.md_channel(symbol), message))
        for account, events in work.events.items():
            batch.messages.append(
                Message(keys.acct_channel(account), wire.account_message(account, events))
            )

    # -- books ----------------------------------------------------------------------------------
    def _bbo(self, symbol: str, top: tuple[Any, ...]) -> dict[str, Any]:
        market = self.markets[symbol]
        bid, bid_lots, ask, ask_lots = top
        return wire.bbo_object(
            self.bbo_seq[symbol],
            None if bid is None else market.format_price(bid), market.format_qty(bid_lots),
            None if ask is None else market.format_price(ask), market.format_qty(ask_lots),
        )  # fmt: skip

    def book_value(self, symbol: str) -> bytes:
        """The ``book:<symbol>`` value as of now (what commits write and replay compares)."""
        book: OrderBook = self.engine.book(symbol)
        market = self.markets[symbol]
        bids, asks = book.depth(self.book_depth)
        return wire.book_value(
            symbol, self.book_seq[symbol], _levels(market, bids), _levels(market, asks),
            self._bbo(symbol, book.bbo()), book.trade_seq,
        )  # fmt: skip

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot_blob(self) -> bytes:
        """Engine snapshot + worker state; taken between batches only."""
        engine_blob = self.engine.snapshot()
        state = {
            "version": SNAPSHOT_VERSION,
            "last_id": self.last_id,
            "entries": self.entries,
            "consumed": self.consumed,
            "trade_no": self.trade_no,
            "book_seq": self.book_seq,
            "bbo_seq": self.bbo_seq,
            "candles": self.candles,
            "orders": [st.to_list() for st in self.orders.values()],
        }
        body = zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 6)
        return (
            SNAPSHOT_MAGIC + bytes([SNAPSHOT_VERSION]) + struct.pack(">Q", len(engine_blob))
            + engine_blob + body
        )  # fmt: skip

    @classmethod
    def from_blob(
        cls, markets: dict[str, Market], blob: bytes, partition: int = 0, **kwargs: Any
    ) -> Processor:
        if not blob.startswith(SNAPSHOT_MAGIC):
            raise ValueError("not a Fairbook worker snapshot")
        version = blob[len(SNAPSHOT_MAGIC)]
        if version not in (1, 2, 3, SNAPSHOT_VERSION):
            raise ValueError(f"worker snapshot version {version} is not supported")
        at = len(SNAPSHOT_MAGIC) + 1
        (size,) = struct.unpack(">Q", blob[at : at + 8])
        at += 8
        engine = MatchingEngine.restore(markets, blob[at : at + size])
        state = json.loads(zlib.decompress(blob[at + size :]))
        proc = cls(markets, partition, engine=engine, **kwargs)
        proc.last_id = state["last_id"]
        proc.entries = state["entries"]
        proc.consumed = state.get("consumed", 0)
        proc.trade_no = state["trade_no"]
        proc.book_seq.update(state["book_seq"])
        proc.bbo_seq.update(state["bbo_seq"])
        # before version 4 no candles were kept: they start from the snapshot's trades on
        for symbol, rows in state.get("candles", {}).items():
            if symbol in proc.candles and len(rows) == len(BASE):
                proc.candles[symbol] = [list(c) for c in rows]
        for fields in state["orders"]:
            if version == 1:  # fills were stored as JSON texts
                fields[-1] = [json.loads(f) for f in fields[-1]]
            st = OrderState.from_list(fields)
            proc.orders[st.id] = st
        return proc


def candle_value(market: Market, c: list[int], span: int) -> bytes:
    """A candle in integer units (see ``Processor.candles``) -> its ``kline:`` member."""
    fp, fq, fa = market.format_price, market.format_qty, market.format_quote
    return wire.candle_value(c[0], c[0] + span - 1, fp(c[1]), fp(c[2]), fp(c[3]), fp(c[4]),
                             fq(c[5]), fa(c[6]), c[7], fq(c[8]), fa(c[9]), c[10],
                             c[11])  # fmt: skip


def _fill_event(st: OrderState | None, oid: int, symbol: str, side: str, fill: dict[str, Any],
                ts: int) -> bytes:  # fmt: skip
    """The account event of one fill of one order."""
    return wire.dumps(
        {"event": "fill", "order_id": oid,
         "client_order_id": None if st is None else st.client_order_id, "symbol": symbol,
         "side": side, **fill}
    )  # fmt: skip


def _best_first(item: tuple[tuple[str, int], int]) -> tuple[bool, int]:
    (side, ticks), _ = item
    return (side != BUY, -ticks if side == BUY else ticks)


def _levels(market: Market, levels: list[tuple[int, int]]) -> list[list[str]]:
    price, qty = market.tick.format, market.lot.format
    return [[price(p), qty(q)] for p, q in levels]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw_id: Any, fields: Any) -> dict[str, Any] | None:
    """The entry's wire command, or None (logged) when it is not a JSON object."""
    payload = fields.get(b"c") if b"c" in fields else fields.get(wire.COMMAND_FIELD)
    try:
        command = wire.loads(payload)
    except (TypeError, ValueError) as exc:
        log.warning("entry %s: unreadable command (%s), skipped", _text(raw_id), exc)
        return None
    if not isinstance(command, dict):
        log.warning("entry %s: command is not a JSON object, skipped", _text(raw_id))
        return None
    return command
