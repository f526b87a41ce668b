"""Binance's rate limits on ``/api/v3`` (in process, the session Redis): request weight per
address with ``X-MBX-USED-WEIGHT-1M`` on every response, each endpoint's weight, 429 -1003 with
``Retry-After``, the 418 ban of an address that keeps sending, orders per 10 s and per day per
account with ``X-MBX-ORDER-COUNT-*``, counts shared by two apps, ``rateLimits`` in exchangeInfo,
the off switch. (ccxt against a live stack: ``test_binance_ccxt.py``.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from protocol.keys import Keys
from web.app import create_app
from web.binance import weights
from web.binance.vault import new_key_text
from web.limits import binance_limits

ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
         "quantity": "0.01", "price": "29000", "newOrderRespType": "ACK"}  # fmt: skip
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
MSG_WEIGHT = (
    "Too much request weight used; current limit is {} request weight per 1 MINUTE. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)
OTHER_ADDRESS = {"REMOTE_ADDR": "192.0.2.9"}


def used(resp: Any) -> int:
    value = resp.headers[WEIGHT_HEADER]
    assert value.isdigit(), value
    return int(value)


def refused(resp: Any, status: int, code: int, window_s: int) -> str:
    """A Binance error with ``status`` and ``code`` and an integer Retry-After in the window;
    its ``msg``."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"code", "msg"} and body["code"] == code, body
    retry = resp.headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= window_s, retry
    return body["msg"]


def place(client: Any, signer: Any, **extra: Any) -> Any:
    return client.post("/api/v3/order", query_string=signer.query({**ORDER, **extra}),
                       headers=signer.headers)  # fmt: skip


# -- weight and its header ----------------------------------------------------------------------


def test_every_response_carries_the_used_weight_of_its_address(bn_client):
    assert used(bn_client.get("/api/v3/ping")) == 1
    assert used(bn_client.get("/api/v3/time")) == 2
    assert used(bn_client.get("/api/v3/exchangeInfo")) == 22
    # errors carry it too: a bad symbol, an unknown route, a missing key
    bad = bn_client.get("/api/v3/depth", query_string={"symbol": "NOPE"})
    assert bad.status_code == 400 and used(bad) == 27
    nowhere = bn_client.get("/api/v3/nowhere")
    assert nowhere.get_json()["code"] == -1020 and used(nowhere) == 28
    no_key = bn_client.get("/api/v3/account")
    assert no_key.status_code == 401 and used(no_key) == 28 + 20
    # per address; the native API has no Binance headers
    assert used(bn_client.get("/api/v3/ping", environ_base=OTHER_ADDRESS)) == 1
    assert WEIGHT_HEADER not in bn_client.get("/api/v1/symbols").headers


PUBLIC_WEIGHTS = [
    ("ping", {}, 1), ("time", {}, 1), ("exchangeInfo", {}, 20),
    ("depth", {"symbol": "BTCUSDT"}, 5), ("depth", {"symbol": "BTCUSDT", "limit": 100}, 5),
    ("depth", {"symbol": "BTCUSDT", "limit": 101}, 25),
    ("depth", {"symbol": "BTCUSDT", "limit": 500}, 25),
    ("depth", {"symbol": "BTCUSDT", "limit": 1000}, 50),
    ("depth", {"symbol": "BTCUSDT", "limit": 5000}, 250),
    ("trades", {"symbol": "BTCUSDT"}, 25), ("aggTrades", {"symbol": "BTCUSDT"}, 4),
    ("avgPrice", {"symbol": "BTCUSDT"}, 2),
    ("ticker/price", {"symbol": "BTCUSDT"}, 2), ("ticker/price", {}, 4),
    ("ticker/price", {"symbols": '["BTCUSDT","ETHUSDT"]'}, 4),
    ("ticker/bookTicker", {"symbol": "BTCUSDT"}, 2), ("ticker/bookTicker", {}, 4),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "weight"), PUBLIC_WEIGHTS)
def test_public_endpoint_weights(bn_client, path, params, weight):
    before = used(bn_client.get("/api/v3/ping"))
    resp = bn_client.get(f"/api/v3/{path}", query_string=params)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert used(resp) == before + weight


SIGNED_WEIGHTS = [
    ("GET", "account", {}, 20), ("GET", "account/commission", {"symbol": "BTCUSDT"}, 20),
    ("GET", "openOrders", {"symbol": "BTCUSDT"}, 6), ("GET", "openOrders", {}, 80),
    ("GET", "allOrders", {"symbol": "BTCUSDT"}, 20),
    ("GET", "myTrades", {"symbol": "BTCUSDT"}, 20),
    ("GET", "myTrades", {"symbol": "BTCUSDT", "orderId": 5}, 5),
    ("GET", "order", {"symbol": "BTCUSDT", "orderId": 5}, 4),
    ("DELETE", "order", {"symbol": "BTCUSDT", "orderId": 5}, 1),
    ("DELETE", "openOrders", {"symbol": "BTCUSDT"}, 1),
    ("POST", "order/test", ORDER, 1),
    ("POST", "order/test", {**ORDER, "computeCommissionRates": "true"}, 20),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "params", "weight"), SIGNED_WEIGHTS)
def test_signed_endpoint_weights(bn_client, make_key, method, path, params, weight):
    signer = make_key()
    before = used(bn_client.get("/api/v3/ping"))
    resp = bn_client.open(f"/api/v3/{path}", method=method, query_string=signer.query(params),
                          headers=signer.headers)  # fmt: skip
    # -2011/-2013 for order 5; 503 -1007 for a cancel_all (no worker answers)
    assert resp.status_code in (200, 400, 503), resp.get_data(as_text=True)
    assert used(resp) == before + weight


def test_the_weight_table_covers_binances_endpoints_and_the_body_counts(bn_app):
    """Parameters in a form body weigh as in the query (the query wins a name in both)."""
    with bn_app.test_request_context("/api/v3/order/test", method="POST",
                                     data="computeCommissionRates=true"):  # fmt: skip
        assert weights.request_weight() == 20
    with bn_app.test_request_context(
        "/api/v3/order/test?computeCommissionRates=false", method="POST",
        data="computeCommissionRates=true",
    ):  # fmt: skip
        assert weights.request_weight() == 1
    names = [f'"S{n}"' for n in range(101)]
    for count, weight in ((1, 2), (20, 2), (21, 40), (100, 40), (101, 80)):
        symbols = "[" + ",".join(names[:count]) + "]"
        with bn_app.test_request_context("/api/v3/ticker/24hr",
                                         query_string={"symbols": symbols}):  # fmt: skip
            assert weights.request_weight() == weight
    with bn_app.test_request_context("/api/v3/ticker/24hr"):
        assert weights.request_weight() == 80
    with bn_app.test_request_context("/api/v3/klines?symbol=BTCUSDT"):
        assert weights.request_weight() == 2


# -- 429 and the ban ----------------------------------------------------------------------------


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_WEIGHT_1M": "30"}])
def test_over_the_weight_limit_is_429_minus_1003_with_retry_after(bn_client, make_key):
    assert bn_client.get("/api/v3/exchangeInfo").status_code == 200  # 20
    assert bn_client.get("/api/v3/depth", query_string={"symbol": "BTCUSDT"}).status_code == 200
    resp = bn_client.get("/api/v3/exchangeInfo")  # 45 > 30
    assert refused(resp, 429, -1003, 60) == MSG_WEIGHT.format(30)
    assert used(resp) == 45  # a refused request still weighs (Binance's header keeps climbing)
    signer = make_key()  # a signed request is refused before its key matters
    resp = bn_client.get("/api/v3/account", query_string=signer.query(), headers=signer.headers)
    refused(resp, 429, -1003, 60)
    assert bn_client.get("/api/v3/ping", environ_base=OTHER_ADDRESS).status_code == 200
    assert bn_client.get("/api/v1/symbols").status_code == 200  # the native API: its own limits


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_WEIGHT_1M": "5",
                                        "FAIRBOOK_BINANCE_BAN_AFTER": "3"}])  # fmt: skip
def test_sending_on_after_429s_bans_the_address_418_and_bans_double(bn_app, bn_client):
    rdb = bn_app.extensions["fairbook"].redis
    for _ in range(5):
        assert bn_client.get("/api/v3/ping").status_code == 200
    for _ in range(3):  # FAIRBOOK_BINANCE_BAN_AFTER refusals in a window: 429
        refused(bn_client.get("/api/v3/ping"), 429, -1003, 60)
    start = time.time() * 1000
    resp = bn_client.get("/api/v3/ping")
    msg = refused(resp, 418, -1003, 120)
    assert int(resp.headers["Retry-After"]) == 120  # FAIRBOOK_BINANCE_BAN_S: Binance's 2 min
    assert msg.startswith("Way too much request weight used; IP banned until ")
    assert msg.endswith(". Please use WebSocket Streams for live updates to avoid bans.")
    until = int(msg.split("until ")[1].split(".")[0])
    assert start + 119_000 <= until <= time.time() * 1000 + 120_000
    again = bn_client.get("/api/v3/time")  # every /api/v3 route, while it lasts
    refused(again, 418, -1003, 120)
    assert bn_client.get("/api/v3/ping", environ_base=OTHER_ADDRESS).status_code == 200
    assert bn_client.get("/api/v1/symbols").status_code == 200
    # the ban and the windows over (as if 2 minutes had passed): a second ban lasts twice as long
    for name in rdb.keys("fb:rate_limits:*"):
        if "binance_bans" not in name:
            rdb.delete(name)
    for _ in range(5):
        assert bn_client.get("/api/v3/ping").status_code == 200
    for _ in range(3):
        refused(bn_client.get("/api/v3/ping"), 429, -1003, 60)
    second = bn_client.get("/api/v3/ping")
    refused(second, 418, -1003, 240)
    assert int(second.headers["Retry-After"]) == 240


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_WEIGHT_1M": "2",
                                        "FAIRBOOK_BINANCE_BAN_AFTER": "0"}])  # fmt: skip
def test_ban_after_0_never_bans(bn_client):
    for _ in range(2):
        assert bn_client.get("/api/v3/ping").status_code == 200
    for _ in range(30):
        refused(bn_client.get("/api/v3/ping"), 429, -1003, 60)


# -- orders per account -------------------------------------------------------------------------


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_ORDERS_10S": "3",
                                        "FAIRBOOK_REPLY_TIMEOUT": 0}])  # fmt: skip
def test_orders_per_10s_per_account_with_their_headers(bn_app, bn_client, make_key):
    rdb = bn_app.extensions["fairbook"].redis
    alice, bob = make_key(), make_key()
    alice_again = make_key(account_id=alice.account_id)  # a second key of the same account
    for n, signer in enumerate((alice, alice_again, alice), start=1):
        resp = place(bn_client, signer)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.headers["X-MBX-ORDER-COUNT-10S"] == str(n)
        assert resp.headers["X-MBX-ORDER-COUNT-1D"] == str(n)
        assert WEIGHT_HEADER in resp.headers
    journaled = rdb.xlen(Keys(0).stream)
    resp = place(bn_client, alice)
    msg = refused(resp, 429, -1015, 10)
    assert msg == "Too many new orders; current limit is 3 orders per 10 SECOND."
    assert resp.headers["X-MBX-ORDER-COUNT-10S"] == "4"
    assert rdb.xlen(Keys(0).stream) == journaled  # nothing journaled
    # another account has its own count; reads, tests and cancels are not orders
    assert place(bn_client, bob).headers["X-MBX-ORDER-COUNT-10S"] == "1"
    test = bn_client.post("/api/v3/order/test", query_string=alice.query(ORDER),
                          headers=alice.headers)  # fmt: skip
    assert test.status_code == 200 and "X-MBX-ORDER-COUNT-10S" not in test.headers
    account = bn_client.get("/api/v3/account", query_string=alice.query(),
                            headers=alice.headers)  # fmt: skip
    assert account.status_code == 200 and "X-MBX-ORDER-COUNT-10S" not in account.headers
    # a request whose signature fails is no order of the account's
    forged = alice.query(ORDER)[:-4] + "0000"
    resp = bn_client.post("/api/v3/order", query_string=forged, headers=bob.headers)
    assert resp.get_json()["code"] == -1022
    assert place(bn_client, bob).headers["X-MBX-ORDER-COUNT-10S"] == "2"


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_ORDERS_1D": "2",
                                        "FAIRBOOK_REPLY_TIMEOUT": 0}])  # fmt: skip
def test_orders_per_day(bn_client, make_key):
    alice = make_key()
    for _ in range(2):
        assert place(bn_client, alice).status_code == 200
    resp = place(bn_client, alice)
    assert refused(resp, 429, -1015, 86400) == ("Too many new orders; current limit is 2 "
                                                "orders per 1 DAY.")  # fmt: skip
    assert int(resp.headers["Retry-After"]) > 86000


# -- sharing, exchangeInfo, the off switch, settings ----------------------------------------------


def make_app(redis_url: str, **config: Any) -> Any:
    import base64

    return create_app({"REDIS_URL": redis_url, "TESTING": True, "FAIRBOOK_REPLY_TIMEOUT": 0,
                       "FAIRBOOK_SECRET_KEY_BYTES": base64.urlsafe_b64decode(new_key_text()),
                       **config})  # fmt: skip


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_WEIGHT_1M": "60",
                                        "FAIRBOOK_BINANCE_ORDERS_10S": "2",
                                        "FAIRBOOK_REPLY_TIMEOUT": 0}])  # fmt: skip
def test_two_apps_on_one_redis_share_the_counts(bn_app, bn_client, make_key, redis_url):
    other = make_app(redis_url, FAIRBOOK_BINANCE_WEIGHT_1M="60", FAIRBOOK_BINANCE_ORDERS_10S="2",
                     FAIRBOOK_SECRET_KEY_BYTES=bn_app.config["FAIRBOOK_SECRET_KEY_BYTES"])
    try:
        second = other.test_client()
        assert used(bn_client.get("/api/v3/exchangeInfo")) == 20
        assert used(second.get("/api/v3/exchangeInfo")) == 40
        alice = make_key()
        assert place(bn_client, alice).headers["X-MBX-ORDER-COUNT-10S"] == "1"
        assert place(second, alice).headers["X-MBX-ORDER-COUNT-10S"] == "2"
        refused(place(bn_client, alice), 429, -1015, 10)
        refused(second.get("/api/v3/exchangeInfo"), 429, -1003, 60)  # 20 + 20 + 3 + 20 > 60
    finally:
        other.extensions["fairbook"].redis.close()


def test_exchange_info_lists_the_default_limits_in_binances_shape(bn_client):
    info = bn_client.get("/api/v3/exchangeInfo").get_json()
    assert info["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
         "limit": 6000},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
        {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
        {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
         "limit": 61000},
    ]  # fmt: skip


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_WEIGHT_1M": "1200",
                                        "FAIRBOOK_BINANCE_ORDERS_10S": "0",
                                        "FAIRBOOK_BINANCE_ORDERS_1D": "5000",
                                        "FAIRBOOK_BINANCE_RAW_5M": "0"}])  # fmt: skip
def test_exchange_info_lists_the_configured_limits_and_0_is_none(bn_client):
    assert bn_client.get("/api/v3/exchangeInfo").get_json()["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
         "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 5000},
    ]  # fmt: skip


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_RAW_5M": "3",
                                        "FAIRBOOK_BINANCE_BAN_AFTER": "0"}])  # fmt: skip
def test_raw_requests_per_5_minutes(bn_client):
    for _ in range(3):
        assert bn_client.get("/api/v3/ping").status_code == 200
    msg = refused(bn_client.get("/api/v3/ping"), 429, -1003, 300)
    assert "current limit is 3 requests per 5 MINUTE" in msg


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_RATE_LIMITS": "off",
                                        "FAIRBOOK_BINANCE_WEIGHT_1M": "1",
                                        "FAIRBOOK_BINANCE_ORDERS_10S": "1",
                                        "FAIRBOOK_REPLY_TIMEOUT": 0}])  # fmt: skip
def test_rate_limits_off_disables_binances_too(bn_app, bn_client, make_key):
    alice = make_key()
    for _ in range(5):
        resp = bn_client.get("/api/v3/exchangeInfo")
        assert resp.status_code == 200 and WEIGHT_HEADER not in resp.headers
        assert resp.get_json()["rateLimits"] == []
        order = place(bn_client, alice)
        assert order.status_code == 200 and "X-MBX-ORDER-COUNT-10S" not in order.headers
    assert binance_limits(bn_app) is None
    assert not bn_app.extensions["fairbook"].redis.keys("*rate_limits*")


@pytest.mark.parametrize("name", ["FAIRBOOK_BINANCE_WEIGHT_1M", "FAIRBOOK_BINANCE_ORDERS_10S",
                                  "FAIRBOOK_BINANCE_ORDERS_1D", "FAIRBOOK_BINANCE_RAW_5M",
                                  "FAIRBOOK_BINANCE_BAN_AFTER", "FAIRBOOK_BINANCE_BAN_S"])
def test_a_malformed_binance_limit_stops_start_up(redis_url, name):
    for bad in ("lots", "-1", "1.5", "6000 per minute"):
        with pytest.raises(SystemExit, match=name):
            make_app(redis_url, **{name: bad})


def test_counters_live_under_the_namespace_by_address_and_account(bn_app, bn_client, make_key):
    alice = make_key()
    bn_client.get("/api/v3/account", query_string=alice.query(), headers=alice.headers)
    names = bn_app.extensions["fairbook"].redis.keys("*")
    counters = [n for n in names if "binance" in n]
    assert counters and all(n.startswith("fb:rate_limits:") for n in counters), counters
    assert any("/127.0.0.1/binance_weight/" in n for n in counters), counters
    assert not any(alice.api_key in n for n in names)


def test_counts_fall_back_to_memory_while_redis_is_down(fresh_redis):
    """Fail open to per-process counts, as the native limits do: the weight is still counted,
    its header sent and its limit kept."""
    app = make_app(fresh_redis.url, FAIRBOOK_BINANCE_WEIGHT_1M="3")
    try:
        client = app.test_client()
        fresh_redis.stop()
        assert [used(client.get("/api/v3/ping")) for _ in range(3)] == [1, 2, 3]
        refused(client.get("/api/v3/ping"), 429, -1003, 60)
    finally:
        app.extensions["fairbook"].redis.close()


@pytest.mark.parametrize("bn_config", [{"FAIRBOOK_BINANCE_ORDERS_10S": "50",
                                        "FAIRBOOK_REPLY_TIMEOUT": 0}])  # fmt: skip
def test_rate_limit_order_reads_the_accounts_order_counts(bn_client, make_key):
    alice, bob = make_key(), make_key()

    def counts(signer: Any) -> list[dict[str, Any]]:
        resp = bn_client.get("/api/v3/rateLimit/order", query_string=signer.query(),
                             headers=signer.headers)  # fmt: skip
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    empty = counts(alice)
    assert empty == [
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50,
         "count": 0},
        {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000,
         "count": 0},
    ]  # fmt: skip
    for _ in range(2):
        place(bn_client, alice)
    assert [c["count"] for c in counts(alice)] == [2, 2]  # reading counts nothing
    assert [c["count"] for c in counts(bob)] == [0, 0]
    before = used(bn_client.get("/api/v3/ping"))
    resp = bn_client.get("/api/v3/rateLimit/order", query_string=alice.query(),
                         headers=alice.headers)  # fmt: skip
    assert used(resp) == before + 40
