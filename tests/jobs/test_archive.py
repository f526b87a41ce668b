"""jobs.archive against fakeredis: what it archives and trims, and that every interrupted run
is finished by the next one without a duplicate, a loss, or a trim of anything unarchived.
(The same job with real processes and kill -9: test_archive_crash.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest

from jobs.archive import ArchiveConflict, Archiver
from protocol.archive import JOURNAL, ORDERS, TRADES, ArchiveCorrupt, ArchiveStore, history
from protocol.keys import Keys

K = Keys(0)


def build(client: Any, n: int = 100, snapshots: tuple[int, ...] = (50, 80)) -> None:
    """A partition: ``n`` journal entries at ms 1000.. (each creates order i, account
    ``a<i % 3>``), one trade per even entry, snapshots after the given entries, all applied."""
    for i in range(n):
        body = {"op": "new", "id": (i << 8), "account": f"a{i % 3}", "symbol": "BTC-USDT"}
        client.xadd(K.stream, {"c": orjson.dumps(body)}, id=f"{1000 + i}-0")
        client.set(K.order(i << 8), record(i << 8, f"a{i % 3}", "new"))  # still open
        if i % 2 == 0:
            client.xadd(K.trades, {"t": b'{"trade_id":%d}' % i, "ma": "a0", "ta": "a1"},
                        id=f"{1000 + i}-{i // 2 + 1}")  # fmt: skip
    for s in snapshots:
        client.zadd(K.snapshots, {f"{1000 + s}-0": 1000 + s})
    client.set(K.applied, f"{1000 + n - 1}-0")


def record(oid: int, account: str, status: str) -> bytes:
    return orjson.dumps({"account": account, "order_id": oid, "status": status})


def run(client: Any, store: ArchiveStore, segment: int = 20, **kw: Any) -> dict[str, Any]:
    return Archiver(client, K, ArchiveStore(store.root, "fb", 0), segment, 0, **kw).run()


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis()


@pytest.fixture
def store(tmp_path: Path) -> ArchiveStore:
    return ArchiveStore(tmp_path, "fb", 0)


def test_archives_what_recovery_no_longer_needs(client: Any, store: ArchiveStore) -> None:
    build(client)
    journal = client.xrange(K.stream)
    trades = client.xrange(K.trades)
    out = run(client, store)
    # the oldest kept snapshot (1050-0) is where recovery may start: everything before goes
    assert out["cutoff"] == "1050-0"
    assert out["journal"] == {"archived": 50, "trimmed": 50, "segments": 3, "last": "1049-0"}
    assert client.xrange(K.stream, count=1)[0][0] == b"1050-0"
    assert out["trades"]["archived"] == 25 and client.xrange(K.trades, count=1)[0][0] == b"1050-26"
    assert [s.count for s in store.segments(JOURNAL)] == [20, 20, 10]
    # nothing lost, nothing twice: archive + stream is the whole history
    assert list(history(client, store, K.stream)) == journal
    assert list(history(client, store, K.trades, TRADES)) == trades
    # the orders those entries created wait for their records to close
    assert client.zcard(K.archive_orders) == 50
    again = run(client, store)  # idempotent
    assert again["journal"]["archived"] == 0 and again["journal"]["trimmed"] == 0
    assert len(store.segments(JOURNAL)) == 3 and client.xlen(K.stream) == 50


def test_nothing_without_a_snapshot_or_when_too_young(client: Any, store: ArchiveStore) -> None:
    build(client, snapshots=())
    assert run(client, store)["journal"]["archived"] == 0
    seconds, _ = client.time()
    now = seconds * 1000
    client.zadd(K.snapshots, {f"{now}-0": now})
    client.xadd(K.stream, {"c": b"{}"}, id=f"{now}-0")
    client.set(K.applied, f"{now}-0")
    out = Archiver(client, K, store, 20, 60_000).run()  # the snapshot is younger than a minute
    assert now - 60_000 <= int(out["cutoff"].split("-")[0]) < now - 55_000
    assert out["journal"]["archived"] == 100  # the old ones only
    assert client.xrange(K.stream)[0][0] == f"{now}-0".encode()


def test_a_run_killed_between_write_and_trim_is_finished_by_the_next(
    client: Any, store: ArchiveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(client)
    journal = client.xrange(K.stream)
    real = Archiver._trim
    calls = {"n": 0}

    def dies_on_the_second(self: Archiver, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # segment 2 written, not trimmed
        real(self, *args)

    monkeypatch.setattr(Archiver, "_trim", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(client, store)
    monkeypatch.setattr(Archiver, "_trim", real)
    assert len(store.segments(JOURNAL)) == 2 and client.xlen(K.stream) == 80  # 20 trimmed
    out = run(client, store)
    assert out["journal"]["trimmed"] == 30 and out["journal"]["archived"] == 10
    assert [s.count for s in store.segments(JOURNAL)] == [20, 20, 10]  # no duplicate segment
    assert list(history(client, store, K.stream)) == journal
    assert client.zcard(K.archive_orders) == 50  # each created order once


def test_disagreements_are_refused_with_nothing_trimmed(client: Any, store: ArchiveStore) -> None:
    build(client)
    entries = client.xrange(K.stream, count=20)
    forged = [entries[0], (entries[1][0], {b"c": b'{"op":"new","id":1}'}), *entries[2:]]
    store.write(JOURNAL, forged, 0)  # "archived" but not what the journal says
    with pytest.raises(ArchiveConflict, match="1001-0 differs"):
        run(client, store)
    assert client.xlen(K.stream) == 100


def test_a_journal_trimmed_unarchived_is_refused(client: Any, store: ArchiveStore) -> None:
    build(client)
    client.xtrim(K.stream, minid="1010-0", approximate=False)  # worker --trim, say
    with pytest.raises(ArchiveConflict, match="trimmed unarchived"):
        run(client, store)


def test_a_redis_that_lost_archived_entries_is_refused(client: Any, store: ArchiveStore) -> None:
    build(client)
    run(client, store)
    other = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    build(other, n=10, snapshots=(5,))  # a Redis that knows fewer entries than the archive
    with pytest.raises(ArchiveConflict, match="lost entries"):
        run(other, store)


def test_a_torn_newest_segment_stops_the_run(client: Any, store: ArchiveStore) -> None:
    build(client)
    run(client, store)
    newest = store.segments(JOURNAL)[-1].path
    newest.write_bytes(newest.read_bytes()[:-20])
    client.xadd(K.stream, {"c": b"{}"}, id="2000-0")
    with pytest.raises(ArchiveCorrupt, match=newest.name):
        run(client, store)
    assert client.xlen(K.stream) == 51


def test_order_records(client: Any, store: ArchiveStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed and out of their account's index: archived, then deleted. Still listed, or
    open: kept for a later run. No record (an invalid command): dropped."""
    build(client, n=40, snapshots=(30,))
    want: dict[int, bytes] = {}
    for i in range(30):
        oid, account = i << 8, f"a{i % 3}"
        if i % 5 == 4:
            client.delete(K.order(oid))
            continue  # never got a record
        status = "new" if i % 5 == 3 else "filled" if i % 2 else "cancelled"
        raw = record(oid, account, status)
        client.set(K.order(oid), raw)
        if i % 5 == 2:
            client.zadd(K.closed(account), {oid: oid})  # among the newest closed: listed
        elif status != "new":
            want[oid] = raw
    real = Archiver._finish_segment
    monkeypatch.setattr(Archiver, "_finish_segment", lambda self, *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt("killed after the segment, before the deletes")))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(client, store, segment=100)
    monkeypatch.setattr(Archiver, "_finish_segment", real)
    assert all(client.exists(K.order(oid)) for oid in want)  # nothing deleted unarchived
    out = run(client, store, segment=100)
    assert out["orders"]["archived"] == 0  # the first run's segment, finished, not repeated
    assert out["orders"]["deleted"] == len(want) == 12
    assert dict(store.order_records()) == want and len(store.segments(ORDERS)) == 1
    assert not any(client.exists(K.order(oid)) for oid in want)
    # open and listed ones are still there, and still waiting
    assert client.zcard(K.archive_orders) == 12 and out["orders"]["pending"] == 12
    client.zrem(K.closed("a2"), 2 << 8)  # it left the index
    client.set(K.order(3 << 8), record(3 << 8, "a0", "filled"))  # it closed
    later = run(client, store, segment=100)
    assert later["orders"]["archived"] == later["orders"]["deleted"] == 2
    assert len(dict(store.order_records())) == 14


def test_a_second_run_at_once_skips(client: Any, store: ArchiveStore) -> None:
    build(client)
    with ArchiveStore(store.root, "fb", 0).lock() as held:
        assert held
        assert run(client, store)["skipped"]
    assert client.xlen(K.stream) == 100


def test_order_records_go_round_robin(client: Any, store: ArchiveStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Each run looks at a bounded share of ``archive:orders``, from where the last one
    stopped, so a big set of open orders costs every run the same, and each goes once."""
    import jobs.archive as job

    monkeypatch.setattr(job, "ORDER_SCAN", 7)
    monkeypatch.setattr(job, "ORDER_CHUNK", 3)
    build(client, n=41, snapshots=(40,))
    for i in range(40):
        client.set(K.order(i << 8), record(i << 8, "a0", "filled" if i % 4 else "new"))
    looked = []
    for _ in range(8):
        out = run(client, store)["orders"]
        looked.append(out["looked_at"])
    assert max(looked) <= 9  # whole chunks: up to ORDER_SCAN + ORDER_CHUNK - 1
    archived = [oid for oid, _ in store.order_records()]
    assert sorted(archived) == [i << 8 for i in range(40) if i % 4]  # all, each once
    assert client.zcard(K.archive_orders) == 10  # the open ones wait


def test_as_an_rq_job_in_a_real_worker(redis_server, redis_client, tmp_path: Path) -> None:
    """Enqueued by name with RQ's Retry and run by a real ``rq worker`` process (RQ forks a
    work horse per job): the result is kept, the progress is in the job's meta."""
    import os
    import subprocess
    import sys

    from rq import Queue, Retry

    build(redis_client)
    root = tmp_path / "archive"
    queue = Queue("fb.archive-test", connection=redis_client)
    job = queue.enqueue("jobs.archive.archive_partition", 0, root=str(root), segment_entries=20,
                        min_age_ms=0, retry=Retry(max=2, interval=1))  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "REDIS_URL": redis_server.url}  # the job's
    subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", redis_server.url,
                    "fb.archive-test"], cwd=repo, env=env, check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    job.refresh()
    assert job.get_status() == "finished", job.exc_info
    assert job.return_value()["journal"]["archived"] == 50, job.return_value()
    assert job.meta["progress"]["kind"] == TRADES
    assert redis_client.xlen(K.stream) == 50 and ArchiveStore(root, "fb", 0).count(JOURNAL) == 50
