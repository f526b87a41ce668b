"""Gunicorn entry point (``gunicorn app:app``) and the Flask CLI (``flask --app app ...``).

Commands: ``flask --app app create-account NAME`` prints ``{"account_id", "api_key"}``.
"""

from __future__ import annotations

from web.app import create_app

app = create_app()
