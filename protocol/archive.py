"""The journal archive: compressed, checksummed, append-only segment files on disk.

Redis keeps only the tail of a partition's streams (the journal ``in``, the ``trades``) and the
order records still in use; what the archive job (``jobs.archive``) trims from Redis lives here
first. Shared by the job (writes), ``worker.replay`` (reads: the audit from genesis) and the
statements (``jobs.exports``). No Redis import: files only, plus :func:`history`, which chains
the archive with a stream through any redis-py client.

Layout: ``<root>/<namespace>/p<N>/<kind>/<seq:010d>.seg.gz``, kinds ``in``, ``trades``,
``orders``; ``seq`` from 1 without gaps. A segment is a gzip file of JSON lines (``zcat``
reads it): a header ``{"format": "fairbook-archive", "version": 1, "kind", "namespace",
"partition", "seq", "first", "last", "count", "index"}`` (``index``: the ordinal since genesis
of its first entry), one line ``[id, {field: value}]`` per entry (a value that is not UTF-8 is
``{"b64": ...}``), a trailer ``{"end": true, "count", "sha256"}`` over the entry lines. Why
gzip: the stdlib writes and checks it (CRC-32 of the content), operators read it with zcat.
Why a sha256 trailer as well: a truncated file or a spliced one is caught by count and digest,
not only a flipped bit.

A segment is written to a temp file, fsynced, then *linked* to its name (``os.link`` fails if
the name exists: a segment is never overwritten, whoever races), the directory fsynced, and
the file read back and checked before :meth:`ArchiveStore.write` returns. Only then may the
caller trim Redis.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Entry = tuple[bytes, dict[bytes, bytes]]

ARCHIVE_ENV = "FAIRBOOK_ARCHIVE"
DEFAULT_ROOT = "./var/archive"
FORMAT = "fairbook-archive"
VERSION = 1
#: the kinds: the journal stream, the trades stream, archived (closed) order records
JOURNAL, TRADES, ORDERS = "in", "trades", "orders"
KINDS = (JOURNAL, TRADES, ORDERS)
#: kinds whose ids are stream ids (``ms-seq``, strictly increasing); orders' ids are order ids
STREAM_KINDS = (JOURNAL, TRADES)
_SEGMENT = re.compile(r"(\d{10})\.seg\.gz")


class ArchiveCorrupt(Exception):
    """A segment fails its checks (names the file), or the segments do not follow each other."""


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` as a comparable pair (an order id ``"n"`` as ``(n, 0)``)."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def next_id(stream_id: str) -> str:
    """The smallest stream id after ``stream_id`` (the ``XTRIM MINID`` that keeps what follows)."""
    ms, seq = parse_id(stream_id)
    return f"{ms}-{seq + 1}"


@dataclass(frozen=True)
class Segment:
    """One segment file's header."""

    path: Path
    kind: str
    seq: int
    first: str
    last: str
    count: int
    index: int

    @property
    def end(self) -> int:
        """The ordinal after its last entry (the next segment's ``index``)."""
        return self.index + self.count


def _encode(entry: Entry) -> bytes:
    raw_id, fields = entry
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, str):
            out[name] = value
            continue
        try:
            out[name] = value.decode()
        except UnicodeDecodeError:
            out[name] = {"b64": base64.b64encode(value).decode()}
    ident = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    return orjson.dumps([ident, out]) + b"\n"


def _decode(line: bytes) -> Entry:
    ident, fields = orjson.loads(line)
    return ident.encode(), {
        k.encode(): (base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode())
        for k, v in fields.items()
    }


class ArchiveStore:
    """One partition's archive directory (``<root>/<namespace>/p<N>``).

    Segment headers are cached per instance (segments never change once written); a segment
    written by another process is seen at the next :meth:`segments` call.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, namespace: str = "fb",
                 partition: int = 0) -> None:  # fmt: skip
        self.root = Path(root or os.environ.get(ARCHIVE_ENV) or DEFAULT_ROOT)
        self.namespace = namespace
        self.partition = partition
        self.dir = self.root / namespace / f"p{partition}"
        self._headers: dict[Path, Segment] = {}

    def __repr__(self) -> str:
        return f"ArchiveStore({str(self.dir)!r})"

    # -- reading --------------------------------------------------------------------------------
    def kind_dir(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown archive kind {kind!r}")
        return self.dir / kind

    def segment_path(self, kind: str, seq: int) -> Path:
        return self.kind_dir(kind) / f"{seq:010d}.seg.gz"

    def segments(self, kind: str) -> list[Segment]:
        """Every segment of ``kind``, oldest first (headers only)."""
        folder = self.kind_dir(kind)
        try:
            names = sorted(n for n in os.listdir(folder) if _SEGMENT.fullmatch(n))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = folder / name
            seg = self._headers.get(path)
            if seg is None:
                seg = self._headers[path] = self._header(path)
            out.append(seg)
        return out

    def last_id(self, kind: str) -> str | None:
        segs = self.segments(kind)
        return segs[-1].last if segs else None

    def count(self, kind: str) -> int:
        return sum(s.count for s in self.segments(kind))

    def end_index(self, kind: str) -> int:
        """The ordinal after the last archived entry (0 when empty)."""
        segs = self.segments(kind)
        return segs[-1].end if segs else 0

    def check(self, kind: str) -> list[Segment]:
        """The segments, after checking that they follow each other: seq 1, 2, ... without
        gaps, each ``index`` the previous one's end, stream ids increasing."""
        segs = self.segments(kind)
        for i, seg in enumerate(segs):
            if seg.seq != i + 1:
                raise ArchiveCorrupt(f"{seg.path}: segment {i + 1} of {kind} is missing")
            if i and seg.index != segs[i - 1].end:
                raise ArchiveCorrupt(f"{seg.path}: index {seg.index}, previous ends at "
                                     f"{segs[i - 1].end}")  # fmt: skip
            if i and kind in STREAM_KINDS and parse_id(seg.first) <= parse_id(segs[i - 1].last):
                raise ArchiveCorrupt(f"{seg.path}: first id {seg.first} is not after "
                                     f"{segs[i - 1].last}")  # fmt: skip
        return segs

    def read(self, kind: str, after: str | None = None, upto: str | None = None,
             segments: list[Segment] | None = None) -> Iterator[Entry]:  # fmt: skip
        """Archived entries oldest first, ``after`` < id <= ``upto`` (stream kinds; both
        optional). Each segment is checked while read: :class:`ArchiveCorrupt` is raised where
        a check fails, after the entries before it were yielded (call :meth:`verify` first for
        all or nothing)."""
        low = parse_id(after) if after is not None else None
        high = parse_id(upto) if upto is not None else None
        for seg in self.segments(kind) if segments is None else segments:
            if low is not None and parse_id(seg.last) <= low:
                continue
            if high is not None and parse_id(seg.first) > high:
                return
            for entry in self._entries(seg):
                key = parse_id(entry[0])
                if low is not None and key <= low:
                    continue
                if high is not None and key > high:
                    return
                yield entry

    def verify(self, segment: Segment) -> str:
        """Read the whole segment and check it (gzip CRC, count, sha256, ids); its sha256."""
        digest: list[str] = []
        for _ in self._entries(segment, digest, decode=False):
            pass
        return digest[0]

    def order_records(self) -> Iterator[tuple[int, bytes]]:
        """``(order id, record JSON)`` of every archived order record, in archive order."""
        for raw_id, fields in self.read(ORDERS):
            yield int(raw_id), fields[b"r"]

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, blocking: bool = False) -> Iterator[bool]:
        """An exclusive ``flock`` on the partition's directory: one writer at a time. Yields
        False when another process holds it and ``blocking`` is off. The kernel drops it when
        its holder dies, however it dies."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing drops the lock

    def remove_temp(self) -> int:
        """Delete temp files left by a writer that died mid-segment (call under :meth:`lock`)."""
        removed = 0
        for kind in KINDS:
            folder = self.kind_dir(kind)
            if not folder.is_dir():
                continue
            for name in os.listdir(folder):
                if name.startswith(".") and ".tmp-" in name:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(folder / name)
                        removed += 1
        return removed

    def write(self, kind: str, entries: list[Entry], index: int) -> Segment:
        """Append one segment holding ``entries`` (ids increasing, after the last segment's),
        durably and atomically, read it back and check it; then return its header."""
        if not entries:
            raise ValueError("an empty segment")
        segs = self.segments(kind)
        seq = segs[-1].seq + 1 if segs else 1
        first, last = entries[0][0].decode(), entries[-1][0].decode()
        if kind in STREAM_KINDS and segs and parse_id(first) <= parse_id(segs[-1].last):
            raise ValueError(f"{kind}: {first} is not after the archived {segs[-1].last}")
        if segs and index != segs[-1].end:
            raise ValueError(f"{kind}: index {index}, the archive ends at {segs[-1].end}")
        folder = self.kind_dir(kind)
        if not folder.is_dir():  # a new directory's entry must be durable too
            folder.mkdir(parents=True, exist_ok=True)
            for parent in (folder.parent, folder.parent.parent, folder.parent.parent.parent):
                _fsync_dir(parent)
        final = self.segment_path(kind, seq)
        tmp = folder / f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        header = {"format": FORMAT, "version": VERSION, "kind": kind,
                  "namespace": self.namespace, "partition": self.partition, "seq": seq,
                  "first": first, "last": last, "count": len(entries), "index": index}  # fmt: skip
        digest = hashlib.sha256()
        try:
            with open(tmp, "xb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                    gz.write(orjson.dumps(header) + b"\n")
                    prev: tuple[int, int] | None = None
                    buf: list[bytes] = []
                    for entry in entries:
                        if kind in STREAM_KINDS:
                            key = parse_id(entry[0])
                            if prev is not None and key <= prev:
                                raise ValueError(f"{kind}: ids not increasing at {entry[0]!r}")
                            prev = key
                        line = _encode(entry)
                        digest.update(line)
                        buf.append(line)
                        if len(buf) >= 4096:
                            gz.write(b"".join(buf))
                            buf.clear()
                    gz.write(b"".join(buf))
                    trailer = {"end": True, "count": len(entries), "sha256": digest.hexdigest()}
                    gz.write(orjson.dumps(trailer) + b"\n")
                raw.flush()
                os.fsync(raw.fileno())
            os.link(tmp, final)  # never replaces: FileExistsError if another writer won
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(folder)
        seg = self._header(final)
        if (seg.kind, seg.seq, seg.first, seg.last, seg.count, seg.index) != (
            kind, seq, first, last, len(entries), index
        ):  # fmt: skip
            raise ArchiveCorrupt(f"{final}: header read back differs from what was written")
        if self.verify(seg) != digest.hexdigest():
            raise ArchiveCorrupt(f"{final}: content read back differs from what was written")
        self._headers[final] = seg
        return seg

    # -- internals ------------------------------------------------------------------------------
    def _header(self, path: Path) -> Segment:
        try:
            with gzip.open(path, "rb") as gz:
                head = orjson.loads(gz.readline())
            seg = Segment(path, head["kind"], int(head["seq"]), head["first"], head["last"],
                          int(head["count"]), int(head["index"]))  # fmt: skip
        except (OSError, EOFError, zlib.error, orjson.JSONDecodeError, KeyError, TypeError,
                ValueError) as exc:  # fmt: skip
            raise ArchiveCorrupt(f"{path}: unreadable header ({exc})") from None
        if head.get("format") != FORMAT or head.get("version") != VERSION:
            raise ArchiveCorrupt(f"{path}: not a version-{VERSION} {FORMAT} segment")
        want = (path.parent.name, int(_SEGMENT.fullmatch(path.name).group(1)))  # type: ignore[union-attr]
        if (seg.kind, seg.seq) != want or head.get("partition") != self.partition:
            raise ArchiveCorrupt(f"{path}: header says {seg.kind} seq {seg.seq} partition "
                                 f"{head.get('partition')}")  # fmt: skip
        return seg

    def _entries(self, seg: Segment, digest_out: list[str] | None = None,
                 decode: bool = True) -> Iterator[Entry]:  # fmt: skip
        """The segment's entries, every check made on the way; ``decode`` off (a check of the
        whole file): nothing is yielded and only the first and last ids are parsed (the order
        in between is covered by the digest of what :meth:`write` checked)."""
        digest = hashlib.sha256()
        count = 0
        prev: tuple[int, int] | None = None
        trailer: dict[str, Any] | None = None
        try:
            with gzip.open(seg.path, "rb") as gz:
                gz.readline()  # the header (checked by _header)
                for line in gz:
                    if trailer is not None:
                        raise ArchiveCorrupt(f"{seg.path}: data after the trailer")
                    if line.startswith(b"{"):
                        trailer = orjson.loads(line)
                        continue
                    digest.update(line)
                    count += 1
                    if not decode:
                        if count == 1 or count == seg.count:
                            ident = orjson.loads(line)[0]
                            if ident != (seg.first if count == 1 else seg.last):
                                raise ArchiveCorrupt(f"{seg.path}: entry {count} is {ident}")
                        continue
                    entry = _decode(line)
                    if seg.kind in STREAM_KINDS:
                        key = parse_id(entry[0])
                        if prev is not None and key <= prev:
                            raise ArchiveCorrupt(f"{seg.path}: ids not increasing at {entry[0]!r}")
                        prev = key
                    if count == 1 and entry[0].decode() != seg.first:
                        raise ArchiveCorrupt(f"{seg.path}: first id is not {seg.first}")
                    if count > seg.count:
                        raise ArchiveCorrupt(f"{seg.path}: more than {seg.count} entries")
                    if count == seg.count and entry[0].decode() != seg.last:
                        raise ArchiveCorrupt(f"{seg.path}: last id is not {seg.last}")
                    yield entry
        except (OSError, EOFError, zlib.error, orjson.JSONDecodeError, ValueError, TypeError,
                AttributeError, KeyError) as exc:  # fmt: skip
            raise ArchiveCorrupt(f"{seg.path}: unreadable ({type(exc).__name__}: {exc})") from None
        if trailer is None or not trailer.get("end"):
            raise ArchiveCorrupt(f"{seg.path}: no trailer (truncated)")
        if count != seg.count or trailer.get("count") != count:
            raise ArchiveCorrupt(f"{seg.path}: {count} entries, header says {seg.count}")
        if trailer.get("sha256") != digest.hexdigest():
            raise ArchiveCorrupt(f"{seg.path}: sha256 mismatch")
        if digest_out is not None:
            digest_out.append(digest.hexdigest())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the archive and the stream together ------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_counts(client: Any, stream_key: str) -> tuple[int, int] | None:
    """``(entries-added, length)`` of a stream, None when it does not exist (or Redis < 7)."""
    try:
        info = client.xinfo_stream(stream_key)
    except Exception as exc:  # redis.ResponseError: no such key
        if "no such key" in str(exc).lower():
            return None
        raise
    added = info.get("entries-added", info.get(b"entries-added"))
    if added is None:
        return None
    return int(added), int(info.get("length", info.get(b"length", 0)))


def genesis_complete(client: Any, store: ArchiveStore, stream_key: str,
                     kind: str = JOURNAL) -> bool:  # fmt: skip
    """True when the archive and the stream together hold every entry ever added: the archive's
    segments follow each other from ordinal 0, and what the stream lost off its head
    (``entries-added - length``) is what the archive holds, or less (an entry trimmed after
    we looked is archived too)."""
    counts = stream_counts(client, stream_key)
    segs = store.check(kind)
    if segs and segs[0].index != 0:
        return False
    if counts is None:
        return not segs
    added, length = counts
    trimmed = added - length
    return trimmed <= (segs[-1].end if segs else 0)


def history(client: Any, store: ArchiveStore, stream_key: str, kind: str = JOURNAL,
            after: str | None = None, upto: str | None = None,
            chunk: int = 2000) -> Iterator[Entry]:  # fmt: skip
    """A stream from its first entry ever (or after ``after``) up to ``upto``: archived entries,
    then Redis's. Safe while the archive job runs: a stream chunk is used only if no segment
    beyond our position appeared once it was read (else it may have been trimmed under us, and
    the archive is read again from there)."""
    last = after
    high = upto or "+"
    while True:
        segs = store.segments(kind)  # what we read: a segment after this listing is re-checked
        for entry in store.read(kind, after=last, upto=upto, segments=segs):
            yield entry
            last = entry[0].decode()
        if upto is not None and last is not None and parse_id(last) >= parse_id(upto):
            return
        entries = client.xrange(stream_key, min="(" + last if last else "-", max=high, count=chunk)
        if len(store.segments(kind)) != len(segs):
            continue  # archived (and maybe trimmed) since we listed: take it from the archive
        if not entries:
            return
        archived = store.last_id(kind)
        for entry in _normalised(entries):
            if archived is not None and parse_id(entry[0]) <= parse_id(archived):
                continue  # in both (archived, not trimmed yet): once is enough
            yield entry
            last = entry[0].decode()
        if len(entries) < chunk:
            return


def _normalised(entries: Iterable[Any]) -> Iterator[Entry]:
    for raw_id, fields in entries:
        yield (raw_id if isinstance(raw_id, bytes) else str(raw_id).encode()), fields
