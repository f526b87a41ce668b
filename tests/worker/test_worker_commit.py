"""One worker, real redis-server: replies, order records, indexes, trades, books, pub/sub."""

from __future__ import annotations

import json
import time

import pytest
from wk_helpers import fund, last_stream_id, wait_applied

from protocol.keys import Keys
from protocol.wire import parse_balances, parse_order_record
from web.journal import Journal

K = Keys(0)


def new(account: str, side: str, price: str, qty: str, **extra: object) -> dict:
    return {"op": "new", "account": account, "symbol": "BTC-USDT", "side": side,
            "type": "limit", "price": price, "quantity": qty, **extra}  # fmt: skip


def ask(journal: Journal, wire: dict) -> dict:
    _, reply = journal.submit(wire, 10)
    assert reply is not None, f"no reply to {wire}"
    return reply


def test_order_lifecycle_writes(redis_client, start_worker) -> None:
    start_worker()
    fund(redis_client, "1", "2", "3")
    j = Journal(redis_client, 0)
    maker = ask(j, new("1", "sell", "100.5", "0.1", client_order_id="m-1"))
    assert maker["ok"] is True
    m = maker["order"]
    assert (m["status"], m["price"], m["quantity"], m["remaining_quantity"]) == (
        "new", "100.50", "0.10000", "0.10000",
    )  # fmt: skip
    assert m["client_order_id"] == "m-1" and m["fills"] == []
    mid = m["order_id"]
    assert redis_client.zrange(K.open("1"), 0, -1) == [str(mid).encode()]

    taker = ask(j, new("2", "buy", "101", "0.04"))["order"]
    assert taker["status"] == "filled" and taker["cum_quote"] == "4.0200000"
    assert taker["fills"] == [
        {"trade_id": 1, "price": "100.50", "quantity": "0.04000", "fee": "0.0040200",
         "fee_asset": "USDT", "liquidity": "taker", "timestamp": taker["created_at"]}
    ]  # fmt: skip  (a fill's time is its command's journal time)
    assert redis_client.zrange(K.closed("2"), 0, -1) == [str(taker["order_id"]).encode()]
    assert redis_client.zcard(K.open("2")) == 0

    # the maker's hash follows: partially filled with one maker fill
    record = parse_order_record(redis_client.get(K.order(mid)))
    assert record is not None
    owner, stored = record
    assert owner == "1"
    assert stored["status"] == "partially_filled" and stored["filled_quantity"] == "0.04000"
    assert stored["fills"][0]["liquidity"] == "maker"

    amended = ask(j, {"op": "amend", "account": "1", "order_id": mid, "symbol": "BTC-USDT",
                      "quantity": "0.08", "price": "100.6"})  # fmt: skip
    assert amended["ok"] and amended["order"]["quantity"] == "0.08000"
    assert amended["order"]["price"] == "100.60"
    assert amended["order"]["remaining_quantity"] == "0.04000"

    ask(j, new("3", "buy", "100.6", "0.01"))
    cancelled = ask(j, {"op": "cancel", "account": "1", "order_id": mid})["order"]
    assert cancelled["status"] == "cancelled" and cancelled["reject_reason"] == "user_cancelled"
    assert [f["trade_id"] for f in cancelled["fills"]] == [1, 2]
    assert parse_order_record(redis_client.get(K.order(mid))) == ("1", cancelled)
    # record and reply agree, fills appended in place
    assert redis_client.zcard(K.open("1")) == 0
    assert redis_client.zrange(K.closed("1"), 0, -1) == [str(mid).encode()]

    again = ask(j, {"op": "cancel", "account": "1", "order_id": mid})
    assert again == {"ok": False, "error": {"code": "unknown_order", "message": again["error"][
        "message"]}}  # fmt: skip

    # trades stream: deterministic ids <ms>-<n>, record + accounts
    trades = redis_client.xrange(K.trades)
    assert [int(t[0].split(b"-")[1]) for t in trades] == [1, 2]
    record = json.loads(trades[0][1][b"t"])
    assert record["aggressor_side"] == "buy" and record["maker_order_id"] == mid
    assert trades[0][1][b"ma"] == b"1" and trades[0][1][b"ta"] == b"2"
    assert record["timestamp"] == int(trades[0][0].split(b"-")[0])
    recent = [json.loads(x) for x in redis_client.lrange(K.recent("BTC-USDT"), 0, -1)]
    assert [r["trade_id"] for r in recent] == [2, 1]  # newest first

    book = json.loads(redis_client.get(K.book("BTC-USDT")))
    assert book["bids"] == [] and book["asks"] == [] and book["last_trade_id"] == 2
    assert book["sequence"] > 0 and book["bbo_sequence"] > 0
    assert redis_client.get(K.applied).decode() == last_stream_id(redis_client)
    assert redis_client.keys("*reply*") == []  # replies are messages, never keys


def test_invalid_and_cancel_all_replies(redis_client, start_worker) -> None:
    start_worker()
    fund(redis_client, "1", "2")
    j = Journal(redis_client, 0)
    bad = ask(j, {"op": "new", "account": "1", "symbol": "NOPE-USDT", "side": "buy",
                  "type": "limit", "price": "1", "quantity": "1"})  # fmt: skip
    assert bad["ok"] is False and bad["error"]["code"] == "unknown_symbol"
    bad = ask(j, new("1", "buy", "100.001", "0.1"))
    assert bad["error"]["code"] == "off_tick"
    bad = ask(j, {"op": "frobnicate", "account": "1"})
    assert bad["ok"] is False
    bad = ask(j, new("bad account\x1f", "buy", "100", "0.1"))
    assert bad["error"]["code"] == "invalid_field"
    post = ask(j, new("1", "sell", "100", "0.1"))["order"]
    rejected = ask(j, new("2", "buy", "100", "0.1", post_only=True))["order"]
    assert rejected["status"] == "rejected" and rejected["reject_reason"] == "post_only_would_take"
    assert redis_client.zrange(K.closed("2"), 0, -1) == [str(rejected["order_id"]).encode()]
    o2 = ask(j, new("1", "sell", "101", "0.1"))["order"]
    ask(j, new("1", "sell", "102", "0.1", symbol="ETH-USDT", quantity="0.1"))
    done = ask(j, {"op": "cancel_all", "account": "1", "symbol": "BTC-USDT"})
    assert done["ok"] is True
    assert sorted(o["order_id"] for o in done["cancelled"]) == sorted(
        [post["order_id"], o2["order_id"]]
    )
    assert all(o["status"] == "cancelled" for o in done["cancelled"])
    assert redis_client.zcard(K.open("1")) == 1  # the ETH-USDT order
    # a hand-written entry without id: skipped, the worker carries on
    redis_client.xadd(K.stream, {"c": "not json"})
    redis_client.xadd(K.stream, {"c": '{"op":"cancel"}'})
    assert ask(j, {"op": "cancel_all", "account": "9", "symbol": None}) == {
        "ok": True, "cancelled": [],
    }  # fmt: skip


def test_replies_are_one_message_per_inbox_per_batch(redis_client, start_worker) -> None:
    """Tagged commands are answered on their inbox's channel, every reply of a batch in one
    message; untagged or badly tagged ones get no reply at all (nobody can be waiting)."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(K.inbox("in1"), K.inbox("in2"))
    fund(redis_client, "1", "2", "3")  # untagged: no reply
    j = Journal(redis_client, 0)
    wires = [new("1", "sell", "100", "0.1", reply_to="in1-1"),
             new("2", "buy", "100", "0.05", reply_to="in2-1"),
             new("2", "buy", "100", "0.05", reply_to="in1-2"),
             new("3", "buy", "99", "0.05"),
             new("3", "buy", "99", "0.05", reply_to="in1"),  # no "-": not a token
             new("3", "buy", "99", "0.05", reply_to="in1-x"),  # not a number
             new("3", "buy", "99", "0.05", reply_to="in 1-3"),  # not an inbox id
             new("3", "buy", "99", "0.05", reply_to="in1-\u00b2"),  # a digit, but not ASCII
             new("3", "buy", "99", "0.05", reply_to="in1-2 "),
             {"op": "cancel", "account": "1", "order_id": 5, "reply_to": "in2-2"}]  # fmt: skip
    j.append_many(wires)
    start_worker()  # one batch: everything was journaled before the worker started
    wait_applied(redis_client, last_stream_id(redis_client))
    got: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 2:
        msg = pubsub.get_message(timeout=0.1)
        if msg:
            got.setdefault(msg["channel"].decode(), []).append(json.loads(msg["data"]))
    time.sleep(0.2)
    assert pubsub.get_message(timeout=0.1) is None  # nothing more
    (in1,) = got[K.inbox("in1")]
    (in2,) = got[K.inbox("in2")]
    assert list(in1) == ["in1-1", "in1-2"] and list(in2) == ["in2-1", "in2-2"]  # journal order
    assert in1["in1-1"]["order"]["order_id"] == wires[0]["id"]
    assert in1["in1-2"]["order"]["status"] == "filled"
    assert in2["in2-1"]["order"]["fills"][0]["liquidity"] == "taker"
    assert in2["in2-2"] == {"ok": False, "error": {
        "code": "unknown_order", "message": in2["in2-2"]["error"]["message"]}}  # fmt: skip
    assert redis_client.keys("*reply*") == []


def test_pubsub_messages(redis_client, start_worker) -> None:
    fund(redis_client, "1", "2")
    start_worker()
    wait_applied(redis_client, last_stream_id(redis_client))  # the funding's messages are out
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("fb:md:*", "fb:acct:*")
    j = Journal(redis_client, 0)
    maker = ask(j, new("1", "sell", "100.5", "0.1"))["order"]
    ask(j, new("2", "buy", "100.5", "0.03"))
    messages: list[tuple[str, dict]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(messages) < 6:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "pmessage":
            messages.append((msg["channel"].decode(), json.loads(msg["data"])))
    pubsub.close()
    md = [m for c, m in messages if c == "fb:md:BTC-USDT"]
    assert len(md) >= 2
    # book increments chain: each message covers (prev_sequence, sequence]
    books = [m["book"] for m in md if m["book"]]
    for a, b in zip(books, books[1:], strict=False):
        assert b["prev_sequence"] == a["sequence"]
    assert books[0]["asks"] == [["100.50", "0.10000"]]
    assert books[-1]["asks"] == [["100.50", "0.07000"]]
    trade_msgs = [m for m in md if m["trades"]]
    assert trade_msgs[0]["trades"][0]["quantity"] == "0.03000"
    assert md[-1]["bbo"]["ask_qty"] == "0.07000"
    acct1 = [m for c, m in messages if c == "fb:acct:1"]
    kinds = [e["event"] for m in acct1 for e in m["events"] if e["event"] != "balance"]
    assert kinds == ["order", "fill", "order"]
    # and after each batch's order and fill events, the balances it changed (last value): the
    # sell's lock of 0.1 BTC, then 0.03 BTC sold at 100.5 less the 0.1 % maker fee
    balances = [[e for e in m["events"] if e["event"] == "balance"] for m in acct1]
    for message, last in zip(acct1, balances, strict=True):
        assert message["events"][-len(last) :] == last
    assert balances == [
        [{"event": "balance", "partition": 0, "asset": "BTC", "available": "99999999.90000000",
          "locked": "0.10000000"}],
        [{"event": "balance", "partition": 0, "asset": "BTC", "available": "99999999.90000000",
          "locked": "0.07000000"},
         {"event": "balance", "partition": 0, "asset": "USDT",
          "available": "100000003.01198500", "locked": "0.00000000"}],
    ]  # fmt: skip
    fill = [e for m in acct1 for e in m["events"] if e["event"] == "fill"][0]
    assert fill["order_id"] == maker["order_id"] and fill["liquidity"] == "maker"
    assert fill["side"] == "sell"
    order_events = [e for m in acct1 for e in m["events"] if e["event"] == "order"]
    assert "fills" not in order_events[0] and order_events[-1]["status"] == "partially_filled"
    assert order_events[0]["type"] == "limit"  # the order's own type field is intact


def _transfer(kind: str, account: str, asset: str, amount: str, ref: str) -> dict:
    field = "deposit_id" if kind == "deposit" else "client_withdrawal_id"
    return {"op": kind, "account": account, "asset": asset, "amount": amount, field: ref}


def test_money_writes_and_repeated_references(redis_client, start_worker) -> None:
    """Deposits and withdrawals: each reference applied once, a repeat answered with the first
    outcome; the balances hash, the ledger and transfer lists, an order's lock and release."""
    start_worker()
    j = Journal(redis_client, 0)
    first = ask(j, _transfer("deposit", "7", "USDT", "1000", "bank-1"))
    assert first["ok"] is True
    dep = first["transfer"]
    assert dep == {"id": dep["id"], "type": "deposit", "deposit_id": "bank-1", "account_id": "7",
                   "asset": "USDT", "amount": "1000.00000000", "status": "completed",
                   "reason": None, "partition": 0, "created_at": dep["created_at"]}  # fmt: skip
    # the same reference again, even with another amount: the first outcome, nothing credited
    again = ask(j, _transfer("deposit", "7", "USDT", "5000", "bank-1"))
    assert again == first
    wd = ask(j, _transfer("withdrawal", "7", "USDT", "250.5", "w-1"))["transfer"]
    assert (wd["status"], wd["reason"], wd["amount"]) == ("completed", None, "250.50000000")
    assert ask(j, _transfer("withdrawal", "7", "USDT", "250.5", "w-1"))["transfer"] == wd
    too_much = ask(j, _transfer("withdrawal", "7", "USDT", "750", "w-2"))["transfer"]
    assert (too_much["status"], too_much["reason"]) == ("rejected", "insufficient_funds")
    # another account may use the same client_withdrawal_id: references are per account
    other = ask(j, _transfer("withdrawal", "8", "USDT", "1", "w-1"))["transfer"]
    assert (other["status"], other["reason"]) == ("rejected", "insufficient_funds")
    assert parse_balances(redis_client.hgetall(K.balances("7"))) == [
        {"asset": "USDT", "available": "749.50000000", "locked": "0.00000000"}]
    # an order locks price x quantity + the taker fee of each lot; a cancel releases it
    order = ask(j, new("7", "buy", "100", "5"))["order"]
    assert (order["status"], order["locked"], order["locked_asset"]) == (
        "new", "500.50000000", "USDT")  # fmt: skip
    assert parse_balances(redis_client.hgetall(K.balances("7"))) == [
        {"asset": "USDT", "available": "249.00000000", "locked": "500.50000000"}]
    broke = ask(j, new("7", "buy", "100", "2.5"))["order"]  # 250.25 > 249 available
    assert (broke["status"], broke["reject_reason"]) == ("rejected", "insufficient_funds")
    assert ask(j, new("9", "sell", "100", "0.1"))["order"]["reject_reason"] == (
        "insufficient_funds")  # never funded  # fmt: skip
    cancelled = ask(j, {"op": "cancel", "account": "7", "order_id": order["order_id"]})["order"]
    assert (cancelled["status"], cancelled["locked"]) == ("cancelled", "0.00000000")
    assert parse_balances(redis_client.hgetall(K.balances("7"))) == [
        {"asset": "USDT", "available": "749.50000000", "locked": "0.00000000"}]
    # the lists: each reference's first outcome once, newest first
    deposits = [json.loads(x) for x in redis_client.lrange(K.transfers("7", "deposit"), 0, -1)]
    assert deposits == [dep]
    withdrawals = [json.loads(x) for x in
                   redis_client.lrange(K.transfers("7", "withdrawal"), 0, -1)]  # fmt: skip
    assert withdrawals == [too_much, wd]
    ledger = [json.loads(x) for x in redis_client.lrange(K.ledger("7"), 0, -1)]
    assert [(e["reason"], e["amount"], e["balance"], e["reference"]) for e in ledger] == [
        ("withdrawal", "-250.50000000", "749.50000000", "w-1"),
        ("deposit", "1000.00000000", "1000.00000000", "bank-1"),
    ]  # an order's lock moves nothing between accounts: no ledger entry
    assert not redis_client.exists(K.transfers("8", "deposit"))
    assert [json.loads(x)["status"] for x in
            redis_client.lrange(K.transfers("8", "withdrawal"), 0, -1)] == ["rejected"]


class _Lease:
    """Just a token: the writer reads nothing else of the lease."""

    def __init__(self, token: str) -> None:
        self.token = token


def _counting(writer) -> list[list[bytes]]:
    """Record every write of the writer's commits (not the connection's handshake)."""
    sends: list[list[bytes]] = []
    send = writer.conn.send_packed_command

    def counting_send(data, check_health=True):  # type: ignore[no-untyped-def]
        if any(b"WATCH" in part or b"MULTI" in part for part in data):
            sends.append(data)
        send(data, check_health)

    writer.conn.send_packed_command = counting_send  # type: ignore[method-assign]
    return sends


def test_commit_is_sent_before_it_is_read_one_write_each(redis_client, markets) -> None:
    """The check for the next commit rides behind each EXEC, so a commit is one write; it is
    sent before its replies are read, so the next batch can be matched meanwhile."""
    from worker.commit import BatchWriter

    redis_client.set(K.lease, "token-1")
    writer = BatchWriter(redis_client, K, _Lease("token-1"))  # type: ignore[arg-type]
    sends = _counting(writer)
    try:
        writer.commit([("SET", "fb:t:k1", "1")], "1-1")
        assert len(sends) == 2  # the first commit checks first
        writer.send([("SET", "fb:t:k2", "2")], "1-2")
        assert len(sends) == 3 and writer.in_flight  # one write, nothing read yet
        writer.finish()
        assert not writer.in_flight and writer.committed == "1-2"
        assert redis_client.get(K.applied) == b"1-2" and redis_client.get("fb:t:k2") == b"2"
        writer.commit([("SET", "fb:t:k3", "3")], "1-3")
        assert len(sends) == 4
    finally:
        writer.close()


def test_an_interrupted_exec_is_resent_a_stolen_lease_writes_nothing(redis_client) -> None:
    """Our own lease renewal touches a watched key: that EXEC fails and is sent again. A lease
    somebody else holds, or an ``applied`` somebody else moved, is refused with nothing written."""
    from worker.commit import BatchWriter, StateMismatch
    from worker.lease import LeaseLost

    redis_client.set(K.lease, "token-1")
    writer = BatchWriter(redis_client, K, _Lease("token-1"))  # type: ignore[arg-type]
    sends = _counting(writer)
    try:
        writer.commit([], "1-1")  # its EXEC carried the WATCH of the next commit
        redis_client.pexpire(K.lease, 60_000)  # what the renewal does: the WATCH fires
        writer.commit([("SET", "fb:t:a", "1")], "1-2")
        assert redis_client.get("fb:t:a") == b"1" and writer.committed == "1-2"
        assert len(sends) == 4  # first check + commit, the commit in flight, and its resend
        redis_client.set(K.lease, "token-2")  # somebody else holds the partition now
        with pytest.raises(LeaseLost):
            writer.commit([("SET", "fb:t:b", "2")], "1-3")
        assert redis_client.get("fb:t:b") is None and redis_client.get(K.applied) == b"1-2"
        redis_client.set(K.lease, "token-1")
        redis_client.set(K.applied, "9-9")  # another writer moved applied
        with pytest.raises(StateMismatch):
            writer.commit([("SET", "fb:t:b", "2")], "9-10")
        assert redis_client.get("fb:t:b") is None and redis_client.get(K.applied) == b"9-9"
    finally:
        writer.close()
