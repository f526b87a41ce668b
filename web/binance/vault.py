"""The server key that seals HMAC secrets at rest (AES-256-GCM, ``cryptography``).

Why: an HMAC secret must be readable by the web to check signatures, yet Redis must never hold
one usable in plain text (a dump or a replica would leak every key). The key that seals them is
not in Redis: ``FAIRBOOK_SECRET_KEY`` (base64 of 32 bytes) or the file
``FAIRBOOK_SECRET_KEY_FILE`` (default ``var/secret.key``), created 0600 on first use. Each
sealed secret is bound to its API key's hash (GCM associated data), so one key's sealed secret
copied onto another key's record does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_KEY_ENV = "FAIRBOOK_SECRET_KEY"
SECRET_KEY_FILE_ENV = "FAIRBOOK_SECRET_KEY_FILE"
DEFAULT_KEY_FILE = Path(__file__).resolve().parents[2] / "var" / "secret.key"
_VERSION = "v1:"
_NONCE = 12


class VaultError(Exception):
    """A sealed secret that does not open (wrong server key, damaged or moved record)."""


def _decode_key(text: str, where: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise SystemExit(f"fairbook: {where} must be the base64 of 32 bytes")
    return raw


def new_key_text() -> str:
    """A fresh server key as ``FAIRBOOK_SECRET_KEY`` takes it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def load_server_key(env: dict[str, str] | None = None) -> bytes:
    """The server key: the environment variable, else the file (created on first use)."""
    env = dict(os.environ) if env is None else env
    text = env.get(SECRET_KEY_ENV)
    if text:
        return _decode_key(text, SECRET_KEY_ENV)
    path = Path(env.get(SECRET_KEY_FILE_ENV) or DEFAULT_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting at once, one writes and both read its key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(new_key_text() + "\n")
    return _decode_key(path.read_text(), str(path))


class Vault:
    """Seal and open secrets with the server key; opened secrets are cached in memory (the
    record is still read on every request, so a revoked key fails at once)."""

    def __init__(self, key: bytes, cache_size: int = 10_000) -> None:
        self._aead = AESGCM(key)
        self._cache: dict[str, bytes] = {}
        self._cache_size = cache_size

    @staticmethod
    def _aad(key_hash: str) -> bytes:
        return f"fairbook-api-secret:{key_hash}".encode("ascii")

    def seal(self, secret: bytes, key_hash: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, secret, self._aad(key_hash))
        return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, key_hash: str) -> bytes:
        cache_key = f"{key_hash}:{sealed}"
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        if not sealed.startswith(_VERSION):
            raise VaultError("unknown sealed-secret format")
        try:
            raw = base64.b64decode(sealed[len(_VERSION):], validate=True)
            secret = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(key_hash))
        except (ValueError, binascii.Error, InvalidTag):
            raise VaultError("the sealed secret does not open with this server key") from None
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[cache_key] = secret
        return secret
