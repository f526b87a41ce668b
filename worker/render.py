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
from worker.orders import MarketFormat, Memo, bulk

#: (head, status, reason, mid, symbol, filled, remaining, cum_quote, created_at, updated_at):
#: an order's state at one moment; head/mid are the cached JSON pieces of OrderState.
Snap = tuple[Any, ...]
#: (last_id, trades, acct, replies, hashes, books, consumed), see Processor.process
Plan = tuple[Any, ...]


def resp(args: list[str]) -> str:
    """One command in RESP, the wire form the commit sends inside MULTI/EXEC.

    Lengths are character counts: every argument is ASCII (JSON is ``ensure_ascii``, accounts,
    symbols and client ids are validated); the committer verifies that before sending.
    """
    return f"*{len(args)}\r\n" + "".join([f"${len(a)}\r\n{a}\r\n" for a in args])


_EMPTY_BULK = "$0\r\n\r\n"
#: text -> its RESP bulk string (codes, decimals, accounts: few distinct values)
_BULK = Memo(bulk)
#: integer (ms timestamps repeat within a batch) -> RESP bulk string of its decimal form
_INT_BULK = Memo(lambda n: bulk(str(n)))
#: reject reason or None -> its JSON value
_REASON_JSON = Memo(lambda r: "null" if r is None else '"' + r + '"')
#: (symbol, side, type, time_in_force, post_only) -> those five hash fields as RESP
_FIXED: dict[tuple[Any, ...], str] = {}


def render_body(fmt: MarketFormat, snap: Snap) -> str:
    """Every REST order field but ``fills``, without the braces."""
    head, status, reason, mid, _symbol, filled, remaining, cum_quote, created, updated = snap
    qty = fmt.qty_t
    return (
        f'{head}"status":"{status}","reject_reason":{_REASON_JSON[reason]},{mid}'
        f'"filled_quantity":"{qty[filled]}","remaining_quantity":"{qty[remaining]}",'
        f'"cum_quote":"{fmt.quote_t[cum_quote]}","created_at":{created},"updated_at":{updated}'
    )


def render_order(fmt: MarketFormat, snap: Snap, fills: tuple[str, ...] | list[str]) -> str:
    """The complete REST order object."""
    return "{" + render_body(fmt, snap) + ',"fills":[' + ",".join(fills) + "]}"


def _fixed(key: tuple[Any, ...]) -> str:
    symbol, side, type_, tif, post_only = key
    text = (
        f"$6\r\nsymbol\r\n{bulk(symbol)}$4\r\nside\r\n{bulk(side)}$4\r\ntype\r\n{bulk(type_)}"
        f"$13\r\ntime_in_force\r\n{bulk(tif)}"
        f"$9\r\npost_only\r\n{bulk('true' if post_only else 'false')}"
    )
    if len(_FIXED) >= 10_000:
        _FIXED.clear()
    _FIXED[key] = text
    return text


def hset_full(key: str, fmt: MarketFormat, h: tuple[Any, ...], fills_json: str) -> str:
    """HSET of the whole order hash (DESIGN.md "Order hash encoding") as one RESP command.

    Pieces come from memos (order fields take few distinct values): formatting ~40 values per
    new order was the renderer's biggest cost.
    """
    (oid, account, coid, symbol, side, type_, tif, post_only, status, reason, price, stop, qty,
     qq, filled, remaining, cum_quote, created, updated) = h  # fmt: skip
    b = _BULK
    fixed = _FIXED.get((symbol, side, type_, tif, post_only))
    if fixed is None:
        fixed = _fixed((symbol, side, type_, tif, post_only))
    v0 = str(oid)
    return (
        f"*42\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n"
        f"$8\r\norder_id\r\n${len(v0)}\r\n{v0}\r\n"
        f"$7\r\naccount\r\n{b[account]}"
        f"$15\r\nclient_order_id\r\n{bulk(coid) if coid else _EMPTY_BULK}"
        f"{fixed}"
        f"$6\r\nstatus\r\n{b[status]}"
        f"$13\r\nreject_reason\r\n{b[reason or '']}"
        f"$5\r\nprice\r\n{b[price or '']}"
        f"$10\r\nstop_price\r\n{b[stop or '']}"
        f"$8\r\nquantity\r\n{b[qty or '']}"
        f"$14\r\nquote_quantity\r\n{b[qq or '']}"
        f"$15\r\nfilled_quantity\r\n{fmt.qty_b[filled]}"
        f"$18\r\nremaining_quantity\r\n{fmt.qty_b[remaining]}"
        f"$9\r\ncum_quote\r\n{fmt.quote_b[cum_quote]}"
        f"$10\r\ncreated_at\r\n{_INT_BULK[created]}"
        f"$10\r\nupdated_at\r\n{_INT_BULK[updated]}"
        f"$5\r\nfills\r\n${len(fills_json)}\r\n{fills_json}\r\n"
    )


def hset_progress(
    key: str, fmt: MarketFormat, h: tuple[Any, ...], fills_json: str | None, terms: bool = True
) -> str:
    """HSET of the fields a later command changed (and the fills if they grew).

    Unchanged fields are left out (fewer bytes and field writes for Redis, same hash):
    ``reject_reason`` while there is none (the hash holds "" since its first write; a reason
    is never taken back), ``price``/``quantity`` unless ``terms`` (an amend changed them).
    """
    b = _BULK
    reason = h[9]
    argc = 12
    if reason is not None:
        argc += 2
        text = f"$13\r\nreject_reason\r\n{b[reason]}"
    else:
        text = ""
    if terms:
        argc += 4
        text += f"$5\r\nprice\r\n{b[h[10] or '']}$8\r\nquantity\r\n{b[h[12] or '']}"
    if fills_json is not None:
        argc += 2
    text = (
        f"*{argc}\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n"
        f"$6\r\nstatus\r\n{b[h[8]]}{text}"
        f"$15\r\nfilled_quantity\r\n{fmt.qty_b[h[14]]}"
        f"$18\r\nremaining_quantity\r\n{fmt.qty_b[h[15]]}"
        f"$9\r\ncum_quote\r\n{fmt.quote_b[h[16]]}"
        f"$10\r\nupdated_at\r\n{_INT_BULK[h[18]]}"
    )
    if fills_json is not None:
        text += f"$5\r\nfills\r\n${len(fills_json)}\r\n{fills_json}\r\n"
    return text


class Renderer:
    """Plan -> (RESP commands, pub/sub messages). Stateless apart from its configuration."""

    def __init__(
        self,
        markets: dict[str, Market],
        partition: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
        recent_len: int = 1000,
        closed_len: int = 1000,
        reply_ttl_s: int = 60,
    ) -> None:
        self.keys = Keys(partition, namespace)
        self.fmt = {s: MarketFormat(m) for s, m in markets.items()}
        self.recent_len = recent_len
        self.closed_len = closed_len
        self.reply_ttl = str(reply_ttl_s)

    def render(self, plan: Plan) -> tuple[list[str], list[tuple[str, str]]]:
        _last_id, trades, acct, replies, hashes, books, consumed = plan
        keys = self.keys
        fmts = self.fmt
        ops: list[str] = []
        messages: list[tuple[str, str]] = []
        # -- order hashes and the open/closed indexes ---------------------------------------
        opened: dict[str, list[str]] = {}
        unopened: dict[str, list[str]] = {}
        closed_by: dict[str, list[str]] = {}
        order_prefix = keys.prefix + "order:"
        for h, persisted, closed, fills_json, terms in hashes:
            account = h[1]
            sid = str(h[0])
            if not persisted:
                ops.append(hset_full(order_prefix + sid, fmts[h[3]], h, fills_json))
                if not closed:
                    opened.setdefault(account, []).extend((sid, sid))
            else:
                ops.append(hset_progress(order_prefix + sid, fmts[h[3]], h, fills_json, terms))
                if closed:
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
        # -- private account messages (rendered first: replies reuse their order bodies) ---------
        bodies: dict[int, str] = {}  # id(snap) -> render_body(snap); the plan keeps snaps alive
        grouped: dict[str, list[str]] = {}
        for account, item in acct:
            if type(item) is not str:
                body = bodies[id(item)] = render_body(fmts[item[4]], item)
                item = '{"event":"order",' + body + "}"
            events = grouped.get(account)
            if events is None:
                grouped[account] = [item]
            else:
                events.append(item)
        # -- replies ----------------------------------------------------------------------------
        ttl = self.reply_ttl
        expire_tail = f"\r\n${len(ttl)}\r\n{ttl}\r\n"
        reply_prefix = keys.prefix + "reply:"
        for reply_key, reply in replies:
            if type(reply) is not str:
                if reply[0] == "o":
                    _, snap, fills = reply
                    body = bodies.get(id(snap))
                    if body is None:
                        body = render_body(fmts[snap[4]], snap)
                    reply = '{"ok":true,"order":{' + body + ',"fills":[' + ",".join(fills) + "]}}"
                else:  # cancel_all
                    parts = []
                    for snap, fills in reply[1]:
                        body = bodies.get(id(snap))
                        if body is None:
                            body = render_body(fmts[snap[4]], snap)
                        parts.append("{" + body + ',"fills":[' + ",".join(fills) + "]}")
                    reply = '{"ok":true,"cancelled":[' + ",".join(parts) + "]}"
            rkey = f"{reply_prefix}{reply_key}"
            head = f"${len(rkey)}\r\n{rkey}"
            ops.append(f"*3\r\n$5\r\nRPUSH\r\n{head}\r\n${len(reply)}\r\n{reply}\r\n")
            ops.append(f"*3\r\n$6\r\nEXPIRE\r\n{head}{expire_tail}")
        # journal entries consumed since genesis: lag = XINFO entries-added - applied_count
        ops.append(resp(["SET", keys.applied_count, str(consumed)]))
        # -- books and market data --------------------------------------------------------------
        for book in books:
            (symbol, seq, bids, asks, bbo4, bbo_seq, last_trade_id,
             md_trades, md_levels, prev_seq, md_bbo) = book  # fmt: skip
            fmt = fmts[symbol]
            ops.append(
                resp(["SET", keys.book(symbol),
                      self.book_json(fmt, symbol, seq, bids, asks, bbo4, bbo_seq, last_trade_id)])
            )  # fmt: skip
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
        self, fmt: MarketFormat, symbol: str, seq: int, bids: list[tuple[int, int]],
        asks: list[tuple[int, int]], bbo4: tuple[Any, ...], bbo_seq: int, last_trade_id: int,
    ) -> str:  # fmt: skip
        """The ``book:<symbol>`` value: top levels plus the sequences a client syncs on."""
        return (
            f'{{"symbol":"{symbol}","sequence":{seq},"bids":{self.levels_json(fmt, bids)},'
            f'"asks":{self.levels_json(fmt, asks)},"bbo":{self.bbo_json(fmt, bbo4, bbo_seq)},'
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
