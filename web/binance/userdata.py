"""Binance's user data stream: an account's worker events as ``executionReport``,
``outboundAccountPosition`` and ``balanceUpdate``, and the legacy ``/ws/<listenKey>`` stream.

Why an encoder per subscription: the worker publishes, per batch and account, its order states,
fills and balances (``<ns>:acct:<account>``, DESIGN "Pub/sub messages"), while Binance sends one
``executionReport`` per execution with the order's state *after that execution*. A taker's fills
of one batch are followed by a single order event, so each fill's cumulative quantity and status
are counted back from the order event that follows it. Balances are per partition in Fairbook
and per account on Binance: with several partitions the encoder sums its cache of every
partition's balance (seeded once from the balance records when the subscription starts).

The listen-key stream (:func:`serve_listen_key`) checks that the listen key lives and that the
API key that opened it still lives, registers that key with the hub (a revocation closes the
socket 1008 at once), and re-reads both when the listen key's TTL says it should have expired
(at least every ``FAIRBOOK_BINANCE_WS_LISTEN_KEY_CHECK`` seconds): gone without a keep-alive, it
sends ``{"e": "listenKeyExpired", ...}`` and closes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from decimal import Decimal
from typing import Any

import redis
from flask import request

from engine.markets import Asset, Market
from protocol.wire import parse_balances
from web.app import state
from web.binance import translate
from web.binance.trading import LISTEN_KEY, amount, now_ms, symbols
from web.hub import frame
from web.ws import INTERNAL_ERROR, POLICY_VIOLATION, Connection, serving, setting

log = logging.getLogger("fairbook.binance.userdata")

#: seconds between liveness checks of a listen-key stream at most (its expiry is checked when
#: its TTL runs out, whatever this says); ``FAIRBOOK_BINANCE_WS_LISTEN_KEY_CHECK``, 0 = this
LISTEN_KEY_CHECK_S = 60.0
#: RFC 6455 1012 "service restart": messages may have been lost (pub/sub reconnected)
RESTART = 1012
_CLOSED = ("cancelled",)
_EXECUTION = {"CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "TRADE_PREVENTION"}


def _dec(text: Any) -> Decimal:
    """A decimal of a worker message (0 for a missing or unreadable one: the message is the
    worker's, so this is only a guard against a bug turning into an escaping exception)."""
    try:
        return Decimal(text) if text not in (None, "") else Decimal(0)
    except (ArithmeticError, TypeError, ValueError):
        return Decimal(0)


class AccountEvents:
    """One account's worker messages -> Binance user data events (dicts, oldest first)."""

    def __init__(self, markets: dict[str, Market], names: dict[str, str], assets: dict[str, Asset],
                 partitions: list[int]) -> None:  # fmt: skip
        self.markets = markets
        self.names = names  # native symbol -> Binance's
        self.assets = assets
        self.several = len(partitions) > 1
        #: (partition, asset) -> (available, locked): only kept with several partitions
        self.balances: dict[tuple[int, str], tuple[Decimal, Decimal]] = {}
        self._execution = itertools.count(1)

    def seed(self, client: Any, keys_of: Any, partitions: list[int], account: str,
             lock: Any = None) -> None:  # fmt: skip
        """Every partition's balances of ``account`` (one round trip), when there are several.
        Call it after the encoder listens: a balance an event set meanwhile is newer and kept
        (``setdefault``); applied under ``lock`` (the hub's, whose thread runs :meth:`events`)."""
        if not self.several:
            return
        pipe = client.pipeline(transaction=False)
        for p in partitions:
            pipe.hgetall(keys_of(p).balances(account))
        rows = [(p, row) for p, raw in zip(partitions, pipe.execute(), strict=True)
                for row in parse_balances(raw)]  # fmt: skip
        with lock if lock is not None else contextlib.nullcontext():
            for p, row in rows:
                self.balances.setdefault((p, row["asset"]),
                                         (_dec(row["available"]), _dec(row["locked"])))

    def events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        raw = body.get("events") or []
        # each fill -> the order event that follows it (same order) and the fills before that
        follows: dict[int, dict[str, Any]] = {}
        after: dict[int, list[dict[str, Any]]] = {}  # fill position -> later fills of its group
        covered: set[int] = set()  # positions of order events the fills' reports stand for
        open_fills: dict[Any, list[int]] = {}
        for i, ev in enumerate(raw):
            kind = ev.get("event")
            if kind == "fill":
                open_fills.setdefault(ev.get("order_id"), []).append(i)
            elif kind == "order":
                group = open_fills.pop(ev.get("order_id"), None)
                if group:
                    for n, pos in enumerate(group):
                        follows[pos] = ev
                        after[pos] = [raw[j] for j in group[n + 1 :]]
                    if ev.get("status") in ("filled", "partially_filled"):
                        covered.add(i)
        out: list[dict[str, Any]] = []
        position: dict[str, None] = {}
        stamp = now_ms()
        for i, ev in enumerate(raw):
            kind = ev.get("event")
            if kind == "fill":
                report = self._trade(ev, follows.get(i), after.get(i, []), stamp)
                if report is not None:
                    out.append(report)
            elif kind == "order" and i not in covered:
                report = self._order(ev, stamp)
                if report is not None:
                    out.append(report)
            elif kind == "transfer":
                sign = "" if ev.get("type") == "deposit" else "-"
                out.append({"e": "balanceUpdate", "E": stamp, "a": ev.get("asset"),
                            "d": sign + str(ev.get("amount")),
                            "T": ev.get("created_at") or stamp})  # fmt: skip
            elif kind == "balance":
                asset = ev.get("asset")
                if asset in self.assets:
                    key = (int(ev.get("partition") or 0), asset)
                    self.balances[key] = (_dec(ev.get("available")), _dec(ev.get("locked")))
                    position[asset] = None
        if position:
            rows = []
            for asset in position:
                free = sum((v[0] for (_, a), v in self.balances.items() if a == asset), Decimal(0))
                held = sum((v[1] for (_, a), v in self.balances.items() if a == asset), Decimal(0))
                decimals = self.assets[asset].decimals
                rows.append({"a": asset, "f": amount(free, decimals), "l": amount(held, decimals)})
            if not self.several:
                self.balances.clear()
            out.append({"e": "outboundAccountPosition", "E": stamp, "u": stamp, "B": rows})
        return out

    def _base(self, order: dict[str, Any], stamp: int) -> dict[str, Any] | None:
        """The fields of an ``executionReport`` that come from the order itself."""
        native = order.get("symbol")
        market = self.markets.get(native or "")
        if market is None or native not in self.names:
            return None
        kind = translate.order_type(order)
        waiting = order.get("status") == "new" and kind in (
            "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"
        )  # fmt: skip
        zero_p, zero_q = market.format_price(0), market.format_qty(0)
        created = order.get("created_at") or stamp
        return {
            "e": "executionReport", "E": stamp, "s": self.names[native],
            "c": order.get("client_order_id") or "", "S": str(order.get("side") or "").upper(),
            "o": kind, "f": order.get("time_in_force") or "GTC",
            "q": order.get("quantity") or zero_q, "p": order.get("price") or zero_p,
            "P": order.get("stop_price") or zero_p, "F": zero_q, "g": -1, "C": "",
            "x": "NEW", "X": "NEW", "r": "NONE", "i": order.get("order_id"),
            "l": zero_q, "z": order.get("filled_quantity") or zero_q, "L": zero_p, "n": "0",
            "N": None, "T": order.get("updated_at") or created, "t": -1,
            "I": next(self._execution), "w": not waiting, "m": False, "M": False,
            "O": created, "Z": order.get("cum_quote") or market.format_quote(0),
            "Y": market.format_quote(0),
            "Q": order.get("quote_quantity") or market.format_quote(0),
            "V": translate.stp_name(order.get("stp")) or translate.DEFAULT_STP,
            "_market": market,
        }  # fmt: skip

    def _order(self, order: dict[str, Any], stamp: int) -> dict[str, Any] | None:
        """A state change without a fill: accepted, triggered, amended, cancelled, expired."""
        status = order.get("status")
        if status == "rejected":  # not an order on Binance: the request failed with -2010
            return None
        if status in ("filled", "partially_filled") and order.get("reject_reason") != "amended":
            return None  # reported by its fills
        report = self._base(order, stamp)
        if report is None:
            return None
        binance = translate.order_status(order)
        report["X"] = binance
        if order.get("reject_reason") == "amended":
            report["x"] = "REPLACED"
        elif status in _CLOSED:
            report["x"] = _EXECUTION.get(binance, "CANCELED")
            report["w"] = False
            if binance == "CANCELED":
                report["C"] = report["c"]
        else:
            report["x"] = "NEW"
        return _finish(report)

    def _trade(self, fill: dict[str, Any], order: dict[str, Any] | None,
               later: list[dict[str, Any]], stamp: int) -> dict[str, Any] | None:  # fmt: skip
        """One fill: the order's state after it, counted back from the order event after."""
        source = order or {"order_id": fill.get("order_id"), "symbol": fill.get("symbol"),
                           "side": fill.get("side"),
                           "client_order_id": fill.get("client_order_id")}  # fmt: skip
        report = self._base(source, stamp)
        if report is None:
            return None
        market: Market = report["_market"]
        zero_quote = market.format_quote(0)
        price, qty = fill.get("price") or "0", fill.get("quantity") or "0"
        quote = _dec(price) * _dec(qty)
        if order is not None:
            filled = _dec(order.get("filled_quantity")) - sum((_dec(f.get("quantity"))
                                                               for f in later), Decimal(0))
            cum = _dec(order.get("cum_quote")) - sum((_dec(f.get("price")) * _dec(f.get("quantity"))
                                                      for f in later), Decimal(0))  # fmt: skip
            final = not later and order.get("status") in ("filled", "partially_filled")
            status = translate.order_status(order) if final else "PARTIALLY_FILLED"
        else:
            filled, cum, status = _dec(qty), quote, "PARTIALLY_FILLED"
        report.update({
            "x": "TRADE", "X": status, "l": qty, "L": price, "n": fill.get("fee") or "0",
            "N": fill.get("fee_asset"), "T": fill.get("timestamp") or stamp,
            "t": fill.get("trade_id"), "m": fill.get("liquidity") == "maker",
            "z": format(filled, "f"), "Z": _like(cum, zero_quote), "Y": _like(quote, zero_quote),
        })  # fmt: skip
        if status == "FILLED":
            report["w"] = False
        return _finish(report)


def _like(value: Decimal, example: str) -> str:
    """``value`` with the decimals of ``example`` (exact: quote amounts are whole atoms)."""
    try:
        return format(value.quantize(Decimal(example)), "f")
    except ArithmeticError:
        return format(value, "f")


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    """Drop the encoder's private field; ``W`` (working time) only while on the book."""
    del report["_market"]
    if report["w"] and report["X"] in ("NEW", "PARTIALLY_FILLED"):
        report["W"] = report["O"]
    return report


def account_events(account: str) -> AccountEvents:
    """An encoder for ``account`` with this app's markets (in an app context), not seeded:
    listen with it first, then :func:`seed` it (an event between the two is never lost)."""
    st = state()
    return AccountEvents(st.markets, symbols().binance, st.assets, st.partitions)


def seed(enc: AccountEvents, account: str, lock: Any) -> None:
    """``enc``'s balances of every partition, once it listens (in an app context; ``lock``:
    the hub's)."""
    st = state()
    enc.seed(st.redis, st.keys, st.partitions, account, lock)


# -- the legacy listenKey stream ----------------------------------------------------------------


class ListenKeyStream(Connection):
    """``/ws/<listenKey>``: the raw events of one account (the hub's :class:`web.hub.Listener`)."""

    encoder: AccountEvents | None = None

    def on_market(self, symbol: str, body: dict[str, Any]) -> bool:
        return True

    def on_account(self, account: str, body: dict[str, Any]) -> bool:
        if account != self.account or self.encoder is None:  # never another account's events
            return True
        for event in self.encoder.events(body):
            if not self.offer(frame(event)):
                return False
        return True

    def on_resync(self) -> bool:
        """Events may have been lost: the client reconnects and re-reads REST."""
        self.close(RESTART, "events may have been lost; reconnect")
        return True

    def handle(self, raw: str | bytes) -> None:
        """Client messages on a user data stream are ignored, as Binance does (an oversized
        one too: no native error frame here)."""


def listen_key_check_s() -> float:
    return setting("FAIRBOOK_BINANCE_WS_LISTEN_KEY_CHECK") or LISTEN_KEY_CHECK_S


def close_after(conn: Connection, code: int, reason: str, wait_s: float = 2.0) -> None:
    """Close once the frames queued so far have been handed to the socket."""
    deadline = time.monotonic() + wait_s
    while conn.queue and not conn.dying and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.close(code, reason)


def serve_listen_key(ws: Any, listen_key: str) -> None:
    """Serve ``/ws/<listenKey>`` for the socket's life (called by the stream route)."""
    with serving(ws, ListenKeyStream) as conn:
        try:
            _serve_listen_key(ws, conn, listen_key)
        except redis.RedisError as exc:  # Redis down when the stream starts: the client retries
            log.warning("listen key stream ended, redis unavailable: %s", exc)
            conn.close(INTERNAL_ERROR, "retry")


def _open(conn: ListenKeyStream, listen_key: str) -> str | None:
    """Check the listen key and its API key, then listen: the API key's hash (None: closed)."""
    st = state()
    hub = conn.hub
    keys = st.namespace.global_keys
    owner = st.redis.hgetall(keys.listen_key(listen_key)) if LISTEN_KEY.fullmatch(
        listen_key) else {}  # fmt: skip
    key_hash, account = owner.get("key"), owner.get("account")
    if not key_hash or not account:
        conn.close(POLICY_VIOLATION, "This listenKey does not exist.")
        return None
    # registered before the key is re-read: a revocation after the read finds the socket
    hub.register_key(conn, key_hash)
    conn.account = account
    conn.key_hashes.add(key_hash)
    if not st.redis.exists(keys.api_key(key_hash)):
        hub.remove(conn)
        conn.close(POLICY_VIOLATION, "api key revoked")
        return key_hash
    # listening first, then the balances are read: an event between the two is never lost
    conn.encoder = account_events(account)
    hub.listen_account(conn, account)
    seed(conn.encoder, account, hub.lock)
    log.debug("listen key stream of account %s from %s", account, request.remote_addr)
    return key_hash


def _serve_listen_key(ws: Any, conn: ListenKeyStream, listen_key: str) -> None:
    st = state()
    hub = conn.hub
    keys = st.namespace.global_keys
    check_s = listen_key_check_s()
    key_hash = _open(conn, listen_key)
    ttl_s = _ttl_s(st.redis, keys.listen_key(listen_key))
    # when the TTL last read runs out (a key gone before that was deleted, not expired)
    expires = time.monotonic() + ttl_s
    next_check = time.monotonic() + min(check_s, ttl_s + 0.05)
    while not conn.done.is_set():
        data = ws.receive(timeout=1.0)
        if data is not None:
            conn.handle(data)
        if conn.dying or time.monotonic() < next_check:
            continue
        try:
            pipe = st.redis.pipeline(transaction=False)
            pipe.pttl(keys.listen_key(listen_key))
            pipe.exists(keys.api_key(key_hash or ""))
            ttl_ms, key_alive = pipe.execute()
        except redis.RedisError as exc:  # Redis down: look again later, keep the socket
            log.warning("listen key check failed: %s", exc)
            next_check = time.monotonic() + 1.0
            continue
        if not key_alive:
            hub.remove(conn)
            conn.revoked()
        elif ttl_ms is None or ttl_ms < 0:
            hub.remove(conn)
            if time.monotonic() >= expires - 0.5:  # expired without a keep-alive
                conn.offer(frame({"e": "listenKeyExpired", "E": now_ms(),
                                  "listenKey": listen_key}))  # fmt: skip
                close_after(conn, 1000, "listen key expired")
            else:  # closed by its owner (DELETE): no event, as Binance
                conn.close(1000, "listen key closed")
        else:
            expires = time.monotonic() + ttl_ms / 1000.0
            next_check = time.monotonic() + min(check_s, ttl_ms / 1000.0 + 0.05)


def _ttl_s(client: Any, name: str) -> float:
    """Seconds until the listen key's TTL runs out (0 if it is gone; 1 if Redis failed)."""
    try:
        ttl_ms = client.pttl(name)
    except redis.RedisError:
        return 1.0
    if ttl_ms is None or ttl_ms < 0:
        return 0.0
    return ttl_ms / 1000.0
