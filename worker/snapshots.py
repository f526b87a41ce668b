"""Worker snapshots: the processor's state every N entries, so recovery replays only a tail.

``snapshot:<stream id>`` holds the blob (``Processor.snapshot_blob``), the ``snapshots`` zset
their ids; the newest ``keep`` are kept. Trimming the journal (``XTRIM MINID`` to the oldest
kept snapshot) is off by default: the journal is the audit record, replayable from genesis.
"""

from __future__ import annotations

import redis

from protocol.keys import Keys
from worker.lease import LeaseLost
from worker.processor import parse_stream_id

# KEYS: lease, snapshots zset, stream. ARGV: token, stream id, blob, keep, trim (1/0),
# snapshot key prefix, score (the id's ms).
SNAPSHOT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', ARGV[6] .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
table.sort(ids, function(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end)
local keep = tonumber(ARGV[4])
local drop = #ids - keep
if drop < 0 then drop = 0 end
for i = 1, drop do
  redis.call('DEL', ARGV[6] .. ids[i])
  redis.call('ZREM', KEYS[2], ids[i])
end
if ARGV[5] == '1' and #ids > drop then
  redis.call('XTRIM', KEYS[3], 'MINID', ids[drop + 1])
end
return 1
"""


class SnapshotStore:
    """Worker snapshots under ``snapshot:<stream id>``, indexed by the ``snapshots`` zset."""

    def __init__(self, client: redis.Redis, keys: Keys, keep: int = 2, trim: bool = False) -> None:
        self.redis = client
        self.keys = keys
        self.keep = max(1, keep)
        self.trim = trim
        self._save = client.register_script(SNAPSHOT_LUA)

    def save(self, token: str, stream_id: str, blob: bytes) -> None:
        ms = parse_stream_id(stream_id)[0]
        ok = self._save(
            keys=[self.keys.lease, self.keys.snapshots, self.keys.stream],
            args=[token, stream_id, blob, self.keep, "1" if self.trim else "0",
                  self.keys.snapshot(""), ms],
        )  # fmt: skip
        if not ok:
            raise LeaseLost("lease lost while saving a snapshot")

    def ids(self) -> list[str]:
        """Snapshot stream ids, oldest first."""
        members = [_text(m) for m in self.redis.zrange(self.keys.snapshots, 0, -1)]
        return sorted(members, key=parse_stream_id)

    def load(self, stream_id: str) -> bytes | None:
        return self.redis.get(self.keys.snapshot(stream_id))  # type: ignore[return-value]


def stream_was_trimmed(client: redis.Redis, stream: str) -> bool:
    """True if entries were ever deleted from the stream (so genesis replay is impossible)."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:
        return False  # no stream yet
    added = info.get("entries-added", info.get(b"entries-added"))
    if added is None:  # Redis < 7 cannot tell
        return False
    return int(added) > int(info.get("length", info.get(b"length", 0)))




def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
