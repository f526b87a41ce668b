"""Signed requests as Binance checks them: raw bytes, recvWindow, keys, permissions, errors.

In-process (Flask test client on the session Redis): ``order/test`` (TRADE) and ``account``
(USER_DATA) need no worker, so every check of :mod:`web.binance.signing` is seen without one.
"""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlencode

import pytest

from web.accounts import revoke_key, rotate_key
from web.binance.keys import ED25519, HMAC

ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
         "quantity": "0.01", "price": "30000"}  # fmt: skip
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def code(resp, status: int, expected: int, msg: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"code", "msg"} and body["code"] == expected, body
    if msg is not None:
        assert body["msg"] == msg
    return body


@pytest.mark.parametrize("kind", [HMAC, ED25519])
def test_a_signed_request_in_the_query_is_accepted(bn_client, make_key, kind):
    key = make_key(kind)
    resp = bn_client.get("/api/v3/account?" + key.query(), headers=key.headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    account = resp.get_json()
    assert account["canTrade"] is True and account["permissions"] == ["SPOT"]
    assets = {b["asset"]: b for b in account["balances"]}
    assert {"BTC", "USDT", "ETH"} <= set(assets) and assets["BTC"]["free"] == "0.00000000"
    assert account["commissionRates"]["taker"] == "0.00100000"
    assert account["commissionRates"]["maker"] == "0.00100000"  # the highest maker rate
    omitted = bn_client.get("/api/v3/account?" + key.query({"omitZeroBalances": "true"}),
                            headers=key.headers).get_json()  # fmt: skip
    assert omitted["balances"] == []
    fees = bn_client.get("/api/v3/account/commission?" + key.query({"symbol": "ETHBTC"}),
                         headers=key.headers).get_json()  # fmt: skip
    assert fees["standardCommission"]["maker"] == "-0.00010000"
    assert fees["standardCommission"]["taker"] == "0.00050000"


@pytest.mark.parametrize("kind", [HMAC, ED25519])
def test_body_and_mixed_query_body_signatures(bn_client, make_key, kind):
    key = make_key(kind)
    body = key.query(ORDER)  # everything (signature included) in the body
    resp = bn_client.post("/api/v3/order/test", data=body, headers={**key.headers, **FORM})
    assert resp.status_code == 200 and resp.get_json() == {}, resp.get_data(as_text=True)
    # query then body, signed as one string without a separator (Binance's example 3)
    query = urlencode({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT"})
    rest = urlencode({"timeInForce": "GTC", "quantity": "0.01", "price": "30000",
                      "timestamp": int(time.time() * 1000)})  # fmt: skip
    signature = key.sign(query + rest)
    resp = bn_client.post(f"/api/v3/order/test?{query}", data=f"{rest}&signature={signature}",
                          headers={**key.headers, **FORM})  # fmt: skip
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_a_get_may_carry_its_parameters_in_a_form_body(bn_client, make_key):
    key = make_key()
    resp = bn_client.get("/api/v3/account", data=key.query(), headers={**key.headers, **FORM})
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_tampered_query_and_body_fail(bn_client, make_key):
    key = make_key()
    query = key.query(ORDER)
    tampered = query.replace("quantity=0.01", "quantity=0.02")
    code(bn_client.post("/api/v3/order/test?" + tampered, headers=key.headers), 400, -1022,
         "Signature for this request is not valid.")
    body = key.query(ORDER)
    code(bn_client.post("/api/v3/order/test", data=body.replace("price=30000", "price=30001"),
                        headers={**key.headers, **FORM}), 400, -1022)  # fmt: skip
    # a parameter added to the (unsigned) body of a query-signed request breaks it too
    code(bn_client.post("/api/v3/order/test?" + query, data="newClientOrderId=x",
                        headers={**key.headers, **FORM}), 400, -1022)  # fmt: skip
    # the signature of another secret
    other = make_key()
    code(bn_client.get("/api/v3/account?" + other.query(), headers=key.headers), 400, -1022)


def test_reordered_parameters_fail_unless_signed_as_sent(bn_client, make_key):
    key = make_key()
    ts = int(time.time() * 1000)
    signed = urlencode({**ORDER, "timestamp": ts})
    reordered = urlencode({"timestamp": ts, **dict(reversed(list(ORDER.items())))})
    sig = key.sign(signed)
    code(bn_client.post(f"/api/v3/order/test?{reordered}&signature={sig}", headers=key.headers),
         400, -1022)  # fmt: skip
    resp = bn_client.post(f"/api/v3/order/test?{reordered}&signature={key.sign(reordered)}",
                          headers=key.headers)  # fmt: skip
    assert resp.status_code == 200, resp.get_data(as_text=True)
    # percent-encoding is part of the bytes: the same value encoded differently is not it
    encoded = signed.replace("BTCUSDT", "%42TCUSDT")
    code(bn_client.post(f"/api/v3/order/test?{encoded}&signature={sig}", headers=key.headers),
         400, -1022)  # fmt: skip


def test_duplicate_parameters_are_refused(bn_client, make_key):
    key = make_key()
    ts = int(time.time() * 1000)
    text = f"symbol=BTCUSDT&symbol=ETHUSDT&timestamp={ts}"
    code(bn_client.get(f"/api/v3/account?{text}&signature={key.sign(text)}", headers=key.headers),
         400, -1101, "Duplicate values for a parameter detected.")  # fmt: skip
    # the query wins a name sent in both query and body (Binance's rule), not an error
    query = urlencode({**ORDER, "timestamp": ts})
    body = "quantity=abc"
    resp = bn_client.post(f"/api/v3/order/test?{query}", data=f"{body}&signature="
                          f"{key.sign(query + body)}", headers={**key.headers, **FORM})  # fmt: skip
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_timestamps_and_recv_window(bn_client, make_key):
    key = make_key()
    now = int(time.time() * 1000)
    code(bn_client.get("/api/v3/account?" + key.query(ts=now - 6000), headers=key.headers), 400,
         -1021, "Timestamp for this request is outside of the recvWindow.")  # fmt: skip
    resp = bn_client.get("/api/v3/account?" + key.query({"recvWindow": 10000}, ts=now - 6000),
                         headers=key.headers)  # fmt: skip
    assert resp.status_code == 200
    code(bn_client.get("/api/v3/account?" + key.query(ts=now + 5000), headers=key.headers), 400,
         -1021, "Timestamp for this request was 1000ms ahead of the server's time.")  # fmt: skip
    code(bn_client.get("/api/v3/account?" + key.query({"recvWindow": 60001}),
                       headers=key.headers), 400, -1131)  # fmt: skip
    micro = int(time.time() * 1_000_000)  # microseconds are a timestamp too
    assert bn_client.get("/api/v3/account?" + key.query(ts=micro),
                         headers=key.headers).status_code == 200  # fmt: skip
    text = "recvWindow=5000"
    code(bn_client.get(f"/api/v3/account?{text}&signature={key.sign(text)}", headers=key.headers),
         400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
    code(bn_client.get(f"/api/v3/account?timestamp={now}", headers=key.headers), 400, -1102,
         "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")


def test_keys_revoked_rotated_unknown_or_malformed(bn_client, bn_app, make_key):
    rdb = bn_app.extensions["fairbook"].redis
    key = make_key()
    code(bn_client.get("/api/v3/account?" + key.query()), 401, -2014, "API-key format invalid.")
    code(bn_client.get("/api/v3/account?" + key.query(), headers={"X-MBX-APIKEY": "x" * 64}), 401,
         -2015, "Invalid API-key, IP, or permissions for action.")  # fmt: skip
    assert bn_client.get("/api/v3/account?" + key.query(), headers=key.headers).status_code == 200
    assert revoke_key(rdb, key.api_key) == key.account_id
    code(bn_client.get("/api/v3/account?" + key.query(), headers=key.headers), 401, -2015)
    # rotation revokes every key of the account, signed ones included
    other = make_key()
    rotate_key(rdb, other.account_id)
    code(bn_client.get("/api/v3/account?" + other.query(), headers=other.headers), 401, -2015)


def test_permissions(bn_client, make_key):
    reader = make_key(permissions=("read",))
    resp = bn_client.get("/api/v3/account?" + reader.query(), headers=reader.headers)
    assert resp.status_code == 200 and resp.get_json()["canTrade"] is False
    code(bn_client.post("/api/v3/order/test?" + reader.query(ORDER), headers=reader.headers),
         401, -2015)  # fmt: skip
    code(bn_client.delete("/api/v3/openOrders?" + reader.query({"symbol": "BTCUSDT"}),
                          headers=reader.headers), 401, -2015)  # fmt: skip
    trader = make_key(permissions=("trade",))
    code(bn_client.get("/api/v3/account?" + trader.query(), headers=trader.headers), 401, -2015)


def test_uppercase_hex_signatures_are_accepted(bn_client, make_key):
    key = make_key()
    text = f"timestamp={int(time.time() * 1000)}"
    resp = bn_client.get(f"/api/v3/account?{text}&signature={key.sign(text).upper()}",
                         headers=key.headers)  # fmt: skip
    assert resp.status_code == 200


def test_secrets_are_sealed_at_rest_and_signed_keys_do_not_open_the_native_api(
    bn_client, bn_app, make_key
):
    rdb = bn_app.extensions["fairbook"].redis
    key = make_key()
    secret = key.issued["secret"]
    for name in rdb.scan_iter("*"):
        if rdb.type(name) == "hash":
            for value in rdb.hgetall(name).values():
                assert secret not in value
    record = rdb.hgetall(f"fb:api_key:{hashlib.sha256(key.api_key.encode()).hexdigest()}")
    assert record["kind"] == "hmac" and record["secret"].startswith("v1:")
    assert record["account"] == key.account_id and record["permissions"] == "read,trade"
    # the key alone is sent in clear on every request: it must not be a native key
    resp = bn_client.get("/api/v1/orders", headers={"X-API-Key": key.api_key})
    assert resp.status_code == 401


def test_order_validation_errors_are_binances(bn_client, make_key):
    key = make_key()

    def test_order(**changes: str):
        params = {k: v for k, v in {**ORDER, **changes}.items() if v != ""}
        return bn_client.post("/api/v3/order/test?" + key.query(params), headers=key.headers)

    code(test_order(quantity="0.000001"), 400, -1013, "Filter failure: LOT_SIZE")
    code(test_order(price="30000.001"), 400, -1013, "Filter failure: PRICE_FILTER")
    code(test_order(quantity="0.00001", price="1"), 400, -1013, "Filter failure: NOTIONAL")
    code(test_order(type="MARKET", price="", timeInForce="", quantity="0.1234567"), 400, -1013,
         "Filter failure: MARKET_LOT_SIZE")  # fmt: skip
    code(test_order(price="abc"), 400, -1100)
    code(test_order(timeInForce=""), 400, -1102,
         "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
    code(test_order(symbol="NOPE"), 400, -1121, "Invalid symbol.")
    code(test_order(side="UP"), 400, -1117, "Invalid side.")
    code(test_order(type="OCO"), 400, -1116, "Invalid orderType.")
    code(test_order(timeInForce="GTX"), 400, -1115, "Invalid timeInForce.")
    code(test_order(type="LIMIT_MAKER"), 400, -1114)  # timeInForce not for LIMIT_MAKER
    code(test_order(bogus="1"), 400, -1104)
    code(test_order(icebergQty="0.001"), 400, -2010)
    code(test_order(type="MARKET", timeInForce=""), 400, -1106,
         "Parameter 'price' sent when not required.")  # fmt: skip
    code(test_order(type="MARKET", price="", timeInForce="", quantity=""), 400, -1102)
    ok = test_order(type="MARKET", price="", timeInForce="", quantity="", quoteOrderQty="10")
    assert ok.status_code == 200, ok.get_data(as_text=True)
    rates = test_order(computeCommissionRates="true").get_json()
    assert rates["standardCommissionForOrder"] == {"maker": "0.00100000", "taker": "0.00100000"}


def test_public_endpoints_and_error_shape(bn_client):
    assert bn_client.get("/api/v3/ping").get_json() == {}
    assert abs(bn_client.get("/api/v3/time").get_json()["serverTime"] - time.time() * 1000) < 5000
    info = bn_client.get("/api/v3/exchangeInfo").get_json()
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert (btc["baseAsset"], btc["quoteAsset"], btc["status"]) == ("BTC", "USDT", "TRADING")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001"
    assert set(filters) == {"PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE", "NOTIONAL"}
    assert "LIMIT_MAKER" in btc["orderTypes"] and "STOP_LOSS_LIMIT" in btc["orderTypes"]
    one = bn_client.get('/api/v3/exchangeInfo?symbols=["ETHBTC"]').get_json()["symbols"]
    assert [s["symbol"] for s in one] == ["ETHBTC"]
    depth = bn_client.get("/api/v3/depth?symbol=BTCUSDT").get_json()
    assert depth == {"lastUpdateId": 0, "bids": [], "asks": []}
    assert bn_client.get("/api/v3/trades?symbol=BTCUSDT").get_json() == []
    ticker = bn_client.get("/api/v3/ticker/bookTicker?symbol=BTCUSDT").get_json()
    assert ticker["symbol"] == "BTCUSDT" and ticker["bidQty"] == "0.00000"
    assert len(bn_client.get("/api/v3/ticker/price").get_json()) == 5
    code(bn_client.get("/api/v3/depth?symbol=NOPE"), 400, -1121, "Invalid symbol.")
    code(bn_client.get("/api/v3/depth"), 400, -1102)
    code(bn_client.get("/api/v3/depth?symbol=BTCUSDT&limit=x"), 400, -1100)
    code(bn_client.get("/api/v3/nothing-here"), 404, -1020)
    code(bn_client.put("/api/v3/order"), 405, -1020)


def test_a_slow_worker_answers_ack_but_not_result(bn_client, bn_app, make_key):
    """No worker runs: ACK is answered once journaled, RESULT/FULL are -1007 (status unknown),
    and the journaled command is the native one."""
    key = make_key()
    ack = bn_client.post("/api/v3/order?" + key.query({**ORDER, "newOrderRespType": "ACK",
                                                       "newClientOrderId": "slow-1"}),
                         headers=key.headers)  # fmt: skip
    assert ack.status_code == 200, ack.get_data(as_text=True)
    body = ack.get_json()
    assert body["clientOrderId"] == "slow-1" and body["orderListId"] == -1
    code(bn_client.post("/api/v3/order?" + key.query(ORDER), headers=key.headers), 503, -1007)
    rdb = bn_app.extensions["fairbook"].redis
    entries = [json.loads(f["c"]) for _, f in rdb.xrange("fb:{p0}:in")]
    first = entries[0]
    assert first["id"] == body["orderId"] and first["account"] == key.account_id
    assert (first["symbol"], first["side"], first["type"], first["quantity"], first["price"],
            first["client_order_id"], first["stp"]) == (
        "BTC-USDT", "buy", "limit", "0.01000", "30000.00", "slow-1", "cancel_maker")  # fmt: skip
    generated = entries[1]["client_order_id"]  # none sent: one is made, Binance-like
    assert len(generated) == 22 and generated.isalnum()


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_RATE_LIMIT_KEY": "2 per minute"}])
def test_rate_limits_answer_in_binances_shape(bn_client, make_key):
    key = make_key()
    for _ in range(2):
        ok = bn_client.get("/api/v3/account?" + key.query(), headers=key.headers)
        assert ok.status_code == 200
    resp = bn_client.get("/api/v3/account?" + key.query(), headers=key.headers)
    code(resp, 429, -1003)
    assert int(resp.headers["Retry-After"]) >= 1


def test_user_data_stream_listen_keys(bn_client, make_key, bn_app):
    """POST (the key, no signature) gives a 60-character listen key, the same one while it
    lives; PUT keeps it alive, DELETE closes it; another key's or an unknown one is -1125."""
    me, other = make_key(), make_key()
    head = {"X-MBX-APIKEY": me.api_key}
    first = bn_client.post("/api/v3/userDataStream", headers=head)
    assert first.status_code == 200, first.get_data(as_text=True)
    listen_key = first.get_json()["listenKey"]
    assert len(listen_key) == 60 and listen_key.isalnum()
    again = bn_client.post("/api/v3/userDataStream", headers=head).get_json()
    assert again == {"listenKey": listen_key}
    r = bn_app.extensions["fairbook"].redis
    stored = r.hgetall(f"fb:listen_key:{listen_key}")
    assert stored["account"] == me.account_id
    assert 0 < r.ttl(f"fb:listen_key:{listen_key}") <= 3600
    ok = bn_client.put(f"/api/v3/userDataStream?listenKey={listen_key}", headers=head)
    assert ok.status_code == 200 and ok.get_json() == {}
    theirs = bn_client.put(f"/api/v3/userDataStream?listenKey={listen_key}",
                           headers={"X-MBX-APIKEY": other.api_key})  # fmt: skip
    code(theirs, 400, -1125, "This listenKey does not exist.")
    code(bn_client.put("/api/v3/userDataStream?listenKey=" + "x" * 60, headers=head), 400, -1125)
    code(bn_client.put("/api/v3/userDataStream", headers=head), 400, -1102)
    code(bn_client.post("/api/v3/userDataStream"), 401, -2014)
    closed = bn_client.delete(f"/api/v3/userDataStream?listenKey={listen_key}", headers=head)
    assert closed.status_code == 200 and not r.exists(f"fb:listen_key:{listen_key}")
    code(bn_client.delete(f"/api/v3/userDataStream?listenKey={listen_key}", headers=head),
         400, -1125)  # fmt: skip
    fresh = bn_client.post("/api/v3/userDataStream", headers=head).get_json()["listenKey"]
    assert fresh != listen_key
