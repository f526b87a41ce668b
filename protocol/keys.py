"""Every Redis key and pub/sub channel name, the namespace and the symbol -> partition map.

Nothing else formats a key. Partition keys carry the hash tag ``{pN}`` so that one partition's
keys live in one Cluster slot (a transaction or script may touch all of them); global keys and
channels are ``<namespace>:...``. One :class:`Namespace` per process, built from the environment
(``FAIRBOOK_NAMESPACE``, ``FAIRBOOK_PARTITIONS``) once at start-up, serves web, worker, replay
and CLI alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from engine.commands import MAX_PARTITIONS
from protocol.config import NAMESPACE_ENV, PARTITIONS_ENV

DEFAULT_NAMESPACE = "fb"
#: A namespace is part of every key and channel: no separators, hash tags or glob characters.
_NAMESPACE = re.compile(r"[A-Za-z0-9_\-]{1,32}")


class Keys:
    """Key and channel names of one partition (and the global ones) under a namespace."""

    __slots__ = (
        "partition", "namespace", "prefix", "stream", "next_id", "applied", "applied_count",
        "trades", "snapshots", "lease", "accounts", "next_account", "control", "rate_limits",
        "audits", "audit_latest", "cron_lock", "archive_orders", "archive_cursor",
    )  # fmt: skip

    def __init__(self, partition: int, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"partition must be 0..{MAX_PARTITIONS - 1}, got {partition}")
        self.partition = partition
        self.namespace = namespace
        self.prefix = p = f"{namespace}:{{p{partition}}}:"
        self.stream = p + "in"  # the journal: field "c" = wire command JSON
        self.next_id = p + "next_id"
        self.applied = p + "applied"
        self.applied_count = p + "applied_count"  # journal entries consumed since genesis
        self.trades = p + "trades"
        self.snapshots = p + "snapshots"
        self.lease = p + "lease"
        # zset: order ids whose creating journal entry is archived and whose record is still in
        # Redis (jobs.archive archives and deletes the record once closed and out of its index)
        self.archive_orders = p + "archive:orders"
        # string: the order id the archive job's last look at ``archive:orders`` ended at
        self.archive_cursor = p + "archive:cursor"
        self.accounts = f"{namespace}:accounts"  # sha256(api key) -> account id
        self.next_account = f"{namespace}:next_account"
        # channel: {"type": "resync"} (worker), {"type": "revoked", "key": sha256} (key CLI)
        self.control = f"{namespace}:control"
        # prefix of the rate-limit counters (web.limits): "<ns>:rate_limits:LIMITER/..."
        self.rate_limits = f"{namespace}:rate_limits"
        # operator jobs (jobs/): audit results, newest first, and the latest per partition
        self.audits = f"{namespace}:audits"
        self.audit_latest = f"{namespace}:audit_latest"  # hash partition -> result JSON
        self.cron_lock = f"{namespace}:jobs:cron_lock"  # the one cron scheduler that enqueues

    def order(self, order_id: int | str) -> str:
        return f"{self.prefix}order:{order_id}"

    def open(self, account: str) -> str:
        return f"{self.prefix}open:{account}"

    def closed(self, account: str) -> str:
        return f"{self.prefix}closed:{account}"

    def balances(self, account: str) -> str:
        """Hash asset -> ``{"available", "locked"}`` (decimal strings) of one account."""
        return f"{self.prefix}balances:{account}"

    def ledger(self, account: str) -> str:
        """List of the account's balance changes, newest first, trimmed to 1,000."""
        return f"{self.prefix}ledger:{account}"

    def transfers(self, account: str, kind: str) -> str:
        """List of the account's deposits or withdrawals (``kind``), newest first."""
        return f"{self.prefix}{kind}s:{account}"

    def recent(self, symbol: str) -> str:
        return f"{self.prefix}recent:{symbol}"

    def book(self, symbol: str) -> str:
        return f"{self.prefix}book:{symbol}"

    def kline(self, symbol: str, interval: str) -> str:
        """Zset of one symbol's candles of one base interval: score = open time (ms), member =
        the candle JSON (``protocol.wire.candle_value``); trimmed to the newest
        ``protocol.candles.RETENTION[interval]``."""
        return f"{self.prefix}kline:{symbol}:{interval}"

    def inbox(self, inbox_id: str) -> str:
        """Channel of one web process's replies from this partition (pub/sub, not a key)."""
        return f"{self.prefix}inbox:{inbox_id}"

    def snapshot(self, stream_id: str) -> str:
        return f"{self.prefix}snapshot:{stream_id}"

    def account(self, account_id: str) -> str:
        return f"{self.namespace}:account:{account_id}"

    def account_keys(self, account_id: str) -> str:
        """Set of the sha256 of every live API key of an account (rotation revokes them all)."""
        return f"{self.namespace}:account_keys:{account_id}"

    def listen_key(self, listen_key: str) -> str:
        """A Binance user-data-stream key -> ``{account, key}`` (its API key's sha256), 60 min."""
        return f"{self.namespace}:listen_key:{listen_key}"

    def listen_key_of(self, key_hash: str) -> str:
        """The listen key an API key was last given (a POST returns the same one while it lives)."""
        return f"{self.namespace}:listen_key_of:{key_hash}"

    def api_key(self, key_hash: str) -> str:
        """Hash of one signed (Binance-style) API key: account, kind, permissions, sealed
        secret or public key (``web.binance.keys``)."""
        return f"{self.namespace}:api_key:{key_hash}"

    def export(self, export_id: str) -> str:
        """Hash of one account statement (``jobs.exports``): owner, kind, format, range,
        file; its TTL is the export's expiry."""
        return f"{self.namespace}:export:{export_id}"

    def exports_of(self, account: str) -> str:
        """Zset of an account's statement ids (score = creation ms), to bound its unfinished
        ones; expires with its newest statement."""
        return f"{self.namespace}:exports_of:{account}"

    def job_queue(self, kind: str) -> str:
        """The RQ queue name of one kind of operator job (``archive``, ``audit``,
        ``exports``): RQ's own keys are ``rq:queue:<this>``, so deployments sharing a Redis
        never take each other's jobs."""
        return f"{self.namespace}.{kind}"

    def md_channel(self, symbol: str) -> str:
        return f"{self.namespace}:md:{symbol}"

    def acct_channel(self, account: str) -> str:
        return f"{self.namespace}:acct:{account}"

    def __repr__(self) -> str:
        return f"Keys(partition={self.partition}, namespace={self.namespace!r})"


def parse_partitions(text: str | None) -> dict[str, int]:
    """Parse ``"BTC-USDT=0,ETH-USDT=1"``; empty or None means "everything in partition 0"."""
    mapping: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        symbol, sep, number = item.partition("=")
        symbol, number = symbol.strip(), number.strip()
        if not sep or not symbol:
            raise ValueError(f"{PARTITIONS_ENV}: expected SYMBOL=N, got {item!r}")
        if not (number.isascii() and number.isdigit()):
            raise ValueError(f"{PARTITIONS_ENV}: {item!r}: partition is not an integer")
        partition = int(number)
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"{PARTITIONS_ENV}: {item!r}: partition must be 0..255")
        mapping[symbol] = partition
    return mapping


class Namespace:
    """One deployment's names: its namespace, its symbols' partitions and their :class:`Keys`.

    Symbols not in the partition map live in partition 0, so an empty map is one partition.
    """

    def __init__(
        self,
        name: str = DEFAULT_NAMESPACE,
        symbols: Iterable[str] = (),
        partition_map: Mapping[str, int] | str | None = None,
    ) -> None:
        if _NAMESPACE.fullmatch(name) is None:
            raise ValueError(f"namespace must be 1-32 characters of A-Z a-z 0-9 _ -, got {name!r}")
        if isinstance(partition_map, str) or partition_map is None:
            partition_map = parse_partitions(partition_map)
        self.name = name
        self.partition_map = dict(partition_map)
        self.symbols = list(symbols)
        self.partition_of_symbol = {s: self.partition_map.get(s, 0) for s in self.symbols}
        #: partitions in use: those of the symbols (or partition 0 alone)
        self.partitions = sorted(set(self.partition_of_symbol.values()) or {0})
        self._keys: dict[int, Keys] = {}
        self.global_keys = self.keys(0)
        self.md_pattern = f"{name}:md:*"
        self.acct_pattern = f"{name}:acct:*"
        self.md_prefix = f"{name}:md:"
        self.acct_prefix = f"{name}:acct:"

    @classmethod
    def from_env(
        cls, symbols: Iterable[str], name: str | None = None, partition_map: str | None = None
    ) -> Namespace:
        """``FAIRBOOK_NAMESPACE`` and ``FAIRBOOK_PARTITIONS`` (explicit arguments win)."""
        return cls(
            name or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
            symbols,
            partition_map if partition_map is not None else os.environ.get(PARTITIONS_ENV),
        )

    def keys(self, partition: int) -> Keys:
        """The partition's :class:`Keys`, built once."""
        found = self._keys.get(partition)
        if found is None:
            found = self._keys[partition] = Keys(partition, self.name)
        return found

    def partition(self, symbol: str) -> int:
        return self.partition_of_symbol.get(symbol, self.partition_map.get(symbol, 0))

    def keys_for(self, symbol: str) -> Keys:
        return self.keys(self.partition(symbol))

    def symbols_of(self, partition: int) -> list[str]:
        return [s for s in self.symbols if self.partition_of_symbol[s] == partition]

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, partitions={self.partitions})"
