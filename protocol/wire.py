"""The wire codec and the shape of every record and message the worker writes and the web reads.

Every JSON text is produced by one encoder (:func:`dumps`, orjson: compact, insertion-ordered,
escaping whatever needs escaping), never by string formatting. Already-encoded parts are spliced
in as :class:`orjson.Fragment`, so an order body is encoded once for the reply, the record and
the account event. Readers decode with :func:`loads` and treat anything unreadable as absent.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

#: The journal entry's one field: the wire command JSON.
COMMAND_FIELD: Final = "c"
#: ``reply_to`` = "<inbox id>-<n>": the reply goes to channel ``inbox:<inbox id>``.
_REPLY_TOKEN = re.compile(r"([A-Za-z0-9_]{1,32})-[0-9]{1,20}")

Fragment = orjson.Fragment
DecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    """The one JSON encoding of Fairbook: compact, UTF-8."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    """Decode JSON; raises :data:`DecodeError` (a ValueError)."""
    return orjson.loads(data)


# -- replies ------------------------------------------------------------------------------------


def reply_token(inbox_id: str, n: int) -> str:
    return f"{inbox_id}-{n}"


def reply_inbox(token: Any) -> str | None:
    """The inbox id of a well-formed ``reply_to`` token, else None (nobody to answer)."""
    if type(token) is not str:
        return None
    match = _REPLY_TOKEN.fullmatch(token)
    return None if match is None else match.group(1)


def order_reply(body: dict[str, Any], fills: list[dict[str, Any]]) -> bytes:
    """``{"ok": true, "order": <REST order object>}`` (``body`` is the object without fills)."""
    return dumps({"ok": True, "order": {**body, "fills": fills}})


def cancelled_reply(orders: list[bytes]) -> bytes:
    """The answer to cancel_all: ``{"ok": true, "cancelled": [<REST order object>, ...]}``
    (each order already encoded, as it was when cancelled)."""
    return dumps({"ok": True, "cancelled": [Fragment(o) for o in orders]})


def error_reply(code: str, message: str) -> bytes:
    return dumps({"ok": False, "error": {"code": code, "message": message}})


def inbox_message(replies: dict[str, bytes]) -> bytes:
    """One message per inbox per batch: ``{reply_to token: reply, ...}`` in journal order."""
    return dumps({token: Fragment(reply) for token, reply in replies.items()})


# -- order records ------------------------------------------------------------------------------


def order_record(account: str, body: dict[str, Any], fills: list[dict[str, Any]]) -> bytes:
    """The ``order:<id>`` value: its owner and the REST order object (``body`` + ``fills``)."""
    return dumps({"account": account, **body, "fills": fills})


def parse_order_record(raw: bytes | str | None) -> tuple[str, dict[str, Any]] | None:
    """``order:<id>`` value -> (account, REST order object); None if absent or unreadable."""
    if not raw:
        return None
    try:
        obj = loads(raw)
    except DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    account = obj.pop("account", None)
    if not isinstance(account, str):
        return None
    return account, obj


# -- market data and account messages -----------------------------------------------------------


def trade_record(
    trade_id: int, symbol: str, price: str, quantity: str, aggressor_side: str,
    maker_order_id: int, taker_order_id: int, maker_fee: str, taker_fee: str, fee_asset: str,
    timestamp: int,
) -> bytes:  # fmt: skip
    """The REST trade record (also the trades stream's ``t`` and the md message's trades)."""
    return dumps(
        {"trade_id": trade_id, "symbol": symbol, "price": price, "quantity": quantity,
         "aggressor_side": aggressor_side, "maker_order_id": maker_order_id,
         "taker_order_id": taker_order_id, "maker_fee": maker_fee, "taker_fee": taker_fee,
         "fee_asset": fee_asset, "timestamp": timestamp}
    )  # fmt: skip


def bbo_object(sequence: int, bid_price: str | None, bid_qty: str, ask_price: str | None,
               ask_qty: str) -> dict[str, Any]:  # fmt: skip
    return {"sequence": sequence, "bid_price": bid_price, "bid_qty": bid_qty,
            "ask_price": ask_price, "ask_qty": ask_qty}  # fmt: skip


def book_value(symbol: str, sequence: int, bids: list[list[str]], asks: list[list[str]],
               bbo: dict[str, Any], last_trade_id: int) -> bytes:  # fmt: skip
    """The ``book:<symbol>`` value: top levels best first, and the sequences to sync on."""
    return dumps(
        {"symbol": symbol, "sequence": sequence, "bids": bids, "asks": asks, "bbo": bbo,
         "bbo_sequence": bbo["sequence"], "last_trade_id": last_trade_id}
    )  # fmt: skip


def candle_value(open_time: int, close_time: int, open_: str, high: str, low: str, close: str,
                 volume: str, quote_volume: str, trades: int, taker_buy_volume: str,
                 taker_buy_quote_volume: str, first_trade_id: int,
                 last_trade_id: int) -> bytes:  # fmt: skip
    """One candle of ``kline:<symbol>:<interval>``: prices, base ``volume`` and
    ``quote_volume`` in the market's increments, the taker-buy share of both, the trade count
    and the first and last trade ids (per symbol)."""
    return dumps(
        {"open_time": open_time, "close_time": close_time, "open": open_, "high": high,
         "low": low, "close": close, "volume": volume, "quote_volume": quote_volume,
         "trades": trades, "taker_buy_volume": taker_buy_volume,
         "taker_buy_quote_volume": taker_buy_quote_volume, "first_trade_id": first_trade_id,
         "last_trade_id": last_trade_id}
    )  # fmt: skip


def parse_candle(raw: bytes | str) -> dict[str, Any] | None:
    """A ``kline:`` member -> the candle object, None if unreadable."""
    try:
        obj = loads(raw)
    except DecodeError:
        return None
    return obj if isinstance(obj, dict) and "open_time" in obj else None


def market_data_message(symbol: str, trades: list[bytes], book: dict[str, Any] | None,
                        bbo: dict[str, Any] | None) -> bytes:  # fmt: skip
    """One ``md:<symbol>`` message per batch: its trades, book increment and last BBO.

    ``book`` = ``{prev_sequence, sequence, bids, asks}`` covers level changes in
    ``(prev_sequence, sequence]``; a quantity of zero removes the level.
    """
    return dumps({"symbol": symbol, "trades": [Fragment(t) for t in trades], "book": book,
                  "bbo": bbo})  # fmt: skip


def account_message(account: str, events: list[bytes]) -> bytes:
    """One ``acct:<account>`` message per batch: the account's order and fill events."""
    return dumps({"account": account, "events": [Fragment(e) for e in events]})


# -- money --------------------------------------------------------------------------------------


def balance_field(available: str, locked: str) -> bytes:
    """One field of ``balances:<account>`` (the hash is keyed by asset)."""
    return dumps({"available": available, "locked": locked})


def parse_balances(raw: dict[Any, Any]) -> list[dict[str, str]]:
    """``HGETALL balances:<account>`` -> ``[{asset, available, locked}]`` sorted by asset;
    unreadable fields are skipped."""
    out = []
    for asset, value in raw.items():
        asset = asset.decode() if isinstance(asset, bytes) else asset
        try:
            obj = loads(value)
        except DecodeError:
            continue
        if isinstance(obj, dict) and {"available", "locked"} <= set(obj):
            out.append({"asset": asset, "available": obj["available"], "locked": obj["locked"]})
    out.sort(key=lambda b: b["asset"])
    return out


def balance_event(partition: int, asset: str, available: str, locked: str) -> bytes:
    """The account event of a balance change (last value of the batch)."""
    return dumps({"event": "balance", "partition": partition, "asset": asset,
                  "available": available, "locked": locked})  # fmt: skip


def ledger_entry(entry_id: str, asset: str, amount: str, reason: str, balance: str,
                 timestamp: int, symbol: str | None = None, order_id: int | None = None,
                 trade_id: int | None = None, reference: str | None = None) -> bytes:  # fmt: skip
    """One balance change of ``ledger:<account>``: signed ``amount``, ``balance`` = the
    account's total (available + locked) of the asset after it. ``reason``: deposit,
    withdrawal, trade, fee, rebate."""
    return dumps(
        {"id": entry_id, "asset": asset, "amount": amount, "reason": reason, "balance": balance,
         "symbol": symbol, "order_id": order_id, "trade_id": trade_id, "reference": reference,
         "timestamp": timestamp}
    )  # fmt: skip


def transfer_object(command_id: int, kind: str, account: str, asset: str, amount: str,
                    reference: str, status: str, reason: str | None, partition: int,
                    created_at: int) -> dict[str, Any]:  # fmt: skip
    """A deposit or withdrawal as the API shows it; the reference is ``deposit_id`` or
    ``client_withdrawal_id``."""
    ref_field = "deposit_id" if kind == "deposit" else "client_withdrawal_id"
    return {"id": command_id, "type": kind, ref_field: reference, "account_id": account,
            "asset": asset, "amount": amount, "status": status, "reason": reason,
            "partition": partition, "created_at": created_at}  # fmt: skip


def transfer_reply(transfer: dict[str, Any]) -> bytes:
    return dumps({"ok": True, "transfer": transfer})


def transfer_reply_raw(transfer: bytes) -> bytes:
    """:func:`transfer_reply` of an already encoded transfer object."""
    return dumps({"ok": True, "transfer": Fragment(transfer)})


def resync_message(partition: int) -> bytes:
    """On the control channel after a worker recovered: clients must take fresh snapshots."""
    return dumps({"type": "resync", "partition": partition})
