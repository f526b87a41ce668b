"""Every Redis key name of DESIGN.md's layout, in one place.

Partition keys carry the hash tag ``{pN}`` so that one partition's keys live in one Cluster slot
and a single Lua script may touch all of them. Nobody else should format key names by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

DEFAULT_NAMESPACE = "fb"
PARTITIONS_ENV = "FAIRBOOK_PARTITIONS"
MAX_PARTITIONS = 256  # ids carry the partition in their low 8 bits


class Keys:
    """Key names of one partition (and the few global ones) under a namespace."""

    __slots__ = (
        "partition",
        "namespace",
        "prefix",
        "stream",
        "next_id",
        "applied",
        "applied_count",
        "trades",
        "snapshots",
        "lease",
        "accounts",
        "next_account",
        "control",
    )

    def __init__(self, partition: int, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"partition must be 0..{MAX_PARTITIONS - 1}, got {partition}")
        self.partition = partition
        self.namespace = namespace
        self.prefix = f"{namespace}:{{p{partition}}}:"
        p = self.prefix
        self.stream = p + "in"  # the journal: field "c" = wire command JSON
        self.next_id = p + "next_id"
        self.applied = p + "applied"
        self.applied_count = p + "applied_count"  # journal entries consumed since genesis
        self.trades = p + "trades"
        self.snapshots = p + "snapshots"
        self.lease = p + "lease"
        # global (not partitioned) keys
        self.accounts = f"{namespace}:accounts"
        self.next_account = f"{namespace}:next_account"
        self.control = f"{namespace}:control"

    # -- partition keys ---------------------------------------------------------------------------
    def order(self, order_id: int | str) -> str:
        return f"{self.prefix}order:{order_id}"

    def open(self, account: str) -> str:
        return f"{self.prefix}open:{account}"

    def closed(self, account: str) -> str:
        return f"{self.prefix}closed:{account}"

    def recent(self, symbol: str) -> str:
        return f"{self.prefix}recent:{symbol}"

    def book(self, symbol: str) -> str:
        return f"{self.prefix}book:{symbol}"

    def inbox(self, inbox_id: str) -> str:
        """Pub/sub channel of one web process's replies from this partition (not a key)."""
        return f"{self.prefix}inbox:{inbox_id}"

    def snapshot(self, stream_id: str) -> str:
        return f"{self.prefix}snapshot:{stream_id}"

    # -- global keys and channels ----------------------------------------------------------------
    def account(self, account_id: str) -> str:
        return f"{self.namespace}:account:{account_id}"

    def md_channel(self, symbol: str) -> str:
        return f"{self.namespace}:md:{symbol}"

    def acct_channel(self, account: str) -> str:
        return f"{self.namespace}:acct:{account}"

    def __repr__(self) -> str:
        return f"Keys(partition={self.partition}, namespace={self.namespace!r})"


def parse_partitions(text: str | None) -> dict[str, int]:
    """Parse ``"BTC-USDT=0,ETH-USDT=1"``; empty/None means "everything in partition 0"."""
    mapping: dict[str, int] = {}
    if not text:
        return mapping
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        symbol, sep, number = item.partition("=")
        symbol = symbol.strip()
        if not sep or not symbol:
            raise ValueError(f"{PARTITIONS_ENV}: expected SYMBOL=N, got {item!r}")
        try:
            partition = int(number)
        except ValueError:
            raise ValueError(f"{PARTITIONS_ENV}: {item!r}: partition is not an integer") from None
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"{PARTITIONS_ENV}: {item!r}: partition must be 0..255")
        mapping[symbol] = partition
    return mapping


PartitionConfig = str | Mapping[str, int] | None


def _mapping(config: PartitionConfig) -> Mapping[str, int]:
    if config is None:
        config = os.environ.get(PARTITIONS_ENV, "")
    if isinstance(config, str):
        return parse_partitions(config)
    return config


def partition_for_symbol(symbol: str, config: PartitionConfig = None) -> int:
    """Partition of a symbol: from ``config`` (text or mapping), else ``FAIRBOOK_PARTITIONS``.

    Symbols not listed live in partition 0, so an empty config means a single partition.
    """
    return _mapping(config).get(symbol, 0)


def all_partitions(
    config: PartitionConfig = None, symbols: Iterable[str] | None = None
) -> list[int]:
    """Sorted partitions in use: those of ``symbols`` if given, else every configured one and 0."""
    mapping = _mapping(config)
    if symbols is not None:
        return sorted({mapping.get(s, 0) for s in symbols})
    return sorted(set(mapping.values()) | {0})


def symbols_of_partition(
    partition: int, symbols: Iterable[str], config: PartitionConfig = None
) -> list[str]:
    """The symbols (from ``symbols``) that partition ``partition`` matches."""
    mapping = _mapping(config)
    return [s for s in symbols if mapping.get(s, 0) == partition]


def partition_of_id(public_id: int) -> int:
    """Order and command ids carry their partition in the low 8 bits."""
    return public_id & 0xFF
