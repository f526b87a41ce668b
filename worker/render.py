"""Rendering a processed batch into Redis commands and pub/sub messages.

:class:`~worker.processor.Processor` records *what* changed as a :data:`Plan` of plain tuples
(cheap to build and to pickle); :class:`Renderer` turns a plan into RESP commands and JSON
messages. Keeping the two apart lets the runner render and commit in a second process while the
first one already matches the next batch: the matcher is CPU bound, and threads share one GIL.
Every JSON string here is built by formatting, not ``json.dumps``: all values are codes,
decimals, integers or validated ids, none needs escaping.
"""

from __future__ import annotations

from typing import Any

from engine.schema import BUY, Market
from worker.keys import DEFAULT_NAMESPACE, Keys
from worker.orders import MarketFormat, Memo, bulk, order_record

#: (head, status, reason, mid, symbol, filled, remaining, cum_quote, created_at, updated_at):
#: an order's state at one moment; head/mid are the cached JSON pieces of OrderState.
Snap = tuple[str, str, str | None, str, str, int, int, int, int, int]
#: (last_id, trades, acct, replies, records, books, consumed), see Processor.process
Plan = tuple[Any, ...]


def resp(args: list[str]) -> str:
    """One command in RESP, the wire form the commit sends inside MULTI/EXEC.

    Lengths are character counts: every argument is ASCII (JSON is ``ensure_ascii``, accounts,
    symbols and client ids are validated); the committer verifies that before sending.
    """
    return f"*{len(args)}\r\n" + "".join([f"${len(a)}\r\n{a}\r\n" for a in args])


#: text -> its RESP bulk string (codes, decimals, accounts: few distinct values)
_BULK = Memo(bulk)
#: reject reason or None -> its JSON value
_REASON_JSON = Memo(lambda r: "null" if r is None else '"' + r + '"')


def render_body(fmt: MarketFormat, snap: Snap) -> str:
    """Every REST order field but ``fills``, without the braces."""
    head, status, reason, mid, _symbol, filled, remaining, cum_quote, created, updated = snap
    qty: dict[int, str] = fmt.qty_t
    quote: dict[int, str] = fmt.quote_t
    reason_json: str = _REASON_JSON[reason]
    filled_text: str = qty[filled]
    remaining_text: str = qty[remaining]
    quote_text: str = quote[cum_quote]
    return (
        f'{head}"status":"{status}","reject_reason":{reason_json},{mid}'
        f'"filled_quantity":"{filled_text}","remaining_quantity":"{remaining_text}",'
        f'"cum_quote":"{quote_text}","created_at":{created},"updated_at":{updated}'
    )


def render_order(fmt: MarketFormat, snap: Snap, fills: tuple[str, ...] | list[str]) -> str:
    """The complete REST order object."""
    body = render_body(fmt, snap)
    fills_text = ",".join(fills)
    return f'{{{body},"fills":[{fills_text}]}}'


class Renderer:
    """Plan -> (RESP commands, pub/sub messages). Stateless apart from its configuration."""

    def __init__(
        self,
        markets: dict[str, Market],
        partition: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
        recent_len: int = 1000,
        closed_len: int = 1000,
    ) -> None:
        self.keys = Keys(partition, namespace)
        self.fmt = {s: MarketFormat(m) for s, m in markets.items()}
        self.recent_len = recent_len
        self.closed_len = closed_len

    def render(self, plan: Plan) -> tuple[list[str], list[tuple[str, str]]]:
        _last_id, trades, acct, replies, records, books, consumed = plan
        keys = self.keys
        fmts = self.fmt
        ops: list[str] = []
        messages: list[tuple[str, str]] = []
        # -- private account messages (rendered first: records and replies reuse the bodies) ----
        bodies: dict[int, str] = {}  # id(snap) -> render_body(snap); the plan keeps snaps alive
        grouped: dict[str, list[str]] = {}
        for account, item in acct:
            if type(item) is not str:
                body = bodies[id(item)] = render_body(fmts[item[4]], item)
                item = f'{{"event":"order",{body}}}'
            events = grouped.get(account)
            if events is None:
                grouped[account] = [item]
            else:
                events.append(item)
        # -- order records and the open/closed indexes --------------------------------------
        opened: dict[str, list[str]] = {}
        unopened: dict[str, list[str]] = {}
        closed_by: dict[str, list[str]] = {}
        order_prefix = keys.prefix + "order:"
        for oid, account, snap, fills_json, persisted, closed in records:
            sid = str(oid)
            body = bodies.get(id(snap)) or render_body(fmts[snap[4]], snap)
            key = order_prefix + sid
            value = order_record(account, body, fills_json)
            ops.append(
                f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n"
            )
            if not persisted:
                if not closed:
                    opened.setdefault(account, []).extend((sid, sid))
            elif closed:
                unopened.setdefault(account, []).append(sid)
            if closed:
                closed_by.setdefault(account, []).extend((sid, sid))
        for account, pairs in opened.items():
            ops.append(resp(["ZADD", keys.open(account), *pairs]))
        for account, members in unopened.items():
            ops.append(resp(["ZREM", keys.open(account), *members]))
        keep_closed = str(-self.closed_len - 1)
        for account, pairs in closed_by.items():
            ckey = keys.closed(account)
            ops.append(resp(["ZADD", ckey, *pairs]))
            ops.append(resp(["ZREMRANGEBYRANK", ckey, "0", keep_closed]))
        # -- trades ---------------------------------------------------------------------------
        if trades:
            recent: dict[str, list[str]] = {}
            tkey = keys.trades
            tkey_head = f"*9\r\n$4\r\nXADD\r\n${len(tkey)}\r\n{tkey}\r\n"
            b = _BULK
            for stream_id, record, maker_account, taker_account, symbol in trades:
                ops.append(
                    f"{tkey_head}${len(stream_id)}\r\n{stream_id}\r\n$1\r\nt\r\n"
                    f"${len(record)}\r\n{record}\r\n$2\r\nma\r\n{b[maker_account]}"
                    f"$2\r\nta\r\n{b[taker_account]}"
                )
                recent.setdefault(symbol, []).append(record)
            for symbol, records in recent.items():
                rkey = keys.recent(symbol)
                ops.append(resp(["LPUSH", rkey, *records[-self.recent_len :]]))
                ops.append(resp(["LTRIM", rkey, "0", str(self.recent_len - 1)]))
        # -- replies: one pub/sub message per waiting web process, {token: reply, ...} ---------
        inboxes: dict[str, list[str]] = {}
        for token, reply in replies:
            if type(reply) is not str:
                if reply[0] == "o":
                    _, snap, fills = reply
                    body = bodies.get(id(snap)) or render_body(fmts[snap[4]], snap)
                    fills_text = ",".join(fills)
                    reply = f'{{"ok":true,"order":{{{body},"fills":[{fills_text}]}}}}'
                else:  # cancel_all
                    parts = []
                    for snap, fills in reply[1]:
                        body = bodies.get(id(snap)) or render_body(fmts[snap[4]], snap)
                        fills_text = ",".join(fills)
                        parts.append(f'{{{body},"fills":[{fills_text}]}}')
                    reply = '{"ok":true,"cancelled":[' + ",".join(parts) + "]}"
            inbox = token.partition("-")[0]
            answers = inboxes.get(inbox)
            item = f'"{token}":{reply}'
            if answers is None:
                inboxes[inbox] = [item]
            else:
                answers.append(item)
        for inbox, answers in inboxes.items():
            messages.append((keys.inbox(inbox), "{" + ",".join(answers) + "}"))
        # journal entries consumed since genesis: lag = XINFO entries-added - applied_count
        ops.append(resp(["SET", keys.applied_count, str(consumed)]))
        # -- books and market data --------------------------------------------------------------
        for book in books:
            (symbol, seq, bids_json, asks_json, bbo4, bbo_seq, last_trade_id,
             md_trades, md_levels, prev_seq, md_bbo) = book  # fmt: skip
            fmt = fmts[symbol]
            book_text = self.book_json(
                fmt, symbol, seq, bids_json, asks_json, bbo4, bbo_seq, last_trade_id
            )
            ops.append(resp(["SET", keys.book(symbol), book_text]))
            messages.append(
                (keys.md_channel(symbol),
                 self.md_json(fmt, symbol, md_trades, md_levels, prev_seq, seq, md_bbo, bbo_seq))
            )  # fmt: skip
        # -- private account messages, in engine order ------------------------------------------
        for account, events in grouped.items():
            messages.append(
                (keys.acct_channel(account),
                 '{"account":"' + account + '","events":[' + ",".join(events) + "]}")
            )  # fmt: skip
        return ops, messages

    @staticmethod
    def bbo_json(fmt: MarketFormat, bbo4: tuple[Any, ...], sequence: int) -> str:
        bid, bid_lots, ask, ask_lots = bbo4
        bp = "null" if bid is None else f'"{fmt.price(bid)}"'
        ap = "null" if ask is None else f'"{fmt.price(ask)}"'
        return (
            f'{{"sequence":{sequence},"bid_price":{bp},"bid_qty":"{fmt.qty(bid_lots)}",'
            f'"ask_price":{ap},"ask_qty":"{fmt.qty(ask_lots)}"}}'
        )

    @staticmethod
    def levels_json(fmt: MarketFormat, levels: list[tuple[int, int]]) -> str:
        level = fmt.level_t
        return "[" + ",".join([level[pq] for pq in levels]) + "]"

    def book_json(
        self, fmt: MarketFormat, symbol: str, seq: int, bids_json: str, asks_json: str,
        bbo4: tuple[Any, ...], bbo_seq: int, last_trade_id: int,
    ) -> str:  # fmt: skip
        """The ``book:<symbol>`` value: top levels (JSON arrays, see ``levels_json``) plus the
        sequences a client syncs on."""
        return (
            f'{{"symbol":"{symbol}","sequence":{seq},"bids":{bids_json},'
            f'"asks":{asks_json},"bbo":{self.bbo_json(fmt, bbo4, bbo_seq)},'
            f'"bbo_sequence":{bbo_seq},"last_trade_id":{last_trade_id}}}'
        )

    def md_json(
        self, fmt: MarketFormat, symbol: str, trades: list[str],
        levels: list[tuple[str, int, int]] | None, prev_seq: int, seq: int,
        bbo: tuple[Any, ...] | None, bbo_seq: int,
    ) -> str:  # fmt: skip
        """One ``fb:md:<symbol>`` message: the batch's trades, book increment and last BBO."""
        book = "null"
        if levels:
            bids = sorted(((p, q) for s, p, q in levels if s == BUY), reverse=True)
            asks = sorted((p, q) for s, p, q in levels if s != BUY)
            book = (
                f'{{"prev_sequence":{prev_seq},"sequence":{seq},'
                f'"bids":{self.levels_json(fmt, bids)},"asks":{self.levels_json(fmt, asks)}}}'
            )
        bbo_text = "null" if bbo is None else self.bbo_json(fmt, bbo, bbo_seq)
        return (
            f'{{"symbol":"{symbol}","trades":[{",".join(trades)}],'
            f'"book":{book},"bbo":{bbo_text}}}'
        )
