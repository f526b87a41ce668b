"""Pytest plugin: every response the test suite sees must conform to web/openapi.json.

Why: a contract that only the fuzzer checks drifts as soon as a route changes and no fuzz run
happens to reach the change; here every Flask test-client response and every ``requests``
response from a Fairbook process (one carrying ``X-Content-Type-Options: nosniff``, which every
Fairbook answer has) is validated against the document, and a non-conforming one fails the test
phase (setup, call or teardown) that received it. Violations are collected rather than raised at
the call site, so a helper that retries on any exception cannot swallow them.

Out of scope: ``/api/v3`` (the Binance-compatible API answers by Binance's contract; its own
tests check it), answers to deliberately malformed HTTP sent on raw sockets, WebSocket frames
(docs/DESIGN.md describes those; tests/web/test_fuzz_contract.py fuzzes them) and streamed
``requests`` bodies (status and content type are still checked).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import orjson
import pytest

DOCUMENT = Path(__file__).resolve().parents[1] / "web" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Contract:
    """Response validation against one OpenAPI 3.1 document (JSON Schema 2020-12 dialect)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        routes = []
        for template, item in doc["paths"].items():
            # a ``filename`` (Flask's ``path:`` converter) may hold slashes, other params not
            pattern = re.sub(
                r"\{(\w+)\}", lambda m: ".+" if m.group(1) == "filename" else "[^/]+", template
            )
            literal = template.count("{") == 0
            routes.append((not literal, template, re.compile(pattern), item))
        self.routes = [(t, rx, item) for _, t, rx, item in sorted(routes, key=lambda r: r[0])]
        self._validators: dict[int, jsonschema_rs.Draft202012Validator] = {}
        self._error = self._validator(doc["components"]["schemas"]["Error"])

    def _deref(self, obj: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in obj:
            node: Any = self.doc
            for part in obj["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def _validator(self, schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
        """A validator of ``schema`` whose ``#/components/...`` references resolve in the doc."""
        validator = self._validators.get(id(schema))
        if validator is None:
            root = {"allOf": [schema], "components": self.doc["components"]}
            validator = jsonschema_rs.Draft202012Validator(root)
            self._validators[id(schema)] = validator
        return validator

    def route(self, path: str) -> tuple[str, dict[str, Any]] | None:
        if len(path) > 1 and path.endswith("/"):  # strict_slashes is off: "/x/" is "/x"
            path = path[:-1]
        for template, rx, item in self.routes:
            if rx.fullmatch(path):
                return template, item
        return None

    def check(
        self, method: str, path: str, status: int, headers: Mapping[str, str], body: bytes | None
    ) -> str | None:
        """Why the response does not conform, or None. ``body`` None: not read (streamed)."""
        method = method.lower()
        mimetype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        found = self.route(path)
        if method == "options":  # Flask's automatic answer: an Allow list, empty body
            return None if status in (200, 404) else f"OPTIONS answered {status}"
        if found is None:  # an unknown path (or a route a test added): an error, in JSON
            if status < 400:
                return f"{method.upper()} {path}: {status} from a path the document lacks"
            return self._body(self._error, mimetype, body, f"{method.upper()} {path} -> {status}")
        if method not in found[1] and method != "head":  # a method the path does not list
            if status not in (405, 429, 503):
                return f"{method.upper()} {path}: {status}, expected 405 (not documented)"
            if status == 405 and "Allow" not in headers:
                return f"{method.upper()} {path}: 405 without Allow"
            return self._body(self._error, mimetype, body, f"{method.upper()} {path} -> {status}")
        template, item = found
        operation = item["get" if method == "head" else method]
        responses = operation["responses"]
        spec = responses.get(str(status)) or responses.get(f"{status // 100}XX")
        spec = spec or responses.get("default")
        where = f"{method.upper()} {template} -> {status}"
        if spec is None:
            return f"{where}: status not documented (documented: {', '.join(responses)})"
        spec = self._deref(spec)
        for name, header in (spec.get("headers") or {}).items():
            if self._deref(header).get("required") and name not in headers:
                return f"{where}: required header {name} missing"
        content = spec.get("content")
        if not content:
            return None
        media = content.get(mimetype) or content.get("*/*")
        if media is None:
            return f"{where}: content type {mimetype!r} not documented ({', '.join(content)})"
        if method == "head" or "schema" not in media or not mimetype.endswith("json"):
            return None
        return self._body(self._validator(media["schema"]), mimetype, body, where)

    @staticmethod
    def _body(validator: Any, mimetype: str, body: bytes | None, where: str) -> str | None:
        if body is None:
            return None
        if mimetype != "application/json":
            return f"{where}: content type {mimetype!r}, expected application/json"
        try:
            instance = orjson.loads(body)
        except orjson.JSONDecodeError:
            return f"{where}: the body is not JSON: {body[:200]!r}"
        if validator.is_valid(instance):  # the fast path; the reason only when there is one
            return None
        first = next(iter(validator.iter_errors(instance)))
        at = "/".join(str(p) for p in first.instance_path) or "(root)"
        return f"{where}: {first.message} at {at}; body {body[:300]!r}"


@lru_cache(maxsize=1)
def contract() -> Contract:
    return Contract(orjson.loads(DOCUMENT.read_bytes()))


_lock = threading.Lock()
_violations: list[str] = []


#: paths of another API's contract (Binance's Spot REST, web/binance), not this document's
FOREIGN_PREFIXES = ("/api/v3/",)


def record(method: str, path: str, status: int, headers: Mapping[str, str], body: bytes | None):
    if path.startswith(FOREIGN_PREFIXES) or path == "/api/v3":
        return
    problem = contract().check(method, path, status, headers, body)
    if problem is not None:
        with _lock:
            _violations.append(problem)


def _take() -> list[str]:
    with _lock:
        found = list(_violations)
        _violations.clear()
    return found


def _install() -> None:
    """Wrap the Flask test client and ``requests.Session.send`` (once per process)."""
    import flask.testing
    import requests

    open_ = flask.testing.FlaskClient.open
    if getattr(open_, "_conformance", False):
        return

    def flask_open(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = open_(self, *args, **kwargs)
        request = getattr(response, "request", None)
        if request is not None:
            # the test client's bodies are iterables (``is_streamed``): read, and kept, only JSON
            body = response.get_data() if response.mimetype == "application/json" else None
            record(request.method, request.path, response.status_code, response.headers, body)
        return response

    send = requests.Session.send

    def session_send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = send(self, request, **kwargs)
        url = urlsplit(request.url)
        if url.hostname in LOOPBACK and response.headers.get("X-Content-Type-Options"):
            body = None if kwargs.get("stream") else response.content
            record(request.method, url.path, response.status_code, response.headers, body)
        return response

    flask_open._conformance = True  # type: ignore[attr-defined]
    flask.testing.FlaskClient.open = flask_open  # type: ignore[method-assign]
    requests.Session.send = session_send  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    _install()


def _phase() -> Any:
    _take()  # anything left by an earlier phase's background threads is not this phase's
    result = yield
    found = _take()
    if found:
        shown = "\n".join(found[:10])
        more = f"\n... and {len(found) - 10} more" if len(found) > 10 else ""
        pytest.fail(f"responses not conforming to web/openapi.json:\n{shown}{more}", False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    return (yield from _phase())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    return (yield from _phase())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    return (yield from _phase())
