"""Process configuration shared by every Fairbook process: markets file, namespace, partitions.

Read once at start-up (web, worker, replay, CLI all call the same functions), so two processes
of one deployment cannot disagree on where a symbol lives or what its keys are called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.markets import Market, markets_from_list

#: The markets shipped with Fairbook (``FAIRBOOK_SYMBOLS`` points elsewhere).
DEFAULT_SYMBOLS_FILE = Path(__file__).with_name("symbols.json")
SYMBOLS_ENV = "FAIRBOOK_SYMBOLS"
NAMESPACE_ENV = "FAIRBOOK_NAMESPACE"
PARTITIONS_ENV = "FAIRBOOK_PARTITIONS"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def load_markets(path: str | os.PathLike[str] | None = None) -> dict[str, Market]:
    """The markets of the symbols file (``path``, else ``FAIRBOOK_SYMBOLS``, else the shipped
    one); a file that cannot be used stops start-up with a one-line reason."""
    chosen = Path(path or os.environ.get(SYMBOLS_ENV) or DEFAULT_SYMBOLS_FILE)
    try:
        raw = json.loads(chosen.read_text())
    except OSError as exc:
        raise SystemExit(f"fairbook: cannot read symbols file {chosen}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"fairbook: symbols file {chosen} is not valid JSON: {exc}") from None
    try:
        return markets_from_list(raw)
    except ValueError as exc:
        raise SystemExit(f"fairbook: symbols file {chosen}: {exc}") from None


def redis_url(explicit: str | None = None) -> str:
    """``explicit``, else ``REDIS_URL``, else a local Redis.

    The URL may carry a password (``redis://:secret@host:6379/0``, or ``user:secret@`` for an
    ACL user) and TLS (``rediss://...?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``):
    every process builds its clients from it with ``redis.Redis.from_url``, and the
    connections made by hand copy the pool's ``connection_kwargs`` (password, TLS included).
    """
    return explicit or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def redacted_url(url: str) -> str:
    """The URL fit for a log line or ``--help``: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "(unparsable Redis URL)"
