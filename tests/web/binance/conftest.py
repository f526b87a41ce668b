"""Fixtures for the Binance-compatible API: signed keys and a request signer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization

from web.accounts import create_account
from web.app import create_app
from web.binance.keys import ED25519, HMAC, create_api_key, vault_of
from web.binance.vault import new_key_text

SERVER_KEY = new_key_text()


@pytest.fixture
def bn_config() -> dict[str, Any]:
    """Extra app settings (a test parametrizes this to change them)."""
    return {}


@pytest.fixture
def bn_app(redis_url, bn_config):
    """The app with a server key of its own (no file written), short reply timeout."""
    app = create_app({"REDIS_URL": redis_url, "FAIRBOOK_REPLY_TIMEOUT": 0.3, "TESTING": True,
                      "FAIRBOOK_SECRET_KEY_BYTES": base64.urlsafe_b64decode(SERVER_KEY),
                      **bn_config})
    yield app
    state = app.extensions["fairbook"]
    if state.inbox is not None:
        state.inbox.stop()
    state.redis.close()


@pytest.fixture
def bn_client(bn_app):
    return bn_app.test_client()


class Signer:
    """One signed key: builds Binance requests the way a client does (HMAC hex or Ed25519)."""

    def __init__(self, issued: dict[str, Any]) -> None:
        self.issued = issued
        self.api_key = issued["api_key"]
        self.account_id = issued["account_id"]
        self.kind = issued["kind"]
        if self.kind == ED25519:
            self.private = serialization.load_pem_private_key(
                issued["private_key"].encode(), password=None
            )

    @property
    def headers(self) -> dict[str, str]:
        return {"X-MBX-APIKEY": self.api_key}

    def sign(self, payload: str) -> str:
        if self.kind == HMAC:
            return hmac.new(self.issued["secret"].encode(), payload.encode(),
                            hashlib.sha256).hexdigest()  # fmt: skip
        raw = self.private.sign(payload.encode())  # type: ignore[union-attr]
        return base64.b64encode(raw).decode()

    def query(self, params: dict[str, Any] | None = None, ts: int | None = None,
              **extra: Any) -> str:  # fmt: skip
        """``params`` + timestamp, signed: the query string to send."""
        items = dict(params or {})
        items.setdefault("timestamp", ts if ts is not None else int(time.time() * 1000))
        items.update(extra)
        text = urlencode(items)
        return f"{text}&{urlencode({'signature': self.sign(text)})}"


@pytest.fixture
def make_key(bn_app):
    """Issue a signed key (``kind``, ``permissions``) for a new account or a given one."""
    state = bn_app.extensions["fairbook"]

    def make(kind: str = HMAC, permissions: tuple[str, ...] = ("read", "trade"),
             account_id: str | None = None) -> Signer:  # fmt: skip
        if account_id is None:
            account_id = create_account(state.redis, "bn")["account_id"]
        with bn_app.app_context():
            issued = create_api_key(state.redis, vault_of(bn_app), account_id,
                                    state.namespace.global_keys, kind=kind,
                                    permissions=permissions)  # fmt: skip
        return Signer(issued)

    return make
