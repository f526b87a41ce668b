"""The server key and the sealed secrets (web.binance.vault), registered Ed25519 public keys."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from web.binance.keys import ED25519, create_api_key, parse_permissions, vault_of
from web.binance.vault import Vault, VaultError, load_server_key, new_key_text


def test_the_server_key_file_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "sub" / "secret.key"
    env = {"FAIRBOOK_SECRET_KEY_FILE": str(path)}
    first = load_server_key(env)
    assert len(first) == 32 and path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_server_key(env) == first  # the second process reads the first one's key
    text = new_key_text()
    assert load_server_key({"FAIRBOOK_SECRET_KEY": text, **env}) != first  # env wins
    with pytest.raises(SystemExit):
        load_server_key({"FAIRBOOK_SECRET_KEY": "not-a-key"})


def test_a_sealed_secret_opens_only_for_its_key_and_server_key():
    vault = Vault(b"a" * 32)
    sealed = vault.seal(b"s3cret", "hash-1")
    assert b"s3cret" not in sealed.encode() and vault.open(sealed, "hash-1") == b"s3cret"
    with pytest.raises(VaultError):
        Vault(b"a" * 32).open(sealed, "hash-2")  # moved onto another key's record
    with pytest.raises(VaultError):
        Vault(b"b" * 32).open(sealed, "hash-1")  # another server key
    with pytest.raises(VaultError):
        Vault(b"a" * 32).open(sealed[:-4] + "AAAA", "hash-1")  # damaged


def test_permissions_parse():
    assert parse_permissions("read, trade,read") == ("read", "trade")
    for bad in ("", "read,fly", ","):
        with pytest.raises(ValueError):
            parse_permissions(bad)


def test_a_registered_public_key_signs_and_a_moved_secret_is_refused(bn_app, bn_client,
                                                                    make_key):  # fmt: skip
    state = bn_app.extensions["fairbook"]
    private = Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    holder = make_key()  # an account to register the key on
    with bn_app.app_context():
        issued = create_api_key(state.redis, vault_of(bn_app), holder.account_id,
                                state.namespace.global_keys, kind=ED25519,
                                public_key=pem.decode())  # fmt: skip
    assert "private_key" not in issued and "secret" not in issued
    issued["private_key"] = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()  # fmt: skip
    signer = type(holder)(issued)  # the fixtures' Signer, with the registered key
    assert bn_client.get("/api/v3/account?" + signer.query(),
                         headers=signer.headers).status_code == 200  # fmt: skip
    # one key's sealed secret copied onto another key's record does not open there
    a, b = make_key(), make_key()
    ha, hb = (hashlib.sha256(k.api_key.encode()).hexdigest() for k in (a, b))
    state.redis.hset(f"fb:api_key:{hb}", "secret", state.redis.hget(f"fb:api_key:{ha}", "secret"))
    bn_app.extensions["fairbook_vault"]._cache.clear()
    resp = bn_client.get("/api/v3/account?" + a.query(), headers=b.headers)
    assert resp.status_code == 401 and resp.get_json()["code"] == -2015
