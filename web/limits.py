"""Rate limits (flask-limiter, counted in Redis) and WebSocket connection caps.

Why Redis: every web process of a deployment must share one count per API key and per address,
or N processes would allow N times the limit. The counters are flask-limiter's own (fixed
windows, one Lua ``INCRBY``+``EXPIRE`` per limit and request) under ``<ns>:rate_limits:`` on the
app's own Redis connection pool (so a password or TLS in ``REDIS_URL`` applies to them too).

* ``FAIRBOOK_RATE_LIMIT_IP`` counts every request of one client address (``request.remote_addr``:
  behind a reverse proxy, wrap the app in werkzeug's ``ProxyFix``; ``X-Forwarded-For`` is not
  trusted by default, since any client can send one).
* ``FAIRBOOK_RATE_LIMIT_KEY`` counts the private routes' requests per API key, by ``sha256(key)``
  (the raw key never reaches Redis); requests without a well-formed key are 401 anyway and only
  the address limit counts them.
* Beyond a limit: 429 ``rate_limited`` with ``Retry-After`` (seconds until the window resets).
* Redis unreachable for the counters: flask-limiter counts in this process's memory at the same
  rates until Redis answers again (fail open to per-process limits, never fail closed: the
  order path reports the outage itself, with a 503).

WebSocket caps (``FAIRBOOK_WS_MAX_PER_IP``, ``FAIRBOOK_WS_MAX_PER_KEY``) count the open sockets
of this web process (a crash takes its counts with it, so nothing can leak): past the address
cap the upgrade is refused with a JSON 429 ``too_many_connections``; past the key cap the ``auth``
op is answered with that error and the socket is closed 1008.

``FAIRBOOK_RATE_LIMITS=off`` disables the rate limits and the socket caps (not the journal's
backlog bound, which protects the matching worker).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from typing import Any

from flask import Flask, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse_many

from protocol.config import redis_url

#: setting -> (default, meaning); every default is far above what a trading client sends
#: (Binance allows 50 orders / 10 s per account and 6,000 request weight / minute per address)
DEFAULTS: dict[str, str] = {
    "FAIRBOOK_RATE_LIMIT_KEY": "300 per second",
    "FAIRBOOK_RATE_LIMIT_IP": "3000 per second",
    "FAIRBOOK_WS_MAX_PER_IP": "200",
    "FAIRBOOK_WS_MAX_PER_KEY": "20",
}
KEY_SCOPE = "api_key"  # the per-key limit's bucket, shared by every private route
IP_SCOPE = "address"  # the per-address limit's bucket, shared by every route


def config_text(config: Any, name: str, default: str) -> str:
    """A setting from the app config, else the environment, else ``default``."""
    return str(config.get(name, os.environ.get(name, default))).strip()


def limits_enabled(config: Any) -> bool:
    """``FAIRBOOK_RATE_LIMITS=off`` (or 0/false/no) disables rate limits and socket caps."""
    return config_text(config, "FAIRBOOK_RATE_LIMITS", "on").lower() not in (
        "off", "0", "false", "no"
    )  # fmt: skip


def _limit_setting(config: Any, name: str) -> str:
    value = config_text(config, name, DEFAULTS[name])
    try:
        parse_many(value)
    except ValueError:
        raise SystemExit(
            f"fairbook: {name} must be a rate limit like '300 per second' or '50/10 seconds', "
            f"got {value[:60]!r}"
        ) from None
    return value


def _count_setting(config: Any, name: str) -> int:
    value = config_text(config, name, DEFAULTS[name])
    if not (value.isascii() and value.isdigit()):
        raise SystemExit(f"fairbook: {name} must be a whole number >= 0 (0 = no cap)")
    return int(value)


class SocketCaps:
    """Open WebSockets per client address and per API key in this process (0 = no cap)."""

    def __init__(self, per_ip: int = 0, per_key: int = 0) -> None:
        self.per_ip = per_ip
        self.per_key = per_key
        self.ips: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _acquire(self, counts: Counter[str], name: str, cap: int) -> bool:
        with self._lock:
            if cap and counts[name] >= cap:
                return False
            counts[name] += 1
            return True

    def _release(self, counts: Counter[str], name: str) -> None:
        with self._lock:
            counts[name] -= 1
            if counts[name] <= 0:
                del counts[name]

    def acquire_ip(self, ip: str) -> bool:
        return self._acquire(self.ips, ip, self.per_ip)

    def release_ip(self, ip: str) -> None:
        self._release(self.ips, ip)

    def acquire_key(self, key: str) -> bool:
        return self._acquire(self.keys, key, self.per_key)

    def release_key(self, key: str) -> None:
        self._release(self.keys, key)


def socket_caps(app: Flask) -> SocketCaps:
    return app.extensions["fairbook_socket_caps"]


def _key_identity() -> str:
    from web.accounts import API_KEY_HEADER, hash_key

    return hash_key(request.headers.get(API_KEY_HEADER, ""))


def _no_valid_key() -> bool:
    """A request without a well-formed key is refused 401 before any work: no key count."""
    from web.accounts import API_KEY_HEADER, valid_api_key

    return not valid_api_key(request.headers.get(API_KEY_HEADER))


def retry_after(limiter: Limiter, exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached window resets (its length if Redis cannot say)."""
    window = exc.limit.limit.get_expiry()
    current = limiter.current_limit
    try:
        reset_at = current.reset_at if current is not None else time.time() + window
    except Exception:  # noqa: BLE001 - the counters' Redis went away since the hit
        reset_at = time.time() + window
    return max(1, min(window, math.ceil(reset_at - time.time())))


def init_app(app: Flask, client: Any, rate_limits_prefix: str) -> Limiter | None:
    """The limiter of ``app`` on ``client``'s Redis (None when limits are off), the socket caps,
    and the 429 handler. Call before the routes' own ``before_request`` hooks are registered, so
    a request refused by a later check still counts."""
    from web import api
    from web.app import error_response

    config = app.config
    if not limits_enabled(config):
        app.extensions["fairbook_socket_caps"] = SocketCaps()
        return None
    key_limit = _limit_setting(config, "FAIRBOOK_RATE_LIMIT_KEY")
    ip_limit = _limit_setting(config, "FAIRBOOK_RATE_LIMIT_IP")
    app.extensions["fairbook_socket_caps"] = SocketCaps(
        _count_setting(config, "FAIRBOOK_WS_MAX_PER_IP"),
        _count_setting(config, "FAIRBOOK_WS_MAX_PER_KEY"),
    )
    limiter = Limiter(
        get_remote_address,
        app=app,
        application_limits=[ApplicationLimit(ip_limit, scope=IP_SCOPE)],
        storage_uri=redis_url(config.get("REDIS_URL")),
        storage_options={"connection_pool": client.connection_pool,
                         "key_prefix": rate_limits_prefix},  # fmt: skip
        strategy="fixed-window",
        headers_enabled=False,  # X-RateLimit-* would cost two more Redis reads per request
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        # 404s and 405s count against the address too (flask-limiter skips endpoint-less ones)
        request_identifier=lambda: request.endpoint or "unrouted",
    )
    limiter.shared_limit(key_limit, scope=KEY_SCOPE, key_func=_key_identity,
                         exempt_when=_no_valid_key)(api.private)  # fmt: skip

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        per = "per API key" if exc.limit.scope == KEY_SCOPE else "per client address"
        response = error_response(
            429, "rate_limited", f"rate limit exceeded: at most {exc.limit.limit} {per}"
        )
        response.headers["Retry-After"] = str(retry_after(limiter, exc))
        return response

    return limiter
