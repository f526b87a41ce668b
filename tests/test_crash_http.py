"""kill -9 through the front door: HTTP clients -> gunicorn web -> journal -> worker.

Concurrent clients post orders over real HTTP while the worker process is killed with SIGKILL
several times (and restarted), and the web server once. Afterwards every order the web
acknowledged (201 or 202) was journaled exactly once and processed exactly once, every fill a
201 reported exists in the recorded trades, and those trades equal a clean replay of the journal.

Money through the same door: an operator funds the traders (``POST /api/v1/admin/deposits``)
and keeps depositing during the storm, the traders withdraw (``POST /api/v1/withdrawals``, some
beyond their means), and a request that got no answer (the web died) or a 202 (the worker did)
is retried with the same reference until a 201 tells its outcome, as a client must; some are
repeated on purpose. Afterwards every 201 of a reference told the same outcome, the one Redis
records; the balances equal a clean replay; every asset's balances (the fee account's included)
sum to the completed deposits minus the completed withdrawals; and each reference was applied
exactly once (``tests/worker/wk_helpers.money_audit``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.stack import Stack
from protocol.config import load_markets
from protocol.keys import Keys
from tests.reply_listener import ReplyListener
from tests.worker.wk_helpers import money_audit
from worker.replay import replay_partition

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

K = Keys(0)
CLIENTS = 4
SECONDS = 14.0
#: each trader's funding, before the storm
FUNDING = {"USDT": "10000000", "BTC": "1000"}
TRANSFER_PATH = {"deposit": "/api/v1/admin/deposits", "withdrawal": "/api/v1/withdrawals"}


class Transfers:
    """One client's deposits or withdrawals by reference: the bodies, every 201 answer, the
    202s, and those still waiting for an outcome (no answer or a 202: retried, same reference)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.ref_field = "deposit_id" if kind == "deposit" else "client_withdrawal_id"
        self.bodies: dict[str, dict] = {}
        self.answers: dict[str, list[dict]] = {}
        self.accepted: dict[str, list[dict]] = {}  # 202 bodies
        self.pending: list[str] = []
        self.lost: int = 0  # requests that got no answer at all

    def post(self, session: requests.Session, url: str, headers: dict, ref: str) -> bool:
        """Send (or resend) the transfer ``ref``; True once a 201 told its outcome."""
        body = self.bodies[ref]
        try:
            resp = session.post(url + TRANSFER_PATH[self.kind], data=json.dumps(body),
                                headers=headers, timeout=10)  # fmt: skip
        except requests.RequestException:  # the web died mid-request: journaled or not?
            self.lost += 1
            self._wait(ref)
            return False
        assert resp.status_code in (201, 202), (resp.status_code, resp.text)
        answer = resp.json()
        assert answer[self.ref_field] == ref and answer["type"] == self.kind
        if resp.status_code == 202:  # journaled, not yet applied: ask again later
            self.accepted.setdefault(ref, []).append(answer)
            self._wait(ref)
            return False
        self.answers.setdefault(ref, []).append(answer)
        if ref in self.pending:
            self.pending.remove(ref)
        return True

    def _wait(self, ref: str) -> None:
        if ref not in self.pending:
            self.pending.append(ref)


def transfer_body(kind: str, ref: str, asset: str, amount: str, account: str | None) -> dict:
    body = {"asset": asset, "amount": amount,
            ("deposit_id" if kind == "deposit" else "client_withdrawal_id"): ref}  # fmt: skip
    if account is not None:
        body["account_id"] = account
    return body


def operator_loop(url: str, api_key: str, accounts: list[str], seed: int, book: Transfers,
                  stop: threading.Event, errors: list[BaseException]) -> None:  # fmt: skip
    """Deposit to the traders now and then (fresh references, resends, a few repeats)."""
    try:
        rng = random.Random(seed)
        session = requests.Session()
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        n = 0
        while not stop.is_set():
            time.sleep(rng.uniform(0.1, 0.3))
            if book.pending:
                book.post(session, url, headers, book.pending[0])
                continue
            if book.answers and rng.random() < 0.15:  # a repeat on purpose
                book.post(session, url, headers, rng.choice(sorted(book.answers)))
                continue
            n += 1
            ref = f"op-{seed}-{n}"
            asset = rng.choice(sorted(FUNDING))
            amount = f"{rng.randint(1, 500)}" if asset == "USDT" else f"0.{rng.randint(1, 999):03d}"
            book.bodies[ref] = transfer_body("deposit", ref, asset, amount,
                                             rng.choice(accounts))  # fmt: skip
            book.post(session, url, headers, ref)
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(exc)


def client_loop(
    url: str, api_key: str, seed: int, acked: dict[int, dict], lost: list[str],
    stop: threading.Event, errors: list[BaseException], withdrawals: Transfers,
) -> None:  # fmt: skip
    try:
        _post_until_stopped(url, api_key, seed, acked, lost, stop, withdrawals)
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(exc)


def _withdraw(rng: random.Random, session: requests.Session, url: str, headers: dict,
              seed: int, n: int, book: Transfers) -> None:  # fmt: skip
    """A withdrawal now and then: a resend first, sometimes a repeat, else a fresh one (one in
    seven beyond the account's means: rejected ``insufficient_funds``)."""
    if book.pending:
        book.post(session, url, headers, book.pending[0])
        return
    if book.answers and rng.random() < 0.2:
        book.post(session, url, headers, rng.choice(sorted(book.answers)))
        return
    ref = f"w-{seed}-{n}"
    asset = rng.choice(sorted(FUNDING))
    if rng.random() < 1 / 7:
        amount = "9000000000"  # far beyond FUNDING
    else:
        amount = f"{rng.randint(1, 50)}.5" if asset == "USDT" else f"0.{rng.randint(1, 99):04d}"
    book.bodies[ref] = transfer_body("withdrawal", ref, asset, amount, None)
    book.post(session, url, headers, ref)


def _post_until_stopped(
    url: str, api_key: str, seed: int, acked: dict[int, dict], lost: list[str],
    stop: threading.Event, withdrawals: Transfers,
) -> None:  # fmt: skip
    """Post a crossing flow of limits and markets (and some withdrawals) until told to stop."""
    rng = random.Random(seed)
    session = requests.Session()
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    n = 0
    while not stop.is_set():
        n += 1
        if rng.random() < 0.06:
            _withdraw(rng, session, url, headers, seed, n, withdrawals)
            continue
        side = rng.choice(("buy", "sell"))
        if rng.random() < 0.15:
            body = {"symbol": "BTC-USDT", "side": side, "type": "market",
                    "quantity": f"0.{rng.randint(100, 3000):05d}"}  # fmt: skip
        else:
            offset = rng.randint(-5, 5)
            price = 30000 + (offset if side == "sell" else -offset)
            body = {"symbol": "BTC-USDT", "side": side, "type": "limit", "price": f"{price}.00",
                    "quantity": f"0.{rng.randint(100, 3000):05d}"}  # fmt: skip
        body["client_order_id"] = f"c{seed}-{n}"
        try:
            resp = session.post(url + "/api/v1/orders", data=json.dumps(body), headers=headers,
                                timeout=10)  # fmt: skip
        except requests.RequestException as exc:  # the web was killed mid-request
            lost.append(type(exc).__name__)
            session = requests.Session()
            time.sleep(0.1)
            continue
        assert resp.status_code in (201, 202), (resp.status_code, resp.text)
        answer = resp.json()
        assert answer["order_id"] not in acked
        acked[answer["order_id"]] = {"status": resp.status_code, "body": answer,
                                     "client_order_id": body["client_order_id"]}  # fmt: skip


def kill_group(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_acknowledged_orders_survive_kill_dash_nine_of_worker_and_web(tmp_path: Path) -> None:
    started = time.monotonic()
    worker_cmd = f"{sys.executable} -m worker --lease-ms 1000 --snapshot-every 500"
    stack = Stack(reply_timeout=0.3, log_dir=tmp_path, env={"FAIRBOOK_WORKER_CMD": worker_cmd})
    os.environ["FAIRBOOK_WORKER_CMD"] = worker_cmd  # Stack.start_worker reads it from here
    stop = threading.Event()
    acked: list[dict[int, dict]] = [{} for _ in range(CLIENTS)]
    lost: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    withdrawals = [Transfers("withdrawal") for _ in range(CLIENTS)]
    deposits = Transfers("deposit")
    listener: ReplyListener | None = None
    try:
        stack.start()
        listener = ReplyListener(stack.redis_server.port).start()
        traders = [stack.create_account(f"trader{i}") for i in range(CLIENTS)]
        keys = [t["api_key"] for t in traders]
        operator = stack.create_account("treasury", operator=True)["api_key"]
        op_session = requests.Session()
        op_headers = {"X-API-Key": operator, "Content-Type": "application/json"}
        for trader in traders:  # funded through the front door before the storm
            for asset, amount in FUNDING.items():
                ref = f"fund-{trader['account_id']}-{asset}"
                deposits.bodies[ref] = transfer_body("deposit", ref, asset, amount,
                                                     trader["account_id"])  # fmt: skip
                deadline = time.monotonic() + 30
                while not deposits.post(op_session, stack.url, op_headers, ref):
                    assert time.monotonic() < deadline, "the funding was never applied"
                    time.sleep(0.1)
        threads = [
            threading.Thread(target=client_loop, daemon=True,
                             args=(stack.url, keys[i], 100 + i, acked[i], lost[i], stop, errors,
                                   withdrawals[i]))
            for i in range(CLIENTS)
        ]  # fmt: skip
        threads.append(threading.Thread(
            target=operator_loop, daemon=True,
            args=(stack.url, operator, [t["account_id"] for t in traders], 7, deposits, stop,
                  errors)))  # fmt: skip
        for t in threads:
            t.start()
        rng = random.Random(3)
        worker_kills = web_kills = 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.8, 1.8))
            if worker_kills == 2 and not web_kills:
                kill_group(stack.web_proc)
                web_kills += 1
                time.sleep(0.2)
                stack.start_web()
            kill_group(stack.worker_proc)
            worker_kills += 1
            stack.start_worker(wait=False)
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert not errors, errors
        assert worker_kills >= 4 and web_kills == 1

        # every transfer whose outcome nobody heard is asked again, same reference, until a 201
        # tells it (the worker is up again): applied once, whether it was journaled or not
        sessions = [requests.Session() for _ in range(CLIENTS)]
        resolve_by = time.monotonic() + 60
        for book, session, headers in [
            (deposits, op_session, op_headers),
            *((withdrawals[i], sessions[i], {"X-API-Key": keys[i],
                                             "Content-Type": "application/json"})
              for i in range(CLIENTS)),
        ]:  # fmt: skip
            while book.pending:
                assert time.monotonic() < resolve_by, (book.kind, book.pending)
                if not book.post(session, stack.url, headers, book.pending[0]):
                    time.sleep(0.1)

        client = stack.redis()
        last = client.xrevrange(K.stream, count=1)[0][0]
        wait_until = time.monotonic() + 60
        while client.get(K.applied) != last:
            assert time.monotonic() < wait_until, stack.log_tail("worker")
            time.sleep(0.05)

        journal = [json.loads(fields["c"]) for _, fields in client.xrange(K.stream)]
        ids = [w["id"] for w in journal]
        assert len(ids) == len(set(ids)), "a command was journaled twice"
        order_ids = [w["id"] for w in journal if w["op"] == "new"]
        every_ack = {oid: a for per_client in acked for oid, a in per_client.items()}
        assert len(every_ack) > 300, "too few orders to prove anything"
        assert any(a["status"] == 202 for a in every_ack.values()), "never hit a dead worker"
        # nothing lost: each acknowledged order is in the journal, with the client's id
        by_id = {w["id"]: w for w in journal}
        for oid, ack in every_ack.items():
            assert by_id[oid]["client_order_id"] == ack["client_order_id"]
        # processed exactly once: one order record per journaled order ...
        pipe = client.pipeline(transaction=False)
        for oid in order_ids:
            pipe.get(K.order(oid))
        records = pipe.execute()
        assert None not in records, "a journaled order was never processed"
        assert [json.loads(r)["order_id"] for r in records] == order_ids
        # (funded first: none refused or cut short for want of funds)
        assert not [r for r in records if json.loads(r)["reject_reason"] == "insufficient_funds"]
        # ... and one reply published per tagged command, heard or not (Redis never restarted,
        # so the listener was subscribed all along)
        time.sleep(0.3)
        listener.stop()
        assert len(listener.resubscribed_at) == 1
        tokens = [w["reply_to"] for w in journal if "reply_to" in w]
        assert len(tokens) > 0.9 * len(journal)  # untagged only while a new web's inbox starts
        assert dict(listener.counts) == dict.fromkeys(tokens, 1), "a reply lost or doubled"
        # the recorded trades: contiguous, each 201's fills among them, equal to a clean replay
        trades = client.xrange(K.trades)
        numbers = [int(entry_id.split("-")[1]) for entry_id, _ in trades]
        assert numbers == list(range(1, len(numbers) + 1))
        recorded = {json.loads(f["t"])["trade_id"] for _, f in trades}
        for ack in every_ack.values():
            for fill in ack["body"].get("fills", []):
                assert fill["trade_id"] in recorded
        result = replay_partition(stack.redis_server.client(), 0, load_markets())
        assert result.ok, result.summary()
        assert result.trades == len(trades) > 100
        assert result.balances_checked > 0  # the balances hashes are what the journal implies

        # money: balances = a clean replay, conservation, each reference applied exactly once
        audit = money_audit(stack.redis_server.client(), load_markets())
        recorded_transfers = {}
        for kind in ("deposit", "withdrawal"):
            for raw in client.scan_iter(match=K.transfers("*", kind)):
                for row in client.lrange(raw, 0, -1):
                    obj = json.loads(row)
                    ref = obj["deposit_id" if kind == "deposit" else "client_withdrawal_id"]
                    recorded_transfers[(kind, obj["account_id"], ref)] = obj
        journaled_ref = {}  # (kind, account, reference) -> the ids of every command using it
        for w in journal:
            if w["op"] in ("deposit", "withdrawal"):
                ref = w["deposit_id" if w["op"] == "deposit" else "client_withdrawal_id"]
                journaled_ref.setdefault((w["op"], w["account"], ref), []).append(w["id"])
        repeated = 0
        for book, accounts in [(deposits, None), *((w, [t["account_id"]])
                               for w, t in zip(withdrawals, traders, strict=True))]:  # fmt: skip
            assert not book.pending
            for ref, body in book.bodies.items():
                account = body.get("account_id") or accounts[0]
                key = (book.kind, account, ref)
                answers = book.answers[ref]  # every reference was told its outcome
                # every 201 of a reference told the same outcome: the first, as recorded
                assert all(a == answers[0] for a in answers), answers
                assert answers[0] == recorded_transfers[key], (answers[0], recorded_transfers[key])
                assert answers[0]["id"] == journaled_ref[key][0]
                # a 202 names a journaled command of that reference
                for accepted in book.accepted.get(ref, []):
                    assert accepted["id"] in journaled_ref[key]
                repeated += len(journaled_ref[key]) > 1
        assert set(journaled_ref) == set(recorded_transfers)
        assert audit["transfers"]["deposit"]["completed"] == len(deposits.bodies)
        withdrawn = audit["transfers"]["withdrawal"]
        assert withdrawn["completed"] > 5 and withdrawn["rejected"] > 0, withdrawn
        assert repeated > 0 and audit["repeated_references"] >= repeated
        assert audit["fees"]["USDT"][0] > 0
    finally:
        os.environ.pop("FAIRBOOK_WORKER_CMD", None)
        stop.set()
        if listener is not None:
            listener.stop()
        stack.stop()
    assert time.monotonic() - started < 120
