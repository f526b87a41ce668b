"""What processing one batch produces, as the committer writes it (named types, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(slots=True)
class TradeRecord:
    """One trade as the trades stream stores it (replay compares these)."""

    stream_id: str  # "<ms of the command's entry>-<partition trade number>"
    record: bytes  # the REST trade record
    maker_account: str
    taker_account: str
    symbol: str


@dataclass(slots=True)
class BookUpdate:
    """One symbol touched by the batch: its new ``book:<symbol>`` value and md message."""

    symbol: str
    value: bytes
    message: bytes


@dataclass(slots=True)
class CandleUpdate:
    """One candle the batch changed: its final value (one per symbol, interval, open time)."""

    symbol: str
    interval: str  # a base interval (protocol.candles.BASE)
    open_time: int
    value: bytes
    opened: bool = False  # the batch opened it (the key may now hold one candle too many)


class Message(NamedTuple):
    channel: str
    payload: bytes


@dataclass(slots=True)
class Batch:
    """What one processed batch produced. In state-only mode just the ids, counts and trades."""

    first_id: str | None = None
    last_id: str | None = None
    count: int = 0  # valid commands applied
    consumed: int = 0  # journal entries consumed since genesis, this batch included
    trades: list[TradeRecord] = field(default_factory=list)
    #: order id -> its ``order:<id>`` value, for every order the batch changed
    records: dict[int, bytes] = field(default_factory=dict)
    #: account -> ids entering its ``open`` index / leaving it / entering its ``closed`` index
    opened: dict[str, list[int]] = field(default_factory=dict)
    unopened: dict[str, list[int]] = field(default_factory=dict)
    closed: dict[str, list[int]] = field(default_factory=dict)
    books: list[BookUpdate] = field(default_factory=list)
    #: account -> {asset: ``balances:<account>`` field} for every balance the batch changed
    balances: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: account -> its new ledger entries, oldest first
    ledger: dict[str, list[bytes]] = field(default_factory=dict)
    #: (account, "deposit"|"withdrawal") -> new transfer objects, oldest first
    transfers: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    #: candles the batch's trades changed, their final values (also in state-only mode when
    #: the processor collects them, for the replay)
    candles: list[CandleUpdate] = field(default_factory=list)
    #: replies (one per inbox), market data, account events: published in this order
    messages: list[Message] = field(default_factory=list)
