"""Account statements, audit results and rq-dashboard: the web side of the operator jobs.

Why thin: the web validates, records a statement request and enqueues its job
(``jobs.exports.request_export``); the job worker (``python -m jobs``) does the work. A
statement is visible only to the account that asked: another account's id is answered exactly
as a missing one (404 ``unknown_export``). Operators read the audits
(``GET /api/v1/admin/audits``) and RQ's queues, jobs and failures in rq-dashboard under
``/admin/rq``: the operator key comes as ``X-API-Key`` or, from a browser, as the password of
HTTP Basic authentication (any user name); no key or an unknown one is 401 with
``WWW-Authenticate: Basic`` (the browser then asks), a key that is not an operator's 403.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_file
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from werkzeug.exceptions import HTTPException

from engine.units import ErrorCode
from jobs import audit as audits
from jobs import exports, queues
from protocol.config import redis_url
from web.accounts import (
    API_KEY_HEADER,
    is_operator,
    lookup_account_counted,
    require_account,
    valid_api_key,
)
from web.api import _int_arg, json_body, private
from web.app import ApiError, error_response, state
from web.limits import count_request
from web.money import FORBIDDEN, require_operator

UNKNOWN_EXPORT = "unknown_export"
NOT_READY = "not_ready"
INVALID_RANGE = "invalid_range"
EXPORT_FIELDS = frozenset({"from", "to", "kind", "format"})
MAX_MILLIS = 10**15  # year 33658: any ms time a client can mean
DEFAULT_AUDITS = 50
DASHBOARD = "/admin/rq"
#: rq-dashboard's pages use inline script and style: allowed there only (operators' pages,
#: holding no API key in script), everything else stays under web.headers' policy
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
_EXPORT_ID = re.compile(r"[0-9a-f]{32}")

dashboard_routes = Blueprint("rq_dashboard_mount", __name__)
#: Retry-After of a 429 too_many_exports: statements take seconds to minutes
EXPORTS_RETRY_AFTER = 10


class TooManyExports(Exception):
    def __init__(self, cap: int) -> None:
        super().__init__(f"at most {cap} statements may be queued or running at once")


# -- helpers ------------------------------------------------------------------------------------


def _rq() -> redis.Redis:
    """The app's bytes-mode client for RQ (made once by :func:`init_app`)."""
    return current_app.extensions["fairbook_rq"]


def _millis(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value != int(value) \
            or not 0 <= value <= MAX_MILLIS:  # fmt: skip
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       f"{name} must be a time in milliseconds (an integer >= 0)")  # fmt: skip
    return int(value)


def _export_request(body: dict[str, Any]) -> tuple[str, str, int | None, int | None]:
    unknown = sorted(set(body) - EXPORT_FIELDS)
    if unknown:
        raise ApiError(400, ErrorCode.UNKNOWN_FIELD, f"unknown field(s): {', '.join(unknown)}")
    kind = body.get("kind")
    if kind is None:
        raise ApiError(400, ErrorCode.MISSING_FIELD, "kind is required")
    if kind not in exports.KINDS:
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       f"kind must be one of {', '.join(exports.KINDS)}")  # fmt: skip
    fmt = body.get("format", "csv")
    if fmt not in exports.FORMATS:
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       f"format must be one of {', '.join(exports.FORMATS)}")  # fmt: skip
    start, end = _millis(body, "from"), _millis(body, "to")
    if start is not None and end is not None and start > end:
        raise ApiError(400, INVALID_RANGE, "from must not be after to")
    return kind, fmt, start, end


def _own_export(export_id: str) -> dict[str, str]:
    """The caller's statement record; anything else (malformed, expired, another's) 404."""
    if _EXPORT_ID.fullmatch(export_id) is not None:
        record = exports.load_export(state().redis, state().namespace.name, export_id)
        if record is not None and record.get("account") == g.account:
            return record
    raise ApiError(404, UNKNOWN_EXPORT, "unknown export")


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _status(export_id: str, record: dict[str, str]) -> str:
    """queued, running, done or failed: the record's word, and RQ's when the job gave up
    (a job waiting for a retry is queued again)."""
    status = record.get("status", exports.QUEUED)
    if status == exports.DONE:
        return status
    try:
        job_status = Job.fetch(export_id, connection=_rq()).get_status()
    except NoSuchJobError:
        return status
    if job_status == JobStatus.FAILED:
        return exports.FAILED
    if job_status in (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.DEFERRED):
        return exports.QUEUED
    if job_status == JobStatus.STARTED:
        return exports.RUNNING
    return status


def _export_view(export_id: str, record: dict[str, str]) -> dict[str, Any]:
    status = _status(export_id, record)
    done = status == exports.DONE
    return {
        "export_id": export_id, "status": status, "kind": record.get("kind"),
        "format": record.get("format"), "from": _int(record.get("from")),
        "to": _int(record.get("to")), "created_at": _int(record.get("created_at")),
        "expires_at": _int(record.get("expires_at")),
        "progress": {"rows_done": _int(record.get("rows_done")) or 0,
                     "rows_total": _int(record.get("rows_total")) or 0},
        "rows": _int(record.get("rows")) or 0,
        "size": _int(record.get("size")) if done else None,
        "sha256": record.get("sha256") if done else None,
        "download": f"/api/v1/exports/{export_id}/download" if done else None,
        "error": record.get("error") if status == exports.FAILED else None,
    }  # fmt: skip


# -- statements ---------------------------------------------------------------------------------


@private.post("/exports")
@require_account
def create_export():
    """Ask for a statement: 202 ``{export_id, ...}``; the job worker writes it."""
    kind, fmt, start, end = _export_request(json_body())
    st = state()
    cap = exports.max_unfinished()
    if cap and exports.unfinished(_rq(), st.namespace.name, g.account) >= cap:
        raise TooManyExports(cap)
    record = exports.request_export(st.redis, _rq(), st.namespace.name, g.account, kind, fmt,
                                    start, end)  # fmt: skip
    export_id = record["export_id"]
    response = jsonify(_export_view(export_id, record))
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/exports/{export_id}"
    return response


@private.get("/exports/<export_id>")
@require_account
def get_export(export_id: str):
    """Status and progress (journal rows read / to read) of one of the caller's statements."""
    return jsonify(_export_view(export_id, _own_export(export_id)))


@private.get("/exports/<export_id>/download")
@require_account
def download_export(export_id: str):
    """The statement's file, streamed, once it is done (409 ``not_ready`` before)."""
    record = _own_export(export_id)
    if record.get("status") != exports.DONE:
        raise ApiError(409, NOT_READY, "the statement is not written yet")
    fmt = record.get("format", "csv")
    path = exports.file_path(state().namespace.name, export_id, fmt)
    if not Path(path).is_file():  # removed after its record expired, in between
        raise ApiError(404, UNKNOWN_EXPORT, "unknown export")
    response = send_file(path.resolve(), mimetype=exports.MEDIA_TYPES[fmt], as_attachment=True,
                         download_name=f"fairbook-{record.get('kind')}-{export_id}.{fmt}",
                         max_age=0, conditional=False, etag=False)  # fmt: skip
    response.headers["Cache-Control"] = "private, no-store"
    return response


# -- audits -------------------------------------------------------------------------------------


@private.get("/admin/audits")
@require_operator
def list_audits():
    """The newest audit of every partition and the audit history (operators only)."""
    st = state()
    raw = request.args.get("partition")
    partition = None
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or int(raw) not in st.partitions:
            partitions = ", ".join(str(p) for p in st.partitions)
            raise ApiError(400, ErrorCode.INVALID_FIELD, f"partition must be one of {partitions}")
        partition = int(raw)
    limit = _int_arg("limit", DEFAULT_AUDITS, audits.KEEP)
    keys = st.namespace.global_keys
    latest = audits.latest(st.redis, keys)
    return jsonify({
        "latest": [latest.get(p) for p in st.partitions if partition in (None, p)],
        "audits": audits.history(st.redis, keys, limit, partition),
    })  # fmt: skip


@private.post("/admin/audits")
@require_operator
def run_audits():
    """Audit every partition now (operators only): 202 with the job ids."""
    st = state()
    jobs = [queues.enqueue_audit(_rq(), p, st.namespace.name) for p in st.partitions]
    response = jsonify({"jobs": [{"partition": p, "job_id": j.id}
                                 for p, j in zip(st.partitions, jobs, strict=True)]})  # fmt: skip
    response.status_code = 202
    return response


# -- rq-dashboard -------------------------------------------------------------------------------


def _dashboard_operator() -> None:
    """The operator check of ``/admin/rq``: ``X-API-Key``, else HTTP Basic's password."""
    key = request.headers.get(API_KEY_HEADER)
    auth = request.authorization
    if not key and auth is not None and auth.type == "basic":
        key = auth.password
    account = None
    if valid_api_key(key):
        account = lookup_account_counted(key)  # type: ignore[arg-type]
    else:
        count_request()
    if account is None:
        raise ApiError(401, "unauthorized", "an operator's API key is required "
                       f"({API_KEY_HEADER}, or the password of HTTP Basic authentication)")
    if not is_operator(account):
        raise ApiError(403, FORBIDDEN, "only operator accounts may do this")


@dashboard_routes.route(DASHBOARD, defaults={"filename": ""}, methods=["GET", "POST"])
@dashboard_routes.route(f"{DASHBOARD}/<path:filename>", methods=["GET", "POST"])
def dashboard(filename: str):
    """rq-dashboard (its own Flask app, called here after the operator check)."""
    try:
        _dashboard_operator()
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="Fairbook operators"'
        return response
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin is not None and origin != request.host_url.rstrip("/"):
        # a page of another site posting with the browser's remembered credentials
        return error_response(403, FORBIDDEN, "cross-site requests are refused")
    environ = dict(request.environ)
    raw = environ.get("PATH_INFO", "")  # WSGI's latin-1 text of the raw bytes, as received
    environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + DASHBOARD
    environ["PATH_INFO"] = raw[len(DASHBOARD):] if raw.startswith(DASHBOARD) else "/" + filename
    inner = current_app.extensions["fairbook_rq_dashboard"]
    return Response.from_app(inner, environ, buffered=True)


def _dashboard_app(rq_client: redis.Redis, url: str) -> Flask:
    """rq-dashboard's blueprint in an app of its own, so its routes stay out of ours."""
    import rq_dashboard

    # its templates ask the app's own "static" endpoint (the favicon): the package's files
    folder = Path(rq_dashboard.__file__).with_name("static")
    inner = Flask("fairbook_rq_dashboard", static_folder=str(folder))
    inner.config.from_object(rq_dashboard.default_settings)
    inner.config["RQ_DASHBOARD_REDIS_URL"] = (url,)
    inner.register_blueprint(rq_dashboard.blueprint)
    inner.redis_conn = rq_client  # type: ignore[attr-defined]

    @inner.errorhandler(NoSuchJobError)
    def _no_job(exc: Exception):
        return _inner_error(404, "not_found", "no such job")

    @inner.errorhandler(LookupError)
    def _no_instance(exc: Exception):
        return _inner_error(404, "not_found", "no such Redis instance")

    @inner.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        response = _inner_error(exc.code or 500,
                                "not_found" if exc.code == 404 else "http_error",
                                exc.description or exc.name)  # fmt: skip
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @inner.errorhandler(redis.exceptions.ConnectionError)
    @inner.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(exc: Exception):
        response = _inner_error(503, "unavailable", "the order store is unavailable, retry later")
        response.headers["Retry-After"] = "5"
        return response

    @inner.errorhandler(Exception)
    def _bug(exc: Exception):
        current_app.logger.exception("rq-dashboard failed on %s", request.path)
        return _inner_error(500, "internal_error", "internal error")

    @inner.errorhandler(redis.exceptions.ResponseError)
    def _no_key(exc: Exception):  # RQ's Queue.compact() of an empty queue: RENAME no such key
        return _inner_error(404, "not_found", "no such queue")

    @inner.errorhandler(ValueError)
    @inner.errorhandler(TypeError)
    @inner.errorhandler(NameError)
    def _malformed(exc: Exception):
        # the dashboard's routes parse their path segments unchecked (int(), registry names):
        # a path it cannot serve is not a page of it
        current_app.logger.info("rq-dashboard could not serve %s: %r", request.path, exc)
        return _inner_error(404, "not_found", "no such dashboard page")

    return inner


def _inner_error(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _dashboard_headers(response: Response) -> Response:
    if request.path == DASHBOARD or request.path.startswith(DASHBOARD + "/"):
        response.headers.setdefault("Content-Security-Policy", DASHBOARD_CSP)
    return response


def init_app(app: Flask) -> None:
    """The RQ client (bytes mode, same server), the dashboard, and its headers (registered
    after ``web.headers``: Flask runs the later after-request hook first)."""

    @app.errorhandler(TooManyExports)
    def _too_many(exc: TooManyExports):
        response = error_response(429, "too_many_exports", str(exc))
        response.headers["Retry-After"] = str(EXPORTS_RETRY_AFTER)
        return response

    st = app.extensions["fairbook"]
    url = redis_url(app.config.get("REDIS_URL"))
    client = queues.rq_client_like(st.redis)
    app.extensions["fairbook_rq"] = client
    app.extensions["fairbook_rq_dashboard"] = _dashboard_app(client, url)
    app.register_blueprint(dashboard_routes)
    app.after_request(_dashboard_headers)
