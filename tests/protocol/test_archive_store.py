"""protocol.archive: segments round-trip exactly, are never overwritten, and every kind of
damage (truncation, a flipped bit, a spliced file, a missing segment) is refused by name."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import fakeredis
import pytest

from protocol.archive import (
    JOURNAL,
    ORDERS,
    TRADES,
    ArchiveCorrupt,
    ArchiveStore,
    genesis_complete,
    history,
    next_id,
    parse_id,
)


def entries(first: int, n: int, field: bytes = b"c") -> list:
    return [(f"{1000 + i}-{i % 3}".encode(), {field: f'{{"op":"new","id":{i}}}'.encode()})
            for i in range(first, first + n)]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> ArchiveStore:
    return ArchiveStore(tmp_path, "fb", 0)


def test_round_trip_and_headers(store: ArchiveStore) -> None:
    a, b = entries(0, 5), entries(5, 4)
    a[1] = (a[1][0], {b"c": b"\xff\xfe not utf-8", b"x": b"line\nbreak"})  # bytes survive
    s1 = store.write(JOURNAL, a, 0)
    s2 = store.write(JOURNAL, b, s1.end)
    assert (s1.seq, s1.first, s1.last, s1.count, s1.index) == (1, "1000-0", "1004-1", 5, 0)
    assert (s2.seq, s2.index, s2.end) == (2, 5, 9)
    assert list(store.read(JOURNAL)) == a + b
    assert store.last_id(JOURNAL) == "1008-2" and store.count(JOURNAL) == 9
    # bounds: after is exclusive, upto inclusive, across segments
    assert list(store.read(JOURNAL, after="1003-0", upto="1006-0")) == (a + b)[4:7]
    # another process's store sees the same segments; the file is plain gzip + JSON lines
    assert ArchiveStore(store.root, "fb", 0).check(JOURNAL) == store.segments(JOURNAL)
    lines = gzip.decompress(s1.path.read_bytes()).splitlines()
    assert len(lines) == 7 and b'"fairbook-archive"' in lines[0] and b'"sha256"' in lines[-1]
    assert store.segments(TRADES) == [] and list(store.read(ORDERS)) == []


def test_append_only(store: ArchiveStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = store.write(JOURNAL, entries(0, 3), 0)
    with pytest.raises(ValueError, match="not after"):
        store.write(JOURNAL, entries(2, 3), 3)  # ids must follow the archive
    with pytest.raises(ValueError, match="index"):
        store.write(JOURNAL, entries(3, 3), 7)  # so must the ordinals
    before = seg.path.read_bytes()
    # a racing writer took the next name after we listed: the link fails, nothing is replaced
    stale = store.segments(JOURNAL)
    rival = ArchiveStore(store.root, "fb", 0).write(JOURNAL, entries(3, 2), 3)
    theirs = rival.path.read_bytes()
    monkeypatch.setattr(store, "segments", lambda kind: stale)
    with pytest.raises(FileExistsError):
        store.write(JOURNAL, entries(3, 4), 3)
    assert seg.path.read_bytes() == before and rival.path.read_bytes() == theirs
    assert not [n for n in os.listdir(seg.path.parent) if ".tmp-" in n]  # temp cleaned up


@pytest.mark.parametrize("damage", ["truncate", "flip", "splice", "trailer"])
def test_damage_is_refused(store: ArchiveStore, damage: str) -> None:
    seg = store.write(TRADES, entries(0, 200, b"t"), 0)
    raw = seg.path.read_bytes()
    if damage == "truncate":
        seg.path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        seg.path.write_bytes(raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:])
    else:
        lines = gzip.decompress(raw).splitlines(keepends=True)
        if damage == "splice":  # one entry dropped, header and trailer intact
            lines = lines[:5] + lines[6:]
        else:  # the trailer gone: a writer stopped before the end
            lines = lines[:-1]
        seg.path.write_bytes(gzip.compress(b"".join(lines)))
    fresh = ArchiveStore(store.root, "fb", 0)
    with pytest.raises(ArchiveCorrupt, match=seg.path.name):
        fresh.verify(fresh.segments(TRADES)[0])
    with pytest.raises(ArchiveCorrupt):
        list(fresh.read(TRADES))


def test_gaps_between_segments_are_refused(store: ArchiveStore) -> None:
    store.write(JOURNAL, entries(0, 2), 0)
    second = store.write(JOURNAL, entries(2, 2), 2)
    store.write(JOURNAL, entries(4, 2), 4)
    second.path.unlink()
    with pytest.raises(ArchiveCorrupt, match="segment 2 of in is missing"):
        ArchiveStore(store.root, "fb", 0).check(JOURNAL)


def test_lock_and_temp_files(store: ArchiveStore) -> None:
    with store.lock() as mine:
        assert mine
        with ArchiveStore(store.root, "fb", 0).lock() as theirs:
            assert not theirs  # one writer at a time
    with store.lock() as again:
        assert again  # released
    folder = store.kind_dir(JOURNAL)
    folder.mkdir(parents=True)
    (folder / ".0000000001.seg.gz.tmp-123-abcd").write_bytes(b"half a segment")
    assert store.remove_temp() == 1 and store.segments(JOURNAL) == []


def test_ids() -> None:
    assert parse_id("17-3") < parse_id("17-10") < parse_id("18-0")
    assert next_id("17-3") == "17-4"


def test_history_chains_archive_and_stream(store: ArchiveStore) -> None:
    client = fakeredis.FakeRedis()
    all_entries = entries(0, 30)
    for raw_id, fields in all_entries:
        client.xadd("s", fields, id=raw_id)
    assert genesis_complete(client, store, "s")  # nothing trimmed: the stream is whole
    store.write(JOURNAL, all_entries[:12], 0)
    # archived but not trimmed yet (a crash between the two): each entry once
    assert list(history(client, store, "s", chunk=7)) == all_entries
    client.xtrim("s", minid=next_id("1011-2"), approximate=False)
    assert genesis_complete(client, store, "s")
    assert list(history(client, store, "s", chunk=7)) == all_entries
    got = list(history(client, store, "s", after="1005-2", upto="1020-2", chunk=4))
    assert got == all_entries[6:21]
    # trimmed past the archive: not from genesis any more
    client.xtrim("s", minid="1015-0", approximate=False)
    assert not genesis_complete(client, store, "s")


def test_history_survives_a_trim_under_it(store: ArchiveStore) -> None:
    """The archive job may archive and trim while a reader is between two stream chunks."""
    client = fakeredis.FakeRedis()
    all_entries = entries(0, 40)
    for raw_id, fields in all_entries:
        client.xadd("s", fields, id=raw_id)
    reader = history(client, store, "s", chunk=10)
    got = [next(reader) for _ in range(15)]
    store.write(JOURNAL, all_entries[:30], 0)  # archived and trimmed behind the reader's back
    client.xtrim("s", minid=next_id(all_entries[29][0].decode()), approximate=False)
    got += list(reader)
    assert got == all_entries


def test_history_and_a_trim_after_the_listing(store: ArchiveStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The job writes a segment and trims right after the reader listed the archive, before
    it reads the stream: the reader must notice and take those entries from the archive."""
    client = fakeredis.FakeRedis()
    all_entries = entries(0, 40)
    for raw_id, fields in all_entries:
        client.xadd("s", fields, id=raw_id)
    listing = store.segments
    raced: list[bool] = []

    def segments_then_race(kind: str) -> list:
        found = listing(kind)
        if not raced:
            raced.append(True)
            store.write(JOURNAL, all_entries[:30], 0)
            client.xtrim("s", minid=next_id(all_entries[29][0].decode()), approximate=False)
        return found

    monkeypatch.setattr(store, "segments", segments_then_race)
    assert list(history(client, store, "s", chunk=100)) == all_entries
