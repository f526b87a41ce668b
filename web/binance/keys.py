"""Signed API keys (Binance's HMAC-SHA256 and Ed25519 kinds) in the one key store.

Why one store: the native keys' account key set ``<ns>:account_keys:<id>`` holds every live key
hash of an account, native or signed, so ``rotate-key`` revokes them all and ``revoke-key``
takes either kind. A signed key has its own hash ``<ns>:api_key:<sha256(key)>`` (account, kind,
permissions, created, and the sealed HMAC secret or the Ed25519 public key); it is NOT in
``<ns>:accounts``, so a signed key alone (sent in clear in every request's header) never opens
the native API, which takes a key without a signature.

Redis never holds a usable secret: HMAC secrets are sealed by :mod:`web.binance.vault`; for
Ed25519 only the public key is stored.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

import click
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import Flask

from protocol.keys import Keys
from web.accounts import hash_key
from web.binance.vault import SECRET_KEY_ENV, SECRET_KEY_FILE_ENV, Vault, load_server_key

HMAC = "hmac"
ED25519 = "ed25519"
KINDS = (HMAC, ED25519)
#: read: account, orders and trades (Binance USER_DATA); trade: place and cancel (TRADE);
#: withdraw: reserved for the withdrawal routes
PERMISSIONS = ("read", "trade", "withdraw")
DEFAULT_PERMISSIONS = ("read", "trade")
_ALNUM = string.ascii_letters + string.digits
KEY_LENGTH = 64  # Binance's keys and secrets are 64 letters and digits


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One signed key as the signature check needs it."""

    key_hash: str
    account: str
    kind: str
    permissions: frozenset[str]
    #: the HMAC secret (opened) or the raw 32-byte Ed25519 public key
    material: bytes


def _random_text(length: int = KEY_LENGTH) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def parse_permissions(text: str) -> tuple[str, ...]:
    """``"read,trade"`` -> ("read", "trade"); ValueError for anything else."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in names if p not in PERMISSIONS]
    if unknown or not names:
        raise ValueError(f"permissions are a comma list of {', '.join(PERMISSIONS)}")
    return names


def public_key_bytes(pem_or_b64: str) -> bytes:
    """An Ed25519 public key given as PEM or as base64 of its 32 raw bytes."""
    text = pem_or_b64.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return raw


def create_api_key(
    client: redis.Redis, vault: Vault, account_id: str, keys: Keys | None = None,
    kind: str = HMAC, permissions: tuple[str, ...] = DEFAULT_PERMISSIONS,
    public_key: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Issue a signed key for an existing account; returns what the owner must keep:
    ``{"account_id", "api_key", "kind", "permissions"}`` plus ``secret`` (HMAC) or
    ``private_key`` (a PEM, when the Ed25519 pair was made here). Shown once, stored sealed
    or not at all. The record and the account's key set are written in one MULTI."""
    keys = keys or Keys(0)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    account_id = account_id.strip()
    if not (account_id.isascii() and account_id.isdigit()) or not client.exists(
        keys.account(account_id)
    ):
        raise LookupError(f"no account {account_id[:32]!r}")
    api_key = _random_text()
    key_hash = hash_key(api_key)
    out: dict[str, Any] = {"account_id": account_id, "api_key": api_key, "kind": kind,
                           "permissions": ",".join(permissions)}  # fmt: skip
    fields = {"account": account_id, "kind": kind, "permissions": ",".join(permissions),
              "created": str(int(time.time() * 1000))}  # fmt: skip
    if kind == HMAC:
        secret = _random_text()
        fields["secret"] = vault.seal(secret.encode("ascii"), key_hash)
        out["secret"] = secret
    else:
        if public_key is None:
            private = Ed25519PrivateKey.generate()
            out["private_key"] = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii")  # fmt: skip
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            raw = public_key_bytes(public_key)
        fields["public_key"] = base64.b64encode(raw).decode("ascii")
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.api_key(key_hash), mapping=fields)
    pipe.sadd(keys.account_keys(account_id), key_hash)
    pipe.execute()
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def record_fields(reply: Any) -> dict[str, str]:
    """An HGETALL reply as a dict: RESP3 gives a map, RESP2 (a raw connection) a flat list."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = list(reply or [])
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def parse_record(key_hash: str, fields: dict[str, str], vault: Vault) -> ApiKey | None:
    """The key of a stored record, or None when the record is absent or unusable (a sealed
    secret that does not open counts as no key: the request fails -2015, never 500)."""
    account, kind = fields.get("account"), fields.get("kind")
    if not account or kind not in KINDS:
        return None
    permissions = frozenset(p for p in fields.get("permissions", "").split(",") if p)
    try:
        if kind == HMAC:
            material = vault.open(fields.get("secret", ""), key_hash)
        else:
            material = base64.b64decode(fields.get("public_key", ""), validate=True)
    except Exception:  # noqa: BLE001 - VaultError, bad base64: an unusable record
        return None
    return ApiKey(key_hash, account, kind, permissions, material)


def list_api_keys(client: redis.Redis, account_id: str, keys: Keys | None = None
                  ) -> list[dict[str, str]]:  # fmt: skip
    """The account's signed keys as ``{key_hash, kind, permissions, created}`` (the keys
    themselves are not stored: the hash identifies one)."""
    keys = keys or Keys(0)
    out = []
    for key_hash in sorted(_text(h) for h in client.smembers(keys.account_keys(account_id))):
        fields = record_fields(client.hgetall(keys.api_key(key_hash)))
        if fields:
            out.append({"key_hash": key_hash, "kind": fields.get("kind", ""),
                        "permissions": fields.get("permissions", ""),
                        "created": fields.get("created", "")})  # fmt: skip
    return out


def vault_of(app: Flask) -> Vault:
    """The app's vault, made with the server key at first use (the CLI and the web alike):
    ``FAIRBOOK_SECRET_KEY`` / ``FAIRBOOK_SECRET_KEY_FILE`` from the app config, else the
    environment (``FAIRBOOK_SECRET_KEY_BYTES``: raw bytes, for tests)."""
    found = app.extensions.get("fairbook_vault")
    if found is None:
        key = app.config.get("FAIRBOOK_SECRET_KEY_BYTES")
        if key is None:
            env = dict(os.environ)
            env.update({name: str(app.config[name]) for name in (SECRET_KEY_ENV,
                        SECRET_KEY_FILE_ENV) if app.config.get(name)})  # fmt: skip
            key = load_server_key(env)
        found = app.extensions["fairbook_vault"] = Vault(key)
    return found


def init_app(app: Flask) -> None:
    """``flask --app app create-api-key ACCOUNT_ID [--ed25519] [--public-key FILE]
    [--permissions read,trade]`` and ``list-api-keys ACCOUNT_ID``; revocation is the native
    ``revoke-key KEY`` / ``rotate-key ACCOUNT_ID``."""
    from web.app import state

    if app.config.get(SECRET_KEY_ENV) or os.environ.get(SECRET_KEY_ENV):
        vault_of(app)  # a malformed key stops start-up here, not in a request

    @app.cli.command("create-api-key")
    @click.argument("account_id")
    @click.option("--ed25519", "ed25519", is_flag=True, help="an Ed25519 key instead of HMAC")
    @click.option("--public-key", "public_key_file", type=click.File("r"), default=None,
                  help="Ed25519: register this public key (PEM) instead of making a pair")
    @click.option("--permissions", default=",".join(DEFAULT_PERMISSIONS), show_default=True,
                  help="comma list of read, trade, withdraw")
    def create_api_key_command(account_id: str, ed25519: bool, public_key_file: Any,
                               permissions: str) -> None:  # fmt: skip
        """Issue a signed API key for ACCOUNT_ID; print it and, once, its secret (HMAC) or
        the private key of a new Ed25519 pair, as JSON."""
        try:
            perms = parse_permissions(permissions)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--permissions") from None
        if public_key_file is not None and not ed25519:
            raise click.BadParameter("only with --ed25519", param_hint="--public-key")
        st = state()
        try:
            result = create_api_key(
                st.redis, vault_of(app), account_id, st.namespace.global_keys,
                kind=ED25519 if ed25519 else HMAC, permissions=perms,
                public_key=public_key_file.read() if public_key_file is not None else None,
            )  # fmt: skip
        except LookupError as exc:
            raise click.BadParameter(str(exc.args[0]), param_hint="ACCOUNT_ID") from None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--public-key") from None
        click.echo(json.dumps(result))

    @app.cli.command("list-api-keys")
    @click.argument("account_id")
    def list_api_keys_command(account_id: str) -> None:
        """Print the signed keys of ACCOUNT_ID (hash, kind, permissions, created) as JSON."""
        st = state()
        click.echo(json.dumps(list_api_keys(st.redis, account_id, st.namespace.global_keys)))
