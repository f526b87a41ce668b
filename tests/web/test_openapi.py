"""web/openapi.json: valid OpenAPI 3.1, in step with the code, served, and enforced.

Drift is caught three ways: here (every route and every enumeration the engine defines is in
the document), by tests/openapi_conformance.py (every response any test sees conforms) and by
tests/web/test_fuzz_contract.py (a live stack, fuzzed from the document).
"""

from __future__ import annotations

import json
import re

import jsonschema_rs
import schemathesis
from flask import jsonify

import openapi_conformance
from engine.commands import (
    COMPLETED,
    DEPOSIT,
    ORDER_TYPES,
    SIDES,
    STATUSES,
    STP_MODES,
    TIME_IN_FORCES,
    WITHDRAWAL,
    Reason,
)
from engine.markets import MARKET_FIELDS
from engine.units import _DECIMAL_TEXT, ErrorCode
from engine.validation import (
    _IDENTIFIER,
    AMEND_REQUEST_FIELDS,
    DEPOSIT_REQUEST_FIELDS,
    ORDER_REQUEST_FIELDS,
    TRANSFER_REFERENCE,
    WITHDRAWAL_REQUEST_FIELDS,
)
from web.app import OPENAPI_PATH

DOC = json.loads(OPENAPI_PATH.read_text())
SCHEMAS = DOC["components"]["schemas"]
METHODS = {"get", "post", "patch", "delete", "put"}


def _codes(response: str) -> set[str]:
    schema = DOC["components"]["responses"][response]["content"]["application/json"]["schema"]
    return set(schema["properties"]["error"]["properties"]["code"]["enum"])


def _enum(schema: dict) -> set[str]:
    if "enum" in schema:
        return set(schema["enum"])
    return {v for branch in schema["anyOf"] for v in branch.get("enum", [])}


def test_the_document_is_openapi_31_with_valid_2020_12_schemas() -> None:
    assert DOC["openapi"].startswith("3.1")
    for name, schema in SCHEMAS.items():
        assert jsonschema_rs.meta.is_valid(schema), name
    loaded = schemathesis.openapi.from_dict(DOC)
    operations = list(loaded.get_all_operations())
    assert operations and all(op.ok() for op in operations)


def test_every_route_is_documented_and_nothing_else(web_app) -> None:
    served = set()
    for rule in web_app.url_map.iter_rules():
        if rule.rule.startswith("/api/v3/"):  # Binance's contract, not this document's
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(path, m) for path, item in DOC["paths"].items() for m in item if m in METHODS}
    assert served == documented


def test_enumerations_and_patterns_are_the_engines() -> None:
    assert set(SCHEMAS["Side"]["enum"]) == set(SIDES)
    assert set(SCHEMAS["OrderType"]["enum"]) == set(ORDER_TYPES)
    assert set(SCHEMAS["TimeInForce"]["enum"]) == set(TIME_IN_FORCES)
    assert set(SCHEMAS["Stp"]["enum"]) == set(STP_MODES)
    order = SCHEMAS["Order"]["properties"]
    assert set(order["status"]["enum"]) == set(STATUSES)
    reasons = {v for k, v in vars(Reason).items() if k.isupper()}
    assert _enum(order["reject_reason"]) == reasons
    assert set(SCHEMAS["OrderRequest"]["properties"]) == ORDER_REQUEST_FIELDS
    assert set(SCHEMAS["AmendRequest"]["properties"]) == AMEND_REQUEST_FIELDS
    assert SCHEMAS["Market"]["required"] == list(MARKET_FIELDS)
    codes = {v for k, v in vars(ErrorCode).items() if k.isupper()}
    assert codes | reasons <= _codes("BadRequest")
    # the validators' own expressions, anchored (JSON Schema patterns search, they do not match)
    assert SCHEMAS["DecimalInput"]["pattern"] == f"^{_DECIMAL_TEXT.pattern}$"
    assert SCHEMAS["ClientOrderId"]["pattern"] == f"^{_IDENTIFIER.pattern}$"


def test_money_schemas_are_the_engines() -> None:
    assert set(SCHEMAS["WithdrawalRequest"]["properties"]) == WITHDRAWAL_REQUEST_FIELDS
    assert set(SCHEMAS["DepositRequest"]["properties"]) == DEPOSIT_REQUEST_FIELDS
    for kind in ("Transfer", "TransferAccepted"):
        schema = SCHEMAS[kind]
        assert set(schema["properties"]["type"]["enum"]) == {DEPOSIT, WITHDRAWAL}
        assert set(TRANSFER_REFERENCE.values()) <= set(schema["properties"])
    transfer = SCHEMAS["Transfer"]["properties"]
    assert set(transfer["status"]["enum"]) == {COMPLETED, "rejected"}
    assert _enum(transfer["reason"]) == {Reason.INSUFFICIENT_FUNDS}
    for name in ("AccountId", "TransferReference"):
        assert SCHEMAS[name]["pattern"] == f"^{_IDENTIFIER.pattern}$"
    assert {"locked", "locked_asset"} <= set(SCHEMAS["Order"]["required"])
    assert "forbidden" in DOC["components"]["responses"]["Forbidden"]["content"][
        "application/json"]["schema"]["properties"]["error"]["properties"]["code"]["enum"]


def test_the_document_is_served_with_this_deployments_symbols(client, web_app) -> None:
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    served = resp.get_json()
    state = web_app.extensions["fairbook"]
    assert served["components"]["schemas"]["Symbol"]["enum"] == sorted(state.markets)
    assert served["components"]["schemas"]["Asset"]["enum"] == sorted(state.assets)
    assert sorted(state.assets) == ["BTC", "DOGE", "ETH", "SOL", "USDT"]
    del served["components"]["schemas"]["Symbol"]["enum"]
    del served["components"]["schemas"]["Asset"]["enum"]
    assert served == DOC


def test_a_response_off_the_contract_is_caught(client, web_app) -> None:
    contract = openapi_conformance.contract()
    ok_error = b'{"error":{"code":"unknown_symbol","message":"unknown symbol"}}'
    json_type = {"Content-Type": "application/json"}
    assert contract.check("GET", "/api/v1/book/X", 404, json_type, ok_error) is None
    assert contract.check("GET", "/api/v1/book/X/", 404, json_type, ok_error) is None
    bad = [
        ("GET", "/api/v1/book/X", 418, json_type, ok_error),  # an undocumented status
        ("GET", "/api/v1/book/X", 404, {"Content-Type": "text/html"}, b"<p>"),
        ("GET", "/api/v1/book/X", 404, json_type, b'{"error":"x"}'),
        ("GET", "/api/v1/book/X", 200, json_type, b'{"symbol":"X","sequence":0}'),
        ("GET", "/nowhere", 200, json_type, b"{}"),  # a success from a path not documented
        ("PUT", "/api/v1/symbols", 405, json_type, ok_error),  # 405 without Allow
        ("GET", "/api/v1/orders/1", 404, json_type, b'{"error":{"code":"nope","message":""}}'),
    ]
    for args in bad:
        assert contract.check(*args) is not None, args
    # through the test client: the plugin records it, and the test that got it would fail
    web_app.view_functions["public.symbols"] = lambda: jsonify([{"symbol": "BTC-USDT"}])
    openapi_conformance._take()
    client.get("/api/v1/symbols")
    found = openapi_conformance._take()  # taken, so that this test itself passes
    assert len(found) == 1 and "GET /api/v1/symbols -> 200" in found[0], found


def test_the_page_and_its_files_answer_as_documented(client) -> None:
    """Conditional and range requests (a browser's reload) included; the plugin checks each."""
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    script = client.get("/static/app.js")
    assert script.status_code == 200
    etag = script.headers["ETag"]
    assert client.get("/static/app.js", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/static/app.js", headers={"Range": "bytes=0-9"}).status_code == 206
    assert client.get("/static/app.js", headers={"Range": "bytes=99999999-"}).status_code == 416
    assert client.get("/static/nope.js").status_code == 404
    assert client.options("/api/v1/orders").headers["Allow"]
    assert client.head("/api/v1/symbols").status_code == 200
