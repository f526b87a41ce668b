"""Accounts and API-key authentication.

Keys are random 256-bit tokens shown once; Redis keeps only ``sha256(key)`` in ``<ns>:accounts``
so a leaked dump does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import redis
from flask import Flask, g, request

from protocol.keys import Keys
from web.app import ApiError, state

API_KEY_HEADER = "X-API-Key"
MAX_NAME = 64

F = TypeVar("F", bound=Callable[..., Any])


_API_KEY = re.compile(r"[\x21-\x7e]{1,256}")


def valid_api_key(value: Any) -> bool:
    """An API key is 1-256 printable ASCII characters; anything else cannot be one."""
    return isinstance(value, str) and _API_KEY.fullmatch(value) is not None


def hash_key(api_key: str) -> str:
    """What Redis stores for a key: its sha256 hex digest."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def create_account(client: redis.Redis, name: str, keys: Keys | None = None) -> dict[str, str]:
    """Make an account; return ``{"account_id", "api_key"}`` (the key is not stored anywhere).

    The id comes from INCR; the account hash and the key mapping are written in one MULTI so a
    crash never leaves a key pointing at a nameless account.
    """
    keys = keys or Keys(0)
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"account name must be 1-{MAX_NAME} characters")
    account_id = str(client.incr(keys.next_account))
    api_key = "fb_" + secrets.token_urlsafe(32)
    pipe = client.pipeline(transaction=True)
    created = str(int(time.time() * 1000))
    pipe.hset(keys.account(account_id), mapping={"name": name, "created": created})
    pipe.hset(keys.accounts, hash_key(api_key), account_id)
    pipe.execute()
    return {"account_id": account_id, "api_key": api_key}


def lookup_account(api_key: str) -> str | None:
    """The account id of an API key, or None. Asked of Redis every time (one HGET, on the
    request path's direct connections): a cache here measured no faster, and a key removed in
    Redis must stop working at once."""
    st = state()
    account = st.get_hash_field(st.namespace.global_keys.accounts, hash_key(api_key))
    return account.decode() if isinstance(account, bytes) else account


def authenticate() -> str:
    """Resolve ``X-API-Key`` to an account id (stored in ``g.account``) or raise 401."""
    api_key = request.headers.get(API_KEY_HEADER)
    if not api_key:
        raise ApiError(401, "unauthorized", f"missing {API_KEY_HEADER} header")
    if not valid_api_key(api_key):
        raise ApiError(401, "unauthorized", "invalid API key")
    account = lookup_account(api_key)
    if account is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    g.account = account
    return account


def require_account(view: F) -> F:
    """Decorator for private routes: 401 JSON unless a valid ``X-API-Key`` is sent."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        authenticate()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Register ``flask --app app create-account NAME``."""

    @app.cli.command("create-account")
    @click.argument("name")
    def create_account_command(name: str) -> None:
        """Create an account and print {"account_id", "api_key"} as JSON (key shown once)."""
        try:
            st = state()
            result = create_account(st.redis, name, st.namespace.global_keys)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        click.echo(json.dumps(result))
