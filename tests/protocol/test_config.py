"""The symbols file: the shipped markets, FAIRBOOK_SYMBOLS, and clear start-up failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.markets import Market
from engine.units import Rate
from protocol.config import DEFAULT_SYMBOLS_FILE, load_markets


def _raw() -> list[dict[str, str]]:
    return json.loads(DEFAULT_SYMBOLS_FILE.read_text())


def test_default_markets() -> None:
    markets = load_markets()
    assert list(markets) == ["BTC-USDT", "ETH-USDT", "ETH-BTC", "SOL-USDT", "DOGE-USDT"]
    assert markets["ETH-BTC"].maker_rate == Rate(-1, 10000)
    for m in markets.values():
        assert Market.from_dict(m.as_dict()) == m


def test_markets_from_env_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_raw()[:1]))
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
    assert "non-empty JSON list" in _bad(tmp_path, {"symbol": "X"})
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
        assert copy.tick.format(12345) == market.tick.format(12345)
