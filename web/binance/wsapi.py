"""Binance's WebSocket API (``/ws-api/v3``): ``{id, method, params}`` -> ``{id, status,
result | error, rateLimits}``, order entry without HTTP's per-request cost.

Why this shape: one socket carries many requests in flight. A journaled request (``order.place``,
``order.cancel``, ``openOrders.cancelAll``) is checked and appended by the socket's own greenlet
and answered by a callback the process's inbox reader runs when the worker's reply comes
(``web.journal.Inbox.expect_call``), so replies leave in the order the worker decided them and
no greenlet waits per request; a reply that does not come within ``FAIRBOOK_REPLY_TIMEOUT`` is
answered by the socket's loop (-1007, or the ACK of an ACK order), as REST answers it. The
order logic itself is ``web.binance.trading``'s, the same functions ``/api/v3`` calls.

Signing is Binance's: the payload is every param but ``signature``, sorted by name, as
``name=value`` joined by ``&`` (JSON strings as they are, integers and decimals as their JSON
text, ``true``/``false``), signed HMAC-SHA256 (hex) or Ed25519 (base64); ``timestamp`` and
``recvWindow`` as in REST. A key's record is read once per socket (with the first request's
rate-limit round trip) and kept: the socket is registered with the hub under the key's hash,
so a revocation closes it (1008) at once; ``session.logon`` lets later requests omit ``apiKey``
and ``signature``. Every request counts against the same limits as REST (native per address
and per key, Binance's weight and raw requests per address, ``order.place`` the account's
ORDERS), in one round trip; beyond them: 429 (418 when banned) with Binance's -1003 / -1015.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import Flask, current_app, request
from flask_sock import Sock

from web import limits as lim
from web.accounts import hash_key, valid_api_key
from web.app import Fairbook, state
from web.binance import errors, signing, trading
from web.binance.errors import BinanceError
from web.binance.keys import ApiKey, parse_record, record_fields, vault_of
from web.binance.userdata import AccountEvents, account_events, close_after, now_ms, seed
from web.hub import Hub, frame
from web.journal import Overloaded, append_all
from web.ws import INTERNAL_ERROR, POLICY_VIOLATION, Connection, serving

log = logging.getLogger("fairbook.binance.wsapi")

PATH = "/ws-api/v3"
#: Binance: "Connecting to WebSocket API costs 2 weight"
CONNECT_WEIGHT = 2
READ, TRADE = trading.READ, trading.TRADE
STREAM = "user_stream"  # USER_STREAM security: a live key of any permission
#: method -> request weight (Binance's WebSocket API docs), a number or a function of params
WEIGHTS: dict[str, int | Callable[[dict[str, str]], int]] = {
    "ping": 1,
    "time": 1,
    "order.place": 1,
    "order.test": lambda p: 20 if p.get("computeCommissionRates") == "true" else 1,
    "order.cancel": 1,
    "order.status": 4,
    "openOrders.status": lambda p: 6 if p.get("symbol") else 80,
    "openOrders.cancelAll": 1,
    "account.status": 20,
    "session.logon": 2,
    "session.status": 2,
    "session.logout": 2,
    "session.subscriptions": 2,
    "userDataStream.subscribe": 2,
    "userDataStream.subscribe.signature": 2,
    "userDataStream.unsubscribe": 2,
}
#: signed methods -> the key permission they need
SIGNED = {"order.place": TRADE, "order.test": TRADE, "order.cancel": TRADE,
          "openOrders.cancelAll": TRADE, "order.status": READ, "openOrders.status": READ,
          "account.status": READ, "session.logon": STREAM,
          "userDataStream.subscribe.signature": STREAM}  # fmt: skip
#: params that are the request's envelope, not the method's
ENVELOPE = ("apiKey", "signature", "timestamp", "recvWindow", "returnRateLimits")
MAX_SUBSCRIPTIONS = 1000
#: frames that arrived together handled as one batch at most (orders: two round trips a batch)
BATCH = 64
#: methods of a run (:meth:`ApiConnection.handle_many`): counted together, journaled together
RUN_METHODS = frozenset(("order.place", "order.cancel"))
MSG_INVALID_JSON = "Invalid JSON Request"
_MSG_ID = re.compile(r"[\x20-\x7e]{1,64}")


class _Raw(str):
    """A JSON number's text as sent (never a float: money stays exact)."""


def _text(value: Any) -> str | None:
    """A param's value as it is signed and read; None for null; ValueError for an object."""
    if value is None:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)
    raise ValueError


def parse_request(raw: str | bytes) -> dict[str, Any]:
    """The request object; numbers with a fraction or exponent keep their text (:class:`_Raw`).
    orjson first (fast); the standard parser when a float or a huge integer is in it."""
    try:
        msg = orjson.loads(raw)
        if isinstance(msg, dict) and isinstance(msg.get("params"), dict) and any(
            type(v) is float for v in msg["params"].values()
        ):
            raise ValueError("a float: parse it again exactly")
    except (ValueError, TypeError):
        msg = json.loads(raw, parse_float=_Raw)  # ValueError (or RecursionError) if not JSON
    return msg


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and _MSG_ID.fullmatch(value) is not None


@dataclass(slots=True)
class Request:
    """A parsed request: its id, method (without ``v3/``), params as text, weight."""

    msg_id: Any
    method: str
    params: dict[str, str]
    cost: int
    show: bool  # rateLimits in the answer


BUSY = BinanceError(errors.SERVER_BUSY, errors.MSG_BUSY, 503)
UNAVAILABLE = BinanceError(errors.DISCONNECTED, errors.MSG_INTERNAL, 503)
INTERNAL = BinanceError(errors.UNKNOWN, errors.MSG_UNKNOWN_ERROR, 500)
REVOKED = BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)


class Limited(Exception):
    """A rate limit refused the request: Binance's 429 (418 banned) error, with the counts."""

    def __init__(self, status: int, code: int, msg: str, retry_after: int,
                 rate_limits: list[dict[str, Any]]) -> None:  # fmt: skip
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg
        self.retry_after = retry_after
        self.rate_limits = rate_limits


class ApiConnection(Connection):
    """One ``/ws-api/v3`` socket: its keys, session, user data subscriptions, pending replies."""

    def __init__(self, ws: Any, hub: Hub, queue_limit: int, close_timeout: float,
                 max_message: int = 0, caps: Any = None) -> None:  # fmt: skip
        super().__init__(ws, hub, queue_limit, close_timeout, max_message, caps)
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        self.app = app
        self.st: Fairbook = state()
        self.limiter = app.extensions.get("fairbook_rate_limiter")
        self.ip = request.remote_addr or "-"
        self.connected_since = now_ms()
        self.return_rate_limits = request.args.get("returnRateLimits") != "false"
        #: API key text -> its record, read once (a revocation closes the socket)
        self.keys: dict[str, ApiKey] = {}
        self.session: tuple[str, ApiKey, int] | None = None  # (api key, record, since)
        #: subscription id -> (account, encoder); account -> subscription id
        self.subscriptions: dict[int, tuple[str, AccountEvents]] = {}
        self.subscribed: dict[str, int] = {}
        self._subscription_ids = itertools.count(0)
        #: (deadline, inbox token, answer-without-reply) of journaled requests, oldest first
        self.pending: deque[tuple[float, str, Callable[[], None]]] = deque()

    # -- hub listener ---------------------------------------------------------------------------
    def on_market(self, symbol: str, body: dict[str, Any]) -> bool:
        return True

    def on_account(self, account: str, body: dict[str, Any]) -> bool:
        sid = self.subscribed.get(account)
        if sid is None:  # never another account's events
            return True
        for event in self.subscriptions[sid][1].events(body):
            if not self.offer(frame({"subscriptionId": sid, "event": event})):
                return False
        return True

    def on_resync(self) -> bool:
        """Events may have been lost: each subscription ends (``eventStreamTerminated``), so
        the client subscribes again and re-reads its state."""
        for sid, (account, _) in list(self.subscriptions.items()):
            self._end_subscription(sid, account)
        return True

    # -- replies --------------------------------------------------------------------------------
    def send(self, msg_id: Any, status: int, result: Any = None,
             error: dict[str, Any] | None = None,
             rate_limits: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        body: dict[str, Any] = {"id": msg_id, "status": status}
        if error is not None:
            body["error"] = error
        else:
            body["result"] = result
        if rate_limits is not None:
            body["rateLimits"] = rate_limits
        self.reply(body)

    def fail(self, msg_id: Any, exc: BinanceError, rate_limits: list[dict[str, Any]] | None
             ) -> None:  # fmt: skip
        self.send(msg_id, exc.status, error={"code": exc.code, "msg": exc.msg},
                  rate_limits=rate_limits)  # fmt: skip

    def _answer(self, msg_id: Any, rate_limits: list[dict[str, Any]] | None,
                make: Callable[[], Any]) -> None:  # fmt: skip
        """``make()``'s result as a 200, its BinanceError as Binance's error."""
        try:
            result = make()
        except BinanceError as exc:
            self.fail(msg_id, exc, rate_limits)
            return
        except Exception:  # a bug costs this request an error reply, not the socket
            log.exception("ws-api answer failed")
            self.fail(msg_id, INTERNAL, rate_limits)
            return
        self.send(msg_id, 200, result, rate_limits=rate_limits)

    # -- the socket loop's part -----------------------------------------------------------------
    def next_wait(self) -> float:
        """How long the loop may block in receive: until the oldest pending reply is due."""
        if not self.pending:
            return 1.0
        return max(0.0, min(1.0, self.pending[0][0] - time.monotonic()))

    def sweep(self) -> None:
        """Answer the journaled requests whose reply did not come in time."""
        now = time.monotonic()
        pending = self.pending
        inbox = self.st.inbox
        while pending and pending[0][0] <= now:
            _, token, on_timeout = pending.popleft()
            if inbox is not None and inbox.claim(token):
                on_timeout()

    def opened(self) -> bool:
        """Count the connection's weight; refused: the error frame, then closed."""
        try:
            self.count(CONNECT_WEIGHT)
        except Limited as exc:
            self._limited(None, exc)
            close_after(self, POLICY_VIOLATION, "rate limited")
            return False
        return True

    # -- requests -------------------------------------------------------------------------------
    def handle(self, raw: str | bytes) -> None:
        """One request frame."""
        self.handle_many([raw])

    def handle_many(self, frames: list[str | bytes]) -> None:
        """Frames that arrived together, in order. A run of ``order.place`` / ``order.cancel``
        requests of keys already read is counted in one round trip and journaled in one more
        (in order, so journal order is still the frames' order); anything else is handled
        alone, after the run before it."""
        run: list[Request] = []
        for raw in frames:
            if self.dying:  # revoked (or closing): nothing more of this socket is handled
                return
            try:
                req = self._parse(raw)
            except Exception:  # a bug must cost this message an error reply, not the socket
                log.exception("ws-api request failed")
                self.fail(None, INTERNAL, None)
                continue
            if req is None:
                continue
            if req.method in RUN_METHODS and self._known_key(req.params) is not None:
                run.append(req)
                continue
            if run:
                self._guarded_run(run)
                run = []
                if self.dying:
                    return
            self._run(req)
        if run:
            self._guarded_run(run)

    def _guarded_run(self, run: list[Request]) -> None:
        """:meth:`_place_run`; a bug answers each request of the run 500 with its own id."""
        try:
            self._place_run(run)
        except Exception:
            log.exception("ws-api requests failed")
            for req in run:
                self.fail(req.msg_id, INTERNAL, None)

    def _parse(self, raw: str | bytes) -> Request | None:
        """The request of a frame; None (answered) when it is not a usable one."""
        if self.max_message and len(raw) > self.max_message:
            return self._refuse(None, BinanceError(
                errors.INVALID_JSON, f"{MSG_INVALID_JSON}: a request may hold at most "
                f"{self.max_message} characters"))  # fmt: skip
        try:
            msg = parse_request(raw)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict):
            return self._refuse(None, BinanceError(errors.INVALID_JSON, MSG_INVALID_JSON))
        msg_id = msg.get("id")
        if not _valid_id(msg_id):
            return self._refuse(None, errors.invalid_parameter("id"))
        method = msg.get("method")
        if not isinstance(method, str) or not method:
            return self._refuse(msg_id, errors.mandatory("method"))
        if method.startswith("v3/"):
            method = method[3:]
        if method not in WEIGHTS:
            return self._refuse(msg_id, BinanceError(errors.UNSUPPORTED_OPERATION,
                                                     errors.MSG_UNSUPPORTED))  # fmt: skip
        raw_params = msg.get("params", {})
        if raw_params is None:
            raw_params = {}
        if not isinstance(raw_params, dict):
            return self._refuse(msg_id, errors.invalid_parameter("params"))
        params: dict[str, str] = {}
        for name, value in raw_params.items():
            try:
                text = _text(value)
            except ValueError:
                return self._refuse(msg_id, errors.invalid_parameter(name))
            if text is not None:
                params[name] = text
        show = self.return_rate_limits
        if "returnRateLimits" in params:
            show = params["returnRateLimits"] != "false"
        weight = WEIGHTS[method]
        cost = weight(params) if callable(weight) else weight
        return Request(msg_id, method, params, cost, show)

    def _refuse(self, msg_id: Any, exc: BinanceError) -> None:
        """A frame that is no usable request still weighs 1 (as Binance weighs every request)
        on the address's limits; beyond them it gets the 429 (418) instead of its error."""
        try:
            self.count(1)
        except Limited as limited:
            self._limited(msg_id, limited, False)
            return None
        except (redis.RedisError, OSError):  # not counted: its error is still its answer
            pass
        self.fail(msg_id, exc, None)
        return None

    def _run(self, req: Request) -> None:
        """One request, alone."""
        msg_id, method, params, show = req.msg_id, req.method, req.params, req.show
        limits: list[dict[str, Any]] | None = None
        try:
            if method in SIGNED:
                key, limits = self.authorize(method, params, req.cost)
            else:
                key, limits = None, self.count(req.cost)
            self.call(method, msg_id, key, params, limits if show else None)
        except Limited as exc:
            self._limited(msg_id, exc, show)
        except BinanceError as exc:
            self.fail(msg_id, exc, limits if show else None)
        except Overloaded:
            self.fail(msg_id, BUSY, limits if show else None)
        except (redis.RedisError, OSError) as exc:
            log.warning("redis unavailable for a ws-api request: %s", exc)
            self.fail(msg_id, UNAVAILABLE, limits if show else None)
        except Exception:  # a bug costs this request a 500 with its id, not the socket
            log.exception("ws-api request failed")
            self.fail(msg_id, INTERNAL, limits if show else None)

    def _place_run(self, run: list[Request]) -> None:
        """``order.place`` / ``order.cancel`` requests of known keys: checked here, counted in
        one round trip, journaled in one more; each answered as :meth:`_run` would (a cancel
        counts as in :meth:`authorize`: no ORDERS)."""
        if len(run) == 1:
            self._run(run[0])
            return
        keyed: list[tuple[Request, ApiKey, BinanceError | None, Any]] = []
        for req in run:
            key, signed = self._known_key(req.params)  # type: ignore[misc]
            problem = self._check(key, req.params, TRADE, signed)
            orders = problem is None and req.method == "order.place"
            plan = None if self.limiter is None else self._checks(
                req.cost, key.key_hash, key.account if orders else None)  # fmt: skip
            keyed.append((req, key, problem, plan))
        try:
            judged = self._count_all([plan for *_, plan in keyed])
        except (redis.RedisError, OSError) as exc:
            log.warning("redis unavailable for ws-api requests: %s", exc)
            for req, *_ in keyed:
                self.fail(req.msg_id, UNAVAILABLE, None)
            return
        st = self.st
        inbox = st.journal(0 if not st.partitions else st.partitions[0]).inbox
        ready = inbox.wait_ready(2.0)
        items: list[tuple[Any, dict[str, Any]]] = []
        waiting: list[tuple[Request, Any, str | None, Callable[[], None], Any]] = []
        for (req, key, problem, _), outcome in zip(keyed, judged, strict=True):
            shown = outcome.rate_limits if isinstance(outcome, Limited) else outcome
            limits = shown if req.show else None
            if isinstance(outcome, Limited):
                self._limited(req.msg_id, outcome, req.show)
                continue
            if problem is not None:
                self.fail(req.msg_id, problem, limits)
                continue
            op = trading.place if req.method == "order.place" else trading.cancel
            try:
                placed = op(key.account, {k: v for k, v in req.params.items()
                                          if k not in ENVELOPE})  # fmt: skip
            except BinanceError as exc:
                self.fail(req.msg_id, exc, limits)
                continue
            except (redis.RedisError, OSError) as exc:  # the cancel's order lookup, as in _run
                log.warning("redis unavailable for a ws-api request: %s", exc)
                self.fail(req.msg_id, UNAVAILABLE, limits)
                continue
            except Exception:  # a bug: this request's 500, the others go on
                log.exception("ws-api %s failed", req.method)
                self.fail(req.msg_id, INTERNAL, limits)
                continue
            items.append((st.journal(placed.partition), placed.wire))
            waiting.append((req, placed, None, None, limits))
        if not items or self.dying:  # revoked during the round trip: nothing is journaled
            return
        # the reply callbacks only now: nothing above can leave one in the inbox for ever
        for i, (req, placed, _, _, limits) in enumerate(waiting):
            replied, unanswered = self._answers(req.msg_id, limits, placed)
            token = inbox.expect_call(replied) if ready else None
            if token is not None:
                placed.wire["reply_to"] = token
            waiting[i] = (req, placed, token, unanswered, limits)
        try:
            results = append_all(st.connections, items)  # type: ignore[arg-type]
        except (redis.RedisError, OSError) as exc:
            log.warning("redis unavailable for ws-api appends: %s", exc)
            for req, _, token, _, limits in waiting:
                if token is not None:
                    inbox.forget(token)
                self.fail(req.msg_id, UNAVAILABLE, limits)
            return
        deadline = time.monotonic() + st.reply_timeout
        for (req, _, token, unanswered, limits), result in zip(waiting, results, strict=True):
            if isinstance(result, Exception):
                if token is not None:
                    inbox.forget(token)
                self.fail(req.msg_id, BUSY if isinstance(result, Overloaded) else UNAVAILABLE,
                          limits)  # fmt: skip
            elif token is None:  # the inbox is not subscribed: no reply will come
                unanswered()
            else:
                self.pending.append((deadline, token, unanswered))

    def _known_key(self, params: dict[str, str]) -> tuple[ApiKey, bool] | None:
        """(the key, signed?) of a request whose key this socket has read already (None once
        the socket is dying: a revoked key's requests go no further)."""
        if self.dying:
            return None
        api_key = params.get("apiKey")
        if api_key is None:
            if self.session is not None and "signature" not in params:
                return self.session[1], False
            return None
        key = self.keys.get(api_key)
        return None if key is None else (key, True)

    def _limited(self, msg_id: Any, exc: Limited, show: bool = True) -> None:
        """Binance's refusal: ``retryAfter`` (epoch ms) when the request may be sent again."""
        now = now_ms()
        self.send(msg_id, exc.status, error={
            "code": exc.code, "msg": exc.msg,
            "data": {"serverTime": now, "retryAfter": now + exc.retry_after * 1000},
        }, rate_limits=exc.rate_limits if show else None)  # fmt: skip

    # -- rate limits ----------------------------------------------------------------------------
    def count(self, weight: int, key_hash: str | None = None, account: str | None = None,
              first: tuple[Any, ...] | None = None) -> Any:  # fmt: skip
        """Count one request as REST counts it (the address, the key, Binance's weight and raw
        requests, and with ``account`` its ORDERS), in one round trip with ``first``. Returns
        ``rateLimits`` (and ``first``'s reply when given); raises :class:`Limited`."""
        limiter = self.limiter
        if limiter is None:
            reply = self.st.connections.call(*first) if first else None  # type: ignore[union-attr]
            return [] if first is None else (reply, [])
        plan = self._checks(weight, key_hash, account)
        reply, counts, (banned,) = limiter.count(plan[0], first,
                                                 [("GET", limiter.binance.ban_key(self.ip))])
        shown = self._judge(plan, counts, banned)
        return shown if first is None else (reply, shown)

    def _count_all(self, plans: list[Any]) -> list[list[dict[str, Any]] | Limited]:
        """Several requests' counters in one round trip: each one's ``rateLimits``, or the
        :class:`Limited` that refuses it."""
        limiter = self.limiter
        if limiter is None:
            return [[] for _ in plans]
        checks = [check for plan in plans for check in plan[0]]
        _, counts, (banned,) = limiter.count(checks, None,
                                             [("GET", limiter.binance.ban_key(self.ip))])
        out: list[list[dict[str, Any]] | Limited] = []
        at = 0
        for plan in plans:
            n = len(plan[0])
            try:
                out.append(self._judge(plan, counts[at : at + n], banned))
            except Limited as exc:
                out.append(exc)
            at += n
        return out

    def _checks(self, weight: int, key_hash: str | None, account: str | None) -> Any:
        """(checks, native, address, ORDERS rules): the counters one request adds to."""
        limiter = self.limiter
        bn = limiter.binance
        ip = self.ip
        checks: list[Any] = [(item, ip, lim.IP_SCOPE, 1) for item in limiter.ip_limits]
        if key_hash is not None:
            checks += [(item, key_hash, lim.KEY_SCOPE, 1) for item in limiter.key_limits]
        native = len(checks)
        if bn.weight is not None:
            checks.append((bn.weight.item, ip, lim.WEIGHT_SCOPE, weight))
        if bn.raw is not None:
            checks.append((bn.raw.item, ip, lim.RAW_SCOPE, 1))
        address = len(checks)
        rules = list(bn.orders) if account is not None else []
        checks += [(rule.item, account, lim.ORDERS_SCOPE, 1) for rule in rules]
        return checks, native, address, rules

    def _judge(self, plan: Any, counts: list[int], banned: Any) -> list[dict[str, Any]]:
        """``rateLimits`` of a counted request; :class:`Limited` if a limit refuses it."""
        checks, native, address, rules = plan
        limiter = self.limiter
        bn = limiter.binance
        shown: list[dict[str, Any]] = []
        if bn.weight is not None:
            shown.append({**bn.weight.described(), "count": counts[native]})
        shown += [{**rule.described(), "count": n}
                  for rule, n in zip(rules, counts[address:], strict=True)]  # fmt: skip
        try:
            bn.check_ban(banned)
            for check, n in zip(checks[:native], counts[:native], strict=True):
                if n > check[0].amount:
                    raise lim.RateLimited(check[:3], limiter.retry_after(check))
            bn.check_address(limiter, self.ip, checks[native:address], counts[native:address])
            for rule, check, n in zip(rules, checks[address:], counts[address:], strict=True):
                if n > rule.limit:
                    raise lim.BinanceLimited(429, errors.TOO_MANY_ORDERS,
                                             f"Too many new orders; current limit is "
                                             f"{rule.limit} orders per {rule.per}.",
                                             limiter.retry_after(check))  # fmt: skip
        except lim.BinanceLimited as exc:
            raise Limited(exc.status, exc.code, exc.msg, exc.retry_after, shown) from None
        except lim.RateLimited as exc:
            raise Limited(429, errors.TOO_MANY_REQUESTS, exc.message, exc.retry_after,
                          shown) from None  # fmt: skip
        return shown

    # -- signed requests ------------------------------------------------------------------------
    def authorize(self, method: str, params: dict[str, str], weight: int
                  ) -> tuple[ApiKey, list[dict[str, Any]]]:  # fmt: skip
        """The request's key, checked as Binance checks a signed request, and the counts."""
        permission = SIGNED[method]
        if self.dying:  # a key of this socket was revoked: nothing more runs on it
            raise REVOKED
        api_key = params.get("apiKey")
        if api_key is None and self.session is not None and "signature" not in params:
            api_key = self.session[0]  # the session's key: no signature needed
            signed = False
        else:
            signed = True
        if api_key is None or not valid_api_key(api_key):
            self.count(weight)
            raise BinanceError(errors.BAD_API_KEY_FMT, errors.MSG_KEY_FORMAT, 401)
        orders = method == "order.place"
        key = self.keys.get(api_key)
        if key is not None:  # the common case: checked here, counted in one round trip
            problem = self._check(key, params, permission, signed)
            limits = self.count(weight, key.key_hash, key.account if orders and problem is None
                                else None)  # fmt: skip
            if problem is not None:
                raise problem
            if self.dying:  # revoked during the round trip
                raise REVOKED
            return key, limits
        key_hash = hash_key(api_key)
        # registered before the record is read: a revocation after the read finds the socket
        self.hub.register_key(self, key_hash)
        found = False
        try:
            record = ("HGETALL", self.st.namespace.global_keys.api_key(key_hash))
            reply, limits = self.count(weight, key_hash, first=record)
            fields = record_fields(reply)
            key = parse_record(key_hash, fields, vault_of(self.app)) if fields else None
            if key is None:
                raise BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)
            found = True
        finally:
            if not found and key_hash not in self.key_hashes:
                self.hub.forget_key(self, key_hash)
        if self.dying:  # revoked while we read it
            raise REVOKED
        self.keys[api_key] = key
        self.key_hashes.add(key_hash)
        problem = self._check(key, params, permission, signed)
        if problem is not None:
            raise problem
        if orders:  # the first request of this key: its orders in a second round trip
            limits = limits + [x for x in self.count(0, None, key.account)
                               if x["rateLimitType"] == "ORDERS"]  # fmt: skip
        return key, limits

    @staticmethod
    def _check(key: ApiKey, params: dict[str, str], permission: str, signed: bool
               ) -> BinanceError | None:  # fmt: skip
        """REST's order of refusals: timestamp (-1021), signature (-1022), permission."""
        try:
            signing.check_time(params, time.time() * 1000.0)
        except BinanceError as exc:
            return exc
        if signed:
            signature = params.get("signature")
            if not signature:
                return errors.mandatory("signature")
            payload = "&".join(f"{k}={v}" for k, v in sorted(params.items())
                               if k != "signature")  # fmt: skip
            if not signing.signature_valid(key, payload.encode("utf-8"), signature):
                return BinanceError(errors.INVALID_SIGNATURE, errors.MSG_SIGNATURE)
        if permission != STREAM and permission not in key.permissions:
            return BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)
        return None

    # -- methods --------------------------------------------------------------------------------
    def call(self, method: str, msg_id: Any, key: ApiKey | None, params: dict[str, str],
             limits: list[dict[str, Any]] | None) -> None:  # fmt: skip
        args = {k: v for k, v in params.items() if k not in ENVELOPE}
        if method == "order.place":
            self._journaled(trading.place(key.account, args), msg_id,  # type: ignore[union-attr]
                            limits)  # fmt: skip
        elif method in ("order.cancel", "openOrders.cancelAll"):
            op = trading.cancel if method == "order.cancel" else trading.cancel_all
            self._journaled(op(key.account, args), msg_id, limits)  # type: ignore[union-attr]
        elif method == "order.test":
            self.send(msg_id, 200, trading.test_order(args), rate_limits=limits)
        elif method == "order.status":
            self.send(msg_id, 200, trading.query_order(key.account, args),  # type: ignore[union-attr]
                      rate_limits=limits)  # fmt: skip
        elif method == "openOrders.status":
            self.send(msg_id, 200, trading.open_orders(key.account, args),  # type: ignore[union-attr]
                      rate_limits=limits)  # fmt: skip
        elif method == "account.status":
            self.send(msg_id, 200, trading.account_info(key, args),  # type: ignore[arg-type]
                      rate_limits=limits)  # fmt: skip
        elif method == "ping":
            self.send(msg_id, 200, {}, rate_limits=limits)
        elif method == "time":
            self.send(msg_id, 200, {"serverTime": now_ms()}, rate_limits=limits)
        elif method == "session.logon":
            assert key is not None
            # without apiKey the request ran as the session's key (authorize): keep its text
            api_key = params.get("apiKey") or (self.session[0] if self.session else None)
            assert api_key is not None
            self.session = (api_key, key, now_ms())
            self.send(msg_id, 200, self._session(), rate_limits=limits)
        elif method == "session.status":
            self.send(msg_id, 200, self._session(), rate_limits=limits)
        elif method == "session.logout":
            self.session = None
            self.send(msg_id, 200, self._session(), rate_limits=limits)
        elif method == "session.subscriptions":
            self.send(msg_id, 200, [{"subscriptionId": s} for s in self.subscriptions],
                      rate_limits=limits)  # fmt: skip
        elif method in ("userDataStream.subscribe", "userDataStream.subscribe.signature"):
            if method == "userDataStream.subscribe":
                if self.session is None:
                    raise BinanceError(errors.REJECTED_MBX_KEY, errors.MSG_KEY_REJECTED, 401)
                key = self.session[1]
            assert key is not None
            self.send(msg_id, 200, {"subscriptionId": self._subscribe(key.account)},
                      rate_limits=limits)  # fmt: skip
        elif method == "userDataStream.unsubscribe":
            wanted = args.get("subscriptionId")
            ended = [(sid, account) for sid, (account, _) in self.subscriptions.items()
                     if wanted is None or wanted == str(sid)]  # fmt: skip
            if wanted is not None and not ended:  # str(sid): ASCII digits only, as sent
                raise errors.invalid_parameter("subscriptionId")
            for sid, account in ended:
                self._end_subscription(sid, account)
            self.send(msg_id, 200, {}, rate_limits=limits)

    def _session(self) -> dict[str, Any]:
        return {"apiKey": self.session[0] if self.session else None,
                "authorizedSince": self.session[2] if self.session else None,
                "connectedSince": self.connected_since,
                "returnRateLimits": self.return_rate_limits, "serverTime": now_ms(),
                "userDataStream": bool(self.subscriptions)}  # fmt: skip

    def _subscribe(self, account: str) -> int:
        if account in self.subscribed:
            raise BinanceError(errors.INVALID_PARAMETER,
                               "This account already has a subscription on this connection.")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise BinanceError(errors.INVALID_PARAMETER,
                               f"At most {MAX_SUBSCRIPTIONS} subscriptions per connection.")
        sid = next(self._subscription_ids)
        # listening first, then the balances are read (seed keeps what an event set first):
        # an event between the two is never lost
        enc = account_events(account)
        self.subscriptions[sid] = (account, enc)
        self.subscribed[account] = sid
        self.hub.listen_account(self, account)
        try:
            seed(enc, account, self.hub.lock)
        except BaseException:
            self.subscriptions.pop(sid, None)
            self.subscribed.pop(account, None)
            self.hub.unlisten_account(self, account)
            raise
        return sid

    def _end_subscription(self, sid: int, account: str) -> None:
        self.subscriptions.pop(sid, None)
        self.subscribed.pop(account, None)
        self.hub.unlisten_account(self, account)
        self.offer(frame({"subscriptionId": sid,
                           "event": {"e": "eventStreamTerminated", "E": now_ms()}}))  # fmt: skip

    def _answers(self, msg_id: Any, limits: list[dict[str, Any]] | None, op: Any
                 ) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:  # fmt: skip
        """The two ways a journaled request is answered: with the worker's reply (in the inbox
        reader, in journal order) or without one, after the reply timeout."""
        if isinstance(op, trading.Placement):
            wire = op.wire

            def answer(reply: dict[str, Any] | None) -> Any:
                return op.answer(wire.get("id") or 0, reply)
        else:
            answer = op.answer

        def replied(reply: dict[str, Any]) -> None:
            self._answer(msg_id, limits, lambda: answer(reply))

        def unanswered() -> None:
            self._answer(msg_id, limits, lambda: answer(None))

        return replied, unanswered

    def _journaled(self, op: Any, msg_id: Any, limits: list[dict[str, Any]] | None) -> None:
        """Append ``op``'s wire command; its reply (or its absence, after the reply timeout)
        is answered without this greenlet waiting for it."""
        if self.dying:  # revoked after its check: nothing more is journaled for this socket
            return
        replied, unanswered = self._answers(msg_id, limits, op)
        st = self.st
        _, token = st.journal(op.partition).send_call(op.wire, replied)
        if token is None:  # the inbox is not subscribed: no reply will come
            unanswered()
            return
        self.pending.append((time.monotonic() + st.reply_timeout, token, unanswered))


def serve(ws: Any) -> None:
    """One ``/ws-api/v3`` socket for its whole life."""
    with serving(ws, ApiConnection) as conn:
        try:
            if conn.opened():
                _loop(ws, conn)
        except redis.RedisError as exc:  # Redis down at the opening: the client retries
            log.warning("ws-api socket ended, redis unavailable: %s", exc)
            conn.close(INTERNAL_ERROR, "retry")
        finally:
            inbox = conn.st.inbox
            for _, token, _ in conn.pending:  # nobody will read their replies
                if inbox is not None:
                    inbox.forget(token)


def _loop(ws: Any, conn: ApiConnection) -> None:
    while not conn.done.is_set():
        data = ws.receive(timeout=conn.next_wait())
        if data is not None:
            frames = [data]
            while len(frames) < BATCH:  # what else has arrived: handled together
                more = ws.receive(timeout=0)
                if more is None:
                    break
                frames.append(more)
            conn.handle_many(frames)
        if conn.pending:
            conn.sweep()


def init_app(app: Flask) -> None:
    """Register ``/ws-api/v3`` (flask-sock; the handshake checks are ``web.ws``'s)."""
    sock = Sock(app)

    @sock.route(PATH)
    def ws_api(ws: Any) -> None:
        """Binance's WebSocket API."""
        serve(ws)
