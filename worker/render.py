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
from worker.orders import MarketFormat

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


def render_body(fmt: MarketFormat, snap: Snap) -> str:
    """Every REST order field but ``fills``, without the braces."""
    head, status, reason, mid, _symbol, filled, remaining, cum_quote, created, updated = snap
    return (
        f'{head}"status":"{status}",'
        f'"reject_reason":{"null" if reason is None else chr(34) + reason + chr(34)},'
        f"{mid}"
        f'"filled_quantity":"{fmt.qty(filled)}",'
        f'"remaining_quantity":"{fmt.qty(remaining)}",'
        f'"cum_quote":"{fmt.quote(cum_quote)}",'
        f'"created_at":{created},"updated_at":{updated}'
    )


def render_order(fmt: MarketFormat, snap: Snap, fills: tuple[str, ...] | list[str]) -> str:
    """The complete REST order object."""
    return "{" + render_body(fmt, snap) + ',"fills":[' + ",".join(fills) + "]}"


def hset_full(key: str, fmt: MarketFormat, h: tuple[Any, ...], fills_json: str) -> str:
    """HSET of the whole order hash (DESIGN.md "Order hash encoding") as one RESP command."""
    (oid, account, coid, symbol, side, type_, tif, post_only, status, reason, price, stop, qty,
     qq, filled, remaining, cum_quote, created, updated) = h  # fmt: skip
    v0 = str(oid)
    v2 = coid or ""
    v7 = "true" if post_only else "false"
    v9 = reason or ""
    v10 = price or ""
    v11 = stop or ""
    v12 = qty or ""
    v13 = qq or ""
    v14 = fmt.qty(filled)
    v15 = fmt.qty(remaining)
    v16 = fmt.quote(cum_quote)
    v17 = str(created)
    v18 = str(updated)
    return (
        f"*42\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n"
        f"$8\r\norder_id\r\n${len(v0)}\r\n{v0}\r\n"
        f"$7\r\naccount\r\n${len(account)}\r\n{account}\r\n"
        f"$15\r\nclient_order_id\r\n${len(v2)}\r\n{v2}\r\n"
        f"$6\r\nsymbol\r\n${len(symbol)}\r\n{symbol}\r\n"
        f"$4\r\nside\r\n${len(side)}\r\n{side}\r\n"
        f"$4\r\ntype\r\n${len(type_)}\r\n{type_}\r\n"
        f"$13\r\ntime_in_force\r\n${len(tif)}\r\n{tif}\r\n"
        f"$9\r\npost_only\r\n${len(v7)}\r\n{v7}\r\n"
        f"$6\r\nstatus\r\n${len(status)}\r\n{status}\r\n"
        f"$13\r\nreject_reason\r\n${len(v9)}\r\n{v9}\r\n"
        f"$5\r\nprice\r\n${len(v10)}\r\n{v10}\r\n"
        f"$10\r\nstop_price\r\n${len(v11)}\r\n{v11}\r\n"
        f"$8\r\nquantity\r\n${len(v12)}\r\n{v12}\r\n"
        f"$14\r\nquote_quantity\r\n${len(v13)}\r\n{v13}\r\n"
        f"$15\r\nfilled_quantity\r\n${len(v14)}\r\n{v14}\r\n"
        f"$18\r\nremaining_quantity\r\n${len(v15)}\r\n{v15}\r\n"
        f"$9\r\ncum_quote\r\n${len(v16)}\r\n{v16}\r\n"
        f"$10\r\ncreated_at\r\n${len(v17)}\r\n{v17}\r\n"
        f"$10\r\nupdated_at\r\n${len(v18)}\r\n{v18}\r\n"
        f"$5\r\nfills\r\n${len(fills_json)}\r\n{fills_json}\r\n"
    )


def hset_progress(
    key: str, fmt: MarketFormat, h: tuple[Any, ...], fills_json: str | None
) -> str:
    """HSET of the fields a later command can change (and the fills if they grew)."""
    status, reason, price, qty = h[8], h[9] or "", h[10] or "", h[12] or ""
    fq, rq, cq, updated = fmt.qty(h[14]), fmt.qty(h[15]), fmt.quote(h[16]), str(h[18])
    text = (
        f"*{18 if fills_json is None else 20}\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n"
        f"$6\r\nstatus\r\n${len(status)}\r\n{status}\r\n"
        f"$13\r\nreject_reason\r\n${len(reason)}\r\n{reason}\r\n"
        f"$5\r\nprice\r\n${len(price)}\r\n{price}\r\n"
        f"$8\r\nquantity\r\n${len(qty)}\r\n{qty}\r\n"
        f"$15\r\nfilled_quantity\r\n${len(fq)}\r\n{fq}\r\n"
        f"$18\r\nremaining_quantity\r\n${len(rq)}\r\n{rq}\r\n"
        f"$9\r\ncum_quote\r\n${len(cq)}\r\n{cq}\r\n"
        f"$10\r\nupdated_at\r\n${len(updated)}\r\n{updated}\r\n"
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
        for h, persisted, closed, fills_json in hashes:
            oid = h[0]
            account = h[1]
            fmt = fmts[h[3]]
            okey = keys.order(oid)
            sid = str(oid)
            if not persisted:
                ops.append(hset_full(okey, fmt, h, fills_json))
                if not closed:
                    opened.setdefault(account, []).extend((sid, sid))
            else:
                ops.append(hset_progress(okey, fmt, h, fills_json))
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
            for stream_id, record, maker_account, taker_account, symbol in trades:
                ops.append(
                    f"{tkey_head}${len(stream_id)}\r\n{stream_id}\r\n$1\r\nt\r\n"
                    f"${len(record)}\r\n{record}\r\n$2\r\nma\r\n"
                    f"${len(maker_account)}\r\n{maker_account}\r\n$2\r\nta\r\n"
                    f"${len(taker_account)}\r\n{taker_account}\r\n"
                )
                recent.setdefault(symbol, []).append(record)
            for symbol, records in recent.items():
                rkey = keys.recent(symbol)
                ops.append(resp(["LPUSH", rkey, *records[-self.recent_len :]]))
                ops.append(resp(["LTRIM", rkey, "0", str(self.recent_len - 1)]))
        # -- replies ----------------------------------------------------------------------------
        ttl = self.reply_ttl
        expire_tail = f"\r\n${len(ttl)}\r\n{ttl}\r\n"
        for cmd_id, reply in replies:
            if type(reply) is not str:
                if reply[0] == "o":
                    _, snap, fills = reply
                    reply = '{"ok":true,"order":' + render_order(fmts[snap[4]], snap, fills) + "}"
                else:  # cancel_all
                    reply = (
                        '{"ok":true,"cancelled":['
                        + ",".join(render_order(fmts[s[4]], s, f) for s, f in reply[1])
                        + "]}"
                    )
            rkey = keys.reply(cmd_id)
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
        grouped: dict[str, list[str]] = {}
        for account, item in acct:
            if type(item) is not str:
                item = '{"event":"order",' + render_body(fmts[item[4]], item) + "}"
            events = grouped.get(account)
            if events is None:
                grouped[account] = [item]
            else:
                events.append(item)
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
        price, qty = fmt.price, fmt.qty
        return "[" + ",".join([f'["{price(p)}","{qty(q)}"]' for p, q in levels]) + "]"

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
