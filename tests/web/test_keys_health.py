"""Key rotation and revocation (CLI, REST, the hub), quiet /healthz, the page's headers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from protocol.config import redacted_url
from protocol.keys import Keys, Namespace
from tests.redis_server import wait_until
from web.accounts import create_account, hash_key
from web.hub import Hub

K = Keys(0)
QUIET_OK = {"status": "ok"}
QUIET_DOWN = {"status": "unavailable"}


def cli(web_app, *args: str) -> Any:
    result = web_app.test_cli_runner().invoke(args=list(args))
    return result


def cli_json(web_app, *args: str) -> dict[str, Any]:
    result = cli(web_app, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def orders(client, key: str):
    return client.get("/api/v1/orders", headers={"X-API-Key": key})


# -- keys ---------------------------------------------------------------------------------------


def test_cli_create_rotate_revoke_round_trip(web_app, client, rdb):
    made = cli_json(web_app, "create-account", "carol")
    assert set(made) == {"account_id", "api_key"}
    account, first = made["account_id"], made["api_key"]
    assert rdb.smembers(K.account_keys(account)) == {hash_key(first)}
    assert orders(client, first).status_code == 200

    rotated = cli_json(web_app, "rotate-key", account)
    assert rotated["account_id"] == account and rotated["revoked"] == 1
    second = rotated["api_key"]
    assert second != first
    assert orders(client, first).status_code == 401  # dead at once: no cache
    assert orders(client, second).status_code == 200
    assert rdb.smembers(K.account_keys(account)) == {hash_key(second)}
    assert rdb.hget(K.accounts, hash_key(first)) is None

    revoked = cli_json(web_app, "revoke-key", second)
    assert revoked == {"account_id": account, "revoked": True}
    assert orders(client, second).status_code == 401
    assert rdb.smembers(K.account_keys(account)) == set()
    # the account itself lives on: a rotation gives it a working key again
    third = cli_json(web_app, "rotate-key", account)
    assert third["revoked"] == 0 and orders(client, third["api_key"]).status_code == 200


def test_cli_refusals(web_app, rdb):
    made = cli_json(web_app, "create-account", "dave")
    assert cli(web_app, "rotate-key", "999999").exit_code != 0
    assert cli(web_app, "rotate-key", "x; DROP").exit_code != 0
    assert cli(web_app, "revoke-key", "fb_not-a-key").exit_code == 1  # nobody's key
    assert cli(web_app, "revoke-key", "not printable \x01").exit_code != 0
    assert rdb.hget(K.accounts, hash_key(made["api_key"])) == made["account_id"]


def test_revocations_are_published_on_the_control_channel(web_app, rdb):
    made = cli_json(web_app, "create-account", "erin")
    pubsub = rdb.pubsub()
    pubsub.subscribe(K.control)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    cli_json(web_app, "rotate-key", made["account_id"])
    msg = pubsub.get_message(timeout=2)
    assert json.loads(msg["data"]) == {"type": "revoked", "key": hash_key(made["api_key"])}
    pubsub.close()


def test_accounts_made_before_key_sets_can_be_rotated(web_app, client, rdb):
    """An account written by the old create-account (mapping only, no key set)."""
    old_keys = ["fb_legacy-one", "fb_legacy-two"]
    rdb.hset(K.account("77"), mapping={"name": "legacy", "created": "1"})
    for key in old_keys:
        rdb.hset(K.accounts, hash_key(key), "77")
    other = create_account(rdb, "bystander")
    assert all(orders(client, key).status_code == 200 for key in old_keys)
    rotated = cli_json(web_app, "rotate-key", "77")
    assert rotated["revoked"] == 2
    assert all(orders(client, key).status_code == 401 for key in old_keys)
    assert orders(client, rotated["api_key"]).status_code == 200
    assert orders(client, other["api_key"]).status_code == 200  # nobody else's key touched


class FakeSocket:
    def __init__(self, account: str) -> None:
        self.account = account
        self.frames: list[bytes] = []
        self.closed = False

    def offer(self, frame: bytes) -> bool:
        if not self.closed:
            self.frames.append(frame)
        return True

    def next_sequence(self, channel: str) -> int:
        return len(self.frames) + 1

    def slow_consumer(self) -> None:
        self.closed = True

    def revoked(self) -> None:
        self.closed = True


def test_hub_closes_the_sockets_of_a_revoked_key_and_stops_their_events():
    hub = Hub(lambda: None, {}, Namespace("fb"))  # type: ignore[arg-type,return-value]
    dead, alive = hash_key("fb_dead"), hash_key("fb_alive")
    a, b = FakeSocket("5"), FakeSocket("5")
    hub.register_key(a, dead)
    hub.register_key(b, alive)
    for sock in (a, b):
        hub.subscribe(sock, "orders")
    event = json.dumps({"events": [{"event": "order", "order_id": 1}]})
    hub.dispatch({"channel": "fb:acct:5", "data": event})
    assert len(a.frames) == len(b.frames) == 1
    hub.dispatch({"channel": "fb:control", "data": json.dumps({"type": "revoked", "key": dead})})
    assert a.closed and not b.closed
    hub.dispatch({"channel": "fb:acct:5", "data": event})
    assert len(a.frames) == 1 and len(b.frames) == 2
    assert dead not in hub.key_subs and hub.acct_subs["5"] == {b}
    for bad in ({"type": "revoked"}, {"type": "revoked", "key": "*"}):
        hub.dispatch({"channel": "fb:control", "data": json.dumps(bad)})
    assert hub.stats["poison"] == 2 and not b.closed
    hub.remove(b)
    assert hub.key_subs == {}


def test_a_key_revoked_before_the_hub_listened_is_caught_when_it_starts(redis_url, rdb):
    """A socket may authenticate before the control channel is live: the hub's first
    subscription rechecks the keys of its sockets, so a revocation of that window is not lost."""
    hub = Hub(lambda: redis.Redis.from_url(redis_url), {}, Namespace("fb"))
    live = create_account(rdb, "live")["api_key"]
    early, kept = FakeSocket("1"), FakeSocket("2")
    hub.register_key(early, hash_key("fb_revoked_before_the_hub_started"))  # not in Redis
    hub.register_key(kept, hash_key(live))
    hub.start()
    try:
        assert wait_until(lambda: early.closed, 10, "the revoked key's socket closed")
        assert not kept.closed and hash_key(live) in hub.key_subs
    finally:
        hub.stop()


# -- /healthz -----------------------------------------------------------------------------------


def _healthy(rdb) -> None:
    rdb.set(K.lease, "token")


def test_healthz_is_quiet_for_anonymous_and_plain_accounts(client, rdb, alice):
    resp = client.get("/healthz")
    assert resp.status_code == 503 and resp.get_json() == QUIET_DOWN  # no lease holder
    _healthy(rdb)
    for headers in ({}, alice["headers"], {"X-API-Key": "fb_unknown"}, {"X-API-Key": "\x01"}):
        resp = client.get("/healthz", headers=headers)
        assert resp.status_code == 200 and resp.get_json() == QUIET_OK, headers
    rdb.set(K.applied_count, 0)
    rdb.xadd(K.stream, {"c": "{}"})
    client.application.config["FAIRBOOK_HEALTH_MAX_LAG"] = 0
    resp = client.get("/healthz", headers=alice["headers"])
    assert resp.status_code == 503 and resp.get_json() == QUIET_DOWN


def test_healthz_details_for_operators(web_app, client, rdb):
    op = cli_json(web_app, "create-account", "ops", "--operator")
    assert rdb.hget(K.account(op["account_id"]), "operator") == "1"
    headers = {"X-API-Key": op["api_key"]}
    resp = client.get("/healthz", headers=headers)
    body = resp.get_json()
    assert resp.status_code == 503 and body["status"] == "unavailable"
    assert body["redis"] is True and body["partitions"][0]["lease"] is False
    _healthy(rdb)
    body = client.get("/healthz", headers=headers).get_json()
    assert body["status"] == "ok" and body["replies"] == {"subscribed": None}
    assert set(body) == {"status", "redis", "partitions", "replies", "market_data", "audits",
                         "audit_failure"}
    assert body["audits"] == [] and body["audit_failure"] is None  # never audited yet


def test_healthz_redis_down_says_nothing_more():
    from redis_server import free_port
    from web.app import create_app

    app = create_app({"REDIS_URL": f"redis://:pw@127.0.0.1:{free_port()}/0"})
    resp = app.test_client().get("/healthz", headers={"X-API-Key": "fb_whatever"})
    assert resp.status_code == 503 and resp.get_json() == QUIET_DOWN
    assert b"127.0.0.1" not in resp.data


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_page_and_static_files_send_the_security_headers(client, path):
    resp = client.get(path)
    assert resp.status_code == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_json_responses_are_nosniff(client):
    for resp in (client.get("/api/v1/symbols"), client.get("/api/v1/nope"), client.get("/healthz")):
        assert resp.is_json and resp.headers["X-Content-Type-Options"] == "nosniff"


def test_page_has_no_inline_script():
    import re
    from pathlib import Path

    html = (Path(__file__).resolve().parents[2] / "web/static/index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/app.js">']
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handlers
    assert "javascript:" not in html and "style=" not in html


def test_redis_passwords_are_not_shown():
    assert redacted_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert redacted_url("rediss://u:s3cret@h:1/0?ssl_cert_reqs=required") == (
        "rediss://u:***@h:1/0?ssl_cert_reqs=required"
    )
    assert redacted_url("redis://h:1/0") == "redis://h:1/0"
