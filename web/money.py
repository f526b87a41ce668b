"""Money routes: balances, withdrawals, the ledger, and the operators' deposits (REST and CLI).

Why here and this thin: the engine keeps the ledger (journaled, deterministic) and the worker
commits what it decided (``balances:``, ``ledger:``, ``deposits:`` / ``withdrawals:`` keys of
each partition). The web validates with the shared schema, journals deposits and withdrawals
like orders, and reads only keys named by the caller's own account id, so another account's
money is never visible. Operators (``operator`` = "1" in ``<ns>:account:<id>``) may deposit and
read any account's balances; anyone else gets 403 ``forbidden``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import redis
from flask import Flask, g, jsonify, request

from engine.commands import DEPOSIT, WITHDRAWAL
from engine.units import ErrorCode, SchemaError
from engine.validation import TRANSFER_REFERENCE, check_identifier, shown, validate_transfer_request
from protocol import wire
from web.accounts import authenticate, is_operator, require_account
from web.api import _error_from_reply, _int_arg, json_body, keys, private
from web.app import ApiError, state
from web.journal import Overloaded

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_LIST = 100
MAX_LIST = 1000  # the worker keeps the newest 1,000 of each list
#: seconds ``flask --app app deposit`` waits for the worker before printing "accepted"
CLI_WAIT_S = 5.0
UNKNOWN_ACCOUNT = "unknown_account"
FORBIDDEN = "forbidden"
_PARTITION = re.compile(r"[0-9]{1,3}")


# -- helpers ------------------------------------------------------------------------------------


def require_operator(view: F) -> F:
    """Decorator: 401 without a valid key, 403 ``forbidden`` unless the account is an operator
    (checked before the body is read: a non-operator learns nothing about its request)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        account = authenticate()
        if not is_operator(account):
            raise ApiError(403, FORBIDDEN, "only operator accounts may do this")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _partition_error() -> ApiError:
    partitions = ", ".join(str(p) for p in state().partitions)
    return ApiError(400, ErrorCode.INVALID_FIELD, f"partition must be one of {partitions}")


def default_partition() -> int:
    """Partition 0, or the lowest one in use when no symbol lives in partition 0."""
    partitions = state().partitions
    return 0 if 0 in partitions else partitions[0]


def partition_value(value: Any) -> int:
    """A body's ``partition``: absent/null = the default, else an integer in use."""
    if value is None:
        return default_partition()
    if type(value) is not int or value not in state().partitions:
        raise _partition_error()
    return value


def _partition_arg() -> int:
    """The ``?partition=`` query parameter (digits of a partition in use)."""
    raw = request.args.get("partition")
    if raw is None:
        return default_partition()
    if _PARTITION.fullmatch(raw) is None or int(raw) not in state().partitions:
        raise _partition_error()
    return int(raw)


def account_exists(account_id: str) -> bool:
    st = state()
    return bool(st.redis.exists(st.namespace.global_keys.account(account_id)))


def balances_of(account: str, partition: int) -> list[dict[str, str]]:
    """``[{asset, available, locked}]`` of one account in one partition, sorted by asset."""
    return wire.parse_balances(state().redis.hgetall(keys(partition).balances(account)))


def _json_list(key: str, limit: int, keep: Callable[[Any], bool] | None = None) -> list[Any]:
    """The newest ``limit`` JSON items of a list the worker keeps (newest first); with ``keep``
    the whole list (at most 1,000 items) is read and filtered."""
    rows = state().redis.lrange(key, 0, (MAX_LIST if keep else limit) - 1)
    out = []
    for row in rows:
        try:
            item = json.loads(row)
        except ValueError:  # never written so by the worker: skipped, not a 500
            continue
        if keep is None or keep(item):
            out.append(item)
        if len(out) == limit:
            break
    return out


def transfer_command(body: Any, kind: str) -> tuple[dict[str, Any], int]:
    """A deposit or withdrawal request as its wire command (account of a withdrawal left to
    the caller) and its partition; SchemaError / ApiError 400 when it is not valid."""
    fields = validate_transfer_request(body, state().assets, kind)
    partition = partition_value(body.get("partition"))
    return fields, partition


def submit_transfer(partition: int, command: dict[str, Any], timeout: float) -> tuple[int, Any]:
    """Journal it; ``(201, transfer object)``, or ``(202, accepted body)`` without a reply in
    ``timeout`` (journaled: it will be applied; the same reference then answers its outcome)."""
    command_id, reply = state().journal(partition).submit(command, timeout)
    if reply is None:
        ref = TRANSFER_REFERENCE[command["op"]]
        return 202, {
            "id": command_id, "status": "accepted", "type": command["op"],
            ref: command[ref], "account_id": command["account"], "asset": command["asset"],
            "amount": command["amount"], "partition": partition,
        }  # fmt: skip
    if not reply.get("ok"):
        raise _error_from_reply(reply)
    return 201, reply["transfer"]


def _transfer_response(partition: int, command: dict[str, Any]):
    status, body = submit_transfer(partition, command, state().reply_timeout)
    return jsonify(body), status


# -- private: the caller's own money ------------------------------------------------------------


@private.get("/balances")
@require_account
def balances():
    """The caller's balances (available / locked) in one partition."""
    return jsonify(balances_of(g.account, _partition_arg()))


@private.post("/withdrawals")
@require_account
def withdraw():
    """Withdraw from the caller's available balance: 201 with the outcome (``rejected`` with
    ``insufficient_funds`` too), 202 when the worker is slow. A repeated
    ``client_withdrawal_id`` answers the first outcome and changes nothing."""
    body = json_body()
    fields, partition = transfer_command(body, WITHDRAWAL)
    return _transfer_response(partition, {"op": WITHDRAWAL, "account": g.account, **fields})


@private.get("/withdrawals")
@require_account
def list_withdrawals():
    """The caller's withdrawals, newest first."""
    partition = _partition_arg()
    limit = _int_arg("limit", DEFAULT_LIST, MAX_LIST)
    return jsonify(_json_list(keys(partition).transfers(g.account, WITHDRAWAL), limit))


@private.get("/ledger")
@require_account
def ledger():
    """The caller's balance changes, newest first (optionally of one asset)."""
    asset = request.args.get("asset")
    if asset is not None and asset not in state().assets:
        raise ApiError(400, ErrorCode.UNKNOWN_ASSET, f"unknown asset {shown(asset)}")
    partition = _partition_arg()
    limit = _int_arg("limit", DEFAULT_LIST, MAX_LIST)
    keep = None if asset is None else (lambda e: isinstance(e, dict) and e.get("asset") == asset)
    return jsonify(_json_list(keys(partition).ledger(g.account), limit, keep))


# -- operators ----------------------------------------------------------------------------------


@private.post("/admin/deposits")
@require_operator
def admin_deposit():
    """Credit an account (operators only). ``deposit_id`` is the operator's transfer
    reference: a repeat answers the first outcome and changes nothing."""
    body = json_body()
    fields, partition = transfer_command(body, DEPOSIT)
    if not account_exists(fields["account"]):
        raise ApiError(400, UNKNOWN_ACCOUNT, f"no account {shown(fields['account'])}")
    return _transfer_response(partition, fields)


@private.get("/admin/accounts/<account_id>/balances")
@require_operator
def admin_balances(account_id: str):
    """Any account's balances (operators only); 404 ``unknown_account`` if it does not exist."""
    try:
        check_identifier(account_id, "account_id")
    except SchemaError:
        raise ApiError(404, UNKNOWN_ACCOUNT, "unknown account") from None
    if not account_exists(account_id):
        raise ApiError(404, UNKNOWN_ACCOUNT, "unknown account")
    return jsonify(balances_of(account_id, _partition_arg()))


# -- CLI ----------------------------------------------------------------------------------------


def new_deposit_id() -> str:
    return "cli-" + secrets.token_hex(8)


def init_app(app: Flask) -> None:
    """Register ``flask --app app deposit ACCOUNT_ID ASSET AMOUNT [--id REF] [--partition N]``."""

    @app.cli.command("deposit")
    @click.argument("account_id")
    @click.argument("asset")
    @click.argument("amount")
    @click.option("--id", "deposit_id", default=None,
                  help="the transfer reference (default: cli- and 16 random hex digits); a "
                       "repeated one is answered with its first outcome and credits nothing")
    @click.option("--partition", default=None, type=int,
                  help="the partition whose ledger is credited (default 0)")
    @click.option("--wait", default=CLI_WAIT_S, type=float, show_default=True,
                  help="seconds to wait for the worker's answer")  # fmt: skip
    def deposit_command(account_id: str, asset: str, amount: str, deposit_id: str | None,
                        partition: int | None, wait: float) -> None:  # fmt: skip
        """Credit AMOUNT of ASSET to ACCOUNT_ID; print the transfer as JSON (or, if the worker
        does not answer in time, {"id", "status": "accepted", ...}: journaled, it will be
        applied)."""
        body = {"account_id": account_id, "asset": asset, "amount": amount,
                "deposit_id": new_deposit_id() if deposit_id is None else deposit_id,
                "partition": partition}  # fmt: skip
        try:
            fields, where = transfer_command(body, DEPOSIT)
        except (SchemaError, ApiError) as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        try:
            known = account_exists(fields["account"])
        except redis.RedisError as exc:
            raise click.ClickException(f"unavailable: Redis failed ({type(exc).__name__}); "
                                       "nothing was journaled") from None  # fmt: skip
        if not known:
            raise click.ClickException(f"{UNKNOWN_ACCOUNT}: no account {shown(account_id)}")
        try:
            _, result = submit_transfer(where, fields, max(0.0, wait))
        except ApiError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        except Overloaded as exc:
            raise click.ClickException(f"overloaded: {exc}; nothing was journaled") from None
        except redis.RedisError as exc:  # the outcome of an append cut short is unknown
            raise click.ClickException(
                f"unavailable: Redis failed ({type(exc).__name__}); if the deposit was "
                f"journaled, repeating it with --id {fields['deposit_id']} credits it once"
            ) from None
        finally:
            inbox = state().inbox
            if inbox is not None:
                inbox.stop()
        click.echo(json.dumps(result))
