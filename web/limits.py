"""Rate limits (counted in Redis with the ``limits`` library) and WebSocket connection caps.

Why Redis: every web process of a deployment must share one count per API key and per address,
or N processes would allow N times the limit. The counters are those of ``limits`` (the library
under flask-limiter): fixed windows, its ``incr_expire`` Lua script (``INCRBY`` + ``EXPIRE``), keys
``<ns>:rate_limits:LIMITER/<who>/<scope>/<amount>/<multiples>/<unit>``, on the app's own Redis
(so a password or TLS in ``REDIS_URL`` applies to them too).

Why not flask-limiter's request hook (the first version used it): it resolves the limits of each
request anew (blueprints, exemptions, scopes) for ~200-280 us of CPU and sends each counter
through redis-py's pool for ~120-135 us more; measured interleaved, ``bench e2e`` ran at 0.63-0.79x
of limits off with it. Here the counters of a private request travel in the round trip of its
API-key lookup (one pipelined write of HGET + one EVAL per limit): 0.97x and 1.09x in two runs of
4 interleaved pairs, the web's CPU per request +8-9 %
(``python -m bench e2e --ab-env FAIRBOOK_RATE_LIMITS=off --pairs 4``).

* ``FAIRBOOK_RATE_LIMIT_IP`` counts every request of one client address (``request.remote_addr``:
  behind a reverse proxy, wrap the app in werkzeug's ``ProxyFix``; ``X-Forwarded-For`` is not
  trusted by default, since any client can send one).
* ``FAIRBOOK_RATE_LIMIT_KEY`` counts the private routes' requests per API key, by ``sha256(key)``
  (the raw key never reaches Redis); requests without a well-formed key are 401 anyway and only
  the address limit counts them.
* Beyond a limit: 429 ``rate_limited`` with ``Retry-After`` (seconds until the window resets).
* Redis unreachable for the counters: this process counts in memory at the same rates for a few
  seconds, then tries Redis again (fail open to per-process limits, never fail closed: the order
  path reports the outage itself, with a 503).

WebSocket caps (``FAIRBOOK_WS_MAX_PER_IP``, ``FAIRBOOK_WS_MAX_PER_KEY``) count the open sockets
of this web process (a crash takes its counts with it, so nothing can leak): past the address
cap the upgrade is refused with a JSON 429 ``too_many_connections``; past the key cap the ``auth``
op closes the socket 1008.

``FAIRBOOK_RATE_LIMITS=off`` disables the rate limits and the socket caps (not the journal's
backlog bound, which protects the matching worker).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from typing import Any

import redis
from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from protocol.config import redis_url

log = logging.getLogger("fairbook.limits")

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
#: blueprints whose routes count the request themselves, with their key, in the key lookup
KEYED_BLUEPRINTS = frozenset({"private", "binance_signed"})


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
        if any(item.amount < 1 for item in parse_many(value)):
            raise ValueError("a limit of 0 refuses every request")
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


#: (limit, who, scope): one counter a request is counted against
Check = tuple[RateLimitItem, str, str]
#: seconds the counters stay in memory after Redis failed them
FALLBACK_S = 5.0


class RateLimiter:
    """Counts requests against fixed-window limits in Redis, in memory while Redis is down."""

    def __init__(
        self, client: redis.Redis, connections: Any, prefix: str, uri: str,
        key_limits: list[RateLimitItem], ip_limits: list[RateLimitItem],
    ) -> None:  # fmt: skip
        self.connections = connections
        self.prefix = prefix
        self.key_limits = key_limits
        self.ip_limits = ip_limits
        # the library's storage on the app's pool (tools and tests read the counters with it)
        self.storage = RedisStorage(uri, connection_pool=client.connection_pool, key_prefix=prefix)
        self.in_redis = FixedWindowRateLimiter(self.storage)
        self.in_memory: FixedWindowRateLimiter | None = None
        self.redis_down_until = 0.0

    def _strategy(self) -> FixedWindowRateLimiter:
        if time.monotonic() < self.redis_down_until:
            if self.in_memory is None:
                self.in_memory = FixedWindowRateLimiter(MemoryStorage())
            return self.in_memory
        return self.in_redis

    def hit(self, checks: list[Check], first: tuple[Any, ...] | None = None
            ) -> tuple[Any, tuple[Check, int] | None]:  # fmt: skip
        """Count one request against every check, in one round trip with the command ``first``
        (the key lookup of a private request). Returns ``first``'s reply and None, or the first
        limit exceeded with the whole seconds until its window resets (``Retry-After``)."""
        strategy = self._strategy()
        if strategy is not self.in_redis:
            reply = self.connections.call(*first) if first else None
            for check in checks:
                if not strategy.hit(*check):
                    reset_at = strategy.get_window_stats(*check).reset_time
                    return reply, (check, _seconds(check[0], reset_at - time.time()))
            return reply, None
        names = [f"{self.prefix}:{item.key_for(who, scope)}" for item, who, scope in checks]
        script = RedisStorage.SCRIPT_INCR_EXPIRE
        commands = [("EVAL", script, 1, name, check[0].get_expiry(), 1)
                    for name, check in zip(names, checks, strict=True)]  # fmt: skip
        if first:
            commands.insert(0, first)
        try:
            replies = self.connections.pipeline(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            counts = replies[1:] if first else replies
            for name, check, count in zip(names, checks, counts, strict=True):
                if int(count) > check[0].amount:
                    left = self.connections.call("PTTL", name) / 1000
                    return replies[0] if first else None, (check, _seconds(check[0], left))
        except (redis.RedisError, OSError) as exc:
            # counted in memory from now on; ``first`` is sent again (a lookup has no effect)
            log.warning("rate limits: Redis failed (%s); counting in memory for %.0f s",
                        type(exc).__name__, FALLBACK_S)  # fmt: skip
            self.redis_down_until = time.monotonic() + FALLBACK_S
            return self.hit(checks, first)
        return replies[0] if first else None, None


class RateLimited(Exception):
    """A limit was exceeded: answered 429 ``rate_limited`` with ``Retry-After``."""

    def __init__(self, check: Check, retry_after: int) -> None:
        item, _, scope = check
        per = "per API key" if scope == KEY_SCOPE else "per client address"
        super().__init__(f"rate limit exceeded: at most {item} {per}")
        self.message = str(self)
        self.retry_after = retry_after


def count_request(key_hash: str | None = None, first: tuple[Any, ...] | None = None) -> Any:
    """Count the current request against its address (and against ``key_hash``, the sha256 of
    its API key) in one round trip with ``first``; ``first``'s reply, or :class:`RateLimited`.
    With limits off, ``first`` alone is sent."""
    limiter = current_app.extensions.get("fairbook_rate_limiter")
    if limiter is None:
        return current_app.extensions["fairbook"].connections.call(*first) if first else None
    ip = request.remote_addr or "-"
    checks = [(item, ip, IP_SCOPE) for item in limiter.ip_limits]
    if key_hash is not None:
        checks += [(item, key_hash, KEY_SCOPE) for item in limiter.key_limits]
    reply, breached = limiter.hit(checks, first)
    if breached is not None:
        raise RateLimited(*breached)
    return reply


def _seconds(item: RateLimitItem, left_s: float) -> int:
    """``Retry-After``: whole seconds, at least 1, at most the window (a key without a TTL)."""
    window = item.get_expiry()
    return window if left_s < 0 else max(1, min(window, math.ceil(left_s)))


def init_app(app: Flask, client: Any, connections: Any, rate_limits_prefix: str) -> None:
    """The rate limits of ``app`` on ``client``'s Redis (none when limits are off) and its socket
    caps. Call before the routes' own ``before_request`` hooks are registered, so a request
    refused by a later check still counts."""
    from web.app import error_response

    config = app.config
    if not limits_enabled(config):
        app.extensions["fairbook_socket_caps"] = SocketCaps()
        return
    app.extensions["fairbook_socket_caps"] = SocketCaps(
        _count_setting(config, "FAIRBOOK_WS_MAX_PER_IP"),
        _count_setting(config, "FAIRBOOK_WS_MAX_PER_KEY"),
    )
    app.extensions["fairbook_rate_limiter"] = RateLimiter(
        client, connections, rate_limits_prefix, redis_url(config.get("REDIS_URL")),
        key_limits=parse_many(_limit_setting(config, "FAIRBOOK_RATE_LIMIT_KEY")),
        ip_limits=parse_many(_limit_setting(config, "FAIRBOOK_RATE_LIMIT_IP")),
    )  # fmt: skip

    @app.before_request
    def _count_request() -> None:
        """Every request counts against its address; a private route's (``require_account``)
        is counted with its key, in the round trip of the key lookup."""
        if request.blueprint not in KEYED_BLUEPRINTS:
            count_request()

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited):
        response = error_response(429, "rate_limited", exc.message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
