"""REST API v1: orders (private, ``X-API-Key``) and market data (public).

Why it is thin: the web never decides anything about an order. It validates with the shared
schema, appends one command to the partition's journal and waits (bounded) for the worker's
reply; reads come from what the worker committed to Redis.
"""

from __future__ import annotations

import json
import os
import re
import time
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from engine.commands import Reason, partition_of_id
from engine.markets import Market
from engine.units import ErrorCode
from engine.validation import shown, validate_amend_request, validate_order_request
from jobs import audit as audits
from protocol.candles import INTERVALS, native
from protocol.keys import Keys
from protocol.wire import parse_order_record
from web import candles
from web.accounts import API_KEY_HEADER, is_operator, lookup_account, require_account, valid_api_key
from web.app import ApiError, state

public = Blueprint("public", __name__)
private = Blueprint("private", __name__, url_prefix="/api/v1")

DEFAULT_DEPTH = 50
MAX_DEPTH = 500
DEFAULT_TRADES = 100
MAX_TRADES = 1000
DEFAULT_ORDERS = 100
MAX_ORDERS = 1000
#: /healthz fails when a partition's worker is further behind than this many commands.
DEFAULT_HEALTH_MAX_LAG = 10_000

# matched in full (``$`` would accept a trailing newline), ASCII only (``str.isdigit`` takes "²")
_ORDER_ID = re.compile(r"[0-9]{1,19}")
_SMALL_INT = re.compile(r"[0-9]{1,9}")


# -- keys ---------------------------------------------------------------------------------------


def keys(partition: int) -> Keys:
    return state().keys(partition)


def partition_for(symbol: str) -> int:
    """The symbol's partition (``FAIRBOOK_PARTITIONS``, read once at start-up)."""
    return state().namespace.partition(symbol)


# -- request helpers ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("a key appears twice")
        out[key] = value
    return out


def _read_body() -> bytes:
    """The raw body, 413 past ``MAX_CONTENT_LENGTH`` even when it arrives chunked.

    Werkzeug rejects a too-large Content-Length itself, but silently truncates a chunked body at
    the limit; here a chunked body is read up to limit + 1 bytes so the excess is detected.
    """
    try:
        if request.content_length is not None or not request.environ.get("wsgi.input_terminated"):
            raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
        else:
            limit = current_app.config["MAX_CONTENT_LENGTH"]
            raw = request.environ["wsgi.input"].read(limit + 1)
            if len(raw) > limit:
                raise RequestEntityTooLarge()
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - bad chunk framing, a client gone mid-body, a timeout
        raise ApiError(400, "malformed_body", "the request body could not be read") from None
    if request.content_length is not None and len(raw) != request.content_length:
        raise ApiError(400, "malformed_body", "the body is shorter than its Content-Length")
    return raw


def json_body() -> dict[str, Any]:
    """The request's JSON object, strictly: right content type, UTF-8, no NaN, no duplicate keys.

    JSON numbers are parsed as Decimal (never float) and left for the schema to refuse with a
    "must be a decimal string" message; nothing here ever rounds money.
    """
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    raw = _read_body()
    if not raw:
        raise ApiError(400, ErrorCode.MALFORMED_JSON, "the request body is empty")
    try:
        body = json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicate_keys,
        )
    except UnicodeDecodeError:
        raise ApiError(400, ErrorCode.MALFORMED_JSON, "the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            message = f"malformed JSON at line {exc.lineno} column {exc.colno}"
        elif isinstance(exc, RecursionError):
            message = "malformed JSON: nested too deeply"
        else:
            message = f"malformed JSON: {exc}"
        raise ApiError(400, ErrorCode.MALFORMED_JSON, message) from None
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.MALFORMED_JSON, "the body must be a JSON object")
    return body


def _int_arg(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _SMALL_INT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(
            400, ErrorCode.INVALID_FIELD, f"{name} must be an integer from 1 to {maximum}"
        )
    return int(raw)


def _market(symbol: str, status: int = 404) -> Market:
    market = state().markets.get(symbol)
    if market is None:
        raise ApiError(status, ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {shown(symbol)}")
    return market


def _symbol_arg() -> str | None:
    symbol = request.args.get("symbol")
    if symbol is not None:
        _market(symbol, status=400)
    return symbol


def _parse_order_id(text: str) -> tuple[int, int]:
    """``(order_id, partition)``; anything that cannot be one of our ids is a 404."""
    if not _ORDER_ID.fullmatch(text) or int(text) >= 2**63:
        raise ApiError(404, Reason.UNKNOWN_ORDER, "order ids are positive integers")
    order_id = int(text)
    partition = partition_of_id(order_id)
    if partition not in state().partitions:
        raise _unknown_order(order_id)
    return order_id, partition


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _load_owned_order(order_id: int, partition: int, account: str) -> dict[str, Any] | None:
    """The REST order object if the order exists and belongs to ``account``; another's is None."""
    record = parse_order_record(state().get(keys(partition).order(order_id)))
    if record is None or record[0] != account:
        return None
    return record[1]


def _unknown_order(order_id: int) -> ApiError:
    """Missing, closed, or another account's: one answer, so nobody learns which."""
    return ApiError(404, Reason.UNKNOWN_ORDER, "unknown order")


def _error_from_reply(reply: dict[str, Any]) -> ApiError:
    """Map a worker ``{"ok": false, "error": {...}}`` to an HTTP error (unknown order = 404)."""
    error = reply.get("error") or {}
    code = str(error.get("code") or Reason.INVALID_ORDER)
    message = str(error.get("message") or code)
    if code == Reason.UNKNOWN_ORDER:
        status = 404
        message = "unknown order"  # the same words whether it is missing or somebody else's
    elif code == "internal_error":  # the worker caught an engine bug: not the client's fault
        status = 500
    else:
        status = 400
    return ApiError(status, code, message)


def _submit(partition: int, wire: dict[str, Any], timeout: float) -> tuple[int, dict | None]:
    """Append one command to the partition's journal; wait up to ``timeout`` for the reply."""
    return state().journal(partition).submit(wire, timeout)


def _order_command(partition: int, wire: dict[str, Any], oid: int, timeout: float):
    """Submit a cancel/amend of one order: 200 with the order, 202 on timeout, or its error."""
    command_id, reply = _submit(partition, wire, timeout)
    if reply is None:
        return _accepted(oid, command_id=command_id)
    if not reply.get("ok"):
        raise _error_from_reply(reply)
    return jsonify(reply["order"])


def _accepted(order_id: int, **extra: Any):
    body = {"order_id": order_id, "status": "accepted", **extra}
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/orders/{order_id}"
    return response


# -- private: orders ----------------------------------------------------------------------------


@private.post("/orders")
@require_account
def place_order():
    """Validate, journal, wait: 201 with the order (maybe ``rejected``) or 202 when slow."""
    body = json_body()
    st = state()
    wire, _ = validate_order_request(body, st.markets)
    wire["account"] = g.account
    order_id, reply = _submit(partition_for(wire["symbol"]), wire, st.reply_timeout)
    if reply is None:
        return _accepted(order_id, symbol=wire["symbol"], client_order_id=wire["client_order_id"])
    if not reply.get("ok"):
        raise _error_from_reply(reply)
    # No Location header here: werkzeug's IRI handling of it costs ~7 % of the request's CPU.
    return jsonify(reply["order"]), 201


@private.delete("/orders/<order_id>")
@require_account
def cancel_order(order_id: str):
    """Cancel one order. The engine is the only judge of ownership: a cancel of another
    account's order is journaled like one of a missing (or still in-flight) order, so both
    answer alike, 404 from the worker or 202 while it is slow."""
    oid, partition = _parse_order_id(order_id)
    st = state()
    wire = {"op": "cancel", "account": g.account, "order_id": oid}
    return _order_command(partition, wire, oid, st.reply_timeout)


@private.delete("/orders")
@require_account
def cancel_all():
    """Cancel every open order of the caller (one symbol, or all partitions)."""
    symbol = _symbol_arg()
    st = state()
    partitions = [partition_for(symbol)] if symbol else list(st.partitions)
    pending = []
    for partition in partitions:  # send everywhere first: the partitions work in parallel
        wire = {"op": "cancel_all", "account": g.account, "symbol": symbol}
        journal = st.journal(partition)
        command_id, waiter = journal.send(wire, ready_s=st.reply_timeout)
        pending.append((journal, wire, command_id, waiter))
    deadline = time.monotonic() + st.reply_timeout
    cancelled: list[Any] = []
    unanswered: list[int] = []
    for journal, wire, command_id, waiter in pending:
        remaining = max(0.0, deadline - time.monotonic())
        reply = journal.wait(wire, waiter, remaining)
        if reply is None:
            unanswered.append(command_id)
        elif not reply.get("ok"):
            raise _error_from_reply(reply)
        else:
            cancelled.extend(reply.get("cancelled") or [])
    if unanswered:
        response = jsonify(
            {"cancelled": cancelled, "status": "accepted", "pending_command_ids": unanswered}
        )
        response.status_code = 202
        return response
    return jsonify({"cancelled": cancelled})


@private.patch("/orders/<order_id>")
@require_account
def amend_order(order_id: str):
    """Amend quantity (new total) and/or price of an own open order."""
    oid, partition = _parse_order_id(order_id)
    st = state()
    order = _load_owned_order(oid, partition, g.account)
    if order is None:
        raise _unknown_order(oid)
    symbol = order.get("symbol")
    market = st.markets.get(symbol) if isinstance(symbol, str) else None
    if market is None:  # a symbol dropped from the symbols file since the order was placed
        raise ApiError(400, Reason.NOT_AMENDABLE, "the order's symbol is no longer listed")
    body = json_body()
    changes = validate_amend_request(body, market)
    wire = {
        "op": "amend",
        "account": g.account,
        "order_id": oid,
        "symbol": market.symbol,
        "quantity": changes["quantity"],
        "price": changes["price"],
    }
    return _order_command(partition, wire, oid, st.reply_timeout)


@private.get("/orders/<order_id>")
@require_account
def get_order(order_id: str):
    """One own order as the worker last committed it."""
    oid, partition = _parse_order_id(order_id)
    order = _load_owned_order(oid, partition, g.account)
    if order is None:
        raise _unknown_order(oid)
    return jsonify(order)


@private.get("/orders")
@require_account
def list_orders():
    """Own orders, newest first, from the open or closed sets (``status=open|closed|all``)."""
    symbol = _symbol_arg()
    status = request.args.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise ApiError(400, ErrorCode.INVALID_FIELD, "status must be open, closed or all")
    limit = _int_arg("limit", DEFAULT_ORDERS, MAX_ORDERS)
    st = state()
    partitions = [partition_for(symbol)] if symbol else list(st.partitions)
    kinds = ("open", "closed") if status == "all" else (status,)
    orders: list[dict[str, Any]] = []
    for partition in partitions:
        for kind in kinds:
            k = keys(partition)
            key = k.open(g.account) if kind == "open" else k.closed(g.account)
            orders.extend(_scan_orders(key, partition, symbol, limit))
    orders.sort(key=lambda o: (o.get("created_at") or 0, o.get("order_id") or 0), reverse=True)
    return jsonify(orders[:limit])


def _scan_orders(key: str, partition: int, symbol: str | None, limit: int) -> list[dict]:
    """Up to ``limit`` orders of one id set, newest first, optionally of one symbol."""
    st = state()
    found: list[dict[str, Any]] = []
    start = 0
    chunk = limit if symbol is None else max(limit, 200)
    while len(found) < limit:
        ids = st.redis.zrevrange(key, start, start + chunk - 1)
        if not ids:
            break
        order_keys = [keys(partition).order(_text(raw_id)) for raw_id in ids]
        for raw in st.redis.mget(order_keys):
            record = parse_order_record(raw)  # None: gone between the two reads
            if record is not None and (symbol is None or record[1].get("symbol") == symbol):
                found.append(record[1])
        if len(ids) < chunk:
            break
        start += chunk
    return found[:limit]


# -- public: market data ------------------------------------------------------------------------


def _book(symbol: str) -> dict[str, Any]:
    raw = state().get(keys(partition_for(symbol)).book(symbol))
    if not raw:
        return {"symbol": symbol, "sequence": 0, "bids": [], "asks": []}
    return json.loads(raw)


@public.get("/api/v1/symbols")
def symbols():
    """Every market with its trading rules, as in the symbols file."""
    return jsonify([m.as_dict() for m in state().markets.values()])


@public.get("/api/v1/book/<symbol>")
def book(symbol: str):
    """Top ``depth`` levels per side as ``[price, quantity]`` strings, with the book sequence."""
    _market(symbol)
    depth = _int_arg("depth", DEFAULT_DEPTH, MAX_DEPTH)
    snap = _book(symbol)
    return jsonify(
        {
            "symbol": symbol,
            "sequence": snap.get("sequence", 0),
            "bids": (snap.get("bids") or [])[:depth],
            "asks": (snap.get("asks") or [])[:depth],
        }
    )


@public.get("/api/v1/bbo/<symbol>")
def bbo(symbol: str):
    """Best bid and offer (null price and "0" quantity for an empty side)."""
    _market(symbol)
    snap = _book(symbol)
    stored = snap.get("bbo")
    bids = snap.get("bids") or []
    asks = snap.get("asks") or []
    out: dict[str, Any] = {
        "symbol": symbol,
        "sequence": snap.get("bbo_sequence", snap.get("sequence", 0)),
        "bid_price": bids[0][0] if bids else None,
        "bid_qty": bids[0][1] if bids else "0",
        "ask_price": asks[0][0] if asks else None,
        "ask_qty": asks[0][1] if asks else "0",
    }
    if isinstance(stored, dict):
        for name in ("bid_price", "bid_qty", "ask_price", "ask_qty"):
            if name in stored:
                out[name] = stored[name]
        if "sequence" in stored:
            out["sequence"] = stored["sequence"]
    return jsonify(out)


@public.get("/api/v1/trades/<symbol>")
def trades(symbol: str):
    """The newest ``limit`` trades of a symbol, newest first."""
    _market(symbol)
    limit = _int_arg("limit", DEFAULT_TRADES, MAX_TRADES)
    rows = state().redis.lrange(keys(partition_for(symbol)).recent(symbol), 0, limit - 1)
    return jsonify([json.loads(row) for row in rows])


def _time_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,15}", raw):
        raise ApiError(400, ErrorCode.INVALID_FIELD, f"{name} must be a time in milliseconds")
    return int(raw)


@public.get("/api/v1/klines/<symbol>")
def klines(symbol: str):
    """Candles of ``interval`` (default 1m), oldest first: from ``start_time`` on, else the
    newest up to ``end_time``; ``limit`` 1..1000 (default 500)."""
    market = _market(symbol)
    interval = request.args.get("interval", "1m")
    if interval not in INTERVALS:
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       f"interval must be one of {', '.join(INTERVALS)}")  # fmt: skip
    start, end = _time_arg("start_time"), _time_arg("end_time")
    limit = _int_arg("limit", candles.DEFAULT_LIMIT, candles.MAX_LIMIT)
    rows = candles.klines(state().redis, keys(partition_for(symbol)), market, interval, start,
                          end, limit)  # fmt: skip
    return jsonify([native(c) for c in rows])


@public.get("/api/v1/ticker/<symbol>")
def ticker(symbol: str):
    """The 24 h rolling window ending at the symbol's last trade (journal time)."""
    market = _market(symbol)
    w = candles.window(state().redis, keys(partition_for(symbol)), market)
    return jsonify(candles.native_ticker(market, w))


@public.get("/api/v1/openapi.json")
def openapi():
    """The REST contract (web/openapi.json with this deployment's symbols), read at start-up."""
    return Response(state().openapi, mimetype="application/json")


def _quiet_health(healthy: bool):
    """What anyone may know: up or not (no addresses, lag numbers or exception text)."""
    response = jsonify({"status": "ok" if healthy else "unavailable"})
    response.status_code = 200 if healthy else 503
    return response


def _operator_request() -> bool:
    """An operator's ``X-API-Key`` came with the request. A missing, unknown or non-operator
    key is not an error here: the answer is the quiet one (a load balancer's probe must not
    fail because a key was rotated)."""
    api_key = request.headers.get(API_KEY_HEADER)
    if not valid_api_key(api_key):
        return False
    account = lookup_account(api_key)
    return account is not None and is_operator(account)


@public.get("/healthz")
def healthz():
    """Redis reachable, and per partition: a lease holder and how far the worker lags.

    Anonymous callers get ``{"status": "ok"}`` (200) or ``{"status": "unavailable"}`` (503);
    an operator account's key gets the details below with the same status code.
    """
    st = state()
    max_lag = int(current_app.config.get("FAIRBOOK_HEALTH_MAX_LAG", DEFAULT_HEALTH_MAX_LAG))
    try:
        st.redis.ping()
        partitions = [_partition_health(p, max_lag) for p in st.partitions]
        audited = audits.latest(st.redis, st.namespace.global_keys)
        operator = _operator_request()
    except Exception as exc:  # noqa: BLE001 - any Redis failure means "down", reported as such
        current_app.logger.warning("healthz: Redis unavailable: %s", exc)  # the address: logs only
        return _quiet_health(False)
    healthy = all(p["lease"] and p["lag"] <= max_lag for p in partitions)
    failed = audits.first_failure(audited)
    if failed is not None and _audit_fails_health():
        healthy = False
    # this process's reply inbox (started with its first order): unsubscribed, every order
    # would be answered 202 however fast the worker is
    inbox = st.inbox
    replies: dict[str, Any] = {"subscribed": None}
    if inbox is not None:
        replies = {"subscribed": inbox.ready.is_set(), "inbox": inbox.id, **inbox.stats}
        healthy = healthy and replies["subscribed"]
    if not operator:
        return _quiet_health(healthy)
    hub = current_app.extensions.get("fairbook_ws")
    market_data = {"poison": hub.stats["poison"]} if hub is not None else None
    response = jsonify(
        {"status": "ok" if healthy else "unavailable", "redis": True, "partitions": partitions,
         "replies": replies, "market_data": market_data,
         "audits": [_audit_health(audited[p]) for p in st.partitions if p in audited],
         "audit_failure": None if failed is None else _audit_health(failed)}
    )  # fmt: skip
    response.status_code = 200 if healthy else 503
    return response


def _audit_fails_health() -> bool:
    """``FAIRBOOK_HEALTH_AUDIT=fail``: a failed audit makes /healthz 503 (default ``report``:
    the operator's answer names it, the status stays what the processes' health says, so a
    load balancer does not take every web process out over a bad record)."""
    mode = current_app.config.get("FAIRBOOK_HEALTH_AUDIT", os.environ.get("FAIRBOOK_HEALTH_AUDIT"))
    return mode == "fail"


def _audit_health(record: dict[str, Any]) -> dict[str, Any]:
    """A partition's newest audit as /healthz shows it (the first difference included)."""
    return {"partition": record.get("partition"), "ok": bool(record.get("ok")),
            "difference": record.get("difference"), "finished_at": record.get("finished_at"),
            "job_id": record.get("job_id")}  # fmt: skip


def _partition_health(partition: int, max_lag: int) -> dict[str, Any]:
    """Lag = journal entries the worker has not consumed yet.

    O(1) from ``XINFO STREAM entries-added - applied_count`` (both count since genesis, so
    trimming does not matter); without ``applied_count`` (an older worker) the entries after
    ``applied`` are counted with a bounded XRANGE instead.
    """
    client = state().redis
    k = keys(partition)
    pipe = client.pipeline(transaction=False)
    pipe.get(k.applied)
    pipe.get(k.applied_count)
    pipe.exists(k.lease)
    pipe.exists(k.stream)
    applied, applied_count, lease, has_stream = pipe.execute()
    applied = _text(applied) if applied else None
    length = 0
    if not has_stream:
        lag = 0
    else:
        info = client.xinfo_stream(k.stream)
        length = info.get("length", 0)
        added = info.get("entries-added")
        if added is not None and (applied_count is not None or applied is None):
            lag = max(0, int(added) - int(applied_count or 0))
        else:
            start = f"({applied}" if applied else "-"
            lag = len(client.xrange(k.stream, min=start, max="+", count=max_lag + 1))
    return {
        "partition": partition,
        "lease": bool(lease),
        "applied": applied,
        "stream_length": length,
        "lag": lag,
    }
