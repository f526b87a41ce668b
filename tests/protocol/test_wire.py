"""The wire codec: order records, reply tokens, replies and messages."""

from __future__ import annotations

import json

from protocol import wire


def test_order_record_round_trip() -> None:
    body = {"order_id": 1280, "client_order_id": "c-1", "symbol": "BTC-USDT", "post_only": True,
            "stop_price": None}  # fmt: skip
    fills = [{"trade_id": 1, "liquidity": "maker"}]
    order = {**body, "fills": fills}
    text = wire.order_record("7", body, fills)
    assert json.loads(text) == {"account": "7", **order}
    assert wire.parse_order_record(text) == ("7", order)
    # absent or damaged records read as "no such order", never as an exception
    for bad in (None, b"", b"not json", b"[1]", b'{"order_id":1}', b'{"account":5}', b"\xff"):
        assert wire.parse_order_record(bad) is None


def test_reply_tokens() -> None:
    assert wire.reply_inbox(wire.reply_token("ab12", 7)) == "ab12"
    assert wire.reply_inbox("a_1-" + "9" * 20) == "a_1"
    for bad in (None, 5, "", "ab12", "ab12-", "-1", "ab12-1\n", "ab:12-1", "ab12-\u0661",
                "a" * 33 + "-1", "ab12-" + "1" * 21):  # fmt: skip
        assert wire.reply_inbox(bad) is None


def test_replies_and_messages_are_encoded_json() -> None:
    body = {"order_id": 1, "client_order_id": 'q"\n'}
    assert json.loads(wire.order_reply(body, [])) == {
        "ok": True, "order": {"order_id": 1, "client_order_id": 'q"\n', "fills": []}}  # fmt: skip
    order = wire.dumps(body)
    assert json.loads(wire.cancelled_reply([order, order]))["cancelled"][1]["order_id"] == 1
    assert json.loads(wire.error_reply("x", 'a "b"')) == {
        "ok": False, "error": {"code": "x", "message": 'a "b"'}}  # fmt: skip
    message = json.loads(wire.inbox_message({"i-1": wire.error_reply("x", "y"), "i-2": order}))
    assert list(message) == ["i-1", "i-2"] and message["i-2"]["order_id"] == 1
    md = json.loads(wire.market_data_message("S", [wire.dumps({"trade_id": 3})], None, None))
    assert md == {"symbol": "S", "trades": [{"trade_id": 3}], "book": None, "bbo": None}
    acct = json.loads(wire.account_message("7", [order]))
    assert acct == {"account": "7", "events": [json.loads(order)]}
