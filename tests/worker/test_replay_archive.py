"""``python -m worker replay`` once the archive job trimmed Redis: archive + stream, still from
genesis; a forged or damaged archive fails the audit; without the archive it falls back to the
oldest snapshot, and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_worker_replay import run_replay
from wk_helpers import feed, last_stream_id, wait_applied

from jobs.archive import Archiver
from protocol.archive import JOURNAL, TRADES, ArchiveStore
from protocol.keys import Keys

K = Keys(0)


def test_replay_from_genesis_through_the_archive(redis_client, redis_url, start_worker, markets,
                                                 tmp_path: Path) -> None:  # fmt: skip
    flow = feed(redis_client, markets, 1500, seed=31)
    w = start_worker(snapshot_every=300, batch_size=200)
    wait_applied(redis_client, last_stream_id(redis_client))
    root = tmp_path / "archive"
    out = Archiver(redis_client, K, ArchiveStore(root, "fb", 0), 400, 0).run()
    # before the older of the two snapshots kept (each after 300+ entries, batches of <= 200)
    assert out["journal"]["archived"] > 500 and out["trades"]["archived"] > 50, out
    feed(redis_client, markets, 500, flow=flow)  # the flow goes on after the trim
    wait_applied(redis_client, last_stream_id(redis_client))
    w.stop()
    info = redis_client.xinfo_stream(K.stream)
    assert info["length"] < info["entries-added"]  # trimmed: Redis alone cannot start at genesis
    store = ArchiveStore(root, "fb", 0)
    trades = store.count(TRADES) + redis_client.xlen(K.trades)

    ok = run_replay(redis_url, "--archive", str(root))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{info['entries-added']} journal entries ({store.count(JOURNAL)} of them from the " \
           "archive) from genesis" in ok.stdout, ok.stdout  # fmt: skip
    assert f"{trades} trades compared" in ok.stdout

    # no archive: the audit starts at the oldest snapshot, and says why
    partial = run_replay(redis_url, "--archive", str(tmp_path / "empty"))
    assert partial.returncode == 0 and "from snapshot" in partial.stdout, partial.stdout
    assert "does not hold the trimmed journal from genesis" in partial.stdout

    # a forged archive (well-formed, checksums right) with one trade changed: found
    forged = tmp_path / "forged"
    shutil.copytree(root, forged)
    shutil.rmtree(forged / "fb" / "p0" / TRADES)
    fstore = ArchiveStore(forged, "fb", 0)
    for seg in store.segments(TRADES):
        entries = list(store.read(TRADES, segments=[seg]))
        if seg.seq == 1:
            record = json.loads(entries[3][1][b"t"])
            record["price"] = "1.00"
            entries[3] = (entries[3][0], {**entries[3][1], b"t": json.dumps(record).encode()})
        fstore.write(TRADES, entries, seg.index)
    bad = run_replay(redis_url, "--archive", str(forged))
    assert bad.returncode == 1 and "first difference: trade 4 after genesis" in bad.stdout, (
        bad.stdout + bad.stderr)  # fmt: skip
    assert '"price":"1.00"' in bad.stdout.replace(" ", "")

    # a damaged segment: the audit fails and names the file
    seg = store.segments(JOURNAL)[1]
    seg.path.write_bytes(seg.path.read_bytes()[:-30])
    torn = run_replay(redis_url, "--archive", str(root))
    assert torn.returncode == 1 and "the archive is damaged" in torn.stdout, torn.stdout
    assert seg.path.name in torn.stdout


def test_a_stray_archive_is_ignored(redis_client, redis_url, start_worker, markets,
                                    tmp_path: Path) -> None:  # fmt: skip
    """Beside a journal never trimmed, an archive that does not start with its first entry."""
    feed(redis_client, markets, 300, seed=5)
    w = start_worker(batch_size=100)
    wait_applied(redis_client, last_stream_id(redis_client))
    w.stop()
    stray = ArchiveStore(tmp_path / "stray", "fb", 0)  # another deployment's, say
    stray.write(JOURNAL, [(b"1-1", {b"c": b'{"op":"deposit"}'})], 0)
    stray.write(TRADES, [(b"1-1", {b"t": b"{}"})], 0)
    out = run_replay(redis_url, "--archive", str(stray.root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "from the archive" not in out.stdout and "from genesis" in out.stdout
