"""The Flask app factory, per-app state and JSON error handling.

Why a factory: tests, gunicorn (``app:app``) and the bench each need their own app bound to their
own Redis and markets; nothing here is module-global except the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.utils
from flask import Flask, current_app, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from engine.markets import Asset, Market, assets_of
from engine.units import SchemaError
from protocol.config import load_markets, redis_url
from protocol.keys import Keys, Namespace
from web.journal import DirectConnections, Inbox, Journal, Overloaded

#: Largest request body accepted (bytes); bigger bodies get a 413 JSON error.
DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_REPLY_TIMEOUT = 2.0
#: unprocessed entries a partition's journal may hold before new orders and amends are refused
DEFAULT_MAX_BACKLOG = 10_000
#: Retry-After (seconds) of a 503 "unavailable": Redis restarts and fail-overs take seconds
UNAVAILABLE_RETRY_AFTER = 5
#: Retry-After (seconds) of a 503 "overloaded": the worker drains thousands of entries a second
OVERLOADED_RETRY_AFTER = 1
REDIS_TIMEOUT_S = 10.0  # no web call blocks in Redis: replies come by pub/sub (web.journal)
#: The REST contract (OpenAPI 3.1), shipped with the code and served at /api/v1/openapi.json.
OPENAPI_PATH = Path(__file__).with_name("openapi.json")


class FastJSONProvider(DefaultJSONProvider):
    """``jsonify`` through orjson: compact, insertion-ordered, ~5x faster than the stdlib
    encoder on the order objects every POST answers with. Anything orjson refuses (a non-str
    key, an exotic type) falls back to the stdlib provider."""

    sort_keys = False
    compact = True

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if not kwargs:
            try:
                return orjson.dumps(obj).decode()
            except TypeError:  # orjson.JSONEncodeError
                pass
        kwargs.setdefault("separators", (",", ":"))
        return super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(f"{self.dumps(obj)}\n", mimetype=self.mimetype)


class ApiError(Exception):
    """A clean 4xx/5xx answer: raised anywhere in a view, rendered as ``{"error": {...}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Fairbook:
    """Per-app state (``app.extensions["fairbook"]``): markets, names, Redis, the journals."""

    markets: dict[str, Market]
    namespace: Namespace
    redis: redis.Redis
    reply_timeout: float
    #: ``FAIRBOOK_MAX_BACKLOG``: the journal's bound for new orders and amends (0: none)
    max_backlog: int = DEFAULT_MAX_BACKLOG
    journals: dict[int, Journal] = field(default_factory=dict)
    #: this process's reply inbox, created with the first journal
    inbox: Inbox | None = None
    #: connections for the per-request hot path (appends, order and book GETs)
    connections: DirectConnections | None = None
    #: the OpenAPI document as served (this deployment's symbols in ``Symbol``), encoded once
    openapi: bytes = b""
    #: every asset the markets trade (``engine.markets.assets_of``), computed once
    assets: dict[str, Asset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.connections = DirectConnections(self.redis)

    def get(self, key: str) -> Any:
        """GET on the hot read paths (order records, books)."""
        assert self.connections is not None
        return self.connections.call("GET", key)

    def get_hash_field(self, key: str, field_name: str) -> Any:
        """HGET on the hot path (the API key lookup of every private request)."""
        assert self.connections is not None
        return self.connections.call("HGET", key, field_name)

    @property
    def partitions(self) -> list[int]:
        return self.namespace.partitions

    def keys(self, partition: int) -> Keys:
        return self.namespace.keys(partition)

    def journal(self, partition: int) -> Journal:
        """The partition's journal, created on first use (it only holds a script)."""
        journal = self.journals.get(partition)
        if journal is None:
            if self.inbox is None:  # one per process, for every partition's replies
                self.inbox = Inbox(self.redis, [self.keys(p) for p in self.partitions])
            journal = Journal(self.redis, self.keys(partition), self.inbox, self.connections,
                              max_backlog=self.max_backlog)  # fmt: skip
            self.journals[partition] = journal
        return journal


def openapi_document(markets: dict[str, Market]) -> dict[str, Any]:
    """The shipped OpenAPI document with this deployment's symbols as the ``Symbol`` enum and
    its assets as the ``Asset`` enum (the file itself lists none: the symbols file decides)."""
    doc = orjson.loads(OPENAPI_PATH.read_bytes())
    doc["components"]["schemas"]["Symbol"]["enum"] = sorted(markets)
    doc["components"]["schemas"]["Asset"]["enum"] = sorted(assets_of(markets))
    return doc


def state() -> Fairbook:
    """The current app's :class:`Fairbook` state."""
    return current_app.extensions["fairbook"]


def error_response(status: int, code: str, message: str):
    """The one error body shape: ``{"error": {"code", "message"}}`` (another API's shape on
    its own paths: ``app.extensions["fairbook_error_renderers"]``, e.g. ``/api/v3``)."""
    for applies, render in current_app.extensions.get("fairbook_error_renderers", ()):
        if applies():
            return render(status, code, message)
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def _register_error_handlers(app: Flask) -> None:
    """Every error leaves as JSON: clients never have to parse an HTML error page."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(SchemaError)
    def _schema_error(exc: SchemaError):
        return error_response(400, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        response = error_response(status, _HTTP_CODES.get(status, "http_error"), message)
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Overloaded)
    def _overloaded(exc: Overloaded):
        response = error_response(
            503, "overloaded", "the matching engine is busy: retry after a moment"
        )
        response.headers["Retry-After"] = str(OVERLOADED_RETRY_AFTER)
        return response

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(redis.exceptions.BusyLoadingError)
    def _redis_down(exc: Exception):
        app.logger.warning("redis unavailable: %s", exc)
        response = error_response(503, "unavailable", "the order store is unavailable, retry later")
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")


def config_float(config: Any, key: str, default: float) -> float:
    """A numeric setting from the app config, else the environment, else ``default``."""
    raw = config.get(key, os.environ.get(key, default))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SystemExit(f"fairbook: {key} must be a number, got {raw!r}") from None
    if not 0 <= value < float("inf"):  # NaN and infinity fail this too
        raise SystemExit(f"fairbook: {key} must be a finite number >= 0")
    return value


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` keys override the environment:

    ``REDIS_URL``, ``FAIRBOOK_SYMBOLS`` (path), ``FAIRBOOK_NAMESPACE``, ``FAIRBOOK_PARTITIONS``,
    ``FAIRBOOK_REPLY_TIMEOUT`` (seconds to wait for the worker before answering 202),
    ``FAIRBOOK_MAX_BACKLOG`` (unprocessed entries per partition before new orders and amends
    are refused 503), the rate limits and socket caps of ``web.limits``,
    ``MAX_CONTENT_LENGTH``, ``FAIRBOOK_MARKETS`` (a ready ``dict[str, Market]``, for tests),
    ``FAIRBOOK_REDIS`` (a ready client, for tests).
    """
    config = dict(config or {})
    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    # No HTML redirects for "//" or a missing trailing slash: a client gets JSON 404 instead.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = DEFAULT_MAX_BODY
    app.config["JSON_SORT_KEYS"] = False
    app.config.update({k: v for k, v in config.items() if k.isupper()})

    markets = config.get("FAIRBOOK_MARKETS") or load_markets(config.get("FAIRBOOK_SYMBOLS"))
    reply_timeout = config_float(config, "FAIRBOOK_REPLY_TIMEOUT", DEFAULT_REPLY_TIMEOUT)
    proxies = config_float(config, "FAIRBOOK_TRUSTED_PROXIES", 0)
    if proxies != int(proxies):
        raise SystemExit("fairbook: FAIRBOOK_TRUSTED_PROXIES must be a whole number (0 = none)")
    if proxies:  # the client address (rate limits, socket caps) from N proxies' X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(proxies), x_proto=int(proxies))  # type: ignore[method-assign]
    max_backlog = config_float(config, "FAIRBOOK_MAX_BACKLOG", DEFAULT_MAX_BACKLOG)
    if max_backlog != int(max_backlog):
        raise SystemExit("fairbook: FAIRBOOK_MAX_BACKLOG must be a whole number (0 = no bound)")
    client = config.get("FAIRBOOK_REDIS")
    if client is None:
        client = redis.Redis.from_url(
            redis_url(config.get("REDIS_URL")),
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        if not redis.utils.HIREDIS_AVAILABLE:
            app.logger.warning("hiredis is not installed: Redis replies parse in pure Python")
    namespace = Namespace.from_env(
        markets, config.get("FAIRBOOK_NAMESPACE"), config.get("FAIRBOOK_PARTITIONS")
    )
    app.extensions["fairbook"] = Fairbook(
        markets=markets, namespace=namespace, redis=client, reply_timeout=reply_timeout,
        max_backlog=int(max_backlog), openapi=orjson.dumps(openapi_document(markets)),
        assets=assets_of(markets),
    )  # fmt: skip

    _register_error_handlers(app)

    from web import accounts, api, exports, headers, limits, money

    # first: its before_request counts every request, even one a later hook refuses
    limits.init_app(app, client, app.extensions["fairbook"].connections,
                    namespace.global_keys.rate_limits)

    headers.init_app(app)  # CSP, X-Frame-Options, nosniff, Referrer-Policy
    app.register_blueprint(api.public)
    money.init_app(app)  # imported above: its routes are on api.private before it is registered
    app.register_blueprint(api.private)  # with web.exports' statement and audit routes
    exports.init_app(app)  # the RQ client and rq-dashboard under /admin/rq
    accounts.init_app(app)
    from web import ws

    ws.init_app(app)  # WebSocket /ws (flask-sock) and the trading page /
    from web import binance

    binance.init_app(app)  # the Binance-compatible Spot REST API, /api/v3
    return app
