"""Keys, partition config, journal round trip, formatting and hash encoding."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from engine.schema import make_public_id
from worker.journal import Journal
from worker.keys import (
    Keys,
    all_partitions,
    parse_partitions,
    partition_for_symbol,
    partition_of_id,
    symbols_of_partition,
)
from worker.orders import OrderState, order_record, parse_order_record
from worker.processor import parse_stream_id
from worker.render import render_body


def test_keys_layout() -> None:
    k = Keys(3)
    assert k.stream == "fb:{p3}:in"
    assert k.next_id == "fb:{p3}:next_id"
    assert k.applied == "fb:{p3}:applied"
    assert k.order(771) == "fb:{p3}:order:771"
    assert k.open("7") == "fb:{p3}:open:7"
    assert k.closed("7") == "fb:{p3}:closed:7"
    assert k.trades == "fb:{p3}:trades"
    assert k.recent("BTC-USDT") == "fb:{p3}:recent:BTC-USDT"
    assert k.book("BTC-USDT") == "fb:{p3}:book:BTC-USDT"
    assert k.inbox("ab12") == "fb:{p3}:inbox:ab12"
    assert k.snapshots == "fb:{p3}:snapshots"
    assert k.snapshot("5-1") == "fb:{p3}:snapshot:5-1"
    assert k.lease == "fb:{p3}:lease"
    assert (k.accounts, k.account("9"), k.next_account) == (
        "fb:accounts", "fb:account:9", "fb:next_account",
    )  # fmt: skip
    assert k.md_channel("ETH-USDT") == "fb:md:ETH-USDT"
    assert k.acct_channel("9") == "fb:acct:9"
    assert k.control == "fb:control"
    assert Keys(0, namespace="t").stream == "t:{p0}:in"
    with pytest.raises(ValueError):
        Keys(256)


def test_partition_config(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = "BTC-USDT=0, ETH-USDT=1,SOL-USDT=2"
    assert parse_partitions(cfg) == {"BTC-USDT": 0, "ETH-USDT": 1, "SOL-USDT": 2}
    assert partition_for_symbol("ETH-USDT", cfg) == 1
    assert partition_for_symbol("DOGE-USDT", cfg) == 0  # unlisted -> 0
    assert all_partitions(cfg) == [0, 1, 2]
    assert all_partitions(cfg, ["ETH-USDT", "SOL-USDT"]) == [1, 2]
    assert symbols_of_partition(1, ["BTC-USDT", "ETH-USDT"], cfg) == ["ETH-USDT"]
    monkeypatch.setenv("FAIRBOOK_PARTITIONS", "ETH-USDT=4")
    assert partition_for_symbol("ETH-USDT") == 4
    assert all_partitions() == [0, 4]
    monkeypatch.delenv("FAIRBOOK_PARTITIONS")
    assert partition_for_symbol("ETH-USDT") == 0
    assert all_partitions() == [0]
    for bad in ("BTC-USDT", "BTC-USDT=x", "BTC-USDT=300", "=1"):
        with pytest.raises(ValueError):
            parse_partitions(bad)
    assert partition_of_id(make_public_id(12345, 7)) == 7


def test_journal_append(redis_client) -> None:
    journal = Journal(redis_client, 2)
    wire = {"op": "cancel", "account": "1", "order_id": 5}
    first = journal.append(wire)
    assert first == make_public_id(1, 2) and wire["id"] == first
    ids = journal.append_many([{"op": "cancel_all", "account": "1", "symbol": None}, {}])
    assert ids == [make_public_id(2, 2), make_public_id(3, 2)]
    entries = redis_client.xrange(journal.keys.stream)
    bodies = [json.loads(fields[b"c"]) for _, fields in entries]
    assert bodies[0] == {"id": first, "op": "cancel", "account": "1", "order_id": 5}
    assert bodies[2] == {"id": ids[1]}
    assert entries[0][1][b"c"].startswith(b'{"id":')
    # id order is journal order
    assert [b["id"] for b in bodies] == sorted(b["id"] for b in bodies)


def _answer_entries(redis_client, journal, replies: dict[int, str], stop: threading.Event) -> None:
    """A stand-in worker: publishes ``replies[n]`` for the n-th journal entry (from 1) to the
    entry's inbox, as the worker's commit does."""
    seen = 0
    while not stop.is_set():
        entries = redis_client.xrange(journal.keys.stream)
        for _, fields in entries[seen:]:
            seen += 1
            body = json.loads(fields[b"c"])
            token = body.get("reply_to")
            if token and seen in replies:
                channel = journal.keys.inbox(token.partition("-")[0])
                redis_client.publish(channel, f'{{"{token}":{replies[seen]}}}')
        time.sleep(0.005)


def test_journal_submit_tags_the_command_and_waits_in_the_inbox(redis_client) -> None:
    journal = Journal(redis_client, 1)
    # nobody answers: None after the timeout, but the command is journaled with its token
    wire = {"op": "cancel", "account": "1", "order_id": 5}
    cmd_id, reply = journal.submit(wire, 0.05)
    assert reply is None and wire["id"] == cmd_id == make_public_id(1, 1)
    (_, fields), = redis_client.xrange(journal.keys.stream)
    body = json.loads(fields[b"c"])
    token = body["reply_to"]
    assert body == {"id": cmd_id, "op": "cancel", "account": "1", "order_id": 5,
                    "reply_to": token} and token == journal.inbox.id + "-1"
    assert journal.inbox.waiting == {}  # a timed-out waiter is forgotten
    # a "worker" publishing to the token's inbox is what the next submit receives
    stop = threading.Event()
    helper = threading.Thread(target=_answer_entries, daemon=True,
                              args=(redis_client, journal, {2: '{"ok":true,"n":2}'}, stop))
    helper.start()
    try:
        cmd_id2, reply2 = journal.submit({"op": "cancel", "account": "1", "order_id": 6}, 5)
    finally:
        stop.set()
        helper.join()
    assert cmd_id2 == make_public_id(2, 1) and reply2 == {"ok": True, "n": 2}
    # no timeout means no waiting and no token
    wire3 = {"op": "cancel", "account": "1", "order_id": 7}
    assert journal.submit(wire3, 0) == (make_public_id(3, 1), None)
    assert "reply_to" not in wire3
    journal.inbox.stop()


def test_inbox_routes_each_reply_to_its_waiter_only(redis_client) -> None:
    journal = Journal(redis_client, 0)
    inbox = journal.inbox
    assert inbox.wait_ready(5)
    t1, w1 = inbox.expect()
    t2, w2 = inbox.expect()
    assert t1 != t2 and t1.startswith(inbox.id + "-")
    channel = journal.keys.inbox(inbox.id)
    other = Journal(redis_client, 0).inbox  # another process's inbox hears nothing of ours
    assert other.wait_ready(5) and other.id != inbox.id
    t3, w3 = other.expect()
    redis_client.publish(channel, json.dumps({t2: {"n": 2}, t1: {"n": 1}, "zz-9": {"n": 9}}))
    assert w1.wait(5) == {"n": 1} and w2.wait(5) == {"n": 2}
    assert w3.wait(0.1) is None
    assert inbox.stats["unclaimed"] == 1 and inbox.waiting == {}
    # garbage on the channel is dropped, the reader goes on
    redis_client.publish(channel, b"not json")
    t4, w4 = inbox.expect()
    redis_client.publish(channel, json.dumps({t4: {"n": 4}}))
    assert w4.wait(5) == {"n": 4}
    inbox.stop()
    other.stop()


def test_inbox_resubscribes_after_losing_its_connection(redis_client) -> None:
    journal = Journal(redis_client, 0)
    inbox = journal.inbox
    assert inbox.wait_ready(5)
    killed = redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    deadline = time.monotonic() + 10
    while inbox.stats["reconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inbox.stats["reconnects"] == 1 and inbox.wait_ready(5)
    token, waiter = inbox.expect()
    redis_client.publish(journal.keys.inbox(inbox.id), json.dumps({token: {"ok": True}}))
    assert waiter.wait(5) == {"ok": True}
    inbox.stop()


def test_journal_big_counter(redis_client) -> None:
    journal = Journal(redis_client, 255)
    redis_client.set(journal.keys.next_id, 2**44)
    assert journal.append({"op": "x"}) == ((2**44 + 1) << 8) | 255


def test_order_record_round_trip(markets) -> None:
    from worker.orders import MarketFormat

    fmt = MarketFormat(markets["BTC-USDT"])
    st_ = OrderState(
        1280, "7", "BTC-USDT", "buy", "limit", "GTC", True, "100.50", None, "0.10000", None,
        "c-1", 1700000000000, status="partially_filled", filled=4000, remaining=6000,
        cum_quote=402000, updated_at=1700000000005,
        fills=['{"trade_id":1,"price":"100.50","quantity":"0.04000","fee":"0.0040200",'
               '"fee_asset":"USDT","liquidity":"maker"}'],
    )  # fmt: skip
    text = order_record("7", render_body(fmt, st_.snap()), "[" + ",".join(st_.fills) + "]")
    assert json.loads(text)["account"] == "7"
    account, obj = parse_order_record(text.encode())  # type: ignore[misc]
    assert account == "7"
    assert obj == st_.public(fmt)
    assert "account" not in obj and obj["post_only"] is True
    assert obj["fills"][0]["liquidity"] == "maker"
    assert obj["stop_price"] is None and obj["quote_quantity"] is None
    # absent or damaged records read as "no such order", never as an exception
    for bad in (None, b"", b"not json", b"[1]", b'{"order_id":1}', b'{"account":5}'):
        assert parse_order_record(bad) is None


def test_parse_stream_id() -> None:
    assert sorted(["10-0", "9-30", "9-4"], key=parse_stream_id) == ["9-4", "9-30", "10-0"]
    assert parse_stream_id(b"5-1") == (5, 1)


def test_journal_reader_reads_ahead_in_order_and_hands_over_failures(
    redis_client, redis_url
) -> None:
    from redis_server import free_port
    from worker.runner import JournalReader

    keys = Keys(0)
    ids = [redis_client.xadd(keys.stream, {"c": str(i)}).decode() for i in range(25)]
    reader = JournalReader(redis_url, keys.stream, "0-0", count=10, block_ms=50)
    try:
        seen: list[str] = []
        while len(seen) < 25:
            batch = reader.next(2.0)
            assert batch is not None, "the reader stalled"
            assert len(batch) <= 10
            seen += [entry[0].decode() for entry in batch]
        assert seen == ids  # every entry once, in stream order
        assert reader.next(0.2) is None  # caught up: nothing, no error
        later = redis_client.xadd(keys.stream, {"c": "late"}).decode()
        batch = reader.next(2.0)
        assert batch is not None and [e[0].decode() for e in batch] == [later]
    finally:
        reader.close()
    assert not reader.thread.is_alive()

    dead = JournalReader(f"redis://127.0.0.1:{free_port()}/0", keys.stream, "0-0", 10, 50)
    try:
        with pytest.raises(redis.ConnectionError):
            for _ in range(50):  # the failure surfaces once the reader thread has hit it
                dead.next(0.1)
    finally:
        dead.close()


def test_inbox_pings_a_quiet_connection_instead_of_dropping_it(redis_client) -> None:
    from worker.journal import Inbox
    from worker.rawredis import client_url

    inbox = Inbox(client_url(redis_client), [0], ping_s=0.1)
    assert inbox.wait_ready(5)
    time.sleep(0.5)  # several quiet periods: each answered by a PING, not a reconnect
    token, waiter = inbox.expect()
    redis_client.publish(Keys(0).inbox(inbox.id), json.dumps({token: {"ok": True}}))
    assert waiter.wait(5) == {"ok": True}
    assert inbox.stats["reconnects"] == 0 and inbox.ready.is_set()
    inbox.stop()
