"""Binance's signed requests, checked exactly as Binance checks them, on the bytes as sent.

* The key comes in ``X-MBX-APIKEY`` (-2014 if absent or malformed, -2015 if unknown, revoked,
  or lacking the route's permission).
* Parameters come from the query string and, for a form body, from the body (the query wins a
  name sent in both); a name twice in one of them is -1101.
* ``timestamp`` (ms, or µs) must be less than 1 s ahead of the server and at most
  ``recvWindow`` (default 5000, at most 60000) behind it: else -1021.
* ``signature`` = HMAC-SHA256 hex (case-insensitive) or base64 Ed25519 over the raw query
  string followed by the raw body, each without its ``signature=`` part: the bytes as the client
  sent them, never a re-encoding (so reordering or re-encoding a parameter breaks it). Compared
  in constant time; anything else is -1022.

One Redis round trip: the key's record, with the request counted against the rate limits of
its address and key (``web.limits``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import current_app, g, request

from web.accounts import hash_key, valid_api_key
from web.binance import errors
from web.binance.errors import BinanceError
from web.binance.keys import HMAC, ApiKey, parse_record, record_fields, vault_of
from web.limits import count_request

API_KEY_HEADER = "X-MBX-APIKEY"
DEFAULT_RECV_WINDOW = 5000.0
MAX_RECV_WINDOW = 60000.0
#: a timestamp this far ahead of the server is refused (Binance: 1 second)
MAX_AHEAD_MS = 1000.0
FORM = "application/x-www-form-urlencoded"
_TIMESTAMP = re.compile(r"[0-9]{1,20}")
_RECV_WINDOW = re.compile(r"[0-9]{1,5}(?:\.[0-9]{1,3})?")


@dataclass(frozen=True, slots=True)
class Signed:
    """A verified request: whose it is and its parameters."""

    key: ApiKey
    params: dict[str, str]

    @property
    def account(self) -> str:
        return self.key.account


def _split(raw: bytes) -> list[bytes]:
    return [part for part in raw.split(b"&") if part]


def _decode(part: bytes) -> tuple[str, str]:
    name, _, value = part.partition(b"=")
    try:
        return (unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8"),
                unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8"))  # fmt: skip
    except UnicodeDecodeError:
        raise BinanceError(errors.ILLEGAL_CHARS, errors.MSG_ILLEGAL) from None


def parse(raw: bytes) -> dict[str, str]:
    """One source's parameters (query string or form body); a repeated name is -1101."""
    out: dict[str, str] = {}
    for part in _split(raw):
        name, value = _decode(part)
        if name in out:
            raise BinanceError(errors.TOO_MANY_PARAMETERS, errors.MSG_DUPLICATE)
        out[name] = value
    return out


def _without_signature(raw: bytes) -> bytes:
    return b"&".join(p for p in raw.split(b"&") if not p.startswith(b"signature="))


def raw_body() -> bytes:
    """The body as sent (64 KiB at most, the app's limit)."""
    return request.get_data(cache=True)


def request_params(signed_body: bool = True) -> tuple[dict[str, str], bytes, bytes]:
    """(parameters, raw query, raw body): query and form body merged, the query winning."""
    query = request.query_string
    body = raw_body() if signed_body else b""
    if not (query.isascii() and body.isascii()):
        raise BinanceError(errors.ILLEGAL_CHARS, errors.MSG_ILLEGAL)
    params = parse(body) if body and request.mimetype in (FORM, "") else {}
    params.update(parse(query))
    return params, query, body


def check_time(params: dict[str, str], now_ms: float) -> None:
    """``timestamp`` within ``recvWindow`` of ``now_ms`` and not 1 s ahead of it (else -1021;
    -1102 without one, -1130 / -1131 for a bad ``recvWindow``)."""
    stamp = params.get("timestamp")
    if stamp is None or not _TIMESTAMP.fullmatch(stamp):
        raise errors.mandatory("timestamp")
    ts = float(int(stamp))
    if ts >= 1e14:  # microseconds (Binance takes either)
        ts /= 1000.0
    window = DEFAULT_RECV_WINDOW
    text = params.get("recvWindow")
    if text is not None:
        if not _RECV_WINDOW.fullmatch(text) or float(text) <= 0:
            raise errors.invalid_parameter("recvWindow")
        window = float(text)
        if window > MAX_RECV_WINDOW:
            raise BinanceError(errors.BAD_RECV_WINDOW, errors.MSG_RECV_WINDOW)
    if ts >= now_ms + MAX_AHEAD_MS:
        raise BinanceError(errors.INVALID_TIMESTAMP, errors.MSG_TIMESTAMP_AHEAD)
    if now_ms - ts > window:
        raise BinanceError(errors.INVALID_TIMESTAMP, errors.MSG_TIMESTAMP_OUTSIDE)


def signature_valid(key: ApiKey, payload: bytes, signature: str) -> bool:
    """HMAC-SHA256 hex (either case) or base64 Ed25519 of ``payload``; constant time."""
    if key.kind == HMAC:
        expected = hmac.new(key.material, payload, hashlib.sha256).hexdigest()
        given = signature.lower().encode("ascii", "replace")
        return hmac.compare_digest(expected.encode("ascii"), given)
    try:
        raw = base64.b64decode(signature.replace(" ", "+"), validate=True)
        Ed25519PublicKey.from_public_bytes(key.material).verify(raw, payload)
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return True


def lookup_key(api_key: str) -> ApiKey | None:
    """The key's record, the request counted against its address and key limits."""
    st = current_app.extensions["fairbook"]
    key_hash = hash_key(api_key)
    reply = count_request(key_hash, ("HGETALL", st.namespace.global_keys.api_key(key_hash)))
    fields = record_fields(reply)
    return parse_record(key_hash, fields, vault_of(current_app)) if fields else None


def identify() -> ApiKey:
    """A MARKET_DATA request (Binance: the key, no signature): a live key, any permission."""
    api_key = request.headers.get(API_KEY_HEADER)
    if not valid_api_key(api_key):
        count_request()  # the address only: there is no key to count
        raise BinanceError(errors.BAD_API_KEY_FMT, errors.MSG_KEY_FORMAT, 401)
    assert api_key is not None
    key = lookup_key(api_key)
    if key is None:
        raise BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)
    return key


def verify(permission: str) -> Signed:
    """Check the current request as Binance does; the account is also put in ``g.account``."""
    key = identify()
    params, query, body = request_params()  # a form body counts for every method
    check_time(params, time.time() * 1000.0)
    signature = params.pop("signature", None)
    if not signature:
        raise errors.mandatory("signature")
    payload = _without_signature(query) + _without_signature(body)
    if not signature_valid(key, payload, signature):
        raise BinanceError(errors.INVALID_SIGNATURE, errors.MSG_SIGNATURE)
    if permission not in key.permissions:
        raise BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)
    params.pop("timestamp", None)
    params.pop("recvWindow", None)
    g.account = key.account
    return Signed(key, params)
