"""Worker pieces without Redis: stream ids, order states, the commands a batch becomes."""

from __future__ import annotations

import json

from wk_helpers import deposit_entries

from engine.commands import make_public_id
from protocol import wire
from protocol.keys import Keys
from worker.commit import batch_commands
from worker.orders import OrderState
from worker.processor import Processor, parse_stream_id


def test_parse_stream_id() -> None:
    assert sorted(["10-0", "9-30", "9-4"], key=parse_stream_id) == ["9-4", "9-30", "10-0"]
    assert parse_stream_id(b"5-1") == (5, 1)


def test_order_state_public_form(markets) -> None:
    st = OrderState(
        1280, "7", "BTC-USDT", "buy", "limit", "GTC", True, "100.50", None, "0.10000", None,
        "c-1", 1700000000000, status="partially_filled", filled=4000, remaining=6000,
        cum_quote=40200000, updated_at=1700000000005,
        fills=[{"trade_id": 1, "price": "100.50", "quantity": "0.04000", "fee": "0.0040200",
                "fee_asset": "USDT", "liquidity": "maker"}],
    )  # fmt: skip
    public = st.public(markets["BTC-USDT"])
    assert list(public) == [
        "order_id", "client_order_id", "symbol", "side", "type", "time_in_force", "post_only",
        "stp", "status", "reject_reason", "price", "stop_price", "quantity", "quote_quantity",
        "filled_quantity", "remaining_quantity", "cum_quote", "locked", "locked_asset",
        "created_at", "updated_at", "fills",
    ]  # fmt: skip
    assert (public["filled_quantity"], public["remaining_quantity"], public["cum_quote"]) == (
        "0.04000", "0.06000", "4.0200000",
    )  # fmt: skip
    record = wire.order_record("7", st.body(markets["BTC-USDT"]), st.fills)
    assert wire.parse_order_record(record) == ("7", public)
    assert OrderState.from_list(json.loads(json.dumps(st.to_list()))).public(
        markets["BTC-USDT"]) == public  # fmt: skip


def _entry(n: int, body: dict) -> tuple[bytes, dict]:
    return (f"{1000 + n}-0".encode(), {b"c": wire.dumps({"id": make_public_id(n, 0), **body})})


def test_a_batch_becomes_one_mset_indexes_trades_and_messages(markets) -> None:
    proc = Processor(markets, 0)
    proc.process(deposit_entries("1", "2"))  # every order needs funds: an earlier batch
    new = {"op": "new", "symbol": "BTC-USDT", "type": "limit", "quantity": "0.1"}
    batch = proc.process([
        _entry(1, {**new, "account": "1", "side": "sell", "price": "100", "reply_to": "w-1"}),
        _entry(2, {**new, "account": "2", "side": "buy", "price": "100", "reply_to": "w-2"}),
    ])  # fmt: skip
    keys = Keys(0)
    commands = batch_commands(batch, keys)
    mset = commands[0]
    assert mset[0] == "MSET"
    written = dict(zip(mset[1::2], mset[2::2], strict=True))
    assert set(written) == {keys.order(256), keys.order(512), keys.book("BTC-USDT"),
                            keys.applied_count}  # fmt: skip
    assert written[keys.applied_count] == 2 + 10  # the funding batch's entries counted too
    # both orders closed (filled) within the batch: never opened, both closed
    assert ("ZADD", keys.closed("1"), 256, 256) in commands
    assert not any(c[0] == "ZADD" and c[1] == keys.open("1") for c in commands)
    (xadd,) = [c for c in commands if c[0] == "XADD"]
    assert xadd[:3] == ("XADD", keys.trades, "1002-1") and xadd[5:] == ("ma", "1", "ta", "2")
    channels = [m.channel for m in batch.messages]
    assert channels == [keys.inbox("w"), keys.md_channel("BTC-USDT"), keys.acct_channel("1"),
                        keys.acct_channel("2")]  # fmt: skip
    replies = json.loads(batch.messages[0].payload)
    assert list(replies) == ["w-1", "w-2"] and replies["w-2"]["order"]["status"] == "filled"
    assert replies["w-1"]["order"]["status"] == "new"  # each reply as of its own command
    record = json.loads(written[keys.order(256)])
    assert record["account"] == "1" and record["status"] == "filled"
    assert (record["locked"], record["locked_asset"]) == ("0.00000000", "BTC")
    # the balances the fill moved, one HSET per account with its last values
    hsets = {c[1]: dict(zip(c[2::2], c[3::2], strict=True)) for c in commands if c[0] == "HSET"}
    usdt = "99999989.99000000"  # 10 USDT + the 0.1 % taker fee paid
    assert {k: {a: json.loads(v) for a, v in f.items()} for k, f in hsets.items()} == {
        keys.balances("1"): {"BTC": {"available": "99999999.90000000", "locked": "0.00000000"},
                             "USDT": {"available": "100000009.99000000", "locked": "0.00000000"}},
        keys.balances("2"): {"BTC": {"available": "100000000.10000000", "locked": "0.00000000"},
                             "USDT": {"available": usdt, "locked": "0.00000000"}},
        keys.balances("@fees"): {"USDT": {"available": "0.02000000", "locked": "0.00000000"}},
    }  # fmt: skip
