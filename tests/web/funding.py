"""Funding test accounts: every order now needs the money it may spend (pre-trade risk).

``fund`` journals one deposit per asset and partition with the benchmarks' own funding path
(``bench.stack.journal_deposits``). A partition's journal is applied in order, so orders
journaled after it find the money there without waiting for the worker; no reply is asked for.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from bench.stack import journal_deposits
from engine.markets import assets_of
from protocol.config import load_markets
from protocol.keys import Namespace

#: far beyond what any test order spends (10**9 of each asset; 8 decimals stay < 10**18 units)
GENEROUS = "1000000000"


def asset_codes() -> list[str]:
    """Every asset the shipped symbols file trades."""
    return list(assets_of(load_markets()))


def fund(
    target: Any,
    account: str,
    amounts: Mapping[str, str] | None = None,
    partitions: Iterable[int] | None = None,
    namespace: str | None = None,
) -> None:
    """Journal deposits for ``account``: ``amounts`` (asset -> decimal string; default
    :data:`GENEROUS` of every asset) in each partition (default: every partition in use).

    ``target``: a ``bench.stack.Stack`` (its Redis, namespace and partitions), a Redis URL or a
    ``redis.Redis`` client.
    """
    amounts = dict(amounts) if amounts is not None else {a: GENEROUS for a in asset_codes()}
    own = None
    ns: Namespace | None = getattr(target, "namespace", None)
    if hasattr(target, "redis") and callable(target.redis):  # a Stack
        client = own = target.redis()
    elif isinstance(target, str):
        client = own = redis.Redis.from_url(target, decode_responses=True, socket_timeout=30)
    else:
        client = target
    if partitions is None:
        partitions = ns.partitions if ns is not None else [0]
    if ns is None or namespace is not None:
        ns = Namespace(namespace or "fb")
    try:  # deposit ids are unique per partition: one tag per call
        journal_deposits(client, ns, account, amounts, list(partitions), secrets.token_hex(4))
    finally:
        if own is not None:
            own.close()


def funded_account(stack: Any, name: str, operator: bool = False, **kw: Any) -> dict[str, str]:
    """``stack.create_account`` and :func:`fund` it generously."""
    acct = stack.create_account(name, operator=operator)
    fund(stack, acct["account_id"], **kw)
    return acct
