"""The symbols file: the shipped markets, FAIRBOOK_SYMBOLS, and clear start-up failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.markets import Asset, Market, assets_of
from engine.units import Rate
from protocol.config import DEFAULT_SYMBOLS_FILE, load_markets


def _raw() -> list[dict[str, str]]:
    """The shipped markets (the file's ``markets`` list)."""
    return json.loads(DEFAULT_SYMBOLS_FILE.read_text())["markets"]


def _assets() -> list[dict[str, Any]]:
    return json.loads(DEFAULT_SYMBOLS_FILE.read_text())["assets"]


def test_default_markets() -> None:
    markets = load_markets()
    assert list(markets) == ["BTC-USDT", "ETH-USDT", "ETH-BTC", "SOL-USDT", "DOGE-USDT"]
    assert markets["ETH-BTC"].maker_rate == Rate(-1, 10000)
    for m in markets.values():
        assert Market.from_dict(m.as_dict(), m.base_decimals, m.quote_decimals) == m
    assert assets_of(markets) == {a["asset"]: Asset.of(a["asset"], 8) for a in _assets()}
    btc = markets["BTC-USDT"]  # lot 0.00001 BTC = 1,000 sats; atom 0.0000001 USDT = 10 units
    assert (btc.lot_units, btc.atom_units) == (1_000, 10)
    assert (markets["ETH-BTC"].lot_units, markets["ETH-BTC"].atom_units) == (100_000, 1)


def test_markets_from_env_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_raw()[:1]))  # the old form: a bare list
    monkeypatch.setenv("FAIRBOOK_SYMBOLS", str(path))
    assert list(load_markets()) == ["BTC-USDT"]
    other = tmp_path / "o.json"
    other.write_text(json.dumps(_raw()[2:3]))
    assert list(load_markets(other)) == ["ETH-BTC"]  # an explicit path wins
    monkeypatch.setenv("FAIRBOOK_SYMBOLS", "")
    assert len(load_markets()) == 5


def _bad(tmp_path: Path, content: Any, raw: bool = False) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if raw else json.dumps(content))
    with pytest.raises(SystemExit) as info:
        load_markets(path)
    message = str(info.value.code)
    assert message.startswith("fairbook:") and str(path) in message
    return message


def test_malformed_markets_files(tmp_path: Path) -> None:
    good = _raw()[0]
    assert "not valid JSON" in _bad(tmp_path, "[{", raw=True)
    assert '"assets"' in _bad(tmp_path, {"symbol": "X"})
    assert "non-empty JSON list" in _bad(tmp_path, [])
    assert "entry 0 is not an object" in _bad(tmp_path, ["BTC-USDT"])
    missing = {k: v for k, v in good.items() if k != "tick_size"}
    assert "tick_size" in _bad(tmp_path, [missing])
    assert "not a decimal" in _bad(tmp_path, [{**good, "lot_size": "abc"}])
    assert "decimal string" in _bad(tmp_path, [{**good, "lot_size": 0.1}])
    assert "finite" in _bad(tmp_path, [{**good, "tick_size": "Infinity"}])
    assert "> 0" in _bad(tmp_path, [{**good, "tick_size": "0"}])
    assert "duplicate symbol BTC-USDT" in _bad(tmp_path, [good, good])
    assert "unknown fields" in _bad(tmp_path, [{**good, "colour": "red"}])
    assert "upper-case" in _bad(tmp_path, [{**good, "symbol": "btc-usdt"}])
    assert "multiples of lot_size" in _bad(tmp_path, [{**good, "min_quantity": "0.000015"}])
    assert "min_quantity > max_quantity" in _bad(tmp_path, [{**good, "min_quantity": "2000"}])
    assert "fee rates" in _bad(tmp_path, [{**good, "taker_fee_rate": "-0.001"}])
    assert "rebate exceeds" in _bad(tmp_path, [{**good, "maker_fee_rate": "-0.002"}])
    assert "min_notional" in _bad(tmp_path, [{**good, "min_notional": "-1"}])
    assert "entry 1" in _bad(tmp_path, [good, {**good, "symbol": "X-Y", "lot_size": "x"}])
    assert "cannot read" in str(
        pytest.raises(SystemExit, load_markets, tmp_path / "missing.json").value
    )


def test_assets_and_units(tmp_path: Path) -> None:
    """The file's assets: every lot and quote atom a whole number of units, every traded asset
    listed and every listed one traded; the old bare list derives the fewest decimals."""
    good = _raw()[0]  # BTC-USDT: lot 0.00001, atom 0.0000001
    assets = [{"asset": "BTC", "decimals": 8}, {"asset": "USDT", "decimals": 8}]
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"assets": assets, "markets": [good]}))
    assert load_markets(path)["BTC-USDT"].quote_decimals == 8
    coarse = [{"asset": "BTC", "decimals": 4}, {"asset": "USDT", "decimals": 8}]
    assert "whole number of BTC units" in _bad(tmp_path, {"assets": coarse, "markets": [good]})
    coarse = [{"asset": "BTC", "decimals": 8}, {"asset": "USDT", "decimals": 6}]
    assert "whole number of USDT units" in _bad(tmp_path, {"assets": coarse, "markets": [good]})
    assert "does not list" in _bad(tmp_path, {"assets": assets[:1], "markets": [good]})
    extra = [*assets, {"asset": "XRP", "decimals": 6}]
    assert "no market trades" in _bad(tmp_path, {"assets": extra, "markets": [good]})
    assert "decimals must be" in _bad(
        tmp_path, {"assets": [{"asset": "BTC", "decimals": "8"}, assets[1]], "markets": [good]}
    )
    assert "duplicate asset" in _bad(
        tmp_path, {"assets": [*assets, assets[0]], "markets": [good]}
    )
    assert "maker_fee_rate exceeds" in _bad(
        tmp_path, {"assets": assets, "markets": [{**good, "maker_fee_rate": "0.002"}]}
    )
    # the old form: each asset the most places its markets need (BTC 5 as a base of BTC-USDT,
    # 9 as the quote of ETH-BTC's 1e-9 atom; USDT 7)
    old = {**_raw()[2], "lot_size": "0.0001", "min_quantity": "0.0001"}
    path.write_text(json.dumps([good, old]))
    derived = assets_of(load_markets(path))
    assert {a: x.decimals for a, x in derived.items()} == {"BTC": 9, "ETH": 4, "USDT": 7}
    assert derived["BTC"].format(123) == "0.000000123"


def test_markets_survive_pickling() -> None:
    """The commit process receives the markets pickled (compiled or not)."""
    import pickle

    markets = load_markets()
    copies = pickle.loads(pickle.dumps(markets))
    for symbol, market in markets.items():
        copy = copies[symbol]
        assert copy.as_dict() == market.as_dict()
        assert (copy.maker_rate, copy.taker_rate) == (market.maker_rate, market.taker_rate)
        assert copy.min_notional_atoms == market.min_notional_atoms
        assert (copy.lot_units, copy.atom_units) == (market.lot_units, market.atom_units)
        assert copy.tick.format(12345) == market.tick.format(12345)
