"""kill -9, for real: the worker process several times, redis-server once (AOF always).

Afterwards every journaled command was processed exactly once: one order record per new order,
never two replies to a command (and exactly one to each command committed while a listener was
subscribed), trade numbers contiguous without duplicates, and the recorded trades equal a clean
in-memory replay of the same journal.

Money too: the feeders fund their accounts first and mix deposits and withdrawals (some too
large, so rejected) into the storm, and resend every transfer whose append failed with the same
reference (as a client that cannot know whether it was journaled must), and repeat some on
purpose. Afterwards the balances equal a clean replay, every asset's balances (the fee account's
included) sum to the completed deposits minus the completed withdrawals, and each reference was
applied exactly once: none twice, none lost (``wk_helpers.money_audit``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from wk_helpers import money_audit

from bench.flow import OrderFlow
from engine.markets import assets_of
from protocol.config import load_markets
from protocol.keys import Keys
from redis_server import RedisServer
from reply_listener import ReplyListener
from web.journal import Journal
from worker.processor import parse_stream_id
from worker.replay import replay_partition

ROOT = Path(__file__).resolve().parents[2]
K = Keys(0)
FEEDERS = 3
PER_FEEDER = 2500


class WorkerProcess:
    """``python -m worker`` as a child process, logging to a file."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--redis-url", self.url, "--lease-ms", "1000",
             "--snapshot-every", "700", "--batch", "200"],
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


def transfers_for(flow: OrderFlow, rng: random.Random, seed: int, done: list[dict]) -> dict:
    """One deposit or withdrawal with a fresh reference, or a repeat of an earlier one (its
    reference, sometimes another amount: the first outcome stands)."""
    assets = assets_of(flow.markets)
    if done and rng.random() < 0.2:
        again = dict(done[rng.randrange(len(done))])
        if rng.random() < 0.5:
            again["amount"] = assets[again["asset"]].format(rng.randint(1, 10**9))
        return again
    kind = "deposit" if rng.random() < 0.4 else "withdrawal"
    asset = rng.choice(flow.assets)
    units = rng.randint(1, 50) * 10**assets[asset].decimals  # 1..50 whole units
    if kind == "withdrawal" and rng.random() < 0.15:
        units = 9 * 10**17  # 9 billion: more than the account holds, rejected
    wire = {"op": kind, "account": rng.choice(flow.accounts), "asset": asset,
            "amount": assets[asset].format(units)}  # fmt: skip
    ref = f"{kind[0]}{seed}-{len(done)}"
    wire["deposit_id" if kind == "deposit" else "client_withdrawal_id"] = ref
    done.append(wire)
    return wire


def feeder(port: int, seed: int, acked: list[int], stop: threading.Event) -> None:
    """Fund the flow's accounts, then append PER_FEEDER commands (and deposits and withdrawals
    among them) in small pipelined chunks, riding out Redis restarts."""
    markets = load_markets()
    flow = OrderFlow(markets, seed=seed, accounts=15)
    # no automatic retries: a resent append could journal a chunk twice behind our back
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    journal = Journal(client, 0)
    rng = random.Random(seed)
    transfers: list[dict] = []
    # a transfer whose append failed may or may not be journaled: resent with its reference
    resend = flow.deposits()  # the funding goes first, until it is acknowledged
    sent = 0
    tokens = 0
    while (sent < PER_FEEDER or resend) and not stop.is_set():
        chunk = [dict(w) for w in resend]
        if not resend:  # orders only once the funding (and every resend) is acknowledged
            chunk += [flow.next() for _ in range(min(10, PER_FEEDER - sent))]
            if rng.random() < 0.3:
                chunk.insert(rng.randrange(len(chunk) + 1), transfers_for(flow, rng, seed,
                                                                          transfers))  # fmt: skip
        for wire in chunk:  # replies go to a pretend web process's inbox
            wire["reply_to"] = f"feed{seed}-{tokens}"
            tokens += 1
        try:
            ids = journal.append_many(chunk)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.05)  # outcome unknown: those commands may or may not be journaled
            resend = [w for w in chunk if w["op"] in ("deposit", "withdrawal")]
            sent += sum(w["op"] not in ("deposit", "withdrawal") for w in chunk)
            continue
        resend = []
        for wire, cmd_id in zip(chunk, ids, strict=True):
            flow.record(wire, cmd_id)
        acked.extend(ids)
        sent += sum(w["op"] not in ("deposit", "withdrawal") for w in chunk)
        time.sleep(rng.uniform(0.03, 0.06))  # spread the flow over ~12 s of chaos


@pytest.mark.slow
def test_kill_dash_nine_everything(tmp_path: Path) -> None:
    started = time.monotonic()
    server = RedisServer(dir=tmp_path / "redis", appendfsync="always")
    server.start()
    worker = WorkerProcess(server.url, tmp_path / "worker.log")
    stop = threading.Event()
    acked: list[list[int]] = [[] for _ in range(FEEDERS)]
    threads = [
        threading.Thread(target=feeder, args=(server.port, 100 + i, acked[i], stop), daemon=True)
        for i in range(FEEDERS)
    ]
    listener = ReplyListener(server.port).start()
    # every order needs its money: fund the feeders' accounts first (journal order = apply order)
    funding = [{"op": "deposit", "account": str(a), "asset": asset, "amount": "1000000000",
                "deposit_id": f"crash-{a}-{asset}", "reply_to": f"fund-{n}"}
               for n, (a, asset) in enumerate((a, asset) for a in range(1, 16)
                                              for asset in assets_of(load_markets()))]  # fmt: skip
    funder = server.client()
    Journal(funder, 0).append_many(funding)
    funder.close()
    try:
        worker.start()
        for t in threads:
            t.start()
        rng = random.Random(7)
        kills = 0
        redis_killed = False
        while any(t.is_alive() for t in threads):
            time.sleep(rng.uniform(0.4, 1.2))
            if kills == 3 and not redis_killed:
                server.kill()  # kill -9 redis-server: only fsynced AOF survives
                time.sleep(0.3)
                server.start()
                redis_killed = True
            worker.kill()
            kills += 1
            worker.start()
        assert kills >= 4 and redis_killed, f"only {kills} kills; feeders were too fast"

        client = server.client()
        last = client.xrevrange(K.stream, count=1)[0][0].decode()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            applied = client.get(K.applied)
            if applied is not None and applied.decode() == last:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker never caught up to {last}\n{worker.log_tail()}")
        worker.stop()

        entries = client.xrange(K.stream)
        journaled = {json.loads(f[b"c"])["id"]: json.loads(f[b"c"]) for _, f in entries}
        assert len(journaled) == len(entries)  # ids unique
        # nothing lost: every acknowledged append is in the journal (AOF always)
        for ids in acked:
            assert set(ids) <= set(journaled)
        # every new order got exactly one order record
        new_ids = [i for i, w in journaled.items() if w["op"] == "new"]
        pipe = client.pipeline(transaction=False)
        for i in new_ids:
            pipe.get(K.order(i))
        records = pipe.execute()
        assert [json.loads(h)["order_id"] if h else None for h in records] == new_ids
        # funded first: no order refused or cut short for want of funds
        assert not [r for r in records if b"insufficient_funds" in r]
        # replies: never twice, never for a command that is not journaled, and exactly one for
        # each command committed after the listener's last (re)subscription
        time.sleep(0.3)
        listener.stop()
        tokens = {w["reply_to"] for w in journaled.values()}
        assert set(listener.counts) <= tokens
        assert max(listener.counts.values()) == 1, "a reply was published twice"
        since = listener.resubscribed_at[-1]
        assert len(listener.resubscribed_at) >= 2  # it did live through the Redis restart
        later = [w["reply_to"] for sid, w in zip((e[0].decode() for e in entries),
                                                 journaled.values(), strict=True)
                 if since is None or parse_stream_id(sid) > parse_stream_id(since)]  # fmt: skip
        assert len(later) > 500
        assert all(listener.counts[t] == 1 for t in later), "a committed command got no reply"
        order_keys = sum(1 for _ in client.scan_iter(match=K.order("*"), count=1000))
        assert order_keys == len(new_ids)
        # trades: contiguous partition numbering, per-symbol ids unique and contiguous
        trades = client.xrange(K.trades)
        numbers = [int(t[0].split(b"-")[1]) for t in trades]
        assert numbers == list(range(1, len(numbers) + 1))
        per_symbol: dict[str, list[int]] = {}
        for _, fields in trades:
            record = json.loads(fields[b"t"])
            per_symbol.setdefault(record["symbol"], []).append(record["trade_id"])
        for ids_ in per_symbol.values():
            assert ids_ == list(range(1, len(ids_) + 1))
        assert len(numbers) > 1000
        # and they are exactly what a clean replay of the journal produces
        result = replay_partition(client, 0, load_markets())
        assert result.ok, result.summary()
        assert result.trades == len(numbers)
        assert result.balances_checked > 0  # the balances hashes are what the journal implies
        # money: balances = a clean replay, conservation, each reference applied exactly once
        audit = money_audit(client, load_markets())
        deposits, withdrawals = audit["transfers"]["deposit"], audit["transfers"]["withdrawal"]
        assert deposits["completed"] >= FEEDERS * 15 * 3 and deposits["rejected"] == 0
        assert withdrawals["completed"] > 10 and withdrawals["rejected"] > 0
        assert audit["repeated_references"] > 5  # repeats and resends were journaled
        assert audit["fees"]["USDT"][0] > 0
        assert result.candles_checked > 0  # the candles too survived every kill -9
        recoveries = worker.log_path.read_text(errors="replace").count("recovered from")
        # (a restart killed while still waiting for the lease never gets to recover)
        assert 1 <= recoveries <= kills + 1, f"{recoveries} recoveries for {kills} restarts"
    finally:
        stop.set()
        listener.stop()
        worker.stop()
        server.kill()
    assert time.monotonic() - started < 90
