"""Audit: rebuild a partition from its journal in memory and compare with what was recorded.

Uses the worker's own :class:`~worker.processor.Processor` with ``emit=False``, so "replay agrees"
means: the recorded trades stream (ids, records, accounts), the final ``book:<symbol>`` keys and
the candles (``kline:<symbol>:<interval>``, every member its replay recomputes) are exactly
what the journal implies. Nothing is written to Redis.

Once the archive job (``jobs.archive``) has trimmed the streams, the journal and the trades
are read from the archive's segments first, then from Redis (``protocol.archive.history``), so
the audit still starts at genesis; without a complete archive it starts at the oldest snapshot,
as with ``python -m worker --trim``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from engine.markets import Market
from protocol import wire
from protocol.archive import (
    JOURNAL,
    TRADES,
    ArchiveCorrupt,
    ArchiveStore,
    Entry,
    genesis_complete,
    history,
)
from protocol.candles import BASE, BASE_SPANS, RETENTION
from protocol.keys import DEFAULT_NAMESPACE, Keys
from protocol.wire import parse_order_record
from worker.processor import Processor, candle_value, parse_stream_id
from worker.snapshots import SnapshotStore, stream_was_trimmed

CHUNK = 2000


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class ReplayResult:
    ok: bool = True
    entries: int = 0
    trades: int = 0
    books_checked: int = 0
    records_checked: int = 0
    balances_checked: int = 0
    candles_checked: int = 0
    start: str = "genesis"
    archived: int = 0  # journal entries read from the archive
    until: str | None = None
    seconds: float = 0.0
    difference: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = "replay OK" if self.ok else "replay FAILED"
        source = f" ({self.archived} of them from the archive)" if self.archived else ""
        text = (
            f"{head}: {self.entries} journal entries{source} from {self.start} up to "
            f"{self.until}, "
            f"{self.trades} trades compared, {self.books_checked} books compared, "
            f"{self.records_checked} order records read, "
            f"{self.balances_checked} balances compared, "
            f"{self.candles_checked} candles compared, "
            f"{self.seconds:.2f} s"
        )
        if self.difference:
            text += f"\nfirst difference: {self.difference}"
        for note in self.notes:
            text += f"\nnote: {note}"
        return text


def _recorded_trades(entries: Iterator[Entry], skip_upto: int) -> Iterator[tuple[str, dict]]:
    """The trades in order, as text, skipping trade numbers <= ``skip_upto`` (before a
    snapshot)."""
    for raw_id, fields in entries:
        entry_id = _text(raw_id) or ""
        if parse_stream_id(entry_id)[1] <= skip_upto:
            continue
        yield entry_id, {_text(k): _text(v) for k, v in fields.items()}


def _stream(client: redis.Redis, key: str, after: str | None = None,
            upto: str | None = None) -> Iterator[Entry]:  # fmt: skip
    """A stream's entries in Redis, ``after`` < id <= ``upto``, read in chunks."""
    low = "(" + after if after else "-"
    while True:
        chunk = client.xrange(key, min=low, max=upto or "+", count=CHUNK)
        yield from chunk
        if len(chunk) < CHUNK:
            return
        low = "(" + (_text(chunk[-1][0]) or "")


def _archive_applies(client: redis.Redis, archive: ArchiveStore | None, key: str,
                     kind: str) -> bool:  # fmt: skip
    """Read ``key`` through the archive? Yes when the archive is this stream's: empty beside a
    whole stream (a first segment written while we read is still seen by ``history``), or
    holding it from genesis
    and either the stream was trimmed or the archive starts with the stream's first entry. A
    stray archive beside an untrimmed stream (another deployment's, a test's) is ignored."""
    if archive is None:
        return False
    segs = archive.segments(kind)
    if not segs:
        return not stream_was_trimmed(client, key)
    if not genesis_complete(client, archive, key, kind):
        return False
    if stream_was_trimmed(client, key):
        return True
    first = client.xrange(key, count=1)
    return bool(first) and _text(first[0][0]) == segs[0].first


def _chunks(entries: Iterator[Entry], size: int = CHUNK) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def replay_partition(
    client: redis.Redis,
    partition: int,
    markets: dict[str, Market],
    namespace: str = DEFAULT_NAMESPACE,
    until: str | None = None,
    archive: ArchiveStore | None = None,
) -> ReplayResult:
    """Replay partition ``partition`` (its markets only) up to ``until`` (default: ``applied``);
    ``archive``: where the archive job put what it trimmed (used only once Redis's streams
    were trimmed: an untrimmed journal is whole by itself). A damaged archive segment is a
    failed audit naming the file."""
    try:
        return _replay(client, partition, markets, namespace, until, archive)
    except ArchiveCorrupt as exc:
        return ReplayResult(ok=False, difference=f"the archive is damaged: {exc}")


def _replay(client: redis.Redis, partition: int, markets: dict[str, Market], namespace: str,
            until: str | None, archive: ArchiveStore | None) -> ReplayResult:  # fmt: skip
    started = time.monotonic()
    keys = Keys(partition, namespace)
    result = ReplayResult()
    applied = _text(client.get(keys.applied))
    if applied is None:
        result.notes.append("nothing applied yet: no trades to compare")
        result.seconds = time.monotonic() - started
        return result
    limit = applied
    if until is not None and parse_stream_id(until) < parse_stream_id(applied):
        limit = until
    result.until = limit
    full = limit == applied

    proc: Processor | None = None
    from_archive = _archive_applies(client, archive, keys.stream, JOURNAL)
    if stream_was_trimmed(client, keys.stream) and not from_archive:
        store = SnapshotStore(client, keys)
        for sid in store.ids():  # oldest first: the stream is kept from the oldest on
            blob = store.load(sid)
            if blob is not None:
                proc = Processor.from_blob(markets, blob, partition, namespace=namespace)
                result.start = f"snapshot {sid}"
                break
        if archive is not None:
            result.notes.append(f"the archive ({archive.dir}) does not hold the trimmed "
                                "journal from genesis: audited from a snapshot")  # fmt: skip
        if proc is None:
            result.ok = False
            result.difference = "the journal was trimmed and no snapshot is left to start from"
            return result
    else:
        proc = Processor(markets, partition, namespace=namespace)
    if _archive_applies(client, archive, keys.trades, TRADES):
        assert archive is not None
        trade_entries = history(client, archive, keys.trades, TRADES)
    elif result.start == "genesis" and stream_was_trimmed(client, keys.trades):
        result.ok = False
        result.difference = (f"{keys.trades} was trimmed and the archive does not hold its "
                             "trades from genesis")  # fmt: skip
        return result
    else:
        trade_entries = _stream(client, keys.trades)
    recorded = _recorded_trades(trade_entries, proc.trade_no)
    proc.collect_candles = True
    #: (symbol, interval) -> {open time: member}, trimmed like the worker trims; a snapshot's
    #: newest candles are where the comparison starts (older ones were never recomputed)
    candles: dict[tuple[str, str], dict[int, bytes]] = {}
    for symbol, rows in proc.candles.items():
        for i, c in enumerate(rows):
            if c:
                value = candle_value(markets[symbol], c, BASE_SPANS[i])
                candles[(symbol, BASE[i])] = {c[0]: value}

    if from_archive:
        assert archive is not None
        journal = history(client, archive, keys.stream, JOURNAL, after=proc.last_id, upto=limit,
                          chunk=CHUNK)  # fmt: skip
        archived_last = archive.last_id(JOURNAL)
    else:
        journal = _stream(client, keys.stream, after=proc.last_id, upto=limit)
        archived_last = None
    for entries in _chunks(journal):
        if not result.ok:
            break
        batch = proc.process(entries, emit=False)
        result.entries += len(entries)
        if archived_last is not None:
            result.archived += sum(
                1 for e in entries if parse_stream_id(e[0]) <= parse_stream_id(archived_last)
            )
        for candle in batch.candles:
            kept = candles.setdefault((candle.symbol, candle.interval), {})
            kept[candle.open_time] = candle.value
            if len(kept) > RETENTION[candle.interval]:
                del kept[next(iter(kept))]  # open times only grow: the first is the oldest
        for trade in batch.trades:
            trade_id = trade.stream_id
            record = trade.record.decode()
            want = {"t": record, "ma": trade.maker_account, "ta": trade.taker_account}
            got = next(recorded, None)
            if got is None:
                result.ok = False
                result.difference = f"trade {trade_id} {record} is missing from {keys.trades}"
                break
            if got[0] != trade_id or got[1] != want:
                result.ok = False
                result.difference = (
                    f"trade {result.trades + 1} after {result.start}: replay gives "
                    f"{trade_id} {want}, {keys.trades} has {got[0]} {got[1]}"
                )
                break
            result.trades += 1
    if result.ok and full:
        extra = next(recorded, None)
        if extra is not None:
            result.ok = False
            result.difference = f"{keys.trades} has a trade replay does not produce: {extra}"
        else:
            for symbol in sorted(markets):
                stored = _text(client.get(keys.book(symbol)))
                mine = proc.book_value(symbol).decode()
                if stored is not None and stored != mine:
                    result.ok = False
                    result.difference = (
                        f"{keys.book(symbol)} differs: replay {mine[:300]} stored {stored[:300]}"
                    )
                    break
                if stored is not None:
                    result.books_checked += 1
    if result.ok and full:
        _check_balances(client, keys, proc, result)
    if result.ok and full:
        _check_candles(client, keys, sorted(markets), candles, result)
    if result.ok:
        _check_records(client, keys, result)
    result.seconds = time.monotonic() - started
    return result


def _check_balances(
    client: redis.Redis, keys: Keys, proc: Processor, result: ReplayResult
) -> None:
    """Every account's ``balances:<account>`` hash must be what the journal implies (an asset
    the hash lacks counts as zero), and no hash may exist for an account replay never saw."""
    ledger = proc.engine.ledger
    if ledger is None:
        return
    prefix = keys.balances("")
    seen: set[str] = set()
    for account in ledger.list_accounts():
        seen.add(account)
        stored = {
            (_text(k) or ""): _text(v) for k, v in client.hgetall(keys.balances(account)).items()
        }
        for asset, (available, locked) in ledger.balances(account).items():
            fmt = proc.assets[asset].format
            want = wire.balance_field(fmt(available), fmt(locked)).decode()
            got = stored.pop(asset, None)
            if got is None and not available and not locked:
                continue
            if got != want:
                result.ok = False
                result.difference = (
                    f"{keys.balances(account)} {asset}: replay {want}, stored {got}"
                )
                return
            result.balances_checked += 1
        if stored:
            result.ok = False
            result.difference = f"{keys.balances(account)} has assets replay never saw: {stored}"
            return
    for raw_key in client.scan_iter(match=prefix + "*", count=1000):
        account = (_text(raw_key) or "")[len(prefix) :]
        if account not in seen:
            result.ok = False
            result.difference = f"{_text(raw_key)} exists but replay never saw account {account}"
            return


def _check_candles(client: redis.Redis, keys: Keys, symbols: list[str],
                   candles: dict[tuple[str, str], dict[int, bytes]],
                   result: ReplayResult) -> None:  # fmt: skip
    """Each ``kline:<symbol>:<interval>`` must hold exactly the candles replay computed, from
    the first one it computed on (all of them when it started at genesis)."""
    genesis = result.start == "genesis"
    for symbol in symbols:
        for interval in BASE:
            key = keys.kline(symbol, interval)
            mine = candles.get((symbol, interval), {})
            first = min(mine, default=None)
            stored = {int(score): bytes(member)
                      for member, score in client.zrange(key, 0, -1, withscores=True)
                      if genesis or (first is not None and score >= first)}  # fmt: skip
            for opened in sorted(set(mine) | set(stored)):
                want, got = mine.get(opened), stored.get(opened)
                if want != got:
                    result.ok = False
                    result.difference = (
                        f"{key} at {opened}: replay {_text(want)}, stored {_text(got)}"
                    )
                    return
                result.candles_checked += 1


def _check_records(client: redis.Redis, keys: Keys, result: ReplayResult) -> None:
    """Every order record and recent-trades entry must be readable: a reader skips an
    unreadable one as absent, so only the audit can report it."""
    prefix = keys.order("")
    for raw_key in client.scan_iter(match=prefix + "*", count=1000):
        key = _text(raw_key) or ""
        record = parse_order_record(client.get(raw_key))
        if record is None or str(record[1].get("order_id")) != key[len(prefix) :]:
            result.ok = False
            result.difference = f"{key} is not a readable order record"
            return
        result.records_checked += 1
    for raw_key in client.scan_iter(match=keys.recent("*"), count=1000):
        for row in client.lrange(raw_key, 0, -1):
            try:
                if not isinstance(wire.loads(row), dict):
                    raise ValueError("not an object")
            except ValueError:
                result.ok = False
                result.difference = f"{_text(raw_key)} holds an unreadable trade record"
                return
