"""Accounts and API-key authentication.

Keys are random 256-bit tokens shown once; Redis keeps only ``sha256(key)`` in ``<ns>:accounts``
so a leaked dump does not leak usable keys. Each account's live key hashes are also in the set
``<ns>:account_keys:<id>`` (written in the same MULTI as the mapping), so rotating a key can
remove every old one. A removed key fails at once everywhere (it is looked up on every request)
and a revocation message on the control channel closes its open WebSockets (web.hub).
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
from web.limits import count_request

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


def _new_key() -> str:
    return "fb_" + secrets.token_urlsafe(32)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def revocation_message(key_hash: str) -> str:
    """What the control channel carries when a key dies: its sockets are closed (web.hub)."""
    return json.dumps({"type": "revoked", "key": key_hash})


def create_account(
    client: redis.Redis, name: str, keys: Keys | None = None, operator: bool = False
) -> dict[str, str]:
    """Make an account; return ``{"account_id", "api_key"}`` (the key is not stored anywhere).

    The id comes from INCR; the account hash, the key mapping and the account's key set are
    written in one MULTI so a crash never leaves a key pointing at a nameless account. An
    operator account (``operator`` = "1" in its hash) may read the details of /healthz.
    """
    keys = keys or Keys(0)
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"account name must be 1-{MAX_NAME} characters")
    account_id = str(client.incr(keys.next_account))
    api_key = _new_key()
    key_hash = hash_key(api_key)
    pipe = client.pipeline(transaction=True)
    created = str(int(time.time() * 1000))
    fields = {"name": name, "created": created}
    if operator:
        fields["operator"] = "1"
    pipe.hset(keys.account(account_id), mapping=fields)
    pipe.hset(keys.accounts, key_hash, account_id)
    pipe.sadd(keys.account_keys(account_id), key_hash)
    pipe.execute()
    return {"account_id": account_id, "api_key": api_key}


def account_key_hashes(client: Any, account_id: str, keys: Keys) -> set[str]:
    """The hashes of the account's live keys: its key set, or, for an account made before key
    sets existed (no set), the entries of ``<ns>:accounts`` that map to it (one HSCAN)."""
    members = {_text(m) for m in client.smembers(keys.account_keys(account_id))}
    if members:
        return members
    return {_text(f) for f, v in client.hscan_iter(keys.accounts, count=1000)
            if _text(v) == account_id}  # fmt: skip


def rotate_key(client: redis.Redis, account_id: str, keys: Keys | None = None) -> dict[str, Any]:
    """Issue a new key for the account and remove every old one; return ``{"account_id",
    "api_key", "revoked"}`` (the number of old keys removed).

    One MULTI removes the old mappings, stores the new key and publishes one revocation per old
    key; WATCH on the key set makes a concurrent rotation retry instead of leaving a key alive.
    """
    keys = keys or Keys(0)
    account_id = account_id.strip()
    if not (account_id.isascii() and account_id.isdigit()) or not client.exists(
        keys.account(account_id)
    ):
        raise LookupError(f"no account {account_id[:32]!r}")
    api_key = _new_key()
    key_hash = hash_key(api_key)
    key_set = keys.account_keys(account_id)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key_set)
                old = sorted(account_key_hashes(pipe, account_id, keys))
                pipe.multi()
                if old:
                    pipe.hdel(keys.accounts, *old)
                    pipe.delete(*[keys.api_key(h) for h in old])  # signed keys too
                pipe.delete(key_set)
                pipe.hset(keys.accounts, key_hash, account_id)
                pipe.sadd(key_set, key_hash)
                for dead in old:
                    pipe.publish(keys.control, revocation_message(dead))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    return {"account_id": account_id, "api_key": api_key, "revoked": len(old)}


def revoke_key(client: redis.Redis, api_key: str, keys: Keys | None = None) -> str | None:
    """Remove one key, native or signed; return the account it belonged to (None: no such
    key). The revocation is published either way, so a socket that missed an earlier one is
    closed too."""
    keys = keys or Keys(0)
    key_hash = hash_key(api_key)
    account = client.hget(keys.accounts, key_hash)
    if account is None:  # a signed (Binance-style) key: its own record (web.binance.keys)
        account = client.hget(keys.api_key(key_hash), "account")
    account_id = _text(account) if account is not None else None
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.accounts, key_hash)
    pipe.delete(keys.api_key(key_hash))
    if account_id is not None:
        pipe.srem(keys.account_keys(account_id), key_hash)
    pipe.publish(keys.control, revocation_message(key_hash))
    pipe.execute()
    return account_id


def is_operator(account_id: str) -> bool:
    """Whether the account may read operator details (``operator`` = "1" in its hash)."""
    st = state()
    flag = st.redis.hget(st.namespace.global_keys.account(account_id), "operator")
    return flag is not None and _text(flag) == "1"


def lookup_account(api_key: str) -> str | None:
    """The account id of an API key, or None. Asked of Redis every time (one HGET, on the
    request path's direct connections): a cache here measured no faster, and a key removed in
    Redis must stop working at once."""
    st = state()
    account = st.get_hash_field(st.namespace.global_keys.accounts, hash_key(api_key))
    return account.decode() if isinstance(account, bytes) else account


def lookup_account_counted(api_key: str) -> str | None:
    """:func:`lookup_account`, with the request counted against the rate limits of its address
    and its key in the same round trip (``web.limits.RateLimited`` beyond them)."""
    st = state()
    key_hash = hash_key(api_key)
    account = count_request(key_hash, ("HGET", st.namespace.global_keys.accounts, key_hash))
    return account.decode() if isinstance(account, bytes) else account


def authenticate() -> str:
    """Resolve ``X-API-Key`` to an account id (stored in ``g.account``) or raise 401; the
    request is counted against the rate limits (address and key) in the lookup's round trip,
    429 beyond them (``web.limits``)."""
    api_key = request.headers.get(API_KEY_HEADER)
    if not valid_api_key(api_key):
        count_request()  # the address's count only: no key to count
        if not api_key:
            raise ApiError(401, "unauthorized", f"missing {API_KEY_HEADER} header")
        raise ApiError(401, "unauthorized", "invalid API key")
    account = lookup_account_counted(api_key)
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
    """Register ``flask --app app create-account NAME [--operator]``, ``rotate-key ACCOUNT_ID``
    and ``revoke-key KEY``."""

    @app.cli.command("create-account")
    @click.argument("name")
    @click.option("--operator", is_flag=True, help="may read the details of /healthz")
    def create_account_command(name: str, operator: bool) -> None:
        """Create an account and print {"account_id", "api_key"} as JSON (key shown once)."""
        try:
            st = state()
            result = create_account(st.redis, name, st.namespace.global_keys, operator=operator)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        click.echo(json.dumps(result))

    @app.cli.command("rotate-key")
    @click.argument("account_id")
    def rotate_key_command(account_id: str) -> None:
        """Issue a new key for ACCOUNT_ID, print {"account_id", "api_key", "revoked"} as JSON
        (key shown once); every old key of the account stops working at once."""
        try:
            st = state()
            result = rotate_key(st.redis, account_id, st.namespace.global_keys)
        except LookupError as exc:
            raise click.BadParameter(str(exc.args[0]), param_hint="ACCOUNT_ID") from None
        click.echo(json.dumps(result))

    @app.cli.command("revoke-key")
    @click.argument("key")
    def revoke_key_command(key: str) -> None:
        """Make KEY stop working at once (its open WebSockets are closed); print
        {"account_id", "revoked": true} as JSON, or fail if no account had it."""
        if not valid_api_key(key):
            raise click.BadParameter("not an API key", param_hint="KEY")
        st = state()
        account_id = revoke_key(st.redis, key, st.namespace.global_keys)
        if account_id is None:
            raise click.ClickException("no account has this API key")
        click.echo(json.dumps({"account_id": account_id, "revoked": True}))
