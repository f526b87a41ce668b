"""Key and channel names, the namespace and the symbol -> partition map."""

from __future__ import annotations

import pytest

from engine.commands import make_public_id, partition_of_id
from protocol.keys import Keys, Namespace, parse_partitions

SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "DOGE-USDT"]


def test_keys_layout() -> None:
    k = Keys(3)
    assert k.stream == "fb:{p3}:in"
    assert k.next_id == "fb:{p3}:next_id"
    assert k.applied == "fb:{p3}:applied"
    assert k.order(771) == "fb:{p3}:order:771"
    assert k.open("7") == "fb:{p3}:open:7"
    assert k.closed("7") == "fb:{p3}:closed:7"
    assert k.trades == "fb:{p3}:trades"
    assert k.recent("BTC-USDT") == "fb:{p3}:recent:BTC-USDT"
    assert k.book("BTC-USDT") == "fb:{p3}:book:BTC-USDT"
    assert k.inbox("ab12") == "fb:{p3}:inbox:ab12"
    assert k.snapshots == "fb:{p3}:snapshots"
    assert k.snapshot("5-1") == "fb:{p3}:snapshot:5-1"
    assert k.lease == "fb:{p3}:lease"
    assert (k.accounts, k.account("9"), k.next_account) == (
        "fb:accounts", "fb:account:9", "fb:next_account",
    )  # fmt: skip
    assert k.account_keys("9") == "fb:account_keys:9"
    assert k.md_channel("ETH-USDT") == "fb:md:ETH-USDT"
    assert k.acct_channel("9") == "fb:acct:9"
    assert k.control == "fb:control"
    assert Keys(0, namespace="t").stream == "t:{p0}:in"
    with pytest.raises(ValueError):
        Keys(256)


def test_partition_map() -> None:
    cfg = "BTC-USDT=0, ETH-USDT=1,SOL-USDT=2"
    assert parse_partitions(cfg) == {"BTC-USDT": 0, "ETH-USDT": 1, "SOL-USDT": 2}
    ns = Namespace("fb", SYMBOLS, cfg)
    assert ns.partition("ETH-USDT") == 1
    assert ns.partition("DOGE-USDT") == 0  # unlisted -> 0
    assert ns.partitions == [0, 1, 2]
    assert Namespace("fb", ["ETH-USDT", "SOL-USDT"], cfg).partitions == [1, 2]
    assert ns.symbols_of(1) == ["ETH-USDT"]
    assert ns.keys_for("SOL-USDT") is ns.keys(2) and ns.keys(2).stream == "fb:{p2}:in"
    assert Namespace("fb", SYMBOLS).partitions == [0]
    for bad in ("BTC-USDT", "BTC-USDT=x", "BTC-USDT=300", "=1", "BTC-USDT=\u0661"):
        with pytest.raises(ValueError):
            parse_partitions(bad)
    assert partition_of_id(make_public_id(12345, 7)) == 7


def test_namespace_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRBOOK_NAMESPACE", "blue")
    monkeypatch.setenv("FAIRBOOK_PARTITIONS", "ETH-USDT=4")
    ns = Namespace.from_env(SYMBOLS)
    assert ns.name == "blue" and ns.partitions == [0, 4]
    assert ns.keys_for("ETH-USDT").stream == "blue:{p4}:in"
    assert ns.global_keys.accounts == "blue:accounts"
    assert (ns.md_pattern, ns.acct_pattern) == ("blue:md:*", "blue:acct:*")
    assert Namespace.from_env(SYMBOLS, "green", "").keys(0).lease == "green:{p0}:lease"
    monkeypatch.delenv("FAIRBOOK_NAMESPACE")
    monkeypatch.delenv("FAIRBOOK_PARTITIONS")
    assert Namespace.from_env(SYMBOLS).name == "fb"
    for bad in ("", "a:b", "x{p0}", "*", "a b", "n\n", "\u0661"):
        with pytest.raises(ValueError):
            Namespace(bad, SYMBOLS)
