"""Shared fixtures: a private Redis per test session, chromium for browser tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import openapi_conformance
from redis_server import RedisServer

# Slow shared CI machines: no per-example deadline.
settings.register_profile(
    "fairbook", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# CI replays the same examples every run (a red CI then means a change broke something, not that
# the dice found an old bug); developer runs keep exploring new examples.
settings.register_profile("ci", parent=settings.get_profile("fairbook"), derandomize=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "fairbook")
)


def pytest_configure(config):
    """Every response a test sees is checked against web/openapi.json (openapi_conformance)."""
    if not config.pluginmanager.is_registered(openapi_conformance):
        config.pluginmanager.register(openapi_conformance, "openapi_conformance")


def chromium_path() -> str | None:
    """The system chromium (scripts/test installs Debian's) or None."""
    for cand in (os.environ.get("FAIRBOOK_CHROMIUM"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium")


def pytest_collection_modifyitems(config, items):
    if chromium_path() is None:
        skip = pytest.mark.skip(
            reason="no chromium (run scripts/test as root to apt-get install it, "
            "or set FAIRBOOK_CHROMIUM)"
        )
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server for the whole session (free port, temp dir, AOF on)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    server.cleanup()


@pytest.fixture
def redis_client(redis_server):
    """A client of the session server, FLUSHALLed before the test."""
    if not redis_server.running:  # a test may have stopped/killed it
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_client, redis_server) -> str:
    """URL of the (flushed) session server."""
    return redis_server.url


@pytest.fixture
def fresh_redis(tmp_path):
    """A private server of the test's own (for kill/restart tests), removed afterwards."""
    server = RedisServer(dir=tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the system chromium, for playwright's executable_path."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium")
    return path
