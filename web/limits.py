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

Binance's model on ``/api/v3`` (:class:`BinanceLimits`), on these same counters, so that
clients tuned for Binance's limits behave here as there: request weight per minute and raw
requests per 5 minutes per address (counted, with a read of the address's ban, in the round
trip above), orders per 10 s and per day per account (after the signature is verified), 429
-1003 / -1015 with ``Retry-After``, and a 418 ban, doubling per repeat, for an address that keeps
sending after its 429s. Each endpoint's weight is ``web.binance.weights``'.

WebSocket caps (``FAIRBOOK_WS_MAX_PER_IP``, ``FAIRBOOK_WS_MAX_PER_KEY``) count the open sockets
of this web process (a crash takes its counts with it, so nothing can leak): past the address
cap the upgrade is refused with a JSON 429 ``too_many_connections``; past the key cap the ``auth``
op closes the socket 1008.

``FAIRBOOK_RATE_LIMITS=off`` disables the rate limits (Binance's too) and the socket caps (not
the journal's backlog bound, which protects the matching worker).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Flask, current_app, g, jsonify, request
from limits import RateLimitItem, parse, parse_many
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
    # Binance's model for /api/v3 (its own production values; 0 = that limit off)
    "FAIRBOOK_BINANCE_WEIGHT_1M": "6000",
    "FAIRBOOK_BINANCE_RAW_5M": "61000",
    "FAIRBOOK_BINANCE_ORDERS_10S": "100",
    "FAIRBOOK_BINANCE_ORDERS_1D": "200000",
    "FAIRBOOK_BINANCE_BAN_AFTER": "10",
    "FAIRBOOK_BINANCE_BAN_S": "120",
    # Binance's market streams: connection attempts per address per 5 minutes (0 = no limit)
    "FAIRBOOK_BINANCE_WS_CONNECTS_5M": "300",
}
#: the bucket of Binance stream connection attempts (per address)
CONNECTS_SCOPE = "binance_ws_connects"
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
#: (limit, who, scope, cost): a counter and what the request adds to it (Binance's weights)
Weighed = tuple[RateLimitItem, str, str, int]
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
        self.binance: BinanceLimits | None = None
        #: Binance stream connection attempts per address (None: not limited)
        self.stream_connects: RateLimitItem | None = None

    def _strategy(self) -> FixedWindowRateLimiter:
        if time.monotonic() < self.redis_down_until:
            if self.in_memory is None:
                self.in_memory = FixedWindowRateLimiter(MemoryStorage())
            return self.in_memory
        return self.in_redis

    def count(self, checks: list[Weighed], first: tuple[Any, ...] | None = None,
              reads: list[tuple[Any, ...]] | None = None) -> tuple[Any, list[int], list[Any]]:
        """Add each check's cost to its counter, in one round trip with the command ``first``
        (the key lookup of a private request) and the commands ``reads`` (a ban's key).
        Returns ``first``'s reply, the counts after the request, and the replies of ``reads``
        (None each while Redis is down: nothing but counters is kept in memory)."""
        strategy = self._strategy()
        reads = reads or []
        if strategy is not self.in_redis:
            reply = self.connections.call(*first) if first else None
            storage = strategy.storage
            counts = [storage.incr(item.key_for(who, scope), item.get_expiry(), amount=cost)
                      for item, who, scope, cost in checks]  # fmt: skip
            return reply, counts, [None] * len(reads)
        script = RedisStorage.SCRIPT_INCR_EXPIRE
        commands: list[tuple[Any, ...]] = [
            ("EVAL", script, 1, self.name(check), check[0].get_expiry(), check[3])
            for check in checks
        ]
        lead = 1 if first else 0
        if first:
            commands.insert(0, first)
        commands += reads
        try:
            replies = self.connections.pipeline(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except (redis.RedisError, OSError) as exc:
            # counted in memory from now on; ``first`` is sent again (a lookup has no effect)
            log.warning("rate limits: Redis failed (%s); counting in memory for %.0f s",
                        type(exc).__name__, FALLBACK_S)  # fmt: skip
            self.redis_down_until = time.monotonic() + FALLBACK_S
            return self.count(checks, first, reads)
        counts = [int(c) for c in replies[lead : lead + len(checks)]]
        return replies[0] if first else None, counts, replies[lead + len(checks) :]

    def read(self, checks: list[Check]) -> list[int]:
        """The counts of ``checks`` without counting (0 for a window not started), one round
        trip."""
        strategy = self._strategy()
        if strategy is not self.in_redis:
            return [strategy.storage.get(c[0].key_for(c[1], c[2])) for c in checks]
        try:
            replies = self.connections.pipeline([("GET", self.name(c)) for c in checks])
        except (redis.RedisError, OSError):
            return [0] * len(checks)
        return [int(r) if isinstance(r, str | bytes) else 0 for r in replies]

    def name(self, check: Check | Weighed) -> str:
        """The Redis key of a check's counter (the ``limits`` library's name)."""
        return f"{self.prefix}:{check[0].key_for(check[1], check[2])}"

    def retry_after(self, check: Check | Weighed) -> int:
        """Whole seconds until the window of ``check``'s counter resets (one more round trip,
        taken only by a request that is refused)."""
        item, who, scope = check[0], check[1], check[2]
        strategy = self._strategy()
        if strategy is not self.in_redis:
            reset_at = strategy.get_window_stats(item, who, scope).reset_time
            return _seconds(item, reset_at - time.time())
        try:
            left = self.connections.call("PTTL", self.name(check)) / 1000
        except (redis.RedisError, OSError):
            left = -1.0
        return _seconds(item, left)

    def hit(self, checks: list[Check], first: tuple[Any, ...] | None = None
            ) -> tuple[Any, tuple[Check, int] | None]:  # fmt: skip
        """Count one request against every check, in one round trip with the command ``first``
        (the key lookup of a private request). Returns ``first``'s reply and None, or the first
        limit exceeded with the whole seconds until its window resets (``Retry-After``)."""
        reply, counts, _ = self.count([(*check, 1) for check in checks], first)
        for check, count in zip(checks, counts, strict=True):
            if count > check[0].amount:
                return reply, (check, self.retry_after(check))
        return reply, None


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
    An ``/api/v3`` request also adds its Binance weight and reads its address's ban in that
    round trip (:class:`BinanceLimited` beyond them). With limits off, ``first`` alone is sent."""
    limiter = current_app.extensions.get("fairbook_rate_limiter")
    if limiter is None:
        return current_app.extensions["fairbook"].connections.call(*first) if first else None
    ip = request.remote_addr or "-"
    checks = [(item, ip, IP_SCOPE) for item in limiter.ip_limits]
    if key_hash is not None:
        checks += [(item, key_hash, KEY_SCOPE) for item in limiter.key_limits]
    bn = limiter.binance
    if bn is None or not bn.applies():
        reply, breached = limiter.hit(checks, first)
        if breached is not None:
            raise RateLimited(*breached)
        return reply
    weighed = [(*check, 1) for check in checks] + bn.address_checks(ip)
    reply, counts, (banned,) = limiter.count(weighed, first, [("GET", bn.ban_key(ip))])
    if bn.weight is not None:  # the header, on a refusal too
        g.binance_used_weight = (bn.weight.letter, counts[len(checks)])
    bn.check_ban(banned)
    for check, count in zip(weighed[: len(checks)], counts, strict=False):
        if count > check[0].amount:
            raise RateLimited(check[:3], limiter.retry_after(check))
    bn.check_address(limiter, ip, weighed[len(checks) :], counts[len(checks) :])
    return reply


def count_stream_connection() -> int | None:
    """Count one Binance stream connection attempt of the request's address (Binance: 300
    per 5 minutes per IP); None, or the seconds until the window resets when beyond it."""
    limiter = current_app.extensions.get("fairbook_rate_limiter")
    item = limiter.stream_connects if limiter is not None else None
    if item is None:
        return None
    _, breached = limiter.hit([(item, request.remote_addr or "-", CONNECTS_SCOPE)])
    return None if breached is None else breached[1]


def count_order(account: str) -> None:
    """Count a new order against its account's ORDERS limits (:class:`BinanceLimited` -1015
    beyond one). Called once the signature is verified, a second round trip: the key travels in
    clear in every request, so counting before would let anyone who saw a key stop its account
    trading."""
    limiter = current_app.extensions.get("fairbook_rate_limiter")
    bn = limiter.binance if limiter is not None else None
    if bn is None or not bn.orders:
        return
    checks = [(rule.item, account, ORDERS_SCOPE, 1) for rule in bn.orders]
    _, counts, _ = limiter.count(checks)
    g.binance_order_counts = [(rule.letter, n) for rule, n in zip(bn.orders, counts, strict=True)]
    for rule, check, n in zip(bn.orders, checks, counts, strict=True):
        if n > rule.limit:
            raise BinanceLimited(429, TOO_MANY_ORDERS, f"Too many new orders; current limit is "
                                 f"{rule.limit} orders per {rule.per}.",
                                 limiter.retry_after(check))  # fmt: skip


def order_counts(account: str) -> list[dict[str, Any]]:
    """``account``'s ORDERS limits with their counts (``GET /api/v3/rateLimit/order``)."""
    limiter = current_app.extensions.get("fairbook_rate_limiter")
    bn = limiter.binance if limiter is not None else None
    if bn is None:
        return []
    counts = limiter.read([(rule.item, account, ORDERS_SCOPE) for rule in bn.orders])
    return [{**rule.described(), "count": n} for rule, n in zip(bn.orders, counts, strict=True)]


# -- Binance's model (/api/v3) ------------------------------------------------------------------

TOO_MANY_REQUESTS = -1003
TOO_MANY_ORDERS = -1015
WEIGHT_SCOPE = "binance_weight"  # per address
RAW_SCOPE = "binance_raw"  # per address
ORDERS_SCOPE = "binance_orders"  # per account
STRIKE_SCOPE = "binance_strikes"  # per address: requests refused 429 in the weight's window
OFFENCE_SCOPE = "binance_bans"  # per address: bans in the last day (each doubles the next)
BAN_MAX_S = 3 * 86400  # Binance: "from 2 minutes to 3 days"
#: the windows of an address's 429s and of its bans (the amounts are not limits: never reached)
STRIKES = parse("1000000000 per 1 minute")
OFFENCES = parse("1000000000 per 1 day")
MSG_WEIGHT = (
    "Too much request weight used; current limit is {limit} request weight per {per}. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)
MSG_RAW = ("Too many requests; current limit is {limit} requests per {per}. "
           "Please use WebSocket Streams for live updates to avoid polling the API.")  # fmt: skip
MSG_BANNED = ("Way too much request weight used; IP banned until {until}. "
              "Please use WebSocket Streams for live updates to avoid bans.")  # fmt: skip


class BinanceLimited(Exception):
    """Over one of Binance's limits: ``{"code", "msg"}`` with ``status`` (429, or 418 for a
    banned address) and ``Retry-After``."""

    def __init__(self, status: int, code: int, msg: str, retry_after: int) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Rule:
    """One of Binance's ``rateLimits``: a counter of ``limit`` per ``num`` ``interval``."""

    kind: str  # REQUEST_WEIGHT | ORDERS | RAW_REQUESTS
    interval: str  # SECOND | MINUTE | DAY
    num: int
    limit: int
    #: the ``limits`` item of the counter (parsed once, not per request)
    item: RateLimitItem = field(init=False, compare=False)

    def __post_init__(self) -> None:
        item = parse(f"{self.limit} per {self.num} {self.interval.lower()}")
        object.__setattr__(self, "item", item)

    @property
    def letter(self) -> str:
        """The header suffix: ``1M``, ``10S``, ``1D`` (Binance's intervalNum + intervalLetter)."""
        return f"{self.num}{self.interval[0]}"

    @property
    def per(self) -> str:
        """As Binance's messages name the window: ``1 MINUTE``, ``10 SECOND``."""
        return f"{self.num} {self.interval}"

    def described(self) -> dict[str, Any]:
        return {"rateLimitType": self.kind, "interval": self.interval, "intervalNum": self.num,
                "limit": self.limit}  # fmt: skip


def _default_weight() -> int:
    return 1


@dataclass
class BinanceLimits:
    """Binance's limits for ``/api/v3``: request weight and raw requests per address, orders
    per account, and the ban of an address that keeps sending once refused."""

    weight: Rule | None
    raw: Rule | None
    orders: list[Rule]
    ban_after: int  # requests refused 429 in one weight window beyond which the address is banned
    ban_s: int  # the first ban; each further one within a day doubles it, at most 3 days
    prefix: str
    #: the current request's weight (``web.binance.weights`` sets it; 1 until then)
    weigh: Callable[[], int] = field(default=_default_weight)
    path_prefix: str = "/api/v3"

    def rules(self) -> list[Rule]:
        """What ``exchangeInfo`` lists in ``rateLimits``, in Binance's order."""
        return [r for r in (self.weight, *self.orders, self.raw) if r is not None]

    def applies(self) -> bool:
        path = request.path
        return path == self.path_prefix or path.startswith(self.path_prefix + "/")

    def ban_key(self, ip: str) -> str:
        return f"{self.prefix}:binance_ban/{ip}"

    def address_checks(self, ip: str) -> list[Weighed]:
        """The weight (this request's) and raw-request counters of ``ip``."""
        out: list[Weighed] = []
        if self.weight is not None:
            out.append((self.weight.item, ip, WEIGHT_SCOPE, max(0, self.weigh())))
        if self.raw is not None:
            out.append((self.raw.item, ip, RAW_SCOPE, 1))
        return out

    def check_ban(self, banned: Any) -> None:
        """418 while the address's ban lasts (its value: the end, epoch ms)."""
        if not banned:
            return
        until = int(banned)
        left_ms = until - time.time() * 1000
        if left_ms > 0:
            raise BinanceLimited(418, TOO_MANY_REQUESTS, MSG_BANNED.format(until=until),
                                 max(1, math.ceil(left_ms / 1000)))  # fmt: skip

    def check_address(self, limiter: RateLimiter, ip: str, checks: list[Weighed],
                      counts: list[int]) -> None:  # fmt: skip
        """Record the used weight for the header; beyond a limit 429 -1003, and past
        ``ban_after`` refusals in one window a ban (418)."""
        rules = [r for r in (self.weight, self.raw) if r is not None]
        for rule, check, count in zip(rules, checks, counts, strict=True):
            if count <= rule.limit:
                continue
            retry = limiter.retry_after(check)
            if self.ban_after:
                strikes = (STRIKES, ip, STRIKE_SCOPE, 1)
                _, (refused,), _ = limiter.count([strikes])
                if refused > self.ban_after:
                    self.ban(limiter, ip)
            text = MSG_WEIGHT if rule is self.weight else MSG_RAW
            raise BinanceLimited(429, TOO_MANY_REQUESTS,
                                 text.format(limit=rule.limit, per=rule.per), retry)  # fmt: skip

    def ban(self, limiter: RateLimiter, ip: str) -> None:
        """Ban ``ip``: ``ban_s`` doubled for each ban of the last day, at most 3 days (as
        Binance's bans "scale in duration for repeat offenders, from 2 minutes to 3 days").
        Kept only in Redis (a process counting in memory does not ban)."""
        offences = (OFFENCES, ip, OFFENCE_SCOPE, 1)
        _, (n,), _ = limiter.count([offences])
        seconds = min(BAN_MAX_S, self.ban_s * 2 ** min(n - 1, 20))
        until = int(time.time() * 1000) + seconds * 1000
        if limiter._strategy() is limiter.in_redis:
            try:
                limiter.connections.call("SET", self.ban_key(ip), until, "PX", seconds * 1000)
            except (redis.RedisError, OSError):
                return
        self.check_ban(until)


def binance_limits(app: Flask) -> BinanceLimits | None:
    """The app's Binance limits (None when rate limits are off)."""
    limiter = app.extensions.get("fairbook_rate_limiter")
    return limiter.binance if limiter is not None else None


def _binance_limits(config: Any, prefix: str) -> BinanceLimits:
    def rule(name: str, kind: str, interval: str, num: int) -> Rule | None:
        limit = _count_setting(config, name)
        return Rule(kind, interval, num, limit) if limit else None

    orders = [rule("FAIRBOOK_BINANCE_ORDERS_10S", "ORDERS", "SECOND", 10),
              rule("FAIRBOOK_BINANCE_ORDERS_1D", "ORDERS", "DAY", 1)]  # fmt: skip
    return BinanceLimits(
        weight=rule("FAIRBOOK_BINANCE_WEIGHT_1M", "REQUEST_WEIGHT", "MINUTE", 1),
        raw=rule("FAIRBOOK_BINANCE_RAW_5M", "RAW_REQUESTS", "MINUTE", 5),
        orders=[r for r in orders if r is not None],
        ban_after=_count_setting(config, "FAIRBOOK_BINANCE_BAN_AFTER"),
        ban_s=max(1, _count_setting(config, "FAIRBOOK_BINANCE_BAN_S")),
        prefix=prefix,
    )


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
    app.extensions["fairbook_rate_limiter"].binance = _binance_limits(config, rate_limits_prefix)
    connects = _count_setting(config, "FAIRBOOK_BINANCE_WS_CONNECTS_5M")
    if connects:
        app.extensions["fairbook_rate_limiter"].stream_connects = parse(f"{connects}/5 minutes")

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

    @app.errorhandler(BinanceLimited)
    def _binance_limited(exc: BinanceLimited):
        response = jsonify({"code": exc.code, "msg": exc.msg})
        response.status_code = exc.status
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.after_request
    def _binance_headers(response: Any) -> Any:
        """``X-MBX-USED-WEIGHT-1M`` on every counted ``/api/v3`` response (errors too), the
        ``X-MBX-ORDER-COUNT-*`` of a counted order."""
        used = g.get("binance_used_weight")
        if used is not None:
            response.headers[f"X-MBX-USED-WEIGHT-{used[0]}"] = str(used[1])
        for letter, count in g.get("binance_order_counts") or ():
            response.headers[f"X-MBX-ORDER-COUNT-{letter}"] = str(count)
        return response
