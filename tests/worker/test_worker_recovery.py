"""Recovery: snapshot + journal replay rebuilds the same state and writes nothing twice."""

from __future__ import annotations

import json

from wk_helpers import (
    feed,
    last_stream_id,
    money_audit,
    redis_state,
    trade_numbers,
    wait_applied,
)

from protocol.keys import Keys
from worker.replay import replay_partition

K = Keys(0)


def test_recovery_from_snapshot_gives_identical_trades(redis_client, start_worker, markets):
    flow = feed(redis_client, markets, 1500, seed=11)
    a = start_worker(snapshot_every=400, batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    a.crash()  # no lease release, no final snapshot: like kill -9 between snapshots
    snapshots = [s.decode() for s in redis_client.zrange(K.snapshots, 0, -1)]
    assert len(snapshots) == 2  # newest two kept
    feed(redis_client, markets, 1500, flow=flow)
    redis_client.delete(K.lease)  # skip waiting for the TTL
    b = start_worker(snapshot_every=400, batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    b.stop()
    numbers = trade_numbers(redis_client)
    assert numbers == list(range(1, len(numbers) + 1))  # contiguous, no duplicates
    assert len(numbers) > 500
    result = replay_partition(redis_client, 0, markets)
    assert result.ok, result.summary()
    # every entry: the flow's deposits (journaled first) and its 3,000 commands
    assert result.trades == len(numbers) and result.entries == len(flow.deposits()) + 3000
    assert result.balances_checked > 0
    # and on its own: balances = a clean replay, conservation, each deposit credited once
    audit = money_audit(redis_client, markets)
    assert audit["transfers"]["deposit"] == {"completed": len(flow.deposits()), "rejected": 0}
    assert audit["fees"]["USDT"][0] > 0  # the fee account took fees
    assert result.books_checked == len(markets)
    # the candles survived the crash exactly: every stored one is what the trades make
    assert result.candles_checked >= 4 * len(flow.symbols)
    assert redis_client.zcard(K.kline(flow.symbols[0], "1m")) >= 1
    # and a tampered candle is the first difference replay reports
    key = K.kline(flow.symbols[0], "1d")
    member, score = redis_client.zrange(key, -1, -1, withscores=True)[0]
    candle = json.loads(member)
    candle["trades"] += 1
    redis_client.zremrangebyscore(key, score, score)
    redis_client.zadd(key, {json.dumps(candle): score})
    bad = replay_partition(redis_client, 0, markets)
    assert not bad.ok and bad.difference.startswith(f"{key} at {int(score)}")


def test_reapplied_entries_are_not_written_again(redis_client, start_worker, markets):
    feed(redis_client, markets, 1200, seed=5)
    a = start_worker(snapshot_every=500, batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    a.crash()
    before = redis_state(redis_client)
    newest = max(redis_client.zrange(K.snapshots, 0, -1), key=lambda s: int(s.split(b"-")[0]))
    assert newest.decode() != redis_client.get(K.applied).decode()  # entries after it exist
    redis_client.delete(K.lease)
    b = start_worker(snapshot_every=10**9)
    assert b.worker.active.wait(10)
    # recovery replayed everything after the snapshot silently: Redis is byte for byte the same
    after = redis_state(redis_client)
    assert after == before
    b.stop()
    for key, (kind, value) in after.items():
        if ":reply:" in key:
            assert kind == "list" and len(value) == 1, key


def test_recovery_without_snapshot_from_genesis(redis_client, start_worker, markets):
    feed(redis_client, markets, 600, seed=2)
    a = start_worker(snapshot_every=10**9, batch_size=150)
    wait_applied(redis_client, last_stream_id(redis_client))
    a.crash()
    assert redis_client.zcard(K.snapshots) == 0
    before = redis_state(redis_client)
    redis_client.delete(K.lease)
    b = start_worker()
    assert b.worker.active.wait(10)
    assert redis_state(redis_client) == before
    b.stop()


def test_trimmed_journal_recovers_and_replays(redis_client, start_worker, markets):
    flow = feed(redis_client, markets, 1000, seed=9)
    a = start_worker(snapshot_every=300, batch_size=100, trim=True)
    wait_applied(redis_client, last_stream_id(redis_client))
    a.stop()
    assert redis_client.xlen(K.stream) < 1000  # trimmed to the oldest kept snapshot
    feed(redis_client, markets, 300, flow=flow)
    b = start_worker(snapshot_every=300, batch_size=100, trim=True)
    wait_applied(redis_client, last_stream_id(redis_client))
    b.stop()
    numbers = trade_numbers(redis_client)
    assert numbers == list(range(1, len(numbers) + 1))
    result = replay_partition(redis_client, 0, markets)
    assert result.ok, result.summary()
    assert result.start.startswith("snapshot")


def test_applied_count_and_resync_on_recovery(redis_client, start_worker, markets):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(K.control)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    flow = feed(redis_client, markets, 300, seed=4)
    redis_client.xadd(K.stream, {"c": "garbage"})  # consumed too, though not a command
    a = start_worker()
    wait_applied(redis_client, last_stream_id(redis_client))
    msg = pubsub.get_message(timeout=2)
    assert msg is not None and json.loads(msg["data"]) == {"type": "resync", "partition": 0}
    entries = len(flow.deposits()) + 300 + 1
    assert int(redis_client.get(K.applied_count)) == redis_client.xlen(K.stream) == entries
    a.stop()
    pubsub.close()
