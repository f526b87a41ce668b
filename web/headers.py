"""Security headers on every response.

Why: the trading page holds an API key, so it must not run script it did not load from this
origin (no inline script, no injected handlers), must not be framed (clickjacking) and must not
leak its address to other sites. Every response, JSON included, carries ``nosniff`` so a browser
never guesses an API body (which may echo client input) to be HTML or script.
"""

from __future__ import annotations

from flask import Flask, Response

#: No inline script or style anywhere: the page is index.html + app.js + style.css.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def add_security_headers(response: Response) -> Response:
    """``nosniff`` everywhere; the page headers on everything that is not JSON (the page,
    /static files, anything a browser might render)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype != "application/json":
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)
