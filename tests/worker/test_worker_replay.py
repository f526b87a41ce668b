"""``python -m worker replay``: passes on a clean run, fails loudly on a tampered record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from wk_helpers import feed, last_stream_id, wait_applied

from protocol.keys import Keys

K = Keys(0)
ROOT = Path(__file__).resolve().parents[2]


def run_replay(url: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "worker", "replay", "--redis-url", url, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_replay_cli_clean_then_tampered(redis_client, redis_url, start_worker, markets):
    feed(redis_client, markets, 1500, seed=21)
    w = start_worker(snapshot_every=500, batch_size=200)
    wait_applied(redis_client, last_stream_id(redis_client))
    w.stop()
    trades = redis_client.xrange(K.trades)
    assert len(trades) > 100

    ok = run_replay(redis_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "replay OK" in ok.stdout and f"{len(trades)} trades compared" in ok.stdout
    assert " 0 candles compared" not in ok.stdout

    # a candle the trades do not make: the CLI names it and fails
    key = K.kline(json.loads(trades[0][1][b"t"])["symbol"], "1s")
    member, score = redis_client.zrange(key, 0, 0, withscores=True)[0]
    redis_client.zadd(key, {member.replace(b'"trades":', b'"trades":9'): score})
    candle = run_replay(redis_url)
    assert candle.returncode == 1 and f"first difference: {key} at {int(score)}" in candle.stdout
    redis_client.zrem(key, member.replace(b'"trades":', b'"trades":9'))

    # --until: only a prefix is checked, still fine
    middle = redis_client.xrange(K.stream)[700][0].decode()
    part = run_replay(redis_url, "--until", middle)
    assert part.returncode == 0, part.stdout + part.stderr
    assert "replay OK" in part.stdout

    # tamper with one recorded trade (streams are append-only: rebuild and swap)
    victim = len(trades) // 2
    pipe = redis_client.pipeline()
    for i, (entry_id, fields) in enumerate(trades):
        if i == victim:
            record = json.loads(fields[b"t"])
            record["price"] = "1.00"
            fields = {**fields, b"t": json.dumps(record, separators=(",", ":")).encode()}
        pipe.xadd("tmp:trades", fields, id=entry_id)
    pipe.rename("tmp:trades", K.trades)
    pipe.execute()
    bad = run_replay(redis_url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "replay FAILED" in bad.stdout and "first difference" in bad.stdout
    assert trades[victim][0].decode() in bad.stdout and '"price":"1.00"' in bad.stdout

    # a missing trade is a difference too
    redis_client.xdel(K.trades, trades[-1][0])
    missing = run_replay(redis_url)
    assert missing.returncode == 1


def test_replay_reports_an_unreadable_order_record(redis_client, redis_url, start_worker,
                                                   markets) -> None:  # fmt: skip
    """Readers skip an undecodable order record as absent; only the audit can say so."""
    feed(redis_client, markets, 300, seed=5)
    w = start_worker(batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    w.stop()
    assert run_replay(redis_url).returncode == 0
    victim = next(iter(redis_client.scan_iter(match=K.order("*"))))
    good = redis_client.get(victim)
    redis_client.set(victim, good[:-1] + b'\n"')  # as a string-formatted record once broke
    bad = run_replay(redis_url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "replay FAILED" in bad.stdout and "not a readable order record" in bad.stdout
    redis_client.set(victim, good)
    assert run_replay(redis_url).returncode == 0


def test_replay_cli_compares_balances(redis_client, redis_url, start_worker, markets) -> None:
    """A balance that is not what the journal implies fails the audit, as does a balances hash
    of an account the journal never funded."""
    feed(redis_client, markets, 400, seed=13)
    w = start_worker(batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    w.stop()
    ok = run_replay(redis_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    compared = int(ok.stdout.split(" balances compared")[0].rsplit(" ", 1)[1])
    assert compared >= 20 * 3  # every funded account, every asset of the flow
    key = K.balances("7")
    good = redis_client.hget(key, "USDT")
    redis_client.hset(key, "USDT", good.replace(b'"available":"', b'"available":"1'))
    bad = run_replay(redis_url)
    assert bad.returncode == 1 and "replay FAILED" in bad.stdout, bad.stdout + bad.stderr
    assert key in bad.stdout
    redis_client.hset(key, "USDT", good)
    assert run_replay(redis_url).returncode == 0
    redis_client.hset(K.balances("never-funded"), "USDT",
                      b'{"available":"1.00000000","locked":"0.00000000"}')  # fmt: skip
    stray = run_replay(redis_url)
    assert stray.returncode == 1 and K.balances("never-funded") in stray.stdout, stray.stdout


def test_replay_cli_nothing_applied(redis_url) -> None:
    out = run_replay(redis_url)
    assert out.returncode == 0 and "nothing applied yet" in out.stdout
