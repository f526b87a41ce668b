"""Property tests: whatever a client sends, the answer is a JSON 4xx (or 202), never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.validation import ORDER_REQUEST_FIELDS

# the fixtures (app, account) are meant to be shared by all examples of a test
FIXTURES_OK = [HealthCheck.function_scoped_fixture]
FIELDS = sorted(ORDER_REQUEST_FIELDS) + ["extra"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(["BTC-USDT", "buy", "sell", "limit", "market", "GTC",
                                           "IOC", "FOK", "100.50", "0.01", "1e3", "-1", "0",
                                           "stop_loss", "take_profit_limit", "cancel_both"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
bodies = st.one_of(st.dictionaries(st.sampled_from(FIELDS), values, max_size=8), values)


def check(resp) -> None:
    assert resp.status_code in (201, 202, 400, 404, 413, 415), (resp.status_code, resp.data)
    assert resp.is_json
    if resp.status_code >= 400:
        assert set(resp.get_json()["error"]) == {"code", "message"}


@settings(max_examples=150, suppress_health_check=FIXTURES_OK)
@given(body=bodies)
def test_post_orders_never_500(client, alice, body):
    check(client.post("/api/v1/orders", data=json.dumps(body),
                      headers={**alice["headers"], "Content-Type": "application/json"}))


@settings(max_examples=100, suppress_health_check=FIXTURES_OK)
@given(raw=st.binary(max_size=200))
def test_post_raw_bytes_never_500(client, alice, raw):
    check(client.post("/api/v1/orders", data=raw,
                      headers={**alice["headers"], "Content-Type": "application/json"}))


@settings(max_examples=100, suppress_health_check=FIXTURES_OK)
@given(body=st.one_of(st.dictionaries(st.sampled_from(["quantity", "price", "x"]), values),
                      values),
       oid=st.text(max_size=25))
def test_patch_and_ids_never_500(client, alice, rdb, body, oid):
    rdb.set("fb:{p0}:order:256", json.dumps({"account": alice["account_id"],
                                             "symbol": "BTC-USDT"}))
    for path in ("/api/v1/orders/256", f"/api/v1/orders/{oid}"):
        resp = client.patch(path, data=json.dumps(body),
                            headers={**alice["headers"], "Content-Type": "application/json"})
        if resp.status_code != 405:  # an id with "/" may route elsewhere
            check(resp)


@settings(max_examples=100, suppress_health_check=FIXTURES_OK)
@given(q=st.dictionaries(st.sampled_from(["symbol", "status", "limit", "depth"]),
                         st.text(max_size=8), max_size=3))
def test_query_strings_never_500(client, alice, q):
    for path in ("/api/v1/orders", "/api/v1/book/BTC-USDT", "/api/v1/trades/BTC-USDT"):
        resp = client.get(path, query_string=q, headers=alice["headers"])
        assert resp.status_code in (200, 400), (path, q, resp.data)


def test_double_slash_and_trailing_slash_get_json_not_html_redirects(client, alice):
    for path in ("/api/v1/orders//0", "/api/v1/orders/256/", "/api/v1//symbols"):
        resp = client.patch(path, data="{}", headers={**alice["headers"],
                                                      "Content-Type": "application/json"})
        assert resp.status_code in (400, 404, 405), (path, resp.status_code)
        assert resp.is_json, path
    assert client.get("/api/v1/symbols/").status_code == 200
